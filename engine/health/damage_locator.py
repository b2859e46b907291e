"""Where damage that the file itself proves (`engine.health.scan_end`) starts in the picture.

A picture that ends before its scan's data does was decoded with MCUs to spare: the
damaged bytes came out as more MCUs than they replaced, so everything after them is the
picture delayed by a few MCUs (a byte or more of cheap flat MCUs is one to four of them),
and every MCU row below the damage is its own picture moved right by the same amount. Its
edge against the picture above is an L on the MCU grid: across the damaged MCU row's top
from the damaged MCU to the right edge, across the next row's top from the left edge to
it. Along that L the vertical edges below are those above moved right by whole MCUs;
along any other line they are where they were, or belong to other content. The L where
moving the edges explains most of them is where the damage starts. Numpy only: edge maps
of two rows per MCU-row boundary, summed per MCU column.
"""
from __future__ import annotations

import numpy as np

# A vertical edge: neighbouring pixels differ by more than EDGE_STEP in some channel.
EDGE_STEP = 24
# The delays tried, in MCUs.
DELAYS = (1, 2, 3, 4)


def delayed_seam_row(pixels: np.ndarray, mcu_height: int, mcu_width: int) -> int:
    """The top row of the MCU row where the picture starts to come out delayed by whole
    MCUs, or -1 when no L on the grid is explained better moved than unmoved."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    columns = pixels.shape[1] // mcu_width
    boundaries = np.arange(mcu_height, pixels.shape[0] - mcu_height, mcu_height)
    if columns < 2 * max(DELAYS) or len(boundaries) < 2:
        return -1
    width = columns * mcu_width
    above = _edges(pixels[boundaries - 1, :width, :3])
    below = _edges(pixels[boundaries, :width, :3])
    unmoved = _per_mcu(np.abs(below - above), mcu_width)
    best, best_score = -1, 0
    for delay in DELAYS:
        shift = delay * mcu_width
        mismatch = np.empty_like(below)
        mismatch[:, shift:] = np.abs(below[:, shift:] - above[:, :-shift])
        mismatch[:, :shift] = below[:, :shift] + above[:, :shift]  # nothing above to move there
        gain = unmoved - _per_mcu(mismatch, mismatch.shape[1] // columns)
        # The L from MCU column c: boundary b from c to the right edge, boundary b+1 left of c.
        from_column = np.cumsum(gain[:, ::-1], axis=1)[:, ::-1]
        before_column = np.cumsum(gain, axis=1) - gain
        score = from_column[:-1] + before_column[1:]
        boundary, _ = np.unravel_index(np.argmax(score), score.shape)
        if score[boundary].max() > best_score:
            best, best_score = int(boundaries[boundary]), int(score[boundary].max())
    return best


def _edges(rows: np.ndarray) -> np.ndarray:
    """1 where a pixel differs from the next one in the row by more than EDGE_STEP."""
    rows = rows.astype(np.int16)
    edges = np.zeros(rows.shape[:2], np.int16)
    edges[:, :-1] = np.abs(np.diff(rows, axis=1)).max(axis=-1) > EDGE_STEP
    return edges


def _per_mcu(values: np.ndarray, mcu_width: int) -> np.ndarray:
    return values.reshape(len(values), -1, mcu_width).sum(axis=-1)
