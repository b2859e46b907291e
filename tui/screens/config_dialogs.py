"""Small modal dialogs of the config screen: pick one of a list, type a path, pick a
setting's choice, jump to a setting."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.fuzzy import Matcher
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from engine.config.schema import FieldSpec
from tui.key_order import BindingsInOrder
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


class _PickDialog(ModalScreen[None]):
    """A dialog that hands its answer to `on_pick` synchronously, with the keys typed after
    enter or escape held until the answer has moved the focus (tui.key_order): a value typed
    right after picking reaches the picked setting, however busy the machine is."""

    CSS_PATH = "config.tcss"
    BINDINGS = [
        Binding("enter", "pick", "Choose", priority=True),
        Binding("escape", "cancel", "Cancel", priority=True),
    ]

    def __init__(self, on_pick: Callable[[Any], None]):
        super().__init__(classes="config-dialog")
        self._on_pick = on_pick
        self._answered = False

    @classmethod
    def open(cls, app, *args, **kwargs) -> None:
        """Push the dialog; keys typed while it opens are held for its search box or list."""
        app.hold_keys()
        app.push_screen(cls(*args, **kwargs))

    def on_mount(self) -> None:
        # (Textual runs this and each subclass's on_mount)
        self.set_focus(self._input_widget())
        self.app.release_keys()

    def _answer(self) -> Any:
        raise NotImplementedError

    def _input_widget(self) -> Widget:
        raise NotImplementedError

    def _close(self, pick: bool) -> None:
        if self._answered:
            return
        self._answered = True

        def close() -> None:
            answer = self._answer() if pick else None
            self.dismiss()
            if answer is not None:
                self._on_pick(answer)

        self.app.hold_keys_until(self._input_widget(), close)

    def action_pick(self) -> None:
        self._close(True)

    def action_cancel(self) -> None:
        self._close(False)


class ChoiceList(BindingsInOrder, OptionList):
    """A list whose up/down move the highlight in the order typed (before a quick enter)."""


class ChoicesDialog(_PickDialog):
    """The choices of one setting; enter picks the highlighted one."""

    def __init__(self, title: str, choices: list[Any], current: Any, on_pick: Callable[[Any], None]):
        super().__init__(on_pick)
        self._title = title
        self._choices = choices
        self._current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Static(self._title, classes="dialog-title")
            yield ChoiceList(*[str(choice) for choice in self._choices], id="choices")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.highlighted = self._choices.index(self._current) if self._current in self._choices else 0

    def _input_widget(self) -> Widget:
        return self.query_one(OptionList)

    def _answer(self) -> Any:
        index = self.query_one(OptionList).highlighted
        return self._choices[index] if index is not None else None


class JumpQuery(BindingsInOrder, Input):
    """The jump dialog's search box. Up/down pick another match; both they and the typing are
    handled here, in the order typed, so enter always takes what the user saw picked."""

    BINDINGS = [Binding("down", "move(1)", show=False), Binding("up", "move(-1)", show=False)]

    choice = 0  # which match: 0 the best; back to 0 when the text changes

    def watch_value(self, _value: str) -> None:
        self.choice = 0

    def action_move(self, step: int) -> None:
        self.choice = max(0, self.choice + step)
        self.screen.call_later(self.screen.show_choice)


class JumpDialog(_PickDialog):
    """Type part of a setting's name; enter jumps to the best match (up/down pick another)."""

    def __init__(self, specs: list[FieldSpec], on_pick: Callable[[str], None]):
        super().__init__(on_pick)
        self._specs = specs

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Static("Jump to a setting", classes="dialog-title")
            yield JumpQuery(placeholder="part of its name, e.g. lr sch", id="jump-query")
            yield OptionList(id="jump-hits")
            yield Static("enter edits it · ↑↓ another match · escape cancels", classes="dialog-hint")

    def on_mount(self) -> None:
        self._show_hits("")

    def matches(self, query: str) -> list[FieldSpec]:
        """Settings whose label or key match `query` fuzzily, best first (schema order on ties)."""
        if not query.strip():
            return list(self._specs)
        matcher = Matcher(query)
        scored = [(matcher.match(f"{spec.label} · {spec.key}"), order, spec) for order, spec in enumerate(self._specs)]
        return [spec for score, _order, spec in sorted(scored, key=lambda item: (-item[0], item[1])) if score > 0]

    def _show_hits(self, query: str) -> None:
        hits = self.query_one(OptionList)
        hits.clear_options()
        hits.add_options([f"{spec.label} · {spec.key}" for spec in self.matches(query)])
        self.show_choice()

    def show_choice(self) -> None:
        hits = self.query_one(OptionList)
        if hits.option_count:
            hits.highlighted = min(self.query_one(JumpQuery).choice, hits.option_count - 1)

    def on_input_changed(self, event: Input.Changed) -> None:
        self._show_hits(event.value)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.query_one(JumpQuery).choice = event.option_index  # a click
        self._close(True)

    def _input_widget(self) -> Widget:
        return self.query_one(JumpQuery)

    def _answer(self) -> str | None:
        # from the query and moves as typed, not from a list that may not have caught up
        query = self.query_one(JumpQuery)
        hits = self.matches(query.value)
        return hits[min(query.choice, len(hits) - 1)].key if hits else None
