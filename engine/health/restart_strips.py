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

# A cast on texture leaves texture inside the strip, except where it pushes the picture
# to 0 or 255: CLIPPED_INSIDE of its edge pixels with a channel there (five times the
# share around it) stands for texture.
CLIPPED_INSIDE = 0.25
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
    edges_in = np.concatenate(inner_top + inner_bottom)
    if evidence.grainy(around) and (evidence.grainy(edges_in) or evidence.clipped(edges_in).mean() >= CLIPPED_INSIDE
                                    > evidence.clipped(around).mean() * 5):
        return True  # texture cast (a flat bar over text is grainy around, not inside; a cast flattens where it clips)
    # Flat content: a bar of a new colour is ordinary; a cast carries the colours around it.
    edges_out = np.concatenate(outer_top + outer_bottom)
    return evidence.shared_cast(edges_in, edges_out) or (
        x > 0 and evidence.garbage_at(pixels, top, x, mcu_height, mcu_width)
        and evidence.vertical_seam(pixels, top, mcu_height, x))


# A cast strip: the last MCU of a restart interval is the picture above and below it plus
# one offset of at least MIN_CAST in some channel (the same offset at its top and its
# bottom edge, to the evidence module's OFFSET_TOLERANCE), and so are the MCUs before it in the interval, back to
# where the damage starts: CAST_FIT of their pixels on average (a line crossing one MCU
# fits less) and in the first, the upper half of each MCU against the row above the strip and the lower half
# against the row below (so a bar with an outline or a fill of its own does not fit). The
# strip starts on an MCU: the MCU before it fits the offset for at most SHARP_START of
# its pixels unless it is garbage (its pixels fit neither the offset nor the picture
# around for more than WHOLE together), and the first EDGE_COLUMNS columns of its own
# first MCU fit for half or more (a bar that happens to start mid-MCU fits neither
# way), and the interval's end is
# its end: the MCU after it fits the offset for less than half.
MIN_CAST = 12
CAST_FIT = 0.8
SHARP_START = 0.2
WHOLE = 0.9
EDGE_COLUMNS = 2
# A strip that ends at the right edge is also what a bar of one new colour looks like
# there: it counts only when the offset carries structure through it (MIN_STRUCTURE
# pixels per sampled row that differ from the strip's surroundings by STRUCTURE_STEP:
# a line or a shape's edge crossing it) or it starts after an MCU of garbage (one that
# fits neither the offset nor the picture around it).
STRUCTURE_STEP = 24
MIN_STRUCTURE = 4


