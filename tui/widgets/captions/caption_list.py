"""The image list of the caption editor: one line per image, drawn only where visible.

A virtual list (ScrollView + render_line): 10,000 or 100,000 rows cost nothing until
they scroll into view, where OptionList would measure every row up front. The screen
sets `session` and `rows` (the filtered entry indices); the list posts `CursorMoved`.
"""
from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from engine.dataset.caption_edits import CaptionSession

REVIEWED_MARK = "✓"
UNCAPTIONED_MARK = "∅"
PLAIN_MARK = "·"


class CaptionFileList(ScrollView, can_focus=True):
    DEFAULT_CSS = """
    CaptionFileList {
        height: 1fr;
        width: 1fr;
    }
    CaptionFileList > .caption-list--cursor {
        background: $accent 40%;
        text-style: bold;
    }
    CaptionFileList:focus > .caption-list--cursor {
        background: $accent;
        color: $text;
    }
    CaptionFileList > .caption-list--reviewed {
        color: $success;
    }
    CaptionFileList > .caption-list--uncaptioned {
        color: $warning;
    }
    """
    COMPONENT_CLASSES = {
        "caption-list--cursor",
        "caption-list--reviewed",
        "caption-list--uncaptioned",
    }
    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
    ]

    cursor: reactive[int] = reactive(0, always_update=True)

    class CursorMoved(Message):
        def __init__(self, row: int, index: int | None) -> None:
            super().__init__()
            self.row = row
            self.index = index

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.session: CaptionSession | None = None
        self.rows: list[int] = []

    # ---- data from the screen

    def show_rows(self, session: CaptionSession | None, rows: list[int], cursor: int = 0) -> None:
        self.session = session
        self.rows = rows
        self.virtual_size = Size(self.size.width, len(rows))
        self.cursor = cursor
        self.refresh()

    @property
    def current_index(self) -> int | None:
        if 0 <= self.cursor < len(self.rows):
            return self.rows[self.cursor]
        return None

    def refresh_index(self, index: int) -> None:
        """Redraw the line of one entry (its marks changed)."""
        try:
            row = self.rows.index(index) if self.current_index != index else self.cursor
        except ValueError:
            return
        self._refresh_row(row)

    # ---- cursor

    def validate_cursor(self, cursor: int) -> int:
        if not self.rows:
            return 0
        return max(0, min(len(self.rows) - 1, cursor))

    def watch_cursor(self, old: int, new: int) -> None:
        self._refresh_row(old)
        self._refresh_row(new)
        self._scroll_to_cursor()
        self.post_message(self.CursorMoved(new, self.current_index))

    def _scroll_to_cursor(self) -> None:
        height = self.scrollable_content_region.height
        if height <= 0:
            return
        top = self.scroll_offset.y
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False, immediate=True)

    def _refresh_row(self, row: int) -> None:
        y = row - self.scroll_offset.y
        if 0 <= y < self.size.height:
            self.refresh(Region(0, y, self.size.width, 1))

    def action_cursor(self, step: int) -> None:
        self.cursor += step

    def action_page(self, direction: int) -> None:
        self.cursor += direction * max(1, self.scrollable_content_region.height - 1)

    def action_jump(self, row: int) -> None:
        self.cursor = row if row >= 0 else len(self.rows) - 1

    def on_resize(self) -> None:
        self.virtual_size = Size(self.size.width, len(self.rows))
        self._scroll_to_cursor()

    async def _on_click(self, event: events.Click) -> None:
        self.cursor = self.scroll_offset.y + event.y

    # ---- drawing

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        row = self.scroll_offset.y + y
        base = self.rich_style
        if row >= len(self.rows) or self.session is None:
            return Strip.blank(width, base)
        index = self.rows[row]
        entry = self.session.entries[index]
        reviewed = self.session.is_reviewed(index)
        captioned = entry.is_captioned if entry.loaded else entry.file.has_caption
        if reviewed:
            mark, mark_style = REVIEWED_MARK, self.get_component_rich_style("caption-list--reviewed")
        elif not captioned:
            mark, mark_style = UNCAPTIONED_MARK, self.get_component_rich_style("caption-list--uncaptioned")
        else:
            mark, mark_style = PLAIN_MARK, Style()
        line_style = base
        if row == self.cursor:
            line_style = base + self.get_component_rich_style("caption-list--cursor")
        name = entry.relative
        room = max(0, width - 2)
        if len(name) > room:
            # Keep the file name, shorten the folder part: the end is what differs.
            name = "…" + name[len(name) - room + 1:] if room > 1 else name[:room]
        segments = [
            Segment(mark, line_style + mark_style),
            Segment(" ", line_style),
            Segment(name.ljust(room), line_style),
        ]
        return Strip(segments, width)
