"""Bake the EXIF orientation into the pixels, so every tool sees the image the same way.

sd-scripts ignores the Orientation tag (its issue #1316), so a phone photo that every
viewer shows upright trains sideways. The fix rotates the pixels and removes the tag;
the untouched original goes to the quarantine first, and undo puts it back.

Quality: a JPEG is re-encoded with its own quantization tables and chroma subsampling
(Pillow's `quality="keep"` only works for an image that was not transformed), which is
as close to the original as a decode/encode round trip gets; PNG and lossless WebP are
lossless; a lossy WebP is re-encoded at quality 95 (its quality is not recorded).
"""
from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, JpegImagePlugin

from engine.atomic import atomic_path
from engine.errors import LoradeckError
from engine.health.image_checks import EXIF_ORIENTATION
from engine.dataset.quarantine import QuarantineEntry, keep_original, next_action, record

# The IJG standard luminance table that libjpeg scales by the quality setting.
STANDARD_LUMINANCE = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)
LOSSY_WEBP_QUALITY = 95


@dataclass(frozen=True)
class ExifFix:
    path: str  # relative to root
    original: str  # where the original is kept (relative to root)
    note: str  # how it was re-encoded


def estimate_jpeg_quality(quantization: dict[int, list[int]]) -> int | None:
    """The libjpeg quality (1-100) whose scaled standard table is closest to this luminance table."""
    table = quantization.get(0)
    if not table or len(table) != 64:
        return None
    actual = sorted(table)

    def distance(quality: int) -> int:
        scale = 5000 // quality if quality < 50 else 200 - 2 * quality
        scaled = sorted(min(255, max(1, (value * scale + 50) // 100)) for value in STANDARD_LUMINANCE)
        return sum(abs(a - b) for a, b in zip(actual, scaled))

    return min(range(1, 101), key=distance)


def _webp_is_lossless(path: Path) -> bool:
    """A WebP whose image chunk is VP8L (lossless) rather than VP8 (lossy)."""
    data = path.read_bytes()
    offset = 12
    while offset + 8 <= len(data):
        fourcc, size = data[offset:offset + 4], struct.unpack("<I", data[offset + 4:offset + 8])[0]
        if fourcc in (b"VP8L", b"VP8 "):
            return fourcc == b"VP8L"
        offset += 8 + size + (size & 1)
    return False


def _save_options(path: Path, image: Image.Image) -> tuple[str, dict[str, Any], str]:
    """(format, Pillow save options, note) that keep the file as close to the original as possible."""
    options: dict[str, Any] = {}
    if image.info.get("icc_profile"):
        options["icc_profile"] = image.info["icc_profile"]
    if image.info.get("dpi"):
        options["dpi"] = image.info["dpi"]
    if image.format in ("JPEG", "MPO"):
        options["qtables"] = image.quantization
        sampling = JpegImagePlugin.get_sampling(image)
        if sampling != -1:
            options["subsampling"] = sampling
        options["progressive"] = bool(image.info.get("progressive") or image.info.get("progression"))
        quality = estimate_jpeg_quality(image.quantization)
        about = f" (about quality {quality})" if quality else ""
        return "JPEG", options, f"JPEG re-encoded with its own quantization tables{about}"
    if image.format == "PNG":
        if ";16" in str(image.tile[0].args if image.tile else ""):
            raise LoradeckError(f"{path}: 16-bit PNG; not fixed automatically (Pillow would store 8 bits)")
        from PIL.PngImagePlugin import PngInfo

        text = PngInfo()
        for key, value in getattr(image, "text", {}).items():
            text.add_text(key, value)
        options["pnginfo"] = text
        return "PNG", options, "PNG rewritten losslessly"
    if image.format == "WEBP":
        if _webp_is_lossless(path):
            options["lossless"] = True
            return "WEBP", options, "WebP rewritten losslessly"
        options["quality"] = LOSSY_WEBP_QUALITY
        return "WEBP", options, f"lossy WebP re-encoded at quality {LOSSY_WEBP_QUALITY}"
    raise LoradeckError(f"{path}: {image.format} images are not fixed automatically")


def fix_orientation(root: Path, relative: str, action: int | None = None) -> ExifFix:
    """Rotate the pixels upright, drop the Orientation tag, keep the original in the quarantine
    (recorded as part of the undoable `action`, by default a new one)."""
    # refuse before touching the image when the undo record cannot be kept
    action = next_action(root) if action is None else action
    source = root / relative
    try:
        with Image.open(source) as image:
            if image.getexif().get(EXIF_ORIENTATION, 1) in (None, 0, 1):
                raise LoradeckError(f"{relative}: no EXIF orientation to fix")
            if image.format != "MPO" and getattr(image, "n_frames", 1) > 1:
                raise LoradeckError(f"{relative}: animated; not fixed automatically")
            file_format, options, note = _save_options(source, image)
            upright = ImageOps.exif_transpose(image)  # removes the tag (and XMP's) from its info
    except LoradeckError:
        raise
    except Exception as error:
        raise LoradeckError(f"{relative}: cannot fix the orientation ({error})") from None
    for key in ("exif", "xmp"):
        if upright.info.get(key):
            options[key] = upright.info[key]
    with atomic_path(source) as temporary:
        upright.save(temporary, format=file_format, **options)
        stored = keep_original(root, relative, "exif_rotated")
    fixed = source.stat()
    record(root, [QuarantineEntry("original", relative, stored, "exif_rotated", time.time(),
                                  fixed.st_size, fixed.st_mtime_ns, action)])
    return ExifFix(relative, stored, note)
