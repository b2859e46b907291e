"""Silent JPEG damage: bytes zeroed, dropped, inserted or flipped mid-scan that libjpeg
decodes without a warning are found from the pixels as `corrupt`, with the row, also when
the picture is shifted sideways from the middle of an MCU row and when a restart marker
confines the damage to a strip; clean pictures, hard horizontal edges on a block boundary,
flat-colour scenes, screenshots and anime-style shading included, are not."""
from __future__ import annotations


import numpy as np
import pytest
import simplejpeg
from PIL import Image, ImageDraw

from engine.health.image_checks import inspect_image
from engine.health.jpeg_header import restart_interval
from engine.health.pixel_damage import damaged_row
from engine.health.restart_strips import first_cast_strip_row
from engine.health.scan_end import picture_ends_early
from engine.health.silent_damage import silent_damage
from tests.health_corpus import anime_scene, damage_bytes, flat_scene, screenshot
from tests.health_corpus import damage_scan as damage
from tests.health_corpus import jpeg_bytes as jpeg
from tests.health_corpus import photo

SIZE = (640, 480)


def with_horizon(seed: int, size: tuple[int, int] = SIZE) -> Image.Image:
    """A photo whose lower part is one flat colour from a block-row boundary down."""
    image = photo(seed, size)
    rng = np.random.default_rng(seed + 1)
    top = int(rng.integers(2, size[1] // 8 - 2)) * 8
    ImageDraw.Draw(image).rectangle((0, top, size[0], size[1]), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def decode(data: bytes) -> np.ndarray:
    return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=True, strict=True)


def first_changed_row(clean: np.ndarray, damaged: np.ndarray) -> int:
    return int(np.flatnonzero(np.abs(damaged.astype(np.int16) - clean).mean(axis=(1, 2)) > 3)[0])


# Damage that libjpeg decodes silently and that leaves a visible seam (checked to be
# silent in the test itself): three kinds, at several depths into the scan.
SILENT_CASES = [
    (seed, kind, fraction)
    for seed, kind, fraction in [
        (0, "zeroed", 0.25), (1, "zeroed", 0.4), (7, "zeroed", 0.55), (12, "zeroed", 0.7),
        (2, "dropped", 0.25), (3, "dropped", 0.4), (1, "dropped", 0.55), (8, "dropped", 0.7),
        (7, "flipped", 0.25), (17, "flipped", 0.4), (2, "flipped", 0.55), (9, "flipped", 0.7),
        # a cast that clips the picture below the seam (found only by the clipped-seam test)
        (3, "zeroed", 0.25), (13, "zeroed", 0.7), (15, "dropped", 0.25),
    ]
]


@pytest.mark.parametrize(("seed", "kind", "fraction"), SILENT_CASES)
def test_silently_damaged_jpeg_is_corrupt_from_the_damaged_row(tmp_path, seed, kind, fraction):
    data = jpeg(photo(seed))
    damaged = damage(data, kind, fraction)
    pixels = decode(damaged)  # libjpeg, strict: no warning
    path = tmp_path / "photo.jpg"
    path.write_bytes(damaged)
    facts = inspect_image(path)
    assert facts.error_code == "corrupt"
    true_row = first_changed_row(decode(data), pixels)
    assert abs(facts.damaged_row - true_row) <= 16
    assert f"row {facts.damaged_row} " in facts.error


def test_grey_tail_is_damage_from_where_it_starts():
    pixels = np.asarray(photo(2)).copy()
    pixels[296:] = 128
    assert damaged_row(pixels) == 296
    pixels[:] = 128
    assert damaged_row(pixels) == -1  # an all-grey picture is not a lost tail


def test_clean_pictures_and_hard_horizontal_edges_are_not_flagged():
    flagged = [
        (maker.__name__, seed)
        for seed in range(200)
        for maker in (photo, with_horizon)
        if seed % 2 == (maker is with_horizon)
        if damaged_row(decode(jpeg(maker(seed)))) >= 0
    ]
    assert flagged == []


def test_black_bars_and_clipped_lower_parts_with_texture_above_are_not_flagged():
    """A letterbox bar, and a lower part of one colour with a channel at 255, from a
    block-row boundary down: clipped below, clean above, but one colour (no cast)."""
    flagged = []
    for seed in range(60):
        pixels = np.asarray(photo(seed)).copy()
        top = 8 * (10 + seed % 40)
        pixels[top:] = 0 if seed % 2 else (255, 40 + seed, 90)
        if damaged_row(decode(jpeg(Image.fromarray(pixels)))) >= 0:
            flagged.append(seed)
    assert flagged == []


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
def test_cut_png_and_webp_are_corrupt_and_a_cut_png_names_its_last_row(tmp_path, fraction):
    """Pillow pads a cut file with flat pixels when LOAD_TRUNCATED_IMAGES is set; the
    scan never pads: a cut PNG or WebP is corrupt, a cut PNG with the row its pixels end at."""
    import io

    from tests.health_corpus import png_bytes

    data = png_bytes(photo(4))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: int(len(data) * fraction)])
    facts = inspect_image(path)
    assert facts.error_code == "corrupt"
    from PIL import ImageFile
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # the padding decoder, to find the true row
    try:
        padded = np.asarray(Image.open(path).convert("RGB"))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    whole = np.asarray(photo(4))
    differs = np.flatnonzero((padded != whole).any(axis=(1, 2)))
    assert 0 < facts.damaged_row == differs[0] < SIZE[1]
    assert f"row {facts.damaged_row} of {SIZE[1]}" in facts.error
    for lossless in (False, True):
        buffer = io.BytesIO()
        photo(5).save(buffer, "WEBP", lossless=lossless, quality=90)
        path = tmp_path / "cut.webp"
        path.write_bytes(buffer.getvalue()[: int(len(buffer.getvalue()) * fraction)])
        assert inspect_image(path).error_code == "corrupt"


