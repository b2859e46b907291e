"""What a JPEG's header says that Pillow does not expose: the restart interval, and
where each marker segment is (`engine.health.scan_end` finds the scan's data from them).

With restart markers the decoder is back in step at each marker, so silent damage ends
where the damaged restart interval ends: knowing the interval (the DRI segment, in MCUs)
tells the pixel checks exactly where a damaged strip must stop. Reads the marker segments
before the first scan only.
"""
from __future__ import annotations

from typing import Iterator

START_OF_IMAGE = b"\xff\xd8"
DEFINE_RESTART_INTERVAL = 0xDD
START_OF_SCAN = 0xDA
# Markers that stand alone, with no length after them.
STANDALONE = {0x01, *range(0xD0, 0xD8)}


def marker_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, position, length) of each marker segment with a length, in file order,
    from the start of the image to the first scan's header (the last one given); stops
    early at bytes that are not a marker (a damaged header)."""
    if not data.startswith(START_OF_IMAGE):
        return
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in STANDALONE:
            position += 2
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        yield marker, position, length
        if marker == START_OF_SCAN:
            return
        position += 2 + length


def restart_interval(data: bytes) -> int:
    """MCUs per restart interval (the DRI segment before the first scan), 0 when none or unreadable."""
    for marker, position, length in marker_segments(data):
        if marker == DEFINE_RESTART_INTERVAL and length >= 4 and position + 6 <= len(data):
            return int.from_bytes(data[position + 4:position + 6], "big")
    return 0
