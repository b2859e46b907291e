"""Damage that decoders do not report, found in the decoded pixels.

Bytes zeroed, dropped or flipped in the middle of a JPEG's entropy-coded data often
decode without a warning: from the damaged block onward the picture comes out shifted
and colour-cast, or as flat grey to the bottom edge. Both leave a horizontal seam on a
boundary between rows of 8×8 blocks. Numpy only, on every fourth column.
"""
from __future__ import annotations

import numpy as np

BLOCK = 8
# A seam: the step across a block boundary is this many times the larger row-to-row
# step just above and just below it...
SEAM_RATIO = 2.5
# ...at least this big (mean absolute step over the channels, 0-255 per channel)...
SEAM_MIN_STEP = 8.0
# ...between two textured sides of alike texture: a real horizon or a hard edge meets a
# flat or differently textured side, the shifted picture below a seam carries the
# same grain as above.
MIN_TEXTURE = 1.0
TEXTURE_LIKENESS = 0.5
# Only every COLUMN_STEP-th column is read. Steps are compared per segment of this
# many (sampled) columns; a seam covers at
# least this share of the width.
COLUMN_STEP = 4
SEGMENT = 8
MIN_SEAM_SPAN = 0.35
# The grey libjpeg fills a lost tail with, and how close (per channel) counts as it.
FILL_GREY = 128
FILL_TOLERANCE = 2


MIN_SEAM_WIDTH = 512
# A colour cast big enough to push the picture below a seam out of range: from the seam
# down nearly every pixel has a channel at 0 or 255, just above it nearly none do, and
# the clipped rows still vary (a black bar or a flat sky is one colour).
CLIPPED_SHARE = 0.9
UNCLIPPED_ABOVE = 0.1
CLIPPED_MIN_SPREAD = 4.0


def damaged_row(pixels: np.ndarray) -> int:
    """The first pixel row of silent damage, or -1 when the pixels look whole.

    `pixels` is height × width (× channels) uint8, as decoded."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height = pixels.shape[0]
    if height < 3 * BLOCK:
        return -1
    filled = _grey_fill_row(pixels)
    if pixels.shape[1] < MIN_SEAM_WIDTH:
        return filled  # too few columns to tell a seam from a real edge (measured false positives at 384 wide)
    boundaries = np.arange(BLOCK, height - 1, BLOCK)
    if filled >= 0:
        boundaries = boundaries[boundaries < filled]
    sampled = pixels[:, ::COLUMN_STEP, :3]
    found = [row for row in (_first_seam(sampled, boundaries), _clipped_seam(sampled, boundaries)) if row >= 0]
    return min(found) if found else filled


def _first_seam(pixels: np.ndarray, boundaries: np.ndarray) -> int:
    if not len(boundaries):
        return -1
    width = pixels.shape[1] // SEGMENT * SEGMENT
    if width < 4 * SEGMENT:
        return -1
    rows = pixels[np.stack([boundaries - 2, boundaries - 1, boundaries, boundaries + 1]), :width]
    steps = np.abs(np.diff(rows.astype(np.int16), axis=0))  # above, across, below
    # Mean step per segment of the width: steps[k, boundary, segment]
    values = SEGMENT * rows.shape[-1]
    steps = steps.reshape(3, len(boundaries), width // SEGMENT, values).sum(axis=-1, dtype=np.int32) / values
    above, across, below = steps
    rougher, smoother = np.maximum(above, below), np.minimum(above, below)
    seam = ((across >= SEAM_RATIO * (rougher + 1)) & (across >= SEAM_MIN_STEP)
            & (smoother >= MIN_TEXTURE) & (smoother >= TEXTURE_LIKENESS * rougher))
    # Damage runs on to the end of the block row it starts in and starts the next one
    # from the left edge: a seam reaches one side and spans a good part of the width,
    # unlike the top of a shape that happens to lie on a block boundary.
    reaches_side = seam[:, 0] | seam[:, -1]
    found = np.flatnonzero(reaches_side & (seam.mean(axis=1) >= MIN_SEAM_SPAN))
    return int(boundaries[found[0]]) if len(found) else -1


def _clipped_seam(pixels: np.ndarray, boundaries: np.ndarray) -> int:
    """The first boundary below which the picture is cast out of range, or -1."""
    # The share of clipped pixels on the first row below each boundary rules out
    # nearly all of them; the rest of the test runs on the few left.
    below = pixels[boundaries, ::4]
    candidates = boundaries[(np.minimum(below, 255 - below).min(axis=-1) == 0).mean(axis=-1) >= CLIPPED_SHARE]
    if not len(candidates):
        return -1
    rows = pixels[np.stack([candidates - 2, candidates - 1, candidates, candidates + 1])]
    clipped = (np.minimum(rows, 255 - rows).min(axis=-1) == 0).mean(axis=-1)  # share per row
    signed = rows.astype(np.int16)
    above = np.abs(signed[1] - signed[0]).mean(axis=(-1, -2))
    across = np.abs(signed[2] - signed[1]).mean(axis=(-1, -2))
    spread = signed[2].std(axis=1).max(axis=-1)
    cast = ((clipped[3] >= CLIPPED_SHARE) & (clipped[1] <= UNCLIPPED_ABOVE)
            & (across >= SEAM_MIN_STEP) & (across >= SEAM_RATIO * (above + 1)) & (spread >= CLIPPED_MIN_SPREAD))
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
