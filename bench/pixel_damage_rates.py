"""False positives and detection rate of the silent-damage check (engine.health.silent_damage:
the scan's end, engine.health.scan_end, and the pixels, engine.health.pixel_damage).

    python bench/pixel_damage_rates.py [--clean 1000] [--damaged 400] [--tries 40] [--size 640x480] [--seed 1]

Clean (none may be flagged): --clean photo-like images (every other one with a flat lower
part from a block-row boundary down, a hard horizon), 200 with a hard edge between two
textured halves on a block-row boundary (a collage, every other one with a channel
clipped at 255 below it), and --clean each of flat-colour scenes (overlapping rectangles
whose edges lie on MCU-row boundaries, crossed by lines), screenshots (an 8-pixel grid of
hard vertical and horizontal edges) and anime-style flat shading; every other image
4:2:0, the rest 4:4:4, quality 90, each encoded three times: with no restart interval, one
per MCU row and one of 8-63 MCUs, and checked as the scan checks a file (its bytes and its
pixels).

Damaged: --damaged images, photo-like and flat-colour scenes in turn, at 4:2:0 and
4:4:4, without restart markers (half), with one every MCU row (a quarter) or every 8-63
MCUs (a quarter); each damaged --tries times at a random depth into the scan: 1-1,000
bytes (log-uniform) zeroed, dropped, inserted (random) or with one bit each flipped.
Only files that libjpeg (strict, as the scan decodes) and Pillow both decode without a
warning or error are kept: the silent ones, which only the pixels can give away.

Visible: at least VISIBLE_MCUS MCUs whose pixels differ from the clean decode by
VISIBLE_LEVELS or more on average (0-255, over the MCU's pixels and channels): a cast or
shift of that size over a strip of that length, or more. The damaged row is the top row of
the first MCU (raster order) that differs by more than CHANGED_LEVELS; a find counts when
its row is within one MCU height of it.
"""
from __future__ import annotations

import argparse
import io
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.health.silent_damage import silent_damage  # noqa: E402
from tests.health_corpus import (  # noqa: E402
    DAMAGE_KINDS, anime_scene, damage_bytes, flat_scene, jpeg_bytes, photo, screenshot,
)

VISIBLE_MCUS = 8
VISIBLE_LEVELS = 8
CHANGED_LEVELS = 2
LENGTHS = ((1, 1), (2, 15), (16, 99), (100, 1000))
RESTARTS = ("none", "none", "every row", "every 8-63 MCUs")


def decode(data: bytes) -> np.ndarray | None:
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=True, strict=True)
    except ValueError:
        return None  # libjpeg reports it: the scan finds it without the pixel check


def pillow_silent(data: bytes) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
        except Exception:
            return False
    return True


def encode(image: Image.Image, subsampling: int, restart: str, rng: np.random.Generator) -> bytes:
    """`restart`: "none", "every row", "every 8-63 MCUs" (drawn) or "every N MCUs"."""
    options = {"subsampling": subsampling}
    if restart == "every row":
        options["restart_marker_rows"] = 1
    elif restart == "every 8-63 MCUs":
        options["restart_marker_blocks"] = int(rng.integers(8, 64))
    elif restart != "none":
        options["restart_marker_blocks"] = int(restart.split()[1])
    return jpeg_bytes(image, **options)


def mcu_size(subsampling: int) -> int:
    return 16 if subsampling == 2 else 8


