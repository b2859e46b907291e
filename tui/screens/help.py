"""`?`: every key of the current screen and of the app, in one table."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Static


class KeysScreen(ModalScreen[None]):
    CSS_PATH = "help.tcss"
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, under: Screen):
        super().__init__()
        self.under = under

    def compose(self) -> ComposeResult:
        with Vertical(id="keys-box"):
            yield Static("Keys", id="keys-title")
            yield DataTable(id="keys-table", cursor_type="row", zebra_stripes=True)
            yield Static("escape closes · ctrl+p opens the command palette", id="keys-hint")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("Key", "Action", "Where")
        rows = []
        seen = set()
        for key, active in self.under.active_bindings.items():
            binding: Binding = active.binding
            if not binding.description or (key, binding.action) in seen:
                continue
            seen.add((key, binding.action))
            where = "app" if active.node is self.app else type(active.node).__name__
            rows.append((self.app.get_key_display(binding), binding.description, where))
        rows.sort(key=lambda row: (row[2] == "app", row[2], row[0]))
        for row in rows:
            table.add_row(*row)
        table.focus()


class ExplanationScreen(ModalScreen[None]):
    """A page of plain text (how a number on screen was derived); escape closes it."""

    CSS_PATH = "help.tcss"
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, title: str, text: str):
        super().__init__()
        self.title_text = title
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical(id="explain-box"):
            yield Static(self.title_text, id="explain-title")
            with VerticalScroll(id="explain-body"):
                yield Static(self.text, id="explain-text", markup=False)
            yield Static("escape closes", id="keys-hint")
