"""ConfirmScreen: a yes/no question in a small modal; dismisses with True or False."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static
from tui.widgets.shared.key_footer import KeyFooter


class ConfirmScreen(ModalScreen[bool]):
    DEFAULT_CSS = """
    ConfirmScreen {
        align: center middle;
    }
    ConfirmScreen > #confirm-box {
        width: 60;
        max-width: 90%;
        height: auto;
        padding: 1 2;
        background: $panel;
        border: thick $warning;
    }
    ConfirmScreen #confirm-hint {
        margin-top: 1;
        color: $text-muted;
    }
    """

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("enter", "answer(True)", "Yes", show=False),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "No", show=False),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Static(self.question, id="confirm-question")
            yield Static("y / enter: yes    n / escape: no", id="confirm-hint")
        yield KeyFooter()

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
