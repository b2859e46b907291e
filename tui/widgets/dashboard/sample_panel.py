"""SamplePanel: one sample image of a run, inline, with where it came from and its prompt.

Browsing is the screen's job (its keys are in the footer); the panel only shows the
record it is given: the picture through the shared `ImagePreview`, a line with epoch,
step, prompt number and seed, and the prompt itself.
"""
from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import Static

from engine.run.fold import SampleRecord
from tui.widgets.shared.image_preview import ImagePreview
from tui.widgets.shared.text_line import TextLine


class SamplePanel(Widget):
    DEFAULT_CSS = """
    SamplePanel {
        layout: vertical;
        height: 1fr;
        width: 1fr;
    }
    SamplePanel > ImagePreview { height: 1fr; }
    SamplePanel > #sample-where { height: 1; color: $text-muted; }
    SamplePanel > #sample-prompt { height: auto; max-height: 3; color: $text; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.record: SampleRecord | None = None
        self._shown = False

    def compose(self) -> ComposeResult:
        yield ImagePreview(id="sample-image")
        yield TextLine("no samples yet", id="sample-where")
        yield Static("", id="sample-prompt")

    def show(self, run_dir: Path, record: SampleRecord | None, position: str = "") -> None:
        """Show `record` (a path relative to `run_dir`); `position` says e.g. "2/4"."""
        preview = self.query_one("#sample-image", ImagePreview)
        where = self.query_one("#sample-where", TextLine)
        prompt = self.query_one("#sample-prompt", Static)
        if record == self.record and record is not None:
            where.show(self._where(record, position))
            return
        if record is None and self.record is None and self._shown:
            return
        self.record = record
        self._shown = True
        if record is None:
            preview.path = None
            where.show("no samples yet")
            prompt.update("")
            return
        preview.path = run_dir / record.path
        where.show(self._where(record, position))
        prompt.update(Text(record.prompt + (f"  --n {record.negative_prompt}" if record.negative_prompt else "")))

    @staticmethod
    def _where(record: SampleRecord, position: str) -> str:
        parts = [f"epoch {record.epoch}", f"step {record.step}", f"prompt {position or record.prompt_index + 1}"]
        if record.seed is not None:
            parts.append(f"seed {record.seed}")
        return " · ".join(parts)