def first_cast_strip_row(pixels: np.ndarray, mcu_height: int, mcu_width: int, interval: int) -> int:
    """The top row of the first MCU row where a restart interval ends in a colour-cast
    strip, or -1. Flat content: a cast over one plain colour is just a strip of a new
    colour to `first_strip_row`, which asks for colours the picture around lacks."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    pixels = pixels[:, :, :3]
    height, width = pixels.shape[:2]
    rows, columns = height // mcu_height, width // mcu_width  # whole MCUs only
    per_row = -(-width // mcu_width)
    if rows < 3 or columns < MIN_STRIP_MCUS or interval < MIN_STRIP_MCUS:
        return -1
    # Every interval's last MCU with a whole MCU row above and below it: the median step
    # across its top edge and across its bottom edge, all at once.
    last = np.arange(interval, rows * per_row + 1, interval) - 1
    last = last[(last // per_row >= 1) & (last // per_row < rows - 1) & (last % per_row < columns)]
    if not len(last):
        return -1
    top = last // per_row * mcu_height
    span = last[:, None] % per_row * mcu_width + np.arange(mcu_width)
    step_top = np.median(pixels[top[:, None], span].astype(np.int16) - pixels[top[:, None] - 1, span], axis=1)
    bottom = top + mcu_height
    step_bottom = np.median(pixels[bottom[:, None] - 1, span].astype(np.int16) - pixels[bottom[:, None], span], axis=1)
    offset = np.round((step_top + step_bottom) / 2)
    cast = ((np.abs(step_top).max(axis=1) >= MIN_CAST) & (np.abs(offset).max(axis=1) >= MIN_CAST)
            & (np.abs(step_top - step_bottom).max(axis=1) <= evidence.OFFSET_TOLERANCE))
    for end, strip_offset in zip(last[cast].tolist(), offset[cast]):
        start = _cast_start(pixels, end, strip_offset, interval, per_row, columns, mcu_height, mcu_width)
        if start >= 0:
            return start // per_row * mcu_height
    return -1


def _cast_start(pixels, end, offset, interval, per_row, columns, mcu_height, mcu_width) -> int:
    """The first MCU of the cast strip that ends with MCU `end`, or -1 when there is none."""
    def fit(mcu: int, strip: range, strip_offset=offset, beside=None) -> float:
        return _offset_fit(pixels, mcu, strip, strip_offset, per_row, mcu_height, mcu_width, beside)

    first = max(0, end - interval + 1)
    fits, start, total = {}, -1, 0.0
    for mcu in range(end, first - 1, -1):
        if mcu % per_row >= columns:
            break
        fits[mcu] = fit(mcu, range(mcu, end + 1))
        total += fits[mcu]
        if end + 1 - mcu < MIN_STRIP_MCUS or total < CAST_FIT * (end + 1 - mcu):
            continue
        if _offset_fit(pixels, mcu, range(mcu, end + 1), offset, per_row, mcu_height, mcu_width,
                       columns=EDGE_COLUMNS) < 0.5:
            continue  # its left edge is not the MCU's: a bar that starts mid-MCU
        before = mcu - 1
        if before >= 0 and before % per_row < columns:
            share = fit(before, range(before, end + 1))
            if share > SHARP_START and share + fit(before, range(before, end + 1), np.zeros(3)) >= WHOLE:
                continue  # the MCU before it is part picture, part strip: a bar that starts mid-MCU
        start = mcu  # the longest strip that fits wins
    if start < 0:
        return -1
    after = end + 1
    if (after % per_row < columns and after // per_row < pixels.shape[0] // mcu_height
            and fit(after, range(after, after + 1)) >= 0.5):
        return -1  # the strip goes on past the interval's end: content, not damage
    if (end + 1) % per_row == 0 or (end + 1) % per_row >= columns:
        around = []
        for mcu in range(start, end + 1):
            fit(mcu, range(start, end + 1), beside=around)
        around = np.concatenate(around).astype(np.int16)
        structure = int((np.abs(around - np.median(around, axis=0)).max(axis=-1) > STRUCTURE_STEP).sum())
        before = start - 1
        garbage = (before >= 0 and before % per_row < columns
                   and fit(before, range(before, before + 1), np.zeros(3)) < 0.5)
        samples = len(around) // (mcu_width * (end + 1 - start))
        if structure < MIN_STRUCTURE * samples and not garbage:
            return -1
    return start


def _offset_fit(pixels, mcu, strip, offset, per_row, mcu_height, mcu_width, beside=None, columns=None) -> float:
    """The share of MCU `mcu`'s pixels that are the picture beside `strip` plus `offset`:
    its upper half against the row above and its lower half against the row below, or all
    of it against either one (a strip along a shape's edge has the shape on one side);
    rows where the MCU above or below is in the strip too are not read, nor every other
    row of tall MCUs; only its first `columns` columns when given."""
    row, column = divmod(mcu, per_row)
    y, x = row * mcu_height, column * mcu_width
    if columns:
        mcu_width = columns
    above = y > 0 and mcu - per_row not in strip
    below = y + mcu_height < pixels.shape[0] and mcu + per_row not in strip
    if not (above or below):
        return 0.0
    inner = pixels[y:y + mcu_height:2 if mcu_height > 8 else 1, x:x + mcu_width].astype(np.int16)
    upper = np.arange(y, y + mcu_height, 2 if mcu_height > 8 else 1) < y + mcu_height // 2
    references = [np.where((upper & above) | (not below), y - 1, y + mcu_height)]
    if above and below:
        references += [np.full(len(upper), y - 1), np.full(len(upper), y + mcu_height)]
    best = 0.0
    for reference_row in references:
        outer = pixels[reference_row, x:x + mcu_width].astype(np.int16)
        expected = outer + offset
        fits = evidence.fits_offset(inner, expected).all(axis=-1)
        best = max(best, float(fits.mean()))
        if beside is not None:
            beside.append(outer.reshape(-1, outer.shape[-1]))
            beside = None  # the split reference's rows stand for the MCU's surroundings
    return best
