"""What tells a damaged region of a JPEG from content that happens to have the same shape.

`engine.health.pixel_damage` finds seams on the MCU grid shaped like silent damage (an L
from the damaged MCU to the right edge and along the next MCU row, or a strip that a
restart marker ends). Flat illustration and UI content makes the same shapes now and then
(overlapping rectangles aligned to the grid, a 16-px bar), so a seam counts only with
evidence from the pixels, each test here measured against such content
(bench/pixel_damage_rates.py):

- a vertical seam at the damaged MCU's left edge, one MCU row tall (a rectangle's edge
  goes on above or below it);
- colours below the seam that the picture just above it does not have (a colour cast
  moves every colour; a rectangle of another colour reuses the picture's palette);
- vertical edges below the seam that are those above it moved sideways by whole MCUs
  (lost or gained MCUs shift the picture, a cast or not);
- an MCU of garbage where the damage starts, in a calm neighbourhood;
- a strip that is the picture around it plus one colour offset, across structure.
Numpy only; each test reads a few rows or columns around one candidate.
"""
from __future__ import annotations

import numpy as np

# The vertical seam: the step between the two columns either side of the damaged MCU's
# left edge (mean over the MCU row of the largest channel step) is at least SEAM_MIN and
# SEAM_RATIO times the same step in the MCU rows above and below, plus SEAM_MARGIN.
SEAM_MIN = 12.0
SEAM_RATIO = 2.0
SEAM_MARGIN = 4.0
# Colours are compared on a grid of COLOUR_STEP levels per channel, a colour counting as
# seen when it or a neighbouring cell is (JPEG moves a flat colour by a level or two).
COLOUR_STEP = 6
_CELL_NEIGHBOURS = np.array([(red * 64 + green) * 64 + blue
                             for red in (-1, 0, 1) for green in (-1, 0, 1) for blue in (-1, 0, 1)])
# A flat-content cast: an offset of at least MIN_CAST levels in some channel.
MIN_CAST = 8
ONE_CAST_SHARE = 0.85
# A vertical edge: a step of more than EDGE_STEP between neighbouring pixels. Moved edges
# count when at least MIN_MOVED_EDGES and MOVED_SHARE of those below the seam match
# edges above it one shift away (within EDGE_SLACK pixels) and at most UNMOVED_SHARE
# match unmoved; rows with more than MAX_EDGES edges are texture, not structure.
EDGE_STEP = 24
EDGE_SLACK = 1
MIN_MOVED_EDGES = 2
MOVED_SHARE = 0.6
UNMOVED_SHARE = 0.3
MAX_EDGES = 40
# Garbage: an MCU whose pixel-to-pixel steps are GARBAGE_RATIO times those of the MCUs
# above, below and to the left of it, plus GARBAGE_MARGIN (the ringing inside a bright
# bar on a dark ground measures about 9, garbage 18 to 170, median 58).
GARBAGE_RATIO = 3.0
GARBAGE_MARGIN = 20.0
# A strip explained by one offset: FITTING_SHARE of its edge pixels are the pixels
# beside it plus the offset (to OFFSET_TOLERANCE per channel), over a row with structure
# (STRUCTURE_SHARE of pixels more than STRUCTURE_STEP from the row's median colour).
FITTING_SHARE = 0.8
OFFSET_TOLERANCE = 6
STRUCTURE_STEP = 12
STRUCTURE_SHARE = 0.05
MIN_STRIP_OFFSET = 4
# Texture: TEXTURED_SHARE of the pixels differ by more than TEXTURE_STEP from the median
# of their 8-pixel segment (grain, gradients), which a flat area crossed by a line does not.
TEXTURE_STEP = 2
TEXTURED_SHARE = 0.5
# Grain: GRAINY_SHARE of neighbouring pixels differ by more than GRAIN_STEP.
GRAIN_STEP = 2
GRAINY_SHARE = 0.3


def column_step(pixels: np.ndarray, top: int, bottom: int, x: int) -> float:
    """Mean over rows top..bottom of the largest channel step between columns x-1 and x."""
    if top < 0 or bottom > pixels.shape[0] or bottom <= top:
        return 0.0
    columns = pixels[top:bottom, x - 1:x + 1, :3].astype(np.int16)
    return float(np.abs(columns[:, 1] - columns[:, 0]).max(axis=-1).mean())


def vertical_seam(pixels: np.ndarray, top: int, mcu_height: int, x: int) -> bool:
    """A step at column x through the MCU row from `top`, and not in the MCU rows above
    and below (where an object's edge would go on)."""
    return bool(vertical_seams(pixels, np.array([top]), np.array([x]), mcu_height)[0])


