"""A generated dataset holding every case the health check knows, with the codes each
file must get (and nothing else).

    build_corpus(workspace) -> {path relative to img/: {codes}}

Every picture has its own random content (smooth colour fields plus fine noise), so
no two are near-duplicates by accident and all are equally sharp unless blurred on
purpose. Clean images are 576x512, above the default 512x512 training area.
"""
from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageDraw, ImageFilter

SIZE = (576, 512)
SUBJECT = "10_subject"
ORIENTATION_TAG = 0x0112


def picture(seed: int, size: tuple[int, int] = SIZE) -> Image.Image:
    width, height = size
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (max(2, height // 32), max(2, width // 32), 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
    noise = rng.integers(-24, 25, (height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8))


def photo(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A picture that compresses like a photo: smooth fields, a few hard-edged discs, grain."""
    width, height = size
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    image = coarse.resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        radius = int(rng.integers(height // 20, height // 4))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    grain = rng.normal(0, 3, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image) + grain, 0, 255).astype(np.uint8))


def damage_scan(jpeg: bytes, kind: str, fraction: float) -> bytes:
    """16 bytes zeroed, 7 dropped or one bit flipped, `fraction` of the way into the scan."""
    start = jpeg.index(b"\xff\xda") + 20
    at = start + int((len(jpeg) - 2 - start) * fraction)
    if kind == "zeroed":
        return jpeg[:at] + bytes(16) + jpeg[at + 16:]
    if kind == "dropped":
        return jpeg[:at] + jpeg[at + 7:]
    return jpeg[:at] + bytes([jpeg[at] ^ 0x10]) + jpeg[at + 1:]  # flipped


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(value) for value in rng.integers(0, 256, 3))


def flat_scene(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """Flat colours, as in an illustration: overlapping rectangles whose top and bottom edges
    lie on 16-pixel (MCU-row) boundaries across much of the width, over a plain background,
    crossed by a few near-vertical lines, and a disc or two."""
    width, height = size
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, _colour(rng))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        left = int(rng.integers(-width // 4, width * 3 // 4))
        top = int(rng.integers(1, height // 16)) * 16
        right, bottom = left + int(rng.integers(width // 4, width)), top + int(rng.integers(2, 12)) * 16
        draw.rectangle((left, top, right, bottom - 1), fill=_colour(rng))
    for _ in range(int(rng.integers(0, 4))):
        ends = [(int(rng.integers(0, width)), 0), (int(rng.integers(0, width)), height)]
        draw.line(ends, fill=_colour(rng), width=int(rng.integers(1, 5)))
    for _ in range(int(rng.integers(0, 3))):
        x, y, radius = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(10, 80))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=_colour(rng))
    return image


def screenshot(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A desktop screenshot: a title bar, a sidebar and windows of text lines, all on an
    8-pixel grid, so hard vertical and horizontal edges fall on block boundaries."""
    width, height = size
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, _colour(rng))
    draw = ImageDraw.Draw(image)
    bar = int(rng.integers(2, 6)) * 8
    draw.rectangle((0, 0, width, bar - 1), fill=_colour(rng))
    side = int(rng.integers(width // 8, width // 3)) // 8 * 8
    draw.rectangle((0, bar, side - 1, height), fill=_colour(rng))
    for _ in range(int(rng.integers(2, 6))):
        left, top = int(rng.integers(side, width - 40)) // 8 * 8, int(rng.integers(bar, height - 40)) // 8 * 8
        right = min(width, left + int(rng.integers(40, width)) // 8 * 8)
        bottom = min(height, top + int(rng.integers(16, height // 2)) // 8 * 8)
        draw.rectangle((left, top, right - 1, bottom - 1), fill=_colour(rng), outline=_colour(rng))
        ink = _colour(rng) if rng.random() < 0.3 else (20, 20, 20)
        for y in range(top + 6, bottom - 10, int(rng.choice([12, 16, 20]))):
            x = left + 6
            while x < right - 20:
                word = int(rng.integers(8, 48))
                draw.rectangle((x, y, min(x + word, right - 6), y + int(rng.integers(5, 9))), fill=ink)
                x += word + int(rng.integers(4, 10))
    for y in range(bar + 8, height - 16, 24):
        draw.rectangle((8, y, side - 8 - int(rng.integers(0, max(1, side // 2))), y + 10), fill=_colour(rng))
    return image


def anime_scene(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """Anime-style flat shading: a two-colour gradient sky, shapes of one flat colour with a
    darker shadow band and dark outlines."""
    width, height = size
    rng = np.random.default_rng(seed)
    top, bottom = np.array(_colour(rng)), np.array(_colour(rng))
    blend = np.linspace(0, 1, height)[:, None, None]
    image = Image.fromarray(((top * (1 - blend) + bottom * blend) * np.ones((1, width, 1))).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 8))):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        radius_x, radius_y = int(rng.integers(20, width // 3)), int(rng.integers(20, height // 3))
        base = np.array(_colour(rng))
        draw.ellipse((x - radius_x, y - radius_y, x + radius_x, y + radius_y), fill=tuple(int(v) for v in base),
                     outline=tuple(int(v) for v in base * 0.25), width=3)
        draw.chord((x - radius_x + 3, y - radius_y + 3, x + radius_x - 3, y + radius_y - 3), 20, 160,
                   fill=tuple(int(v) for v in base * 0.7))
        if rng.random() < 0.5:
            corners = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(3)]
            draw.polygon(corners, fill=_colour(rng), outline=(10, 10, 10), width=2)
    return image


DAMAGE_KINDS = ("zeroed", "dropped", "inserted", "flipped")


def damage_bytes(jpeg: bytes, kind: str, length: int, fraction: float, rng: np.random.Generator) -> bytes:
    """`length` bytes of the entropy-coded data, `fraction` of the way into it, damaged the
    ways files get damaged: zeroed, dropped, random bytes inserted, or one bit of each flipped."""
    start = scan_data_start(jpeg)
    at = start + int((len(jpeg) - 2 - length - start) * fraction)
    if kind == "zeroed":
        return jpeg[:at] + bytes(length) + jpeg[at + length:]
    if kind == "dropped":
        return jpeg[:at] + jpeg[at + length:]
    if kind == "inserted":
        return jpeg[:at] + rng.integers(0, 256, length, dtype=np.uint8).tobytes() + jpeg[at:]
    bits = (1 << rng.integers(0, 8, length)).astype(np.uint8)
    return jpeg[:at] + (np.frombuffer(jpeg[at:at + length], np.uint8) ^ bits).tobytes() + jpeg[at + length:]


def jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=options.pop("quality", 90), **options)
    return buffer.getvalue()


def png_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def scan_data_start(jpeg: bytes) -> int:
    """Offset of the first byte of entropy-coded data (just after the SOS header)."""
    sos = jpeg.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(jpeg[sos + 2:sos + 4], "big")


def garbage_in_scan_data(jpeg: bytes, seed: int = 0) -> bytes:
    """64 random bytes written over the middle of the entropy-coded data."""
    middle = (scan_data_start(jpeg) + len(jpeg)) // 2
    garbage = np.random.default_rng(seed).integers(0, 256, 64, dtype=np.uint8).tobytes()
    return jpeg[:middle] + garbage + jpeg[middle + 64:]


def end_marker_in_middle(jpeg: bytes) -> bytes:
    middle = (scan_data_start(jpeg) + len(jpeg)) // 2
    return jpeg[:middle] + b"\xff\xd9" + jpeg[middle:]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def handmade_png(width: int, height: int, bit_depth: int, color_type: int, rows: list[bytes] | None) -> bytes:
    """A PNG written chunk by chunk: for what Pillow cannot write (16-bit RGB, bombs).

    rows=None writes all-zero rows without holding them in memory.
    """
    compressor = zlib.compressobj(6)
    channels = {0: 1, 2: 3, 6: 4}[color_type]
    row_bytes = (width * channels * bit_depth + 7) // 8
    parts = []
    zero_row = b"\x00" * (row_bytes + 1)
    for index in range(height):
        parts.append(compressor.compress(zero_row if rows is None else b"\x00" + rows[index]))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", b"".join(parts))
            + png_chunk(b"IEND", b""))


def exif_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return exif.tobytes()


SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def build_corpus(workspace: Path) -> dict[str, set[str]]:
    """Write the corpus under workspace/img and return the expected codes per path."""
    img = workspace / "img"
    subject = img / SUBJECT
    subject.mkdir(parents=True)
    expected: dict[str, set[str]] = {}
    seeds = iter(range(1000))

    def put(name: str, data: bytes, codes: set[str], caption: str | None = "a photo, subject") -> Path:
        path = subject / name
        path.write_bytes(data)
        expected[f"{SUBJECT}/{name}"] = codes
        if caption is not None:
            path.with_suffix(".txt").write_text(caption, encoding="utf-8")
        return path

    # -- clean images: no finding at all
    put("clean_a.jpg", jpeg_bytes(picture(next(seeds)), icc_profile=SRGB_PROFILE), set())
    put("clean_b.png", png_bytes(picture(next(seeds))), set())
    buffer = io.BytesIO()
    picture(next(seeds)).save(buffer, "WEBP", lossless=True)
    put("clean_c.webp", buffer.getvalue(), set())
    buffer = io.BytesIO()
    picture(next(seeds)).save(buffer, "BMP")
    put("clean_d.bmp", buffer.getvalue(), set())
    put("clean_e_progressive.jpg", jpeg_bytes(picture(next(seeds)), progressive=True), set())
    put("clean_f_opaque_rgba.png", png_bytes(picture(next(seeds)).convert("RGBA")), set())

    # -- corrupt: damaged data, two kinds that Pillow decodes without complaint
    put("corrupt_garbage_in_scan.jpg", garbage_in_scan_data(jpeg_bytes(picture(next(seeds)))), {"corrupt"})
    put("corrupt_end_marker_in_middle.jpg", end_marker_in_middle(jpeg_bytes(picture(next(seeds)))), {"corrupt"})
    data = jpeg_bytes(picture(next(seeds)))
    put("corrupt_truncated.jpg", data[: len(data) * 6 // 10], {"corrupt"})
    data = png_bytes(picture(next(seeds)))
    put("corrupt_truncated.png", data[: len(data) * 6 // 10], {"corrupt"})
    damaged = bytearray(png_bytes(picture(next(seeds))))
    damaged[len(damaged) // 2] ^= 0xFF  # a flipped byte in the compressed pixels
    put("corrupt_flipped_byte.png", bytes(damaged), {"corrupt"})
    put("corrupt_empty.jpg", b"", {"corrupt"})
    put("corrupt_header.jpg", b"\xff\xd8\xff" + bytes(range(256)) * 2, {"corrupt"})
    buffer = io.BytesIO()
    picture(next(seeds)).save(buffer, "WEBP", quality=90)
    put("corrupt_truncated.webp", buffer.getvalue()[: len(buffer.getvalue()) // 2], {"corrupt"})

    # -- unreadable: not an image, a lying extension, formats the trainer skips
    put("unreadable_text.jpg", b"this is a note, not a photo\n", {"unreadable"})
    put("unreadable_png_named.jpg", png_bytes(picture(next(seeds))), {"unreadable"})
    buffer = io.BytesIO()
    picture(next(seeds), (64, 64)).save(buffer, "GIF")
    put("unreadable_format.gif", buffer.getvalue(), {"unreadable"})
    put("unreadable_format.heic", b"\x00\x00\x00\x18ftypheic" + bytes(64), {"unreadable"})

    # -- too large: 100 MP (above Pillow's warning limit) and 400 MP (above its error limit)
    put("too_large_100mp.png", handmade_png(10_000, 10_000, 1, 0, None), {"too_large"})
    put("too_large_400mp.png", handmade_png(20_000, 20_000, 1, 0, None), {"too_large"})

    # -- EXIF orientation: all eight values; 1 is upright and clean
    for orientation in range(1, 9):
        image = picture(next(seeds))
        options = {"exif": exif_with_orientation(orientation)}
        if orientation == 6:
            options["icc_profile"] = SRGB_PROFILE
        codes = set() if orientation == 1 else {"exif_rotated"}
        put(f"orientation_{orientation}.jpg", jpeg_bytes(image, **options), codes)
    put("orientation_6.png", png_bytes(picture(next(seeds)), exif=exif_with_orientation(6)), {"exif_rotated"})

    # -- low resolution: too few pixels; a side below the smallest bucket
    put("low_resolution_small.jpg", jpeg_bytes(picture(next(seeds), (300, 300))), {"low_resolution"})
    put("low_resolution_thin.png", png_bytes(picture(next(seeds), (480, 200))), {"low_resolution"})

    # -- duplicates: same bytes; same pixels in a different file; a resized recompressed copy
    original = picture(next(seeds))
    put("dup_original.png", png_bytes(original), set())
    put("dup_same_bytes.png", png_bytes(original), {"duplicate"})
    put("dup_same_pixels.png", png_bytes(original, dpi=(300, 300)), {"duplicate"})
    near = original.resize((540, 480), Image.Resampling.LANCZOS).resize(SIZE, Image.Resampling.LANCZOS)
    put("dup_zz_near.jpg", jpeg_bytes(near, quality=70), {"near_duplicate"})

    # -- blurry: unlike every other picture here
    put("blurry.jpg", jpeg_bytes(picture(next(seeds)).filter(ImageFilter.GaussianBlur(4))), {"blurry"})

    # -- colour modes and transparency
    put("mode_cmyk.jpg", jpeg_bytes(picture(next(seeds)).convert("CMYK")), {"color_mode"})
    put("mode_gray.jpg", jpeg_bytes(picture(next(seeds)).convert("L")), {"color_mode"})
    put("mode_palette.png", png_bytes(picture(next(seeds)).quantize(256)), {"color_mode"})
    deep = (np.asarray(picture(next(seeds)), dtype=np.uint16) * 257).astype(">u2")
    put("mode_16bit_rgb.png", handmade_png(SIZE[0], SIZE[1], 16, 2, [row.tobytes() for row in deep]), {"color_mode"})
    gray16 = np.asarray(picture(next(seeds)).convert("L"), dtype=np.uint16) * 257
    put("mode_16bit_gray.png", png_bytes(Image.fromarray(gray16)), {"color_mode"})
    rgba = picture(next(seeds)).convert("RGBA")
    rgba.paste((0, 0, 0, 0), (0, 0, 200, 200))
    put("alpha_rgba.png", png_bytes(rgba), {"alpha"})
    palette = picture(next(seeds)).quantize(255)
    palette.putpalette(palette.getpalette()[: 255 * 3] + [0, 0, 0])  # entry 255: the transparent one
    palette.paste(255, (0, 0, 100, 100))
    put("alpha_palette.png", png_bytes(palette, transparency=255), {"alpha", "color_mode"})

    # -- animated: APNG and animated WebP
    frames = [picture(next(seeds)) for _ in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "PNG", save_all=True, append_images=frames[1:])
    put("animated.png", buffer.getvalue(), {"animated"})
    frames = [picture(next(seeds)) for _ in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    put("animated.webp", buffer.getvalue(), {"animated"})

    # -- captions
    put("caption_missing.jpg", jpeg_bytes(picture(next(seeds))), {"missing_caption"}, caption=None)
    put("caption_empty.jpg", jpeg_bytes(picture(next(seeds))), {"empty_caption"}, caption="  \n\n")
    (subject / "caption_orphan.txt").write_text("a caption for nothing", encoding="utf-8")
    expected[f"{SUBJECT}/caption_orphan.txt"] = {"orphan_caption"}

    # -- a folder without <repeats>_: the folder is the finding, its image is fine
    misc = img / "misc"
    misc.mkdir()
    (misc / "inside.jpg").write_bytes(jpeg_bytes(picture(next(seeds))))
    (misc / "inside.txt").write_text("a photo", encoding="utf-8")
    expected["misc"] = {"bad_folder_name"}
    expected["misc/inside.jpg"] = set()
    return expected


def write_fuzzed_files(folder: Path) -> int:
    """12 randomly damaged copies (bytes changed, a third also cut) of a small JPEG, PNG,
    WebP and BMP each; returns how many files it wrote."""
    rng = np.random.default_rng(5)
    sources = {".jpg": jpeg_bytes(picture(1, (96, 80))), ".png": png_bytes(picture(2, (96, 80)))}
    for extension, image_format, options in ((".webp", "WEBP", {"quality": 80}), (".bmp", "BMP", {})):
        buffer = io.BytesIO()
        picture(3 if image_format == "WEBP" else 4, (96, 80)).save(buffer, image_format, **options)
        sources[extension] = buffer.getvalue()
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for extension, data in sources.items():
        for trial in range(12):
            damaged = bytearray(data)
            if trial % 3 == 0:
                damaged = damaged[: rng.integers(1, len(damaged))]
            for _ in range(int(rng.integers(1, 8))):
                damaged[int(rng.integers(0, len(damaged)))] = int(rng.integers(0, 256))
            (folder / f"f{count:03d}{extension}").write_bytes(bytes(damaged))
            count += 1
    return count


SILENT_JPEG_DAMAGE = ("corrupt_garbage_in_scan.jpg", "corrupt_end_marker_in_middle.jpg")


def copy_corpus(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
