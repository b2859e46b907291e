"""LossPlot: a larger braille plot of one whole-run curve, drawn from a `SeriesSummary`.

Each character cell holds 2×4 braille dots, so a 70-column plot shows 140 points. Every
dot column covers a stretch of steps and draws its min–max band (dim) with its mean
(bright) on top, so a spike hidden by averaging still shows. No plotting library: the
summary already holds exactly what is drawn.
"""
from __future__ import annotations

import math
from typing import Callable

from rich.text import Text
from textual.widget import Widget

from engine.run.format import format_loss
from tui.series_summary import SeriesSummary

AXIS_WIDTH = 10
# dot bit of braille (x, y), x in 0..1, y in 0..3 top to bottom (Unicode braille patterns)
_DOT_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))


def _finite(values) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def braille_rows(summary: SeriesSummary, width: int, height: int) -> tuple[list[list[tuple[int, bool]]], float, float, int, int]:
    """The plot as rows of (braille bits, has mean dot) cells, and its y and x ranges."""
    columns = summary.columns(width * 2)
    lows, highs = _finite(columns.low), _finite(columns.high)
    cells = [[(0, False) for _ in range(width)] for _ in range(height)]
    if not lows:
        return cells, 0.0, 0.0, columns.x_first, columns.x_last
    y_low, y_high = min(lows), max(highs)
    span = (y_high - y_low) or 1.0
    dot_rows = height * 4
    def to_row(value: float) -> int:
        return min(dot_rows - 1, max(0, int(round((y_high - value) / span * (dot_rows - 1)))))

    def set_dot(x: int, y: int, is_mean: bool) -> None:
        cell_x, cell_y = x // 2, y // 4
        if cell_x >= width:
            return
        bits, mean = cells[cell_y][cell_x]
        cells[cell_y][cell_x] = (bits | _DOT_BITS[y % 4][x % 2], mean or is_mean)

    # every dot column shows the summary column under it: a short run is spread over
    # the whole width, a long one was already folded into width * 2 columns
    count, dot_columns = len(columns), width * 2
    previous = None
    for x in range(dot_columns):
        index = x * count // dot_columns
        mean, low, high = columns.mean[index], columns.low[index], columns.high[index]
        if mean is None:
            previous = None
            continue
        for y in range(to_row(high), to_row(low) + 1):
            set_dot(x, y, False)
        row = to_row(mean)
        # join to the previous mean so a steep drop stays one line
        start, stop = (row, row) if previous is None else (min(row, previous), max(row, previous))
        for y in range(start, stop + 1):
            set_dot(x, y, True)
        previous = row
    return cells, y_low, y_high, columns.x_first, columns.x_last


class LossPlot(Widget):
    """One curve, big: y axis on the left, x (step or epoch) range underneath."""

    COMPONENT_CLASSES = {"loss-plot--band", "loss-plot--mean", "loss-plot--axis"}

    DEFAULT_CSS = """
    LossPlot {
        height: 1fr;
        width: 1fr;
    }
    LossPlot > .loss-plot--band { color: $primary; }
    LossPlot > .loss-plot--mean { color: $accent; text-style: bold; }
    LossPlot > .loss-plot--axis { color: $text-muted; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.summary: SeriesSummary | None = None
        self.formatter: Callable[[float | None], str] = format_loss
        self.x_label = "step"

    def show(self, summary: SeriesSummary, *, formatter: Callable[[float | None], str] = format_loss,
             x_label: str = "step") -> None:
        self.summary = summary
        self.formatter = formatter
        self.x_label = x_label
        self.refresh()

    def render(self) -> Text:
        axis = self.get_component_rich_style("loss-plot--axis")
        width = self.size.width - AXIS_WIDTH
        height = self.size.height - 1
        if self.summary is None or self.summary.empty or width < 4 or height < 2:
            return Text("no data yet", style=axis)
        cells, y_low, y_high, x_first, x_last = braille_rows(self.summary, width, height)
        band = self.get_component_rich_style("loss-plot--band")
        mean = self.get_component_rich_style("loss-plot--mean")
        labels = {0: self.formatter(y_high), height - 1: self.formatter(y_low)}
        if height >= 5:
            labels[(height - 1) // 2] = self.formatter((y_high + y_low) / 2)
        text = Text(no_wrap=True, overflow="crop")
        for row_index, row in enumerate(cells):
            text.append(labels.get(row_index, "")[: AXIS_WIDTH - 2].rjust(AXIS_WIDTH - 2) + " ┤", axis)
            for bits, has_mean in row:
                text.append(chr(0x2800 + bits), mean if has_mean else band)
            text.append("\n")
        left, right = f"{x_first}", f"{self.x_label} {x_last}"
        gap = max(1, width - len(left) - len(right))
        text.append(" " * AXIS_WIDTH + left + " " * gap + right, axis)
        return text