def vertical_seams(pixels: np.ndarray, tops: np.ndarray, xs: np.ndarray, mcu_height: int) -> np.ndarray:
    """`vertical_seam` for several (top, x) at once: flat content has a dozen L-shaped
    candidates per picture, and this test rules out most of them."""
    if not len(tops):
        return np.zeros(0, bool)
    # The three MCU rows around each candidate, the two columns either side of x; rows
    # outside the picture count as no step.
    rows = tops[:, None] - mcu_height + np.arange(3 * mcu_height)
    inside = (rows >= 0) & (rows < pixels.shape[0])
    rows = np.clip(rows, 0, pixels.shape[0] - 1)
    left = pixels[rows, np.maximum(xs - 1, 0)[:, None], :3].astype(np.int16)
    right = pixels[rows, xs[:, None], :3].astype(np.int16)
    per_row = np.abs(right - left).max(axis=-1) * inside
    means = per_row.reshape(len(tops), 3, mcu_height).mean(axis=-1)  # above, the row, below
    whole = inside.reshape(len(tops), 3, mcu_height).all(axis=-1)
    means = np.where(whole, means, 0.0)
    step = means[:, 1]
    return (step >= SEAM_MIN) & (step >= SEAM_RATIO * np.maximum(means[:, 0], means[:, 2]) + SEAM_MARGIN)


def clipped(pixels: np.ndarray) -> np.ndarray:
    """Which pixels (... × channels) have a colour channel at 0 or 255. Channel by
    channel: numpy reduces an axis of three slowly."""
    out = (pixels[..., :3] == 0) | (pixels[..., :3] == 255)
    if out.shape[-1] != 3:
        return out.any(axis=-1)  # grey
    return out[..., 0] | out[..., 1] | out[..., 2]


def unseen_share(pixels: np.ndarray, seen_in: np.ndarray) -> float:
    """The share of `pixels` whose colour `seen_in` does not have (both: ... × channels)."""
    seen = np.unique(_colour_cells(seen_in.reshape(-1, seen_in.shape[-1])))
    cells = _colour_cells(pixels.reshape(-1, pixels.shape[-1]))
    found = np.isin((cells[:, None] + _CELL_NEIGHBOURS).ravel(), seen).reshape(len(cells), -1).any(axis=1)
    return 1.0 - float(found.mean()) if len(cells) else 0.0


def _colour_cells(pixels: np.ndarray) -> np.ndarray:
    cells = pixels[:, :3].astype(np.int32) // COLOUR_STEP
    if cells.shape[1] < 3:
        return cells[:, 0]
    return (cells[:, 0] * 64 + cells[:, 1]) * 64 + cells[:, 2]


def one_cast(below: np.ndarray, above: np.ndarray) -> bool:
    """Nearly every pixel below a seam is the one above it plus the same offset, of at
    least MIN_CAST in some channel (pixels the cast pushed to 0 or 255 left out): in flat
    content a cast moves every colour alike, where overlapping shapes each bring their own."""
    below = below.reshape(-1, below.shape[-1])[:, :3].astype(np.int16)
    difference = below - above.reshape(-1, above.shape[-1])[:, :3]
    inside = ((below > 0) & (below < 255)).all(axis=-1)
    if inside.sum() < len(below) // 2:
        return False
    offset = np.median(difference[inside], axis=0)
    fits = (np.abs(difference[inside] - offset) <= OFFSET_TOLERANCE).all(axis=-1)
    return np.abs(offset).max() >= MIN_CAST and fits.mean() >= ONE_CAST_SHARE


