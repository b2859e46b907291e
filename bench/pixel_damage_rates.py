"""False positives and detection rate of the silent-damage check (engine.health.pixel_damage).

    python bench/pixel_damage_rates.py [--count 1000] [--size 640x480]

Clean: generated photos (tests/health_corpus.py's, as bench/scan_speed.py); every other
one with a flat lower part from a block-row boundary down (a hard horizon); and, counted
apart, --edges photos whose lower part is another photo from a block-row boundary down
(a hard edge between two textured halves, a collage), every other one with a channel
clipped at 255 below the edge. Damaged: each clean
photo with 16 bytes zeroed, 7 dropped or one bit flipped at a random depth into the
scan; only those libjpeg decodes without a warning and that change the pixels count.
Detection is printed in all, per depth into the scan and per kind of damage.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.health.pixel_damage import damaged_row  # noqa: E402
from tests.health_corpus import damage_scan as damage  # noqa: E402
from tests.health_corpus import jpeg_bytes as jpeg  # noqa: E402
from tests.health_corpus import photo  # noqa: E402


MCU_HEIGHT = 16  # Pillow writes chroma halved both ways at quality 90, as the scan reads from the header


def decode(data: bytes) -> np.ndarray | None:
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=True, strict=True)
    except ValueError:
        return None  # libjpeg reports it: the scan finds it without the pixel check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--edges", type=int, default=200)
    args = parser.parse_args()
    size = tuple(int(side) for side in args.size.split("x"))
    rng = np.random.default_rng(0)
    false_positives = 0
    damaged, found, row_right = Counter(), Counter(), Counter()
    for seed in range(args.count):
        image = photo(seed, size)
        if seed % 2:
            top = int(rng.integers(2, size[1] // 8 - 2)) * 8
            ImageDraw.Draw(image).rectangle((0, top, *size), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        data = jpeg(image)
        clean = decode(data)
        false_positives += damaged_row(clean, MCU_HEIGHT) >= 0
        for kind in ("zeroed", "dropped", "flipped"):
            fraction = float(rng.uniform(0.2, 0.8))
            pixels = decode(damage(data, kind, fraction))
            if pixels is None:
                continue
            changed = np.flatnonzero(np.abs(pixels.astype(np.int16) - clean).mean(axis=(1, 2)) > 3)
            if not len(changed):
                continue
            row = damaged_row(pixels, MCU_HEIGHT)
            for key in ("all", kind, f"at {int(fraction * 10) / 10:.1f}-{int(fraction * 10) / 10 + 0.1:.1f} of the scan"):
                damaged[key] += 1
                found[key] += row >= 0
                row_right[key] += row >= 0 and abs(row - int(changed[0])) <= 16
    edge_flags = 0
    for seed in range(args.edges):
        pixels = np.asarray(photo(seed, size)).copy()
        lower = np.asarray(photo(seed + 100_000, size)).copy()
        if seed % 2:
            lower[:, :, seed % 3] = 255
        top = int(rng.integers(2, size[1] // 8 - 2)) * 8
        pixels[top:] = lower[top:]
        edge_flags += damaged_row(decode(jpeg(Image.fromarray(pixels))), MCU_HEIGHT) >= 0
    print(f"clean {args.edges} images {args.size} with a hard edge between two textured halves: "
          f"{edge_flags} flagged ({edge_flags / max(args.edges, 1):.2%} false positives)")
    print(f"clean {args.count} images {args.size}: {false_positives} flagged "
          f"({false_positives / args.count:.2%} false positives)")
    for key in sorted(damaged, key=lambda key: (key != "all", not key.startswith("at"), key)):
        print(f"silently damaged, {key}: {found[key]} of {damaged[key]} found ({found[key] / damaged[key]:.0%}), "
              f"{row_right[key]} with the row within 16 pixels")


if __name__ == "__main__":
    main()
