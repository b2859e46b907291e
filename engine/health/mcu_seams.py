"""Seams on a JPEG's MCU grid shaped like silent damage, found from where the rows step.

Lost, gained or misread bits in the entropy-coded data put the decoder off by some MCUs
and off in every DC value: from the damaged MCU on, the picture is shifted sideways by
whole MCUs and colour-cast, often after an MCU or two of garbage. In raster order that
region starts mid-row, so its edge against the picture above is an L: the boundary above
the damaged MCU row from that MCU to the right edge, then the boundary below it from the
left edge back to that MCU, with a one-MCU-high vertical seam joining the two. A restart
marker resets the decoder, so there the damage is a strip from the damaged MCU to the end
of its row. Each 8-pixel segment of each MCU-row boundary is marked as stepping or not;
an L or a strip counts when nearly all its segments step and the boundary beside it does
not, it starts on an MCU, and `engine.health.damage_evidence` finds the damage in the
pixels (content makes these shapes now and then too). Numpy only.
"""
from __future__ import annotations

import numpy as np

from engine.health import damage_evidence as evidence

SEGMENT = 8
# A segment steps when the mean step across the boundary (0-255, over its pixels and
# channels) is STEP_RATIO times the larger row-to-row step beside it, plus STEP_MARGIN.
STEP_RATIO = 2.0
STEP_MARGIN = 4.0
# An arm of the seam counts when ARM_SHARE of its segments step; the rest of those
# boundaries (the picture on either side, whole) must step at most QUIET_SHARE.
ARM_SHARE = 0.6
QUIET_SHARE = 0.3
# Colours below the seam the picture above it does not have, as a share of its pixels.
UNSEEN_SHARE = 0.6
# An arm of one segment is a coincidence away from a horizon on the next boundary.
MIN_ARM_SEGMENTS = 2
MIN_STRIP_SEGMENTS = 4


def first_seam_row(pixels: np.ndarray, boundaries: np.ndarray, steps: np.ndarray,
                   mcu_height: int, mcu_width: int) -> int:
    """The top row of the first MCU row where an L or a restart strip of damage starts, or -1.

    `boundaries` are the first rows of MCU rows (from the second), `steps` which segments
    of each step (`boundary_steps`)."""
    if len(boundaries) < 3 or steps.shape[1] < 4:
        return -1
    column, before, after, aligned = _step_counts(steps, mcu_width)
    rows = [row for row in (_l_seam(pixels, boundaries, column, before, after, aligned, mcu_height, mcu_width),
                            _strip_seam(pixels, boundaries, column, before, after, aligned, mcu_height, mcu_width),
                            _edge_row_seam(pixels, boundaries, column, before, after, aligned, mcu_height))
            if row >= 0]
    return min(rows) if rows else -1


def likeliest_seam_row(pixels: np.ndarray, boundaries: np.ndarray, steps: np.ndarray,
                       mcu_height: int, mcu_width: int) -> int:
    """For a picture known to be damaged (its scan ends late, `engine.health.scan_end`):
    the top row of the L or whole-width seam across which most of the picture changes, or
    -1 when the picture has none. Shapes only: the damage is already known."""
    if len(boundaries) < 3 or steps.shape[1] < 4:
        return -1
    column, before, after, aligned = _step_counts(steps, mcu_width)
    seams = l_shapes(pixels, boundaries, column, before, after, aligned, mcu_height)
    tops = [*boundaries[seams[0]].tolist(), *boundaries[steps.mean(axis=1) >= ARM_SHARE].tolist()]
    xs = [*(column[seams[1]] * SEGMENT).tolist(), *[0] * (len(tops) - len(seams[0]))]
    if not tops:
        return -1
    tops, xs = np.array(tops), np.array(xs)
    below, above = _across_l(pixels, tops, xs, mcu_height, np.arange(pixels.shape[1]))
    # Damage changes the picture all along its seam; content's seams leave stretches alike.
    difference = np.abs(below[:, :, :3].astype(np.int16) - above[:, :, :3])
    changed = (difference.max(axis=-1) > evidence.OFFSET_TOLERANCE).mean(axis=-1)
    return int(tops[np.argmax(changed)])


