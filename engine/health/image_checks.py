"""Per-image checks that need the pixels (engine.health.workers runs them on every core).

`inspect_image(path)` decodes one file and returns `ImageFacts`: either the one error
that makes it unusable (corrupt, unreadable, too_large) or what the dataset-wide checks
need (size, EXIF orientation, colour mode, transparency, frames, a pixel hash, a
perceptual hash and a sharpness score). Facts are plain data: they are cached on disk
and compared across the dataset by `engine.health.scan`.

JPEGs are decoded strictly with libjpeg-turbo (simplejpeg, strict=True), the way Bad
Peggy and `jpeginfo -c` do: Pillow decodes a JPEG with garbage in its entropy-coded
data or an end marker in the middle without complaint, and the trainer then learns
from grey smears or dies on it. Light module: PIL, numpy, simplejpeg, imagehash, xxhash.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
import simplejpeg
import xxhash
from PIL import Image, UnidentifiedImageError

from engine.dataset.folders import IMAGE_EXTENSIONS
from engine.errors import first_line
from engine.health.file_access import FileTooLarge, NotRegularFile, read_regular_file, reason
from engine.health.report import MAX_PIXELS  # Pillow's decompression-bomb threshold
from engine.health.silent_damage import ROW_UNKNOWN, silent_damage

# Image files the trainer skips: reported as unreadable so nobody expects them trained.
OTHER_IMAGE_EXTENSIONS = (
    ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".psd",
    ".svg", ".ico", ".tga", ".dng", ".cr2", ".nef", ".arw", ".raw",
)
CANDIDATE_EXTENSIONS = IMAGE_EXTENSIONS + OTHER_IMAGE_EXTENSIONS
# Pillow's format names that may sit behind each trainer extension (MPO: camera JPEGs).
EXTENSION_FORMATS = {
    ".jpg": ("JPEG", "MPO"), ".jpeg": ("JPEG", "MPO"), ".png": ("PNG",),
    ".webp": ("WEBP",), ".bmp": ("BMP", "DIB"),
}
SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"RIFF": "WEBP", b"BM": "BMP"}

# Sharpness and the perceptual hash are measured on a copy this big, so that the
# scores of a 12 MP photo and a 1 MP crop are comparable.
WORKING_SIDE = 512
EXIF_ORIENTATION = 0x0112
# The transpose that makes each Orientation value upright (as PIL.ImageOps.exif_transpose).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}


@dataclass
class ImageFacts:
    """What one decode tells about a file. `error_code` empty means the file is usable."""

    error_code: str = ""  # "corrupt", "unreadable" or "too_large"
    error: str = ""
    format: str = ""
    width: int = 0  # as stored, before the EXIF orientation
    height: int = 0
    orientation: int = 1
    color_mode: str = ""  # why the colour mode is unusual; "" for 8-bit RGB/RGBA
    transparent_fraction: float = 0.0
    frames: int = 1
    pixel_hash: str = ""
    perceptual_hash: str = ""  # 64-bit pHash as 16 hex digits
    sharpness: float = -1.0  # variance of the Laplacian on the working copy; -1 unknown
    damaged_row: int = -1  # first pixel row of damage the decoder did not report; -1 none

    @property
    def upright_size(self) -> tuple[int, int]:
        """The size the trainer sees: orientations 5-8 turn the image a quarter."""
        if self.orientation in (5, 6, 7, 8):
            return self.height, self.width
        return self.width, self.height


class _Damaged(Exception):
    """A decoder reported damage; the message says what libjpeg or Pillow found, `row`
    the first pixel row lost (-1 unknown)."""

    def __init__(self, message: str, row: int = -1):
        super().__init__(message)
        self.row = row


def _error(code: str, message: str, **known) -> ImageFacts:
    return ImageFacts(error_code=code, error=message, **known)


def inspect_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> ImageFacts:
    """Decode one image fully and report what it is. Never raises for a bad file."""
    path = Path(path)
    extension = path.suffix.lower()
    if extension not in IMAGE_EXTENSIONS:
        return _error("unreadable", f"{extension} files are not loaded by the trainer; convert to PNG or JPEG")
    try:
        data = read_regular_file(path)
    except FileTooLarge as error:
        return _error("too_large", f"{error.strerror}: not decoded")
    except NotRegularFile as error:
        return _error("unreadable", error.strerror)
    except OSError as error:
        return _error("unreadable", f"cannot read the file: {reason(error)}")
    if not data:
        return _error("corrupt", "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bomb warnings: the size is checked below
            return _inspect_data(data, extension, max_pixels)
    except Exception as error:  # the scan must survive any file; the decoder's word is the finding
        return _error("corrupt", f"the decoder failed: {first_line(error)}")


def _inspect_data(data: bytes, extension: str, max_pixels: int) -> ImageFacts:
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        count = f"{int(pixels.group(1)) / 1e6:.0f} megapixels" if pixels else "too many pixels"
        return _error("too_large", f"{count}: decoding would exhaust memory (decompression bomb)")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        return _unidentified(data, extension, error)
    with image:
        expected = EXTENSION_FORMATS[extension]
        if image.format not in expected:
            return _error("unreadable", f"the content is {image.format} but the name says {extension}")
        width, height = image.size
        if width * height > max_pixels:
            return _error(
                "too_large",
                f"{width}×{height} ({width * height / 1e6:.0f} megapixels): decoding would "
                f"exhaust memory (decompression bomb); the limit is {max_pixels / 1e6:.0f} megapixels",
                format=image.format, width=width, height=height,
            )
        color_mode = _unusual_color_mode(image)  # before load(), which drops the tile
        raw = None
        try:
            if image.format in ("JPEG", "MPO"):
                raw = _decode_jpeg_strictly(data, image)
                damage = silent_damage(data, raw, *_mcu_size(image))
                if damage is not None:
                    return _error("corrupt", _silent_damage_message(damage, height), format=image.format,
                                  width=width, height=height, damaged_row=damage.row)
                pixels = _image_over(raw)
            else:
                pixels = _decode_with_pillow(data, image)
        except _Damaged as error:
            return _error("corrupt", str(error), format=image.format, width=width, height=height,
                          damaged_row=error.row)
        return _describe(image, pixels, color_mode, raw)


def _silent_damage_message(damage, height: int) -> str:
    how = "lost or altered bytes that libjpeg decodes without a warning"
    if not damage.ends_early:
        return (f"damaged from row {damage.row} of {height} down: the picture below is shifted, "
                f"colour-cast or grey ({how})")
    if damage.row == ROW_UNKNOWN:
        return f"damaged: the picture ends before its data does ({how})"
    return (f"damaged from row {damage.row} of {height} down, where the picture comes out shifted: "
            f"it ends before its data does ({how})")


def _unidentified(data: bytes, extension: str, error: BaseException) -> ImageFacts:
    """A file Pillow cannot open: a damaged header, or not an image at all."""
    for signature, name in SIGNATURES.items():
        if data.startswith(signature):
            if name not in EXTENSION_FORMATS[extension]:
                return _error("unreadable", f"the content looks like {name} but the name says {extension}")
            reason = "Pillow cannot identify it" if isinstance(error, UnidentifiedImageError) else first_line(error)
            return _error("corrupt", f"damaged {name} header: {reason}")
    return _error("unreadable", f"not an image (the content is not {EXTENSION_FORMATS[extension][0]})")


def _decode_jpeg_strictly(data: bytes, image: Image.Image) -> np.ndarray:
    # RGBX is Pillow's own memory layout for RGB, so the pixels are shared, not copied.
    colorspace = "GRAY" if image.mode == "L" else "RGBX"
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace=colorspace, fastdct=True, fastupsample=True, strict=True)
    except ValueError as error:
        message = first_line(error)
        if "unsupported" not in message.lower():
            raise _Damaged(f"libjpeg: {message}") from None
        # A JPEG variant simplejpeg's API lacks (e.g. 12-bit): Pillow decides.
        return np.asarray(_decode_with_pillow(data, image).convert("RGBX"))
    return pixels[:, :, 0] if pixels.shape[2] == 1 else pixels


def _mcu_size(image: Image.Image) -> tuple[int, int]:
    """Pixel rows and columns per minimum coded unit: 8 per sampling step of the busiest component."""
    layers = getattr(image, "layer", None) or []
    return (8 * max((vertical for _, _, vertical, _ in layers), default=1),
            8 * max((horizontal for _, horizontal, _, _ in layers), default=1))


def _image_over(pixels: np.ndarray) -> Image.Image:
    """A Pillow image sharing the memory of a contiguous L or RGBX array."""
    pixels = np.ascontiguousarray(pixels)
    mode = "L" if pixels.ndim == 2 else "RGBX"
    return Image.frombuffer(mode, (pixels.shape[1], pixels.shape[0]), pixels, "raw", mode, 0, 1)


def _decode_with_pillow(data: bytes, image: Image.Image) -> Image.Image:
    if image.format == "PNG":
        try:
            # verify() checks every chunk's CRC; load() alone skips ancillary damage.
            with Image.open(io.BytesIO(data)) as checked:
                checked.verify()
        except Exception as error:
            raise _damage(data, image, error) from None
    try:
        image.load()
    except Exception as error:
        raise _damage(data, image, error) from None
    return image


def _damage(data: bytes, image: Image.Image, error: BaseException) -> _Damaged:
    message = f"{image.format}: {first_line(error)}"
    row = _png_rows_present(data) if image.format == "PNG" else -1
    if not 0 <= row < image.size[1]:
        return _Damaged(message)
    return _Damaged(f"{message}; the pixels end at row {row} of {image.size[1]} "
                    "(a decoder that pads shows the rest flat)", row)


PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _png_rows_present(data: bytes) -> int:
    """How many whole pixel rows a cut PNG still holds (-1: not cut, interlaced, or the
    compressed data itself damaged, where rows before the break may be wrong too).

    Inflates the IDAT data up to where the file ends: what Pillow with
    LOAD_TRUNCATED_IMAGES would show before padding the rest."""
    import struct
    import zlib

    if data[12:16] != b"IHDR":
        return -1
    width, _height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if interlace or color_type not in PNG_CHANNELS:
        return -1
    row_bytes = 1 + (width * PNG_CHANNELS[color_type] * depth + 7) // 8
    inflater, inflated, at = zlib.decompressobj(), 0, 8
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind == b"IEND":
            return -1  # whole to the end: not cut
        if kind == b"IDAT":
            try:
                inflated += len(inflater.decompress(data[at + 8:at + 8 + length]))
            except zlib.error:
                return -1
        at += 12 + length
    return inflated // row_bytes


def _describe(image: Image.Image, pixels: Image.Image, color_mode: str, raw: np.ndarray | None) -> ImageFacts:
    """Facts of a file that decoded cleanly. `pixels` is the decoded first frame, `raw`
    the same pixels as an array when the decoder gave one (hashing it skips a copy)."""
    orientation = _orientation(image)
    working = _working_copy(pixels)
    upright = working.transpose(UPRIGHT[orientation]) if orientation in UPRIGHT else working
    return ImageFacts(
        format=image.format or "",
        width=image.size[0],
        height=image.size[1],
        orientation=orientation,
        color_mode=color_mode,
        transparent_fraction=_transparent_fraction(image),
        frames=_frame_count(image),
        pixel_hash=_pixel_hash(pixels, orientation, raw),
        perceptual_hash=_perceptual_hash(upright),
        sharpness=_sharpness(working),
    )


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block: the trainer's Pillow cannot read it either
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _unusual_color_mode(image: Image.Image) -> str:
    mode = image.mode
    if mode in ("RGB", "RGBA"):
        rawmode = image.tile[0].args if image.tile and isinstance(image.tile[0].args, str) else ""
        return "16 bits per channel" if ";16" in rawmode else ""
    names = {
        "CMYK": "CMYK", "P": "palette", "PA": "palette", "L": "grayscale", "LA": "grayscale",
        "1": "1-bit black and white", "I": "32-bit integer", "F": "floating point",
    }
    if mode.startswith("I;16"):
        return "16-bit grayscale (a plain Pillow convert to RGB clips it to white)"
    return names.get(mode, mode)


def _transparent_fraction(image: Image.Image) -> float:
    has_alpha = image.mode in ("RGBA", "LA", "PA")
    if not has_alpha and "transparency" not in image.info:
        return 0.0
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    return float(np.count_nonzero(alpha < 255)) / max(alpha.size, 1)


def _frame_count(image: Image.Image) -> int:
    # MPO (camera JPEGs with a preview) is not an animation: only PNG and WebP are.
    if image.format not in ("PNG", "WEBP"):
        return 1
    return int(getattr(image, "n_frames", 1) or 1)


def _pixel_hash(pixels: Image.Image, orientation: int, raw: np.ndarray | None) -> str:
    # Only equality matters (duplicates are the same pixels), not secrecy: XXH3's 128 bits
    # leave no practical chance of two different images colliding, at 30x SHA-256's speed
    # (0.05 ms for a 1024x768 picture against 1.8 ms, a quarter of the whole per-image cost).
    digest = xxhash.xxh3_128(f"{pixels.mode} {pixels.size} {orientation}".encode())
    if pixels.mode in ("P", "PA"):
        digest.update(bytes(pixels.getpalette() or []))
    digest.update(raw if raw is not None else pixels.tobytes())
    return digest.hexdigest()


def _perceptual_hash(gray: Image.Image) -> str:
    # pHash looks at a 32x32 Lanczos thumbnail; a box reduction to about 128 px first
    # makes that resize cheap without changing what the 32x32 holds.
    factor = max(gray.size) // 128
    return str(imagehash.phash(gray.reduce(factor) if factor > 1 else gray))


def _working_copy(pixels: Image.Image) -> Image.Image:
    """A grayscale copy whose longer side is at most WORKING_SIDE."""
    if pixels.mode.startswith("I") or pixels.mode == "F":
        # Pillow's convert("L") clips 16- and 32-bit values at 255: scale them instead.
        values = np.asarray(pixels, dtype=np.float32)
        top = 65535.0 if pixels.mode.startswith("I;16") else max(float(values.max()), 1.0)
        gray = Image.fromarray((values * (255.0 / top)).clip(0, 255).astype(np.uint8))
    else:
        # A box reduction by a whole factor first: the cheapest way to most of the way down.
        factor = max(pixels.size) // WORKING_SIDE
        if factor > 1 and pixels.mode in ("RGB", "RGBX", "L"):
            pixels = pixels.reduce(factor)
        gray = pixels if pixels.mode == "L" else pixels.convert("L")
    width, height = gray.size
    scale = WORKING_SIDE / max(width, height)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        gray = gray.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return gray


def _sharpness(gray: Image.Image) -> float:
    """Variance of the 4-neighbour Laplacian: low when edges are soft."""
    values = np.asarray(gray).astype(np.int16)  # the sum spans -1020..1020: int16 holds it
    if values.shape[0] < 3 or values.shape[1] < 3:
        return -1.0
    laplacian = (values[1:-1, :-2] + values[1:-1, 2:] + values[:-2, 1:-1] + values[2:, 1:-1]
                 - 4 * values[1:-1, 1:-1]).astype(np.int32)
    # The variance from exact integer sums (a square fits int32), divided once: the
    # correctly rounded value that a float64 numpy.var reaches to within an ulp, at a
    # third of its cost.
    count = laplacian.size
    total = int(laplacian.sum(dtype=np.int64))
    laplacian *= laplacian
    squares = int(laplacian.sum(dtype=np.int64))
    return (squares * count - total * total) / (count * count)
