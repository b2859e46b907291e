"""Sparklines that summarise a whole run's curve in whatever width is left.

`SeriesSparkline` draws one line: a label, the latest value, the whole-run curve (one
block character per column, the mean of the steps that column covers; a column that saw
a NaN is drawn in the error colour) and the min–max range. `SparklinePanel` stacks one
per series of the run. The width is read at render time, so a resize redraws at the
new resolution from the same fixed-size `SeriesSummary`.
"""
from __future__ import annotations

from typing import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.widget import Widget

from engine.run.format import format_loss, format_lr
from tui.series_summary import Columns, SeriesSummary

BLOCKS = "▁▂▃▄▅▆▇█"
LABEL_WIDTH = 11
VALUE_WIDTH = 10


def spark_characters(columns: Columns, width: int) -> list[tuple[str, bool]]:
    """(character, is_bad) per cell, the columns stretched evenly to fill `width`."""
    means = columns.mean
    if not means or width <= 0:
        return []
    finite = [m for m in means if m is not None]
    low = min(finite) if finite else 0.0
    high = max(finite) if finite else 0.0
    span = high - low
    if span <= 1e-6 * max(abs(high), abs(low)):
        span = 0.0  # a constant series whose means differ only by rounding is flat
    cells: list[tuple[str, bool]] = []
    repeat = max(1, width // len(means))
    for mean, bad in zip(means, columns.bad):
        if mean is None:
            char = "!" if bad else " "
        else:
            level = int((mean - low) / span * (len(BLOCKS) - 1) + 0.5) if span > 0 else len(BLOCKS) // 2
            char = BLOCKS[level]
        cells.extend([(char, bad)] * repeat)
    return cells[:width]


class SeriesSparkline(Widget):
    """One labelled sparkline of a `SeriesSummary`."""

    COMPONENT_CLASSES = {
        "series-sparkline--label",
        "series-sparkline--value",
        "series-sparkline--bar",
        "series-sparkline--bad",
        "series-sparkline--range",
    }

    DEFAULT_CSS = """
    SeriesSparkline {
        height: 1;
        width: 1fr;
    }
    SeriesSparkline > .series-sparkline--label { color: $text-muted; }
    SeriesSparkline > .series-sparkline--value { color: $text; text-style: bold; }
    SeriesSparkline > .series-sparkline--bar { color: $accent; }
    SeriesSparkline > .series-sparkline--bad { color: $error; text-style: bold; }
    SeriesSparkline > .series-sparkline--range { color: $text-muted; }
    """

    def __init__(self, label: str, formatter: Callable[[float | None], str] = format_loss, *,
                 id: str | None = None, sparse: bool = False) -> None:
        super().__init__(id=id)
        self.label = label
        self.formatter = formatter
        # a curve of a few points (one per evaluation) is drawn a point per block of columns,
        # not as lone marks among empty columns
        self.sparse = sparse
        self.summary: SeriesSummary | None = None
        self._drawn: tuple[int, Text] | None = None  # (width, line) last drawn

    def show(self, summary: SeriesSummary) -> None:
        """Draw `summary`; a repaint only when the line would look different (a constant LR,
        or a curve of 100,000 steps that one more step does not move, costs no frame)."""
        self.summary = summary
        width = self.size.width
        if self._drawn is not None and self._drawn[0] == width:
            line = self._line(width)
            if line == self._drawn[1]:
                return
            self._drawn = (width, line)
        self.refresh()

    def notify_style_update(self) -> None:
        self._drawn = None  # a new theme: the line's colours change
        super().notify_style_update()

    def render(self) -> Text:
        width = self.size.width
        if self._drawn is None or self._drawn[0] != width:
            self._drawn = (width, self._line(width))
        return self._drawn[1].copy()

    def _line(self, width: int) -> Text:
        label_style = self.get_component_rich_style("series-sparkline--label")
        text = Text(no_wrap=True, overflow="crop")
        text.append(self.label[: LABEL_WIDTH - 1].ljust(LABEL_WIDTH), label_style)
        summary = self.summary
        if summary is None or summary.empty:
            text.append("-".ljust(VALUE_WIDTH), self.get_component_rich_style("series-sparkline--value"))
            text.append("no data yet", label_style)
            return text
        text.append(self.formatter(summary.last)[: VALUE_WIDTH - 1].ljust(VALUE_WIDTH),
                    self.get_component_rich_style("series-sparkline--value"))
        range_text = f" {self.formatter(summary.low if summary.count else None)}–" \
                     f"{self.formatter(summary.high if summary.count else None)}"
        spark_width = width - LABEL_WIDTH - VALUE_WIDTH - len(range_text)
        if spark_width < 8:  # too narrow for both: the curve matters more than the range
            range_text = ""
            spark_width = width - LABEL_WIDTH - VALUE_WIDTH
        bar_style = self.get_component_rich_style("series-sparkline--bar")
        bad_style = self.get_component_rich_style("series-sparkline--bad")
        # one span per run of equal style: a line of 100 spans costs ten times more to draw
        run_chars: list[str] = []
        run_bad = False
        bins = min(spark_width, summary.count) if self.sparse and summary.count else spark_width
        for char, bad in spark_characters(summary.columns(bins), spark_width):
            if bad != run_bad and run_chars:
                text.append("".join(run_chars), bad_style if run_bad else bar_style)
                run_chars = []
            run_chars.append(char)
            run_bad = bad
        if run_chars:
            text.append("".join(run_chars), bad_style if run_bad else bar_style)
        if range_text:
            text.append(range_text, self.get_component_rich_style("series-sparkline--range"))
        return text


# (widget id, label, state attribute, formatter)
RUN_SERIES: tuple[tuple[str, str, str, Callable[[float | None], str]], ...] = (
    ("spark-loss", "loss", "loss_series", format_loss),
    ("spark-loss-avg", "avg loss", "loss_avg_series", format_loss),
    ("spark-loss-epoch", "epoch loss", "loss_epoch_series", format_loss),
    ("spark-lr-unet", "lr unet", "lr_unet_series", format_lr),
    ("spark-lr-te", "lr text", "lr_text_encoder_series", format_lr),
)


class SparklinePanel(Widget):
    """The run's five curves: loss, average loss, loss per epoch, U-Net LR, text-encoder LR."""

    DEFAULT_CSS = """
    SparklinePanel {
        height: auto;
        layout: vertical;
    }
    """

    def compose(self) -> ComposeResult:
        for widget_id, label, _attribute, formatter in RUN_SERIES:
            yield SeriesSparkline(label, formatter, id=widget_id)

    def show(self, state) -> None:
        """Point every sparkline at the series of a `RunState` snapshot."""
        for widget_id, _label, attribute, _formatter in RUN_SERIES:
            self.query_one(f"#{widget_id}", SeriesSparkline).show(getattr(state, attribute))
