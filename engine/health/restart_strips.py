"""Silent JPEG damage in a file with restart markers: a strip that ends where its restart
interval ends.

The decoder is back in step at each restart marker, so damage runs from the damaged MCU
to the end of its restart interval (the file's DRI segment says how many MCUs that is),
in raster order: a strip one MCU row high that may end mid-row, or wrap into the next
row. Its top edge (against the picture above) and its bottom edge (against the picture
below) step; the MCUs before it on its row and after it do not. Content makes such a
strip only by a coincidence of grid, length and end, and the pixels must still say damage
(`engine.health.damage_evidence`). Numpy only, on the stepping segments the seam pass
already has and a few rows around each candidate.
"""
from __future__ import annotations

import numpy as np

from engine.health import damage_evidence as evidence
from engine.health.mcu_seams import ARM_SHARE, QUIET_SHARE, SEGMENT, UNSEEN_SHARE

# A strip of fewer MCUs is too short to tell from content.
MIN_STRIP_MCUS = 4
# MCUs before the strip on its row, and after it, that must be quiet.
QUIET_MCUS = 4


def first_strip_row(pixels: np.ndarray, steps: np.ndarray, mcu_height: int, mcu_width: int, interval: int) -> int:
    """The top row of the first MCU row where a damaged strip starts, or -1.

    `steps[b, s]`: segment s of the boundary below MCU row b steps (`boundary_steps`);
    `interval`: MCUs per restart interval."""
    per_mcu = max(1, mcu_width // SEGMENT)
    columns = steps.shape[1] // per_mcu  # whole MCUs only: the last partial one says nothing
    mcu_rows = len(steps) + 1
    per_row = -(-pixels.shape[1] // mcu_width)
    if columns < MIN_STRIP_MCUS or interval < MIN_STRIP_MCUS:
        return -1
    # Stepping segments at each MCU's top and bottom edge, in raster order; the picture's
    # own top and bottom edge and a partial last column count as unknown (0 of 0).
    grid = steps[:, :columns * per_mcu].reshape(len(steps), columns, per_mcu).sum(axis=-1)
    top = np.zeros((mcu_rows, per_row)), np.zeros((mcu_rows, per_row))
    bottom = np.zeros((mcu_rows, per_row)), np.zeros((mcu_rows, per_row))
    top[0][1:, :columns], top[1][1:, :columns] = grid, per_mcu
    bottom[0][:-1, :columns], bottom[1][:-1, :columns] = grid, per_mcu
    stepping = (top[0] + bottom[0]).ravel()
    counted = (top[1] + bottom[1]).ravel()
    top_sum = np.concatenate([[0], np.cumsum(top[0].ravel())]), np.concatenate([[0], np.cumsum(top[1].ravel())])
    bottom_sum = np.concatenate([[0], np.cumsum(bottom[0].ravel())]), np.concatenate([[0], np.cumsum(bottom[1].ravel())])
    total = mcu_rows * per_row
    start = np.arange(total)
    end = np.minimum((start // interval + 1) * interval, total)
    # The strip's top edge: its first row's worth of MCUs; its bottom edge: its last.
    top_end = np.minimum(end, start + per_row)
    bottom_start = np.maximum(start, end - per_row)
    top_seen = top_sum[1][top_end] - top_sum[1][start]
    bottom_seen = bottom_sum[1][end] - bottom_sum[1][bottom_start]
    stepped = (top_sum[0][top_end] - top_sum[0][start]) + (bottom_sum[0][end] - bottom_sum[0][bottom_start])
    # Most of both edges inside the picture: against the picture's own edge a strip is a
    # title bar or a footer.
    inside = ((top_seen * 2 >= (top_end - start) * per_mcu) & (bottom_seen * 2 >= (end - bottom_start) * per_mcu))
    shaped = ((end - start >= MIN_STRIP_MCUS) & inside
              & (stepped >= ARM_SHARE * (top_seen + bottom_seen)))
    # Quiet before it on its row (the start is where stepping begins) and after its end.
    all_sum = np.concatenate([[0], np.cumsum(stepping)]), np.concatenate([[0], np.cumsum(counted)])
    row_start = start // per_row * per_row
    quiet_from = np.maximum(row_start, start - QUIET_MCUS)
    before = (all_sum[0][start] - all_sum[0][quiet_from]) <= QUIET_SHARE * (all_sum[1][start] - all_sum[1][quiet_from])
    quiet_to = np.minimum((end - 1) // per_row * per_row + per_row, end + QUIET_MCUS)
    after = (all_sum[0][quiet_to] - all_sum[0][end]) <= QUIET_SHARE * (all_sum[1][quiet_to] - all_sum[1][end])
    # One candidate per interval: the longest strip that has the shape.
    candidates = np.flatnonzero(shaped & before & after & (start % per_row < columns))
    if not len(candidates):
        return -1
    first_of_interval = np.unique(candidates // interval, return_index=True)[1]
    for mcu in candidates[first_of_interval]:
        if _strip_damaged(pixels, int(mcu), int(end[mcu]), per_row, mcu_height, mcu_width):
            return int(mcu // per_row * mcu_height)
    return -1


def _strip_damaged(pixels: np.ndarray, start: int, end: int, per_row: int, mcu_height: int, mcu_width: int) -> bool:
    """The pixels of the strip [start, end) (MCUs, raster order) say damage."""
    inner_top, outer_top, inner_bottom, outer_bottom, inside = [], [], [], [], []
    height, width = pixels.shape[:2]
    for row in range(start // per_row, (end - 1) // per_row + 1):
        left = max(start, row * per_row) - row * per_row
        right = min(end, (row + 1) * per_row) - row * per_row
        y, span = row * mcu_height, slice(left * mcu_width, min(width, right * mcu_width))
        inside.append(pixels[y:y + mcu_height:max(1, mcu_height // 4), span].reshape(-1, pixels.shape[-1]))
        if row == start // per_row and y > 0:
            inner_top.append(pixels[y, span]), outer_top.append(pixels[y - 1, span])
        if row == (end - 1) // per_row and y + mcu_height < height:
            inner_bottom.append(pixels[y + mcu_height - 1, span]), outer_bottom.append(pixels[y + mcu_height, span])
    outer = outer_top + outer_bottom
    if not outer:
        return False
    inside, around = np.concatenate(inside), np.concatenate(outer)
    if evidence.unseen_share(inside, around) < UNSEEN_SHARE:
        return False
    top, x = start // per_row * mcu_height, start % per_row * mcu_width
    if evidence.grainy(around):
        return True
    # Flat content: a bar of a new colour is ordinary; a cast carries the colours around it.
    edges_in, edges_out = np.concatenate(inner_top + inner_bottom), np.concatenate(outer_top + outer_bottom)
    return evidence.shared_cast(edges_in, edges_out) or (
        x > 0 and evidence.garbage_at(pixels, top, x, mcu_height, mcu_width)
        and evidence.vertical_seam(pixels, top, mcu_height, x))
