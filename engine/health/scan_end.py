"""Whether a JPEG's picture ends before its scan's data does: bytes lost or gained upstream.

libjpeg reads MCUs until the picture is full and then stops; what is left of the scan it
drops without a word when it fits in its bit buffer (up to about seven bytes). Damage in
the entropy-coded data that puts the decoder off by a few cheap MCUs (flat content spends
a few bits on each) often ends that way: the picture comes out shifted and cast, and the
stream ends a byte or more after the last MCU. A whole file never does: its encoder pads
the last byte with 1-bits and stops, so every byte of the scan is needed. Cutting the
scan's last byte and decoding again tells the two apart with libjpeg's own warning: a
whole file now runs out of data ("premature end of data segment"), a file whose picture
ended early decodes as before. The decode is the cheapest libjpeg offers (grey, 1/8
scale): the entropy-coded data is read in full either way.
"""
from __future__ import annotations

import re

import numpy as np
import simplejpeg

from engine.health.jpeg_header import START_OF_SCAN, marker_segments

# Baseline and extended sequential Huffman frames: one scan holds every component, so
# its end is the picture's end. Progressive and arithmetic-coded files are not probed.
SEQUENTIAL_FRAMES = {0xC0, 0xC1}
# Any marker but a stuffed zero or a restart marker ends the entropy-coded data.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")
# The scan is probed only when the picture's last MCU is flat (its pixels span at most
# FLAT_RANGE levels in each channel): the data left over is what the last MCUs cost, and
# where they are busy a lost MCU leaves more than libjpeg's bit buffer holds, which
# libjpeg then reports itself. Measured: every damaged scan that ended early had a last
# MCU of one colour exactly, and none of the photos' did (grain alone spans 4 or more).
FLAT_RANGE = 2


def picture_ends_early(data: bytes, pixels: np.ndarray, mcu_height: int, mcu_width: int) -> bool:
    """True when libjpeg completes the picture without the scan's last byte. `pixels` are
    the picture as decoded from `data`."""
    corner = pixels[-(pixels.shape[0] % mcu_height or mcu_height):, -(pixels.shape[1] % mcu_width or mcu_width):]
    corner = corner.reshape(-1, corner.shape[-1] if corner.ndim == 3 else 1)[:, :3]
    if int((corner.max(axis=0).astype(np.int16) - corner.min(axis=0)).max()) > FLAT_RANGE:
        return False
    scan = _scan_span(data)
    if scan is None:
        return False
    start, end = scan
    last = end - 1
    while last - 1 > start and data[last - 1] == 0xFF and 0xD0 <= data[last] <= 0xD7:
        last -= 2  # a restart marker after the last interval (some encoders write one)
    if last <= start or (data[last] == 0x00 and data[last - 1] == 0xFF):
        return False  # a last byte of all 1-bits may be padding an encoder wrote whole
    try:
        simplejpeg.decode_jpeg(data[:last] + data[last + 1:], colorspace="GRAY", fastdct=True, strict=True,
                               min_height=1, min_width=1)
    except ValueError:
        return False  # the decoder needed that byte: the picture and the scan end together
    return True


def _scan_span(data: bytes) -> tuple[int, int] | None:
    """Where the entropy-coded data of a sequential JPEG's only scan starts and ends (at
    the first marker after it)."""
    sequential = False
    for marker, position, length in marker_segments(data):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            sequential = marker in SEQUENTIAL_FRAMES
        if marker == START_OF_SCAN:
            if not sequential:
                return None
            start = position + 2 + length
            found = _SCAN_END.search(data, start)
            # The first marker after the scan's data: the end of the image in a whole
            # file; in a damaged one perhaps bytes that look like a marker, where libjpeg
            # stops reading too (and the probe then asks whether it needed the byte before).
            return (start, found.start()) if found else None
    return None
