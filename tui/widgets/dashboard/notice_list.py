"""NoticeList: a run's warnings, errors (with their traceback), control outcomes and ends.

Newest last, scrolled to the end; rebuilt only when the run's notice counter moves.
"""
from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from tui.run_state import Notice

LEVEL_MARKS = {"error": "✖", "warning": "▲", "control": "›", "info": "·"}


class NoticeList(VerticalScroll):
    COMPONENT_CLASSES = {"notice-list--error", "notice-list--warning", "notice-list--control",
                         "notice-list--info", "notice-list--time", "notice-list--detail"}

    DEFAULT_CSS = """
    NoticeList { height: 1fr; }
    NoticeList > Static { width: 1fr; }
    NoticeList > .notice-list--error { color: $error; text-style: bold; }
    NoticeList > .notice-list--warning { color: $warning; }
    NoticeList > .notice-list--control { color: $success; }
    NoticeList > .notice-list--info { color: $text; }
    NoticeList > .notice-list--time { color: $text-muted; }
    NoticeList > .notice-list--detail { color: $text-muted; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._version = -1
        self._notices: list[Notice] = []

    def compose(self) -> ComposeResult:
        yield Static("no warnings or errors", id="notice-text")

    def on_mount(self) -> None:
        # the text carries the theme's colours: render it again when the theme changes
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self._repaint())

    def show(self, notices, version: int) -> None:
        if version == self._version:
            return
        self._version = version
        self._notices = list(notices)
        self._repaint()
        self.scroll_end(animate=False)

    def _repaint(self) -> None:
        self.query_one("#notice-text", Static).update(self._render_notices(self._notices))

    def _render_notices(self, notices: list[Notice]) -> Text:
        if not notices:
            return Text("no warnings or errors", style=self.get_component_rich_style("notice-list--time"))
        text = Text()
        time_style = self.get_component_rich_style("notice-list--time")
        detail_style = self.get_component_rich_style("notice-list--detail")
        for notice in notices:
            stamp = time.strftime("%H:%M:%S", time.localtime(notice.time)) if notice.time else "--:--:--"
            text.append(f"{stamp} ", time_style)
            level_style = self.get_component_rich_style(f"notice-list--{notice.level}")
            text.append(f"{LEVEL_MARKS.get(notice.level, '·')} {notice.text}\n", level_style)
            if notice.detail:
                text.append(notice.detail.rstrip("\n") + "\n", detail_style)
        text.rstrip()
        return text
