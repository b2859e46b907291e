"""Damage that decoders do not report, found in the decoded pixels.

Bytes zeroed, dropped, inserted or flipped in the middle of a JPEG's entropy-coded data
often decode without a warning (libjpeg only notices when the stream ends early or late).
The decoder then reads the MCUs after the damage out of step: from the damaged MCU on,
the picture comes out shifted sideways by whole MCUs and colour-cast (every DC value off
by the same amount), often after an MCU or two of garbage, to the end of the picture or,
with restart markers, of the restart interval. A lost tail comes out flat grey.

Three tests, the first that finds a row wins:
- seams on the MCU grid shaped like that region (`engine.health.mcu_seams`): an L from
  the damaged MCU, or a strip to the end of its row, with evidence in the pixels that it
  is damage and not content of the same shape (`engine.health.damage_evidence`);
- a cast on textured content: a block-row boundary below which the picture is the one
  above plus one offset per channel (with restart markers the strip, without them a
  damaged MCU at the start of a row);
- a cast that pushes the picture below a seam out of range, and a grey tail.
Numpy only, on a few rows per MCU-row boundary and a few columns per candidate.
"""
from __future__ import annotations

import numpy as np

from engine.health import damage_evidence
from engine.health.mcu_seams import SEGMENT as STEP_SEGMENT
from engine.health.mcu_seams import boundary_steps, first_seam_row, likeliest_seam_row
from engine.health.restart_strips import first_cast_strip_row, first_strip_row

BLOCK = 8
# Columns are compared per segment of SEGMENT read columns, every OFFSET_COLUMN_STEP-th.
SEGMENT = 32
OFFSET_COLUMN_STEP = 2
# A place worth a close look: the step across a block boundary is STEP_RATIO times the
# larger row-to-row step beside it plus MIN_STEP (mean absolute step, 0-255 per channel),
# from every STEP_COLUMN_STEP-th column.
STEP_COLUMN_STEP = 8
STEP_RATIO = 2.0
MIN_STEP = 3.0
# The cast explains the step: the row below is the row above plus one offset per channel
# (estimated from at least MIN_INSIDE pixels not pushed to 0 or 255) to within
# EXPLAINED of the row's own spread and NATURAL_RESIDUAL times the natural row-to-row
# step, and FITTING_SHARE of the pixels within that much. A real horizon or hard edge
# meets other content (or a flat side, whose spread under MIN_SPREAD explains nothing),
# so no offset explains it.
MIN_INSIDE = 8
MIN_SPREAD = 3.0
FITTING_SHARE = 0.5
EXPLAINED = 0.5
NATURAL_RESIDUAL = 1.5
# An offset that moves luma or chroma by MIN_OFFSET counts, in MIN_SEGMENTS segments of
# the boundary and those up to REPEAT_ROWS below it. JPEG's chroma blocking steps by up to
# about 18 (measured on generated photos) and by a different amount in each block, so a
# cast that is only chroma below MIN_CHROMA_OFFSET must agree to OFFSET_TOLERANCE per
# channel over CONSISTENT_SHARE of the width.
MIN_OFFSET = 4
MIN_SEGMENTS = 2
MIN_CHROMA_OFFSET = 20
OFFSET_TOLERANCE = 6
CONSISTENT_SHARE = 0.6
YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
# A colour gradient steps at every chroma block boundary (REPEAT_ROWS apart at most);
# damage steps once: an offset seen again (within REPEAT_SHARE of it) REPEAT_ROWS above
# or below is not.
REPEAT_ROWS = 16
REPEAT_SHARE = 0.5
# The clipped-cast test reads every COLUMN_STEP-th column of pictures at least
# MIN_SEAM_WIDTH wide (measured false positives at 384 wide), with steps of at least
# SEAM_MIN_STEP that are SEAM_RATIO times the step above.
COLUMN_STEP = 4
MIN_SEAM_WIDTH = 512
SEAM_RATIO = 2.5
SEAM_MIN_STEP = 8.0
# The grey libjpeg fills a lost tail with, and how close (per channel) counts as it.
FILL_GREY = 128
FILL_TOLERANCE = 2
# A colour cast big enough to push the picture below a seam out of range: from the seam
# down nearly every pixel has a channel at 0 or 255, just above it nearly none do, and
# the clipped rows still vary, from pixel to pixel (a black bar or a flat sky is one
# colour; flat shapes in saturated colours differ only from shape to shape).
CLIPPED_SHARE = 0.9
UNCLIPPED_ABOVE = 0.1
CLIPPED_MIN_SPREAD = 4.0


