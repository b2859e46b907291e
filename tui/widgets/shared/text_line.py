"""TextLine: one line of text that redraws without a layout pass.

`Static.update` always asks for a new layout of the whole screen, which is the main
cost of a dashboard that changes a few lines every second; a line of fixed height
only needs its own repaint.
"""
from __future__ import annotations

from rich.text import Text
from textual.widget import Widget


class TextLine(Widget):
    DEFAULT_CSS = """
    TextLine {
        height: 1;
        width: 1fr;
    }
    """

    def __init__(self, text: str | Text = "", *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._text: str | Text = text

    @property
    def text(self) -> str:
        return self._text.plain if isinstance(self._text, Text) else self._text

    def show(self, text: str | Text) -> None:
        if text != self._text:
            old_length = len(self._text)
            self._text = text
            # an auto-width line (a badge) needs a layout pass only when its length changes
            width = self.styles.width
            self.refresh(layout=width is not None and width.is_auto and len(text) != old_length)

    def render(self) -> Text:
        text = self._text if isinstance(self._text, Text) else Text(self._text)
        text.no_wrap = True
        text.overflow = "ellipsis"
        return text