def _across_l(pixels: np.ndarray, tops: np.ndarray, xs: np.ndarray, mcu_height: int,
              columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each L (its damaged MCU row's top and its corner's x), the first row below it
    and the last row above it, at `columns`: seam × column × channel each."""
    right = columns >= xs[:, None]
    below = pixels[np.where(right, tops[:, None], (tops + mcu_height)[:, None]), columns]
    above = pixels[np.where(right, tops[:, None] - 1, (tops + mcu_height - 1)[:, None]), columns]
    return below, above


def _step_counts(steps: np.ndarray, mcu_width: int):
    """Columns 1 .. segments-1, and for each boundary the stepping segments left of each
    (before) and from it on (after), and which columns lie on the MCU grid."""
    segments = steps.shape[1]
    counts = np.concatenate([np.zeros((len(steps), 1), int), np.cumsum(steps, axis=1)], axis=1)
    column = np.arange(1, segments)
    before, total = counts[:, 1:segments], counts[:, segments:]
    return column, before, total - before, column % max(1, mcu_width // SEGMENT) == 0


def boundary_steps(rows: np.ndarray) -> np.ndarray:
    """steps[b, s]: 8-pixel segment s of boundary b steps well above the row-to-row steps
    beside it. `rows[k, b]` are the two rows above and the two below boundary b, whole
    (height 4 × boundaries × width × channels)."""
    # This is the one pass over every boundary, so it is kept cheap: unsigned differences,
    # no widening copy, summed by BLAS. The fourth byte of RGBX is constant and adds nothing.
    segments = rows.shape[2] // SEGMENT
    over, above, below, under = rows[:, :, :segments * SEGMENT].reshape(*rows.shape[:2], segments, -1)
    values = SEGMENT * min(rows.shape[3], 3)
    across = _difference_sum(below, above)
    # Only a step across of more than STEP_MARGIN can count, and few segments have one
    # (most of a picture goes on across a boundary): the steps beside are summed for those.
    steps = across > STEP_MARGIN * values
    if steps.any():
        beside = np.maximum(_difference_sum(above[steps], over[steps]), _difference_sum(under[steps], below[steps]))
        steps[steps] = across[steps] > STEP_RATIO * beside + STEP_MARGIN * values
    return steps


def _difference_sum(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Sum over the last axis of |first - second| (uint8 in, float32 out); a product with
    ones runs on BLAS, twice as fast as numpy's integer sum."""
    difference = np.maximum(first, second)
    difference -= np.minimum(first, second)
    return difference @ np.ones(difference.shape[-1], np.float32)


def l_shapes(pixels, boundaries, column, before, after, aligned, mcu_height) -> tuple[np.ndarray, np.ndarray]:
    """(boundary index, column index) of every L: boundary b steps from the column to the
    right edge, boundary b+1 from the left edge to it, boundary b left of it is quiet."""
    segments = len(column) + 1
    shaped = ((after[:-1] >= ARM_SHARE * (segments - column)) & (before[1:] >= ARM_SHARE * column)
              & (before[:-1] <= QUIET_SHARE * column) & aligned
              & (np.minimum(column, segments - column) >= MIN_ARM_SEGMENTS))
    shaped[boundaries[:-1] + mcu_height + 2 > pixels.shape[0]] = False
    return np.nonzero(shaped)


def _l_seam(pixels, boundaries, column, before, after, aligned, mcu_height, mcu_width) -> int:
    """Damage to the end of the picture: an L (`l_shapes`) with evidence in the pixels."""
    seams = l_shapes(pixels, boundaries, column, before, after, aligned, mcu_height)
    # The first row below each seam and the last above it, for every L at once: flat
    # content has several per picture, and the shared-cast test runs on them all.
    # (Only the columns the shared-cast test reads are gathered.)
    tops, xs = boundaries[seams[0]], column[seams[1]] * SEGMENT
    first_below, last_above = _across_l(pixels, tops, xs, mcu_height,
                                        np.arange(0, pixels.shape[1], evidence.CAST_COLUMN_STEP))
    shared = evidence.shared_casts(first_below, last_above, column_step=1)
    seamed = evidence.vertical_seams(pixels, tops, xs, mcu_height)
    for top, x, shared_cast, vertical in zip(tops.tolist(), xs.tolist(), shared, seamed):
        if not vertical:
            if shared_cast:
                return top
            continue
        bottom = top + mcu_height
        above = np.concatenate([pixels[top - 2:top, x:], pixels[bottom - 2:bottom, :x]], axis=1)
        below = np.concatenate([pixels[top:top + 2, x:], pixels[bottom:bottom + 2, :x]], axis=1)
        if evidence.grainy(pixels[top - 1]):
            # On texture the picture goes on across a boundary: colours it does not have
            # just above are a cast (or other content, which the seam's shape rules out).
            cast = evidence.unseen_share(below, above) >= UNSEEN_SHARE
        else:
            # Flat content: overlapping shapes make the same seam with their own colours;
            # a cast moves all colours by one offset.
            cast = evidence.one_cast(below[:1], above[-1:]) or (
                evidence.unseen_share(below, above) >= UNSEEN_SHARE
                and evidence.garbage_at(pixels, top, x, mcu_height, mcu_width))
        if cast or shared_cast or evidence.moved_edges([pixels[top - 1, x:], pixels[bottom - 1, :x]],
                                        [pixels[top, x:], pixels[bottom, :x]],
                                        [(x, pixels.shape[1]), (0, x)], mcu_width):
            return top
    return -1


def _strip_seam(pixels, boundaries, column, before, after, aligned, mcu_height, mcu_width) -> int:
    """Damage a restart marker ended with its MCU row: boundaries b and b+1 step from the
    damaged MCU to the right edge and are quiet left of it."""
    segments = len(column) + 1
    length = segments - column
    shaped = ((after[:-1] >= ARM_SHARE * length) & (after[1:] >= ARM_SHARE * length)
              & (before[:-1] <= QUIET_SHARE * column) & (before[1:] <= QUIET_SHARE * column)
              & (length >= MIN_STRIP_SEGMENTS) & aligned)
    shaped[boundaries[:-1] + mcu_height + 2 > pixels.shape[0]] = False
    found = np.nonzero(shaped)
    tops, xs = boundaries[found[0]], column[found[1]] * SEGMENT
    # The vertical seam rules out nearly every strip flat content shapes: asked of all at once.
    seamed = evidence.vertical_seams(pixels, tops, xs, mcu_height)
    for top, x in zip(tops[seamed].tolist(), xs[seamed].tolist()):
        bottom = top + mcu_height
        around = np.concatenate([pixels[top - 2:top, x:], pixels[bottom:bottom + 2, x:]], axis=1)
        strip = pixels[top:bottom:max(1, mcu_height // 4), x:]
        if evidence.unseen_share(strip, around) < UNSEEN_SHARE:
            continue
        # A bar of a new colour is common in flat content (a toolbar): a strip in a flat
        # area counts only when the offset carries structure through it, or it starts
        # with garbage.
        if (evidence.textured(pixels[top - 1, x:]) or evidence.offset_strip(pixels, top, x, mcu_height)
                or evidence.garbage_at(pixels, top, x, mcu_height, mcu_width)):
            return top
    return -1


def _edge_row_seam(pixels, boundaries, column, before, after, aligned, mcu_height) -> int:
    """Damage in the first or the last MCU row, where the L has one arm: in the first, the
    boundary below it steps from the left edge to the damaged MCU (from there on both
    sides are damaged alike); in the last, the boundary above it steps from the damaged MCU
    to the right edge. Textured content only, with colours across the arm that the picture
    on its other side lacks: a flat bar along the picture's edge is ordinary. The last row
    asks for texture in most 8-pixel runs, not just grain between neighbours: the bottom
    edge of windows of text at the foot of a screenshot passed the grain test."""
    segments = len(column) + 1
    length = segments - column
    first = ((before[0] >= ARM_SHARE * column) & (after[0] <= QUIET_SHARE * length) & aligned
             & (column >= MIN_STRIP_SEGMENTS))
    top = int(boundaries[0])
    for x in _seamed_columns(pixels, 0, column[first], mcu_height):
        if (evidence.grainy(pixels[top - 1, :x])
                and evidence.unseen_share(pixels[top:top + 2, :x], pixels[top - 2:top, :x]) >= UNSEEN_SHARE):
            return 0
    top = int(boundaries[-1])
    if top + mcu_height < pixels.shape[0] - 1:
        return -1  # the last boundary is not the last MCU row's
    last = ((after[-1] >= ARM_SHARE * length) & (before[-1] <= QUIET_SHARE * column) & aligned
            & (length >= MIN_STRIP_SEGMENTS))
    for x in _seamed_columns(pixels, top, column[last], mcu_height):
        if (evidence.textured(pixels[top - 1, x:])
                and evidence.unseen_share(pixels[top:top + 2, x:], pixels[top - 2:top, x:]) >= UNSEEN_SHARE):
            return top
    return -1


def _seamed_columns(pixels: np.ndarray, top: int, columns: np.ndarray, mcu_height: int) -> list[int]:
    """The x of each of `columns` (segment indexes) with a vertical seam through the MCU
    row from `top`, left to right; asked of all at once (flat content has dozens)."""
    xs = columns * SEGMENT
    return xs[evidence.vertical_seams(pixels, np.full(len(xs), top), xs, mcu_height)].tolist()
