"""Damage in a JPEG's entropy-coded data that libjpeg decodes without a warning.

Two witnesses, the file first when it can speak: a picture that ends before its scan
does (`engine.health.scan_end`) is damaged for certain, and the pixels then only say
where (`engine.health.damage_locator`: from there on the picture comes out delayed);
otherwise the pixels alone must show it (`engine.health.pixel_damage`), with the
restart interval from the header (`engine.health.jpeg_header`) saying where strips end.
"""
from __future__ import annotations

import numpy as np

from engine.health.damage_locator import delayed_seam_row
from engine.health.jpeg_header import restart_interval
from engine.health.pixel_damage import damaged_row, likeliest_damaged_row
from engine.health.scan_end import picture_ends_early

# Damage is certain but no seam in the pixels says where it starts.
ROW_UNKNOWN = -1


def silent_damage_row(data: bytes, pixels: np.ndarray, mcu_height: int, mcu_width: int) -> int | None:
    """The first pixel row of silent damage, ROW_UNKNOWN when the file is damaged but the
    pixels do not say where, None when nothing shows. `pixels` as decoded from `data`."""
    row = damaged_row(pixels, mcu_height, mcu_width, restart_interval=restart_interval(data))
    if row >= 0:
        return row
    if picture_ends_early(data, pixels, mcu_height, mcu_width):
        row = delayed_seam_row(pixels, mcu_height, mcu_width)
        return row if row >= 0 else likeliest_damaged_row(pixels, mcu_height, mcu_width)
    return None