def moved_edges(above: list[np.ndarray], below: list[np.ndarray], spans: list[tuple[int, int]], step: int) -> bool:
    """Vertical edges of the rows below a seam are those of the rows above moved sideways
    by one whole number of MCUs (`step` pixels), and mostly not where they were.

    `above`/`below` are pixel rows either side of each arm of the seam, `spans` the
    columns each covers."""
    edges_above = [_edges(row) + start for row, (start, _) in zip(above, spans)]
    edges_below = [_edges(row) + start for row, (start, _) in zip(below, spans)]
    count = sum(len(edges) for edges in edges_below)
    if count < MIN_MOVED_EDGES or count > MAX_EDGES:
        return False
    width = max(end for _, end in spans)

    def matching(shift: int) -> int:
        matched = 0
        for upper, lower, (start, end) in zip(edges_above, edges_below, spans):
            moved = lower + shift
            moved = moved[(moved >= start) & (moved < end)]
            if len(upper) and len(moved):
                matched += int((np.abs(moved[:, None] - upper[None, :]).min(axis=1) <= EDGE_SLACK).sum())
        return matched

    best = max(matching(shift) for shift in range(-(width // 2) // step * step, width // 2, step) if shift)
    return best >= MIN_MOVED_EDGES and best >= MOVED_SHARE * count and matching(0) <= UNMOVED_SHARE * count


def _edges(row: np.ndarray) -> np.ndarray:
    values = row[:, :3].astype(np.int16)
    return np.flatnonzero(np.abs(values[1:] - values[:-1]).max(axis=-1) > EDGE_STEP) + 1


def garbage_at(pixels: np.ndarray, top: int, x: int, mcu_height: int, mcu_width: int) -> bool:
    """One of the two MCUs from (top, x) is garbage: far busier than its neighbours."""
    def busy(row_top: int, left: int, right: int) -> float:
        if row_top < 0 or left < 0 or row_top + mcu_height > pixels.shape[0] or right > pixels.shape[1]:
            return 0.0
        # The inside only: an outline drawn along the MCU's edge is not garbage.
        block = pixels[row_top + 1:row_top + mcu_height - 1, left + 1:right - 1, :3].astype(np.int16)
        return float(np.abs(block[1:] - block[:-1]).max(axis=-1).mean()
                     + np.abs(block[:, 1:] - block[:, :-1]).max(axis=-1).mean())

    inside = max(busy(top, x, x + mcu_width), busy(top, x + mcu_width, x + 2 * mcu_width))
    around = max(busy(top - mcu_height, x, x + 2 * mcu_width), busy(top + mcu_height, x, x + 2 * mcu_width),
                 busy(top, x - mcu_width, x))
    return inside >= GARBAGE_RATIO * around + GARBAGE_MARGIN


def textured(row: np.ndarray) -> bool:
    """Most pixels of the row differ from their 8-pixel segment's median (grain, gradients)."""
    length = len(row) // 8 * 8
    segments = row[:length, :3].reshape(-1, 8, min(row.shape[-1], 3)).astype(np.int16)
    off = (np.abs(segments - np.median(segments, axis=1, keepdims=True)) > TEXTURE_STEP).any(axis=-1)
    return bool(length) and float(off.mean()) >= TEXTURED_SHARE


def grainy(row: np.ndarray) -> bool:
    """Most neighbouring pixels of the row differ (grain, texture), as in flat content they do not."""
    values = row[:, :3].astype(np.int16)
    return float((np.abs(values[1:] - values[:-1]).max(axis=-1) > GRAIN_STEP).mean()) >= GRAINY_SHARE


def offset_strip(pixels: np.ndarray, top: int, x: int, mcu_height: int) -> bool:
    """The strip from (top, x) to the right edge, one MCU row high, is the picture around it
    plus one colour offset: its top row is the row above plus the offset, the row below it
    its bottom row minus the same offset, over structure that the offset carries through."""
    fits_top, offset_top = _plus_offset(pixels[top, x:, :3], pixels[top - 1, x:, :3])
    fits_bottom, offset_bottom = _plus_offset(pixels[top + mcu_height - 1, x:, :3], pixels[top + mcu_height, x:, :3])
    return (fits_top and fits_bottom and np.abs(offset_top - offset_bottom).max() <= OFFSET_TOLERANCE + 2
            and np.abs(offset_top).max() >= MIN_STRIP_OFFSET)


def _plus_offset(inner: np.ndarray, outer: np.ndarray) -> tuple[bool, np.ndarray]:
    inner, outer = inner.astype(np.int16), outer.astype(np.int16)
    inside = (inner > 0) & (inner < 255)  # pixels the cast pushed out of range say nothing
    difference = inner - outer
    offset = np.array([np.median(difference[:, channel][inside[:, channel]]) if inside[:, channel].sum() >= 8 else 0
                       for channel in range(difference.shape[1])])
    fits = (np.where(inside, np.abs(difference - offset), 0) <= OFFSET_TOLERANCE).all(axis=-1)
    structure = (np.abs(outer - np.median(outer, axis=0)) > STRUCTURE_STEP).any(axis=-1)
    explained = (fits.mean() >= FITTING_SHARE and structure.mean() >= STRUCTURE_SHARE
                 and fits[structure].mean() >= FITTING_SHARE)
    return bool(explained), offset



# A cast moves every colour alike: where the picture goes on across the seam, the pixel
# below is the one above plus one offset (a channel the cast pushed to 0 or 255 fits
# when the offset would push it there). Overlapping shapes make the same seams with
# colours of their own, and shading darkens each colour by its own amount; one offset
# that fits CAST_FITTING of the pixel pairs, over at least CAST_COLOURS colours above
# that each hold CAST_COLOUR_SHARE of them and lie DISTINCT_COLOURS apart, is damage.
CAST_FITTING = 0.5
CAST_COLOURS = 2
CAST_COLOUR_SHARE = 0.1
DISTINCT_COLOURS = 24
CAST_COLUMN_STEP = 4


def shared_cast(below: np.ndarray, above: np.ndarray) -> bool:
    """One offset of at least MIN_CAST takes the pixels of a row above a seam to those of
    the row below it, for at least CAST_COLOURS distinct colours (pixels × channels)."""
    return bool(shared_casts(below[None], above[None])[0])


def shared_casts(below: np.ndarray, above: np.ndarray, column_step: int = CAST_COLUMN_STEP) -> np.ndarray:
    """`shared_cast` for several seams at once (seam × pixels × channels): an L-shaped seam
    in flat content is common, and one pass over all of them costs little more than one.
    Every `column_step`-th pixel is read (1: the caller took them already)."""
    # Seam × channel × pixel: numpy reduces a contiguous last axis several times faster
    # than across 3 channels.
    below = below[:, ::column_step, :3].transpose(0, 2, 1).astype(np.int16, order="C")
    above = above[:, ::column_step, :3].transpose(0, 2, 1).astype(np.int16, order="C")
    pixels = below.shape[2]
    if below.shape[1] < 3 or pixels < 16:
        return np.zeros(len(below), bool)
    difference = below - above
    inside = (below > 0) & (below < 255)
    offset = (median_where(difference, inside) * (inside.sum(axis=-1) >= 8))[..., None]
    fits = fits_offset(below, above + offset).all(axis=1)
    cast = (np.abs(offset).max(axis=(1, 2)) >= MIN_CAST) & (fits.mean(axis=1) >= CAST_FITTING)
    for seam in np.flatnonzero(cast):
        cast[seam] = _distinct_colours(above[seam][:, fits[seam]].T, pixels) >= CAST_COLOURS
    return cast


def fits_offset(values: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Per value: it is `expected` (the picture plus an offset) to OFFSET_TOLERANCE, or
    pushed to 0 or 255 where the offset would push it there."""
    return ((np.abs(values - expected) <= OFFSET_TOLERANCE)
            | ((values == 255) & (expected >= 255 - OFFSET_TOLERANCE))
            | ((values == 0) & (expected <= OFFSET_TOLERANCE)))


def _distinct_colours(colours: np.ndarray, pixels: int) -> int:
    """Groups of colours (pixels × channels), each DISTINCT_COLOURS from the others and
    holding CAST_COLOUR_SHARE of `pixels`, up to CAST_COLOURS: greedy, biggest group first."""
    if (colours.max(axis=0) - colours.min(axis=0)).max() < DISTINCT_COLOURS:
        return 1  # every colour is near any one of them (the usual answer in flat content)
    groups = 0
    while len(colours) >= CAST_COLOUR_SHARE * pixels and groups < CAST_COLOURS:
        colour_cells = _colour_cells(colours)
        cells, counts = np.unique(colour_cells, return_counts=True)
        centre = colours[colour_cells == cells[np.argmax(counts)]][0]
        near = np.abs(colours - centre).max(axis=-1) < DISTINCT_COLOURS
        if near.sum() < CAST_COLOUR_SHARE * pixels:
            break
        groups += 1
        colours = colours[~near]
    return groups


def median_where(values: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """The median along the last axis of the chosen values (an integer type), 0 where
    none is chosen: np.median's numbers for each selection, from one sort instead of a
    call per selection (this runs for every seam candidate, and flat content has many)."""
    count = chosen.sum(axis=-1)
    ordered = np.sort(np.where(chosen, values, np.iinfo(values.dtype).max), axis=-1).reshape(-1, values.shape[-1])
    line = np.arange(len(ordered))
    low = ordered[line, (np.maximum(count - 1, 0) // 2).ravel()]
    high = ordered[line, np.minimum(count // 2, values.shape[-1] - 1).ravel()]
    return np.where(count > 0, ((low.astype(np.float64) + high) / 2).reshape(count.shape), 0)
