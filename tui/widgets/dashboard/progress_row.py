"""ProgressRow: one line `label ━━━━━━╸────── detail`, the bar taking the width left.

Textual's ProgressBar keeps its own clock for the ETA; a run's ETA comes from the
engine's measured speed, so this row only draws what it is given.
"""
from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

LABEL_WIDTH = 9


class ProgressRow(Widget):
    COMPONENT_CLASSES = {"progress-row--label", "progress-row--done", "progress-row--left", "progress-row--detail"}

    DEFAULT_CSS = """
    ProgressRow {
        height: 1;
        width: 1fr;
    }
    ProgressRow > .progress-row--label { color: $text-muted; }
    ProgressRow > .progress-row--done { color: $accent; }
    ProgressRow > .progress-row--left { color: $panel-lighten-2; }
    ProgressRow > .progress-row--detail { color: $text; }
    """

    def __init__(self, label: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.label = label
        self.done = 0.0
        self.total = 0.0
        self.detail = ""

    def show(self, done: float, total: float, detail: str, label: str | None = None) -> None:
        new = (done, total, detail, label or self.label)
        if new != (self.done, self.total, self.detail, self.label):
            self.done, self.total, self.detail, self.label = new
            self.refresh()

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="crop")
        label = self.label.ljust(LABEL_WIDTH - 1) + " "
        text.append(label, self.get_component_rich_style("progress-row--label"))
        detail = f" {self.detail}" if self.detail else ""
        bar_width = max(0, self.size.width - len(label) - len(detail))
        fraction = min(1.0, max(0.0, self.done / self.total)) if self.total else 0.0
        halves = int(fraction * bar_width * 2)
        full, half = divmod(halves, 2)
        text.append("━" * full + ("╸" if half else ""), self.get_component_rich_style("progress-row--done"))
        text.append("─" * (bar_width - full - half), self.get_component_rich_style("progress-row--left"))
        text.append(detail, self.get_component_rich_style("progress-row--detail"))
        return text
