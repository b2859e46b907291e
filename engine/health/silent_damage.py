"""Damage in a JPEG's entropy-coded data that libjpeg decodes without a warning.

Two witnesses, the file first when it can speak: a picture that ends before its scan
does (`engine.health.scan_end`) is damaged for certain, and the pixels then only say
where (`engine.health.damage_locator`: from there on the picture comes out delayed);
otherwise the pixels alone must show it (`engine.health.pixel_damage`), with the
restart interval from the header (`engine.health.jpeg_header`) saying where strips end.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.health.damage_locator import delayed_seam_row
from engine.health.jpeg_header import restart_interval
from engine.health.pixel_damage import damaged_row, likeliest_damaged_row
from engine.health.scan_end import picture_ends_early

# Damage is certain but no seam in the pixels says where it starts.
ROW_UNKNOWN = -1


@dataclass(frozen=True)
class SilentDamage:
    row: int  # the first pixel row of the damage, or ROW_UNKNOWN
    ends_early: bool  # proven by the file: the picture ends before its scan's data does


def silent_damage(data: bytes, pixels: np.ndarray, mcu_height: int, mcu_width: int) -> SilentDamage | None:
    """What shows of silent damage in a JPEG, None when nothing does. `pixels` as decoded
    from `data`; the MCU size from its sampling factors."""
    row = damaged_row(pixels, mcu_height, mcu_width, restart_interval=restart_interval(data))
    if row >= 0:
        return SilentDamage(row, ends_early=False)
    if picture_ends_early(data, pixels, mcu_height, mcu_width):
        row = delayed_seam_row(pixels, mcu_height, mcu_width)
        return SilentDamage(row if row >= 0 else likeliest_damaged_row(pixels, mcu_height, mcu_width), ends_early=True)
    return None