def test_hard_edges_between_two_textured_halves_are_not_flagged():
    """A collage: from a block-row boundary down another photo (every other one with a
    channel at 255). Other content, not the same picture cast: no offset explains it."""
    rng = np.random.default_rng(3)
    flagged = []
    for seed in range(60):
        pixels = np.asarray(photo(seed)).copy()
        lower = np.asarray(photo(seed + 100_000)).copy()
        if seed % 2:
            lower[:, :, seed % 3] = 255
        top = int(rng.integers(2, SIZE[1] // 8 - 2)) * 8
        pixels[top:] = lower[top:]
        if damaged_row(decode(jpeg(Image.fromarray(pixels)))) >= 0:
            flagged.append(seed)
    assert flagged == []


@pytest.mark.parametrize("mcu_height", [8, 16])
def test_most_silently_damaged_jpegs_are_found_at_their_row(mcu_height):
    """The measured detection rate on a batch of the first damage generator (16 bytes zeroed,
    7 dropped or a bit flipped; bench/pixel_damage_rates.py measures the wider one): damage
    at a random depth, each kind, only what libjpeg passes;
    reading every block row, or only the MCU rows (16 high here) as the scan does."""
    rng = np.random.default_rng(11)
    silent = found = 0
    for seed in range(30):
        data = jpeg(photo(seed + 500))
        clean = decode(data)
        for kind in ("zeroed", "dropped", "flipped"):
            try:
                pixels = decode(damage(data, kind, float(rng.uniform(0.2, 0.8))))
            except ValueError:
                continue  # libjpeg reports it
            if not (np.abs(pixels.astype(np.int16) - clean).mean(axis=(1, 2)) > 3).any():
                continue
            silent += 1
            row = damaged_row(pixels, mcu_height)
            if row >= 0:
                found += 1
                assert abs(row - first_changed_row(clean, pixels)) <= 16, (seed, kind)
    assert silent >= 30
    assert found / silent >= 0.6, f"{found} of {silent}"


def pillow_is_silent(data: bytes) -> bool:
    import io
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # raises on an error, and on a warning under "error"
    return True


def first_changed_mcu(clean: np.ndarray, damaged: np.ndarray, mcu: int) -> tuple[int, int]:
    """(top row, left column) of the first MCU, in decoding order, that the damage changed."""
    height, width = clean.shape[0] // mcu * mcu, clean.shape[1] // mcu * mcu
    difference = np.abs(clean[:height, :width].astype(np.int16) - damaged[:height, :width]).mean(axis=-1)
    per_mcu = difference.reshape(height // mcu, mcu, width // mcu, mcu).mean(axis=(1, 3))
    first = int(np.flatnonzero(per_mcu.ravel() > 2)[0])
    return first // (width // mcu) * mcu, first % (width // mcu) * mcu


def sideways_shift(clean: np.ndarray, damaged: np.ndarray, top: int, mcu: int) -> tuple[int, float]:
    """The whole-MCU shift that best maps the clean picture onto the damaged one in the two
    MCU rows below `top` (less one colour offset), and the mean difference it leaves."""
    below, original = damaged[top:top + 2 * mcu].astype(np.int16), clean[top:top + 2 * mcu].astype(np.int16)
    width = below.shape[1]
    fits = []
    for shift in range(-width // 2 // mcu * mcu, width // 2, mcu):
        moved = below[:, max(shift, 0):width + min(shift, 0)] - original[:, max(-shift, 0):width - max(shift, 0)]
        fits.append((float(np.abs(moved - np.median(moved.reshape(-1, 3), axis=0)).mean()), shift))
    left, shift = min(fits)
    return shift, left


# Found by search (bench/pixel_damage_rates.py's generator): flat-colour scenes whose damage
# libjpeg and Pillow decode silently, starting mid-row and shifting the picture sideways.
MID_ROW_SHIFTS = [(3, 2, "zeroed", 16, 0.5), (0, 2, "inserted", 100, 0.5),
                  (1, 0, "zeroed", 16, 0.3), (2, 0, "zeroed", 16, 0.3)]


@pytest.mark.parametrize(("seed", "subsampling", "kind", "length", "fraction"), MID_ROW_SHIFTS)
def test_damage_that_shifts_a_flat_scene_from_mid_row_is_corrupt_from_its_row(
        tmp_path, seed, subsampling, kind, length, fraction):
    data = jpeg(flat_scene(seed), subsampling=subsampling)
    damaged = damage_bytes(data, kind, length, fraction, np.random.default_rng(seed))
    pixels, clean = decode(damaged), decode(data)  # libjpeg, strict: no warning
    assert pillow_is_silent(damaged)
    mcu = 16 if subsampling == 2 else 8
    top, left = first_changed_mcu(clean, pixels, mcu)
    assert mcu <= left <= SIZE[0] - 2 * mcu  # the damage starts mid-row
    shift, left_over = sideways_shift(clean, pixels, top + mcu, mcu)
    assert shift != 0 and left_over < 3  # and what follows is the picture moved sideways
    path = tmp_path / "scene.jpg"
    path.write_bytes(damaged)
    facts = inspect_image(path)
    assert facts.error_code == "corrupt"
    assert abs(facts.damaged_row - top) <= mcu


@pytest.mark.parametrize(("seed", "kind", "length", "fraction"), [(0, "inserted", 40, 0.5), (1, "zeroed", 16, 0.3)])
def test_damage_a_restart_marker_confines_to_a_strip_is_corrupt_from_its_row(tmp_path, seed, kind, length, fraction):
    """With a restart marker every MCU row the decoder is back in step at the next row: the
    damage is a strip from the damaged MCU to the end of its row."""
    data = jpeg(photo(seed), restart_marker_rows=1)
    damaged = damage_bytes(data, kind, length, fraction, np.random.default_rng(seed))
    pixels, clean = decode(damaged), decode(data)
    top, left = first_changed_mcu(clean, pixels, 16)
    assert left > 0 and not (np.abs(pixels[top + 16:].astype(np.int16) - clean[top + 16:]) > 8).any()
    path = tmp_path / "photo.jpg"
    path.write_bytes(damaged)
    facts = inspect_image(path)
    assert facts.error_code == "corrupt"
    assert abs(facts.damaged_row - top) <= 16


# Found by search: damage that a restart marker every 13 MCUs ends mid-row, in the MCUs
# 612-623 (row 15) and 380-389 (row 9) of 40 a row.
MID_ROW_STRIPS = [(0, "zeroed", 24, 0.5), (2, "zeroed", 24, 0.3)]


@pytest.mark.parametrize(("seed", "kind", "length", "fraction"), MID_ROW_STRIPS)
def test_damage_that_ends_with_its_restart_interval_mid_row_is_corrupt_from_its_row(
        tmp_path, seed, kind, length, fraction):
    data = jpeg(photo(seed), restart_marker_blocks=13)
    damaged = damage_bytes(data, kind, length, fraction, np.random.default_rng(seed))
    pixels, clean = decode(damaged), decode(data)
    assert pillow_is_silent(damaged)
    changed = np.flatnonzero(np.abs(pixels.astype(np.int16) - clean).mean(axis=-1)
                             .reshape(30, 16, 40, 16).mean(axis=(1, 3)).ravel() > 2)
    assert changed[-1] // 40 == changed[0] // 40 and changed[-1] % 40 < 39  # a strip that ends mid-row
    assert changed[-1] - changed[0] < 13 and (changed[-1] + 1) % 13 == 0  # where its interval ends
    path = tmp_path / "photo.jpg"
    path.write_bytes(damaged)
    facts = inspect_image(path)
    assert facts.error_code == "corrupt"
    assert abs(facts.damaged_row - changed[0] // 40 * 16) <= 16


def test_restart_interval_is_read_from_the_header():
    picture = photo(0, (96, 64))
    assert restart_interval(jpeg(picture)) == 0
    assert restart_interval(jpeg(picture, restart_marker_blocks=13)) == 13
    assert restart_interval(jpeg(picture, restart_marker_rows=1)) == 6  # 96 px: six 16-px MCUs a row
    assert restart_interval(b"not a jpeg") == 0 and restart_interval(jpeg(picture)[:40]) == 0


def test_clean_flat_colour_scenes_screenshots_and_anime_shading_are_not_flagged():
    """Rectangles over a plain background with their hard horizontal edges on MCU-row
    boundaries across much of the width, crossed by lines (seeds 62-81: the colour-offset
    seam test alone flagged 62 and 77, 2 of 20), and screenshots and flat shading, each
    written with no restart markers, one every MCU row and one every 8-63 MCUs, and
    checked from the file and its pixels as the scan checks them."""
    flagged = []
    for maker, seeds in ((flat_scene, range(62, 82)), (screenshot, range(10)), (anime_scene, range(10))):
        for seed in seeds:
            subsampling = 2 if seed % 2 == 0 else 0
            mcu = 16 if subsampling == 2 else 8
            picture = maker(seed)
            for restart in ({}, {"restart_marker_rows": 1}, {"restart_marker_blocks": 8 + seed % 56}):
                data = jpeg(picture, subsampling=subsampling, **restart)
                if silent_damage(data, decode(data), mcu, mcu) is not None:
                    flagged.append((maker.__name__, seed, restart))
    assert flagged == []


# Found by search: flat-colour scenes with a restart marker every MCU row whose damage
# casts a strip over one plain colour (and a line or an edge) to the end of its row,
# which the strip test that asks for new colours passes by.
CAST_STRIPS = [(2, 2, "inserted", 40, 0.3), (3, 2, "dropped", 16, 0.5), (9, 0, "zeroed", 24, 0.3)]


@pytest.mark.parametrize(("seed", "subsampling", "kind", "length", "fraction"), CAST_STRIPS)
def test_a_restart_interval_that_ends_in_a_cast_strip_is_corrupt_from_its_row(
        tmp_path, seed, subsampling, kind, length, fraction):
    data = jpeg(flat_scene(seed), subsampling=subsampling, restart_marker_rows=1)
    damaged = damage_bytes(data, kind, length, fraction, np.random.default_rng(seed))
    pixels, clean = decode(damaged), decode(data)
    assert pillow_is_silent(damaged)
    mcu = 16 if subsampling == 2 else 8
    top, left = first_changed_mcu(clean, pixels, mcu)
    assert not (np.abs(pixels[top + mcu:].astype(np.int16) - clean[top + mcu:]) > 8).any()  # a strip
    assert abs(first_cast_strip_row(pixels, mcu, mcu, restart_interval(damaged)) - top) <= mcu
    path = tmp_path / "scene.jpg"
    path.write_bytes(damaged)
    facts = inspect_image(path)
    assert facts.error_code == "corrupt"
    assert abs(facts.damaged_row - top) <= mcu


def test_a_bar_of_one_new_colour_is_not_a_cast_strip():
    """A bar one MCU high over a plain background is what a cast strip over that colour
    looks like; it does not count where it goes on past its interval's end, starts
    mid-MCU, or has an outline or a fill of its own, nor at the right edge with nothing
    crossing it."""
    def bar(left: int, right: int, outline=None) -> np.ndarray:
        image = Image.new("RGB", SIZE, (200, 120, 60))
        ImageDraw.Draw(image).rectangle((left, 160, right - 1, 175), fill=(90, 160, 200), outline=outline)
        return decode(jpeg(image, subsampling=0))

    per_row = SIZE[0] // 16  # 16-pixel MCUs: a restart interval of one MCU row
    assert first_cast_strip_row(bar(160, 320), 16, 16, 20) >= 0  # ends where its interval does
    assert first_cast_strip_row(bar(160, 336), 16, 16, 20) == -1  # goes on past it
    assert first_cast_strip_row(bar(168, 320), 16, 16, 20) == -1  # starts mid-MCU
    assert first_cast_strip_row(bar(160, 320, outline=(0, 0, 0)), 16, 16, 20) == -1
    assert first_cast_strip_row(bar(160, SIZE[0]), 16, 16, per_row) == -1  # to the right edge


# Found by search: flat-colour scenes whose damage ends the picture a byte or more before
# the scan's data, which the pixels alone do not show.
ENDS_EARLY = [(2, 2, "inserted", 16, 0.7), (3, 2, "inserted", 24, 0.3), (8, 0, "inserted", 16, 0.3),
              (6, 2, "flipped", 16, 0.7)]


@pytest.mark.parametrize(("seed", "subsampling", "kind", "length", "fraction"), ENDS_EARLY)
def test_a_picture_that_ends_before_its_scan_data_is_corrupt_from_its_row(
        tmp_path, seed, subsampling, kind, length, fraction):
    data = jpeg(flat_scene(seed), subsampling=subsampling)
    damaged = damage_bytes(data, kind, length, fraction, np.random.default_rng(seed))
    pixels, clean = decode(damaged), decode(data)
    assert pillow_is_silent(damaged)
    mcu = 16 if subsampling == 2 else 8
    assert damaged_row(pixels, mcu) == -1  # the pixels alone pass it
    assert picture_ends_early(damaged, pixels, mcu, mcu) and not picture_ends_early(data, clean, mcu, mcu)
    top, _ = first_changed_mcu(clean, pixels, mcu)
    path = tmp_path / "scene.jpg"
    path.write_bytes(damaged)
    facts = inspect_image(path)
    assert facts.error_code == "corrupt"
    assert abs(facts.damaged_row - top) <= mcu and f"row {facts.damaged_row} " in facts.error


def test_the_scan_end_probe_reads_only_sequential_scans_and_passes_whole_files():
    """A whole file needs its last byte, with or without restart markers, fill bytes or a
    restart marker before its end marker, or another image after it (MPO); progressive files and cut or odd ones
    are not probed; extra bytes before the end marker that libjpeg drops are found."""
    picture = flat_scene(4)
    clean = jpeg(picture, subsampling=2)
    pixels = decode(clean)
    end = clean.rindex(b"\xff\xd9")
    for data in (clean, jpeg(picture, subsampling=2, restart_marker_rows=1), jpeg(picture, subsampling=0),
                 clean[:end] + b"\xff\xff" + clean[end:], clean[:end] + b"\xff\xd0" + clean[end:],
                 clean + jpeg(flat_scene(5))):
        assert not picture_ends_early(data, decode(data), 16, 16)
    assert not picture_ends_early(jpeg(picture, progressive=True), pixels, 16, 16)
    assert not picture_ends_early(clean[:end // 2], pixels, 16, 16)
    assert not picture_ends_early(b"not a jpeg", pixels, 16, 16)
    padded = clean[:end] + b"\x12\x34" + clean[end:]  # two bytes the picture does not need
    assert picture_ends_early(padded, decode(padded), 16, 16)
    assert silent_damage(padded, decode(padded), 16, 16) is not None
    busy_corner = pixels.copy()
    busy_corner[-16:, -16:] = np.random.default_rng(0).integers(0, 256, (16, 16, 3))
    assert not picture_ends_early(padded, busy_corner, 16, 16)  # costly last MCUs: libjpeg reports


@pytest.mark.parametrize(("seed", "start", "delay"), [(1, 7 * 40 + 13, 1), (2, 18 * 40 + 30, 3), (3, 3 * 40 + 2, 2)])
def test_the_row_where_the_picture_comes_out_delayed_is_found(seed, start, delay):
    """Damage that decoded as MCUs to spare delays the rest of the picture by whole MCUs
    (in raster order): made here by moving a flat-colour scene's MCUs, the locator names
    the MCU row where the delay starts (to one MCU row: where few edges cross the rows,
    the L one row up explains them as well)."""
    from engine.health.damage_locator import delayed_seam_row

    pixels = decode(jpeg(flat_scene(seed)))
    mcus = pixels.reshape(30, 16, 40, 16, 3).transpose(0, 2, 1, 3, 4).reshape(1200, 16, 16, 3)
    delayed = mcus.copy()
    delayed[start + delay:] = mcus[start:1200 - delay]
    delayed[start:start + delay] = mcus[start - 1]  # the damaged MCUs: the colour before them
    picture = delayed.reshape(30, 40, 16, 16, 3).transpose(0, 2, 1, 3, 4).reshape(480, 640, 3)
    assert abs(delayed_seam_row(np.ascontiguousarray(picture), 16, 16) - start // 40 * 16) <= 16
    assert delayed_seam_row(pixels, 16, 16) in (-1, *range(16, 480, 16))  # a whole picture: any seam, or none


# Found by search: photos damaged in their first or last MCU row, where the L has one arm.
EDGE_ROWS = [("zeroed", 16, 0.005, 0), ("dropped", 16, 0.01, 0), ("zeroed", 16, 0.99, 464), ("inserted", 40, 0.995, 464)]


@pytest.mark.parametrize(("kind", "length", "fraction", "row"), EDGE_ROWS)
def test_damage_in_the_first_or_last_mcu_row_is_corrupt_from_its_row(tmp_path, kind, length, fraction, row):
    data = jpeg(photo(0))
    damaged = damage_bytes(data, kind, length, fraction, np.random.default_rng(0))
    pixels, clean = decode(damaged), decode(data)
    assert pillow_is_silent(damaged)
    assert first_changed_mcu(clean, pixels, 16)[0] == row
    path = tmp_path / "photo.jpg"
    path.write_bytes(damaged)
    facts = inspect_image(path)
    assert facts.error_code == "corrupt"
    assert abs(facts.damaged_row - row) <= 16
