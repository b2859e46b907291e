"""Small modal dialogs of the config screen: pick one of a list, type a path."""
from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from tui.widgets.config.form import PathSuggester


class ChoiceDialog(ModalScreen[str | None]):
    """A titled list; enter returns the chosen option's id, escape returns None."""

    CSS_PATH = "config.tcss"
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, title: str, options: list[tuple[str, str]], hint: str = ""):
        super().__init__(classes="config-dialog")
        self._title = title
        self._options = options  # (id, prompt)
        self._hint = hint

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Static(self._title, classes="dialog-title")
            yield OptionList(*[Option(prompt, id=option_id) for option_id, prompt in self._options])
            if self._hint:
                yield Static(self._hint, classes="dialog-hint")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)


class PathDialog(ModalScreen[str | None]):
    """Type a file path (completed from the file system; → accepts a completion)."""

    CSS_PATH = "config.tcss"
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, title: str, base_dir: Path, hint: str = ""):
        super().__init__(classes="config-dialog")
        self._title = title
        self._base_dir = base_dir
        self._hint = hint

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Static(self._title, classes="dialog-title")
            yield Input(placeholder="path/to/file.json", suggester=PathSuggester(self._base_dir))
            yield Static(self._hint or "enter opens it · → completes · escape cancels", classes="dialog-hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value.strip() or None)