def damaged_row(pixels: np.ndarray, mcu_height: int = BLOCK, mcu_width: int | None = None,
                restart_interval: int = 0) -> int:
    """The first pixel row of silent damage, or -1 when the pixels look whole.

    `pixels` is height × width (× channels) uint8, as decoded; `mcu_height` and
    `mcu_width` the size of the JPEG's minimum coded unit (16 × 16 with chroma halved
    both ways; the width defaults to the height): damage starts on an MCU, so only the
    boundaries between MCU rows are read, and only seams that start on an MCU count.
    `restart_interval` (MCUs, from the file's DRI segment; 0: none) is where damage ends."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height = pixels.shape[0]
    if height < 3 * BLOCK:
        return -1
    filled = _grey_fill_row(pixels)
    boundaries = np.arange(mcu_height, height - 1, mcu_height)
    if filled >= 0:
        boundaries = boundaries[boundaries < filled]
    if len(boundaries) < 2:
        return filled
    rows, steps = _boundary_rows(pixels, boundaries, mcu_height)
    mcu_width = mcu_width or mcu_height
    found = [_offset_seam(rows, steps, boundaries),
             first_seam_row(pixels, boundaries, steps, mcu_height, mcu_width)]
    if restart_interval:
        found.append(first_strip_row(pixels, steps, mcu_height, mcu_width, restart_interval))
        found.append(first_cast_strip_row(pixels, mcu_height, mcu_width, restart_interval))
    if pixels.shape[1] >= MIN_SEAM_WIDTH:
        found.append(_clipped_seam(pixels[:, ::COLUMN_STEP, :3], boundaries))
    found = [row for row in found if row >= 0]
    return min(found) if found else filled


def likeliest_damaged_row(pixels: np.ndarray, mcu_height: int = BLOCK, mcu_width: int | None = None) -> int:
    """Where damage known from the file itself (`engine.health.scan_end`) most likely
    starts: the seam on the MCU grid across which most of the picture changes, or -1."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    boundaries = np.arange(mcu_height, pixels.shape[0] - 1, mcu_height)
    if len(boundaries) < 3:
        return -1
    _, steps = _boundary_rows(pixels, boundaries, mcu_height)
    return likeliest_seam_row(pixels, boundaries, steps, mcu_height, mcu_width or mcu_height)


def _boundary_rows(pixels: np.ndarray, boundaries: np.ndarray, mcu_height: int) -> tuple[np.ndarray, np.ndarray]:
    """The two rows either side of each boundary, rows[k, boundary, column, channel], and
    which 8-pixel segments of each boundary step. The rows are a view of the pixels (the
    boundaries are evenly spaced): a copy cost more than reading them, as fresh memory is
    slow to touch."""
    row_stride = pixels.strides[0]
    rows = np.lib.stride_tricks.as_strided(
        pixels[boundaries[0] - 2:], shape=(4, len(boundaries), *pixels.shape[1:]),
        strides=(row_stride, mcu_height * row_stride, *pixels.strides[1:]), writeable=False)
    return rows, boundary_steps(rows)