def with_horizon(seed: int, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    image = photo(seed, size)
    top = int(rng.integers(2, size[1] // 8 - 2)) * 8
    ImageDraw.Draw(image).rectangle((0, top, *size), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def collage(seed: int, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(photo(seed, size)).copy()
    lower = np.asarray(photo(seed + 100_000, size)).copy()
    if seed % 2:
        lower[:, :, seed % 3] = 255
    top = int(rng.integers(2, size[1] // 8 - 2)) * 8
    pixels[top:] = lower[top:]
    return Image.fromarray(pixels)


def clean_rates(count: int, size: tuple[int, int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    sets = {
        "photo-like (every other with a hard horizon)": (count, lambda seed: with_horizon(seed, size, rng) if seed % 2
                                                         else photo(seed, size)),
        "hard edge between two textured halves": (200, lambda seed: collage(seed, size, rng)),
        "flat-colour scenes": (count, lambda seed: flat_scene(seed, size)),
        "screenshots": (count, lambda seed: screenshot(seed, size)),
        "anime-style flat shading": (count, lambda seed: anime_scene(seed, size)),
    }
    print(f"\nclean images {size[0]}x{size[1]}, quality 90, half 4:2:0 and half 4:4:4, each with 0, 1 row and 8-63 MCU restart intervals")
    print(f"{'set':48}{'images':>8}{'flagged':>9}")
    first = seed * 100_000  # --seed 1 (the default) draws pictures 0 on
    for name, (images, make) in sets.items():
        flagged = []
        for seed in range(first, first + images):
            subsampling = 2 if seed % 2 == 0 else 0
            mcu = mcu_size(subsampling)
            image = make(seed)
            for restart in ("none", "every row", f"every {8 + seed % 56} MCUs"):
                data = encode(image, subsampling, restart, rng)
                if silent_damage(data, decode(data), mcu, mcu) is not None:
                    flagged.append(seed)
                    break
        print(f"{name:48}{images:>8}{len(flagged):>9}" + (f"   seeds {flagged[:10]}" if flagged else ""))


def truth(clean: np.ndarray, damaged: np.ndarray, mcu: int) -> tuple[int, int]:
    """(first changed MCU row's top pixel row or -1, count of visibly changed MCUs)"""
    height, width = clean.shape[0] // mcu * mcu, clean.shape[1] // mcu * mcu
    difference = np.abs(clean[:height, :width].astype(np.int16) - damaged[:height, :width])
    per_mcu = difference.mean(axis=-1).reshape(height // mcu, mcu, width // mcu, mcu).mean(axis=(1, 3))
    changed = np.flatnonzero(per_mcu.ravel() > CHANGED_LEVELS)
    row = int(changed[0]) // (width // mcu) * mcu if len(changed) else -1
    return row, int((per_mcu >= VISIBLE_LEVELS).sum())


def length_label(length: int) -> str:
    low, high = next((low, high) for low, high in LENGTHS if low <= length <= high)
    return f"{low} byte" if low == high else f"{low}-{high} bytes"


def damaged_rates(images: int, tries: int, size: tuple[int, int], seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    silent, visible, found, rowless = Counter(), Counter(), Counter(), Counter()
    tried = loud = 0
    for index in range(images):
        scene = ("photo-like", "flat-colour")[index % 2]
        subsampling = (2, 0)[index // 2 % 2]
        restart = RESTARTS[index // 4 % 4]
        seed = int(rng.integers(0, 10**6))
        data = encode(photo(seed, size) if scene == "photo-like" else flat_scene(seed, size), subsampling, restart, rng)
        clean = decode(data)
        mcu = mcu_size(subsampling)
        for attempt in range(tries):
            kind = DAMAGE_KINDS[attempt % len(DAMAGE_KINDS)]
            length = int(np.exp(rng.uniform(0, np.log(1000))))
            damaged = damage_bytes(data, kind, length, float(rng.uniform()), rng)
            tried += 1
            pixels = decode(damaged)
            if pixels is None or not pillow_silent(damaged):
                loud += 1
                continue
            row, changed = truth(clean, pixels, mcu)
            keys = [("kind", kind, length_label(length)), ("kind", "all", length_label(length))]
            if length >= 16:
                keys += [("case", scene, f"4:{'2:0' if subsampling == 2 else '4:4'}", restart),
                         ("case", scene, "all", restart), ("headline",)]
            for key in keys:
                silent[key] += 1
                if changed >= VISIBLE_MCUS:
                    visible[key] += 1
                    flagged = silent_damage(damaged, pixels, mcu, mcu)
                    found[key] += flagged is not None and flagged.row >= 0 and abs(flagged.row - row) <= mcu
                    rowless[key] += flagged is not None and flagged.row < 0
    print(f"\ndamaged: {images} images x {tries} tries = {tried}; {loud} reported by libjpeg or Pillow "
          f"(found by the strict decode), {tried - loud} silent")
    print("\nsilent damage by kind and length: found with the row within one MCU, of the visible ones")
    print(f"{'kind':10}" + "".join(f"{length_label(high):>20}" for _, high in LENGTHS))
    for kind in (*DAMAGE_KINDS, "all"):
        cells = []
        for _, high in LENGTHS:
            key = ("kind", kind, length_label(high))
            cells.append(f"{found[key]}/{visible[key]} of {silent[key]}" if silent[key] else "-")
        print(f"{kind:10}" + "".join(f"{cell:>20}" for cell in cells))
    print("  (found/visible of silent)")
    print("\ndamage of 16 bytes or more, visible: found with the row within one MCU")
    print(f"{'scene':14}{'sampling':10}" + "".join(f"{name:>18}" for name in dict.fromkeys(RESTARTS)))
    for scene in ("photo-like", "flat-colour"):
        for sampling in ("4:2:0", "4:4:4", "all"):
            cells = []
            for restart in dict.fromkeys(RESTARTS):
                key = ("case", scene, sampling, restart)
                cells.append(f"{found[key]}/{visible[key]} ({found[key] / visible[key]:.0%})" if visible[key] else "-")
            print(f"{scene:14}{sampling:10}" + "".join(f"{cell:>18}" for cell in cells))
    key = ("headline",)
    print(f"\nall visible damage of 16 bytes or more: {found[key]} of {visible[key]} found "
          f"({found[key] / max(visible[key], 1):.1%}), of {silent[key]} silent; {rowless[key]} more "
          "reported as damaged without a row")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", type=int, default=1000, help="images in each clean set")
    parser.add_argument("--damaged", type=int, default=400, help="images to damage")
    parser.add_argument("--tries", type=int, default=40, help="damaged copies of each")
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--seed", type=int, default=1,
                        help="draws the damaged set (the clean set's pictures come from seed - 1 on)")
    args = parser.parse_args()
    size = tuple(int(side) for side in args.size.split("x"))
    damaged_rates(args.damaged, args.tries, size, args.seed)
    clean_rates(args.clean, size, args.seed - 1)


if __name__ == "__main__":
    main()