def _offset_seam(rows: np.ndarray, steps: np.ndarray, boundaries: np.ndarray) -> int:
    """The first boundary below which the picture is the one above plus a colour offset
    (the DC of every block shifted by the same amount), or -1. `rows` are the four rows
    around each boundary, `steps` which 8-pixel segments of each boundary step."""
    segment_width = SEGMENT * OFFSET_COLUMN_STEP
    segments = rows.shape[2] // segment_width
    if segments < 2:
        return -1
    step = int(boundaries[1] - boundaries[0])
    # Only the places where most of a segment steps are looked at closely.
    per_segment = segment_width // STEP_SEGMENT
    stepping = steps[:, :segments * per_segment].reshape(len(boundaries), segments, per_segment).sum(axis=-1)
    candidates = np.nonzero(stepping * 2 >= per_segment)
    if not len(candidates[0]):
        return -1
    wide = rows[:, :, :segments * segment_width].reshape(4, len(boundaries), segments, segment_width, -1)
    above = wide[1, candidates[0], candidates[1], ::OFFSET_COLUMN_STEP, :3].astype(np.int16)
    # Texture, not a flat area crossed by a line or two: a line that goes on under an
    # offset explains a flat-to-flat edge just as well (rectangles in an illustration).
    # Tested first: flat content has many stepping segments and none of them counts. Most
    # of them span no more than TEXTURE_STEP levels, so no pixel can be further than that
    # from their median: only the others are measured. Columns last (candidate, channel,
    # column): numpy reduces a contiguous last axis several times faster than a middle one.
    columns = np.ascontiguousarray(above.transpose(0, 2, 1))
    textured = (columns.max(axis=-1) - columns.min(axis=-1)).max(axis=-1) > damage_evidence.TEXTURE_STEP
    if textured.any():
        varied = columns[textured]
        ordered = np.sort(varied, axis=-1)  # the median as np.median has it, from one sort
        count = varied.shape[-1]
        median = (ordered[..., (count - 1) // 2, None] + ordered[..., count // 2, None].astype(np.float64)) / 2
        textured[textured] = ((np.abs(varied - median) > damage_evidence.TEXTURE_STEP)
                              .any(axis=1).mean(axis=-1) >= damage_evidence.TEXTURED_SHARE)
    candidates = (candidates[0][textured], candidates[1][textured])
    if not len(candidates[0]):
        return -1
    above = above[textured]
    below = wide[2, candidates[0], candidates[1], ::OFFSET_COLUMN_STEP, :3].astype(np.int16)
    # The offset that best explains the pixels below from those above, from the pixels
    # the cast did not push out of range; only an offset big enough to count is measured
    # further (most stepping segments have none: they are content).
    inside = (below > 0) & (below < 255)
    known = inside.sum(axis=1) >= MIN_INSIDE  # candidate, channel
    offset = damage_evidence.median_where((below - above).transpose(0, 2, 1), inside.transpose(0, 2, 1))
    offset = np.where(known, np.round(offset), 0)
    luma, chroma = _luma_and_chroma(offset)
    chosen = known.any(axis=1) & ((luma >= MIN_OFFSET) | (chroma >= MIN_OFFSET))
    if not chosen.any():
        return -1
    candidates, above, below = (candidates[0][chosen], candidates[1][chosen]), above[chosen], below[chosen]
    known, offset, luma, chroma = known[chosen], offset[chosen], luma[chosen], chroma[chosen]
    # ... and what it leaves unexplained, against the natural row-to-row step beside.
    over, near_above, near_below, under = wide[:, candidates[0], candidates[1], ::STEP_COLUMN_STEP, :3].astype(np.int16)
    natural = np.maximum(np.abs(near_above - over).mean(axis=(1, 2)), np.abs(under - near_below).mean(axis=(1, 2)))
    weight = known[:, None, :]
    counted = np.maximum(known.sum(axis=1) * above.shape[1], 1)
    misfit = np.abs(below - np.clip(above + offset[:, None, :], 0, 255)) * weight
    residual = misfit.sum(axis=(1, 2)) / counted
    spread = (np.abs(below - below.mean(axis=1, keepdims=True)) * weight).sum(axis=(1, 2)) / counted
    # ... pixel by pixel, not only on average: where a few pixels carry the spread (a
    # shape's outline on a shaded flat colour), the mean residual passes while the
    # outline, unshaded, does not fit.
    tolerance = np.maximum(OFFSET_TOLERANCE, NATURAL_RESIDUAL * natural + 2)[:, None]
    fitting = (misfit.max(axis=-1) <= tolerance).mean(axis=1)
    evidence = ((spread >= MIN_SPREAD) & (residual <= EXPLAINED * spread)
                & (residual <= NATURAL_RESIDUAL * natural + 2) & (fitting >= FITTING_SHARE))
    if not evidence.any():
        return -1
    candidates = (candidates[0][evidence], candidates[1][evidence])
    offset, known, luma, chroma = offset[evidence], known[evidence], luma[evidence], chroma[evidence]
    # A colour gradient steps at every chroma block boundary; damage steps once.
    evidence = np.ones(len(offset), bool)
    for distance in (-REPEAT_ROWS // step, REPEAT_ROWS // step):
        neighbour = np.clip(candidates[0] + distance, 0, len(boundaries) - 1)
        again = (wide[2, neighbour, candidates[1], ::STEP_COLUMN_STEP, :3].astype(np.int16)
                 - wide[1, neighbour, candidates[1], ::STEP_COLUMN_STEP, :3]).mean(axis=1)
        evidence &= ~((neighbour != candidates[0])
                      & (np.abs(again - offset).max(axis=1) <= REPEAT_SHARE * np.abs(offset).max(axis=1)))
    if not evidence.any():
        return -1
    where = boundaries[candidates[0][evidence]]
    offset, known = offset[evidence], known[evidence]
    # Chroma blocking steps too, by a few levels that change from block to block; a
    # cast that is only chroma and not far above that must be one colour over most of
    # the width.
    strong = ((luma >= MIN_OFFSET) | (chroma >= MIN_CHROMA_OFFSET))[evidence]
    for boundary in np.unique(where):
        near = (where >= boundary) & (where <= boundary + REPEAT_ROWS)
        if (near & strong).sum() >= MIN_SEGMENTS:
            return int(boundary)
        reference = np.median(offset[where == boundary], axis=0)
        agrees = (~known | (np.abs(offset - reference) <= OFFSET_TOLERANCE)).all(axis=1)
        if (near & agrees).sum() >= max(MIN_SEGMENTS, CONSISTENT_SHARE * segments):
            return int(boundary)
    return -1


def _luma_and_chroma(offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How far an RGB offset (candidate × channel) moves luma, and the larger chroma."""
    if offset.shape[1] < 3:
        return np.abs(offset[:, 0]), np.zeros(len(offset))
    luma, blue, red = np.abs(offset @ YCBCR.T).T
    return luma, np.maximum(blue, red)


def _clipped_seam(pixels: np.ndarray, boundaries: np.ndarray) -> int:
    """The first boundary below which the picture is cast out of range, or -1."""
    # The share of clipped pixels on the first row below each boundary rules out
    # nearly all of them; the rest of the test runs on the few left.
    below = pixels[boundaries, ::4]
    candidates = boundaries[damage_evidence.clipped(below).mean(axis=-1) >= CLIPPED_SHARE]
    if not len(candidates):
        return -1
    rows = pixels[np.stack([candidates - 2, candidates - 1, candidates, candidates + 1])]
    clipped = damage_evidence.clipped(rows).mean(axis=-1)  # share per row
    signed = rows.astype(np.int16)
    above = np.abs(signed[1] - signed[0]).mean(axis=(-1, -2))
    across = np.abs(signed[2] - signed[1]).mean(axis=(-1, -2))
    spread = signed[2].std(axis=1).max(axis=-1)
    # ... and vary from pixel to pixel, as a photo does: flat shapes in saturated colours
    # have a channel at 0 or 255 too, and vary only from shape to shape.
    grain = (np.abs(np.diff(signed[2], axis=1)).max(axis=-1) > damage_evidence.GRAIN_STEP).mean(axis=1)
    cast = ((clipped[3] >= CLIPPED_SHARE) & (clipped[1] <= UNCLIPPED_ABOVE)
            & (across >= SEAM_MIN_STEP) & (across >= SEAM_RATIO * (above + 1)) & (spread >= CLIPPED_MIN_SPREAD)
            & (grain >= damage_evidence.GRAINY_SHARE))
    found = np.flatnonzero(cast)
    return int(candidates[found[0]]) if len(found) else -1


def _grey_fill_row(pixels: np.ndarray) -> int:
    """Where a flat grey tail that runs to the bottom edge starts, or -1."""
    channels = pixels[:, ::COLUMN_STEP, :3]
    if not _is_fill(channels[-1:]).all():
        return -1
    # Only the bottom rows are read row by row: most images end on their first test.
    fill = _is_fill(channels).all(axis=1)
    not_fill = np.flatnonzero(~fill)
    start = int(not_fill[-1]) + 1 if len(not_fill) else 0
    if start == 0 or pixels.shape[0] - start < BLOCK:
        return -1  # an all-grey picture, or a thin grey border: not a lost tail
    return start


def _is_fill(rows: np.ndarray) -> np.ndarray:
    return (np.abs(rows.astype(np.int16) - FILL_GREY) <= FILL_TOLERANCE).all(axis=-1)
