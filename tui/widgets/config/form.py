"""ConfigForm: every training setting as a keyboard form, generated from the config schema.

One `SettingLine` per setting, grouped like `engine.config.schema.GROUPS`. A line is one
widget that draws its label, its value and its message (an error, a warning or a hint)
itself: the form is about a hundred plain widgets, not five hundred nested ones, so it
mounts in a fraction of the time (bench/config_form.py). A line is edited in place:

- text and numbers: `enter` (or a click) opens an `Input` over the value; sample prompts
  open a `TextArea`. The editor exists only while it is used.
- on/off: `enter` or `space` toggles. Choices: `left`/`right` step through them, `enter`
  opens the list.

While a line (not an editor) has focus every key is a screen key (`/`, `1`-`4`, `q`, …);
while an editor has focus keys type into it, and `escape` leaves it. Moving between
settings is done by the screen (tui.screens.config) as priority bindings, so that a key
typed right after `tab` or `escape` goes where the user sees the focus, at any load.

Attributes down, messages up: the parent sets values (`set_raw`) and messages
(`show_message`); the form posts `Edited` when the user changes a value, `FieldFocused`
when a setting gets focus and `ChoicesRequested` when a list of choices should open.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterable

from rich.style import Style
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.suggester import Suggester
from textual.widget import Widget
from textual.widgets import Input, Static, TextArea

from engine.config.schema import GROUPS, FieldSpec
from tui.config_state import MULTILINE, SELECT, SWITCH, editor_kind
from tui.key_order import BindingsInOrder

LABEL_WIDTH = 24
NARROW_LABEL_WIDTH = 16  # below 110 columns (the screen's -narrow class)
PROMPT_LINES_SHOWN = 5
# A line's parts are styled here, from the theme's colours (component classes per part
# would make Textual style every line seven times over, on every screen resume and resize):
# muted parts are dim text of the widget's own colour, errors and warnings the theme's.
MESSAGE_COLORS = {"error": "error", "warning": "warning", "hint": None}


class PathSuggester(Suggester):
    """Completes the file or folder name being typed (relative paths from `base_dir`)."""

    def __init__(self, base_dir: Path):
        super().__init__(use_cache=False, case_sensitive=True)
        self.base_dir = Path(base_dir)

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        folder_text, _, partial = value.rpartition("/")
        folder = Path(os.path.expanduser(folder_text + "/" if folder_text else "."))
        if not folder.is_absolute():
            folder = self.base_dir / folder
        try:
            names = sorted(entry.name + ("/" if entry.is_dir() else "")
                           for entry in os.scandir(folder) if entry.name.startswith(partial))
        except OSError:
            return None
        names = [name for name in names if not name.startswith(".") or partial.startswith(".")]
        return value + names[0][len(partial):] if names else None


class SettingInput(BindingsInOrder, Input):
    """The editor of a text or number setting (keys handled strictly in the order typed)."""


class PromptsEditor(BindingsInOrder, TextArea):
    """The editor of the sample prompts (keys handled strictly in the order typed)."""


def editor_id(key: str) -> str:
    return "setting-" + key.replace(".", "--")


def shown_value(spec: FieldSpec, raw: Any) -> str:
    """The value as a line shows it (the editor shows the raw text itself)."""
    kind = editor_kind(spec)
    if kind == SWITCH:
        return "■ on" if raw else "□ off"  # words, not only colour: monochrome terminals, captures
    if kind == SELECT:
        return f"{raw} ▾"
    return str(raw)


class SettingLine(Widget, can_focus=True):
    """One setting: label, value and a message line, drawn by this one widget."""

    def __init__(self, spec: FieldSpec, raw: Any, base_dir: Path):
        super().__init__(classes="setting", id=f"line-{spec.key.replace('.', '--')}")
        self.spec = spec
        self.raw = raw
        self.kind = editor_kind(spec)
        self._base_dir = base_dir
        self.message = ("", "")
        self.editor: Input | TextArea | None = None

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def editable(self) -> bool:
        """Edited in an editor (text, numbers, prompts), not toggled or chosen in place."""
        return self.kind not in (SWITCH, SELECT)

    # ---- drawing

    def _label_width(self) -> int:
        narrow = self.is_attached and self.screen.has_class("-narrow")
        return NARROW_LABEL_WIDTH if narrow else LABEL_WIDTH

    def _style(self, variable: str | None, **extra) -> Style:
        """A theme colour ($error, $warning: plain colours in every theme), or dim text."""
        if variable is None:
            return Style(dim=True, **extra)
        return Style(color=self.app.theme_variables.get(variable), **extra)

    def _value_lines(self) -> list[Text]:
        """The value, one line (a long path ends in …; the editor and help panel show it
        whole), or the first prompts; a placeholder when empty."""
        text = shown_value(self.spec, self.raw)
        if not text:
            placeholder = "unset" if self.spec.optional else (
                "default: " + str(self.spec.default) if self.spec.default != "" else "empty")
            return [Text(placeholder, style=self._style(None, italic=True))]
        if self.kind != MULTILINE:
            return [Text(text)]
        lines = text.splitlines()
        shown = [Text(line) for line in lines[:PROMPT_LINES_SHOWN]]
        if len(lines) > PROMPT_LINES_SHOWN:
            shown.append(Text(f"… {len(lines) - PROMPT_LINES_SHOWN} more lines", style=self._style(None)))
        return shown

    def _editor_rows(self) -> int:
        return PROMPT_LINES_SHOWN if self.kind == MULTILINE else 1

    def _message_lines(self, width: int) -> list[str]:
        text, _kind = self.message
        return textwrap.wrap(text, max(8, width - self._label_width() - 1)) if text else []

    def get_content_height(self, container, viewport, width: int) -> int:
        # counted, not rendered: the form lays out a hundred lines on every reflow
        rows = self._editor_rows() if self.editor is not None else len(self._value_lines())
        return rows + len(self._message_lines(width))

    def render(self) -> Text:
        width = self.content_size.width
        label_width = self._label_width()
        focused = self.has_focus or self.editor is not None
        if self.has_class("-invalid"):
            label_style = self._style("error", bold=focused)
        else:
            label_style = Style(bold=True) if focused else self._style(None)
        label = Text(self.spec.label, style=label_style)
        label.truncate(label_width, overflow="ellipsis", pad=True)
        indent = " " * (label_width + 1)
        # the editor, when open, sits over the value column: its rows stay blank beneath it
        values = [Text("")] * self._editor_rows() if self.editor is not None else self._value_lines()
        rows = [Text.assemble(label if index == 0 else indent, " " if index == 0 else "", value)
                for index, value in enumerate(values)]
        _text, kind = self.message
        rows += [Text(indent + line, style=self._style(MESSAGE_COLORS[kind])) for line in self._message_lines(width)]
        for row in rows:
            row.truncate(width, overflow="ellipsis")
        return Text("\n").join(rows)

    # ---- values and messages from the parent

    def set_raw(self, raw: Any) -> None:
        """Show a value without posting a change (it came from the parent, not the user)."""
        self.raw = raw
        editor = self.editor
        if isinstance(editor, TextArea) and editor.text != raw:
            with editor.prevent(TextArea.Changed):
                editor.load_text(raw)
        elif isinstance(editor, Input) and editor.value != raw:
            with editor.prevent(Input.Changed):
                editor.value = raw
                editor.cursor_position = len(raw)
        self.refresh(layout=self.kind == MULTILINE)

    def show_message(self, text: str, kind: str = "error") -> None:
        """An inline reason ("error"), a warning ("warning") or a hint ("hint"); "" clears it."""
        if self.message == (text, kind):
            return
        rows_before = len(self._message_lines(self.content_size.width))
        self.message = (text, kind)
        self.set_class(bool(text) and kind == "error", "-invalid")
        self.set_class(bool(text) and kind == "warning", "-warning")
        # a reflow of the whole form only when this line's height changes
        self.refresh(layout=len(self._message_lines(self.content_size.width)) != rows_before)

    # ---- editing

    def start_editing(self) -> Widget:
        """Open the editor over the value and give it focus now (not after a refresh: the
        next key the user typed must reach it). Returns the editor."""
        if self.editor is None:
            if self.kind == MULTILINE:
                self.editor = PromptsEditor(self.raw, soft_wrap=True, compact=True, tab_behavior="focus",
                                            id=editor_id(self.key), classes="setting-editor")
            else:
                spec = self.spec
                placeholder = "unset" if spec.optional else ("default: " + str(spec.default) if spec.default != "" else "")
                self.editor = SettingInput(value=self.raw, placeholder=placeholder, compact=True,
                                           suggester=PathSuggester(self._base_dir) if spec.path else None,
                                           id=editor_id(spec.key), classes="setting-editor")
            self.mount(self.editor)
            self.add_class("-editing")
            self.refresh(layout=True)
        self.screen.set_focus(self.editor)
        return self.editor

    def stop_editing(self) -> None:
        """Close the editor once it has handled every key already sent to it (a value typed
        just before `tab` or `escape` is never dropped)."""
        editor, self.editor = self.editor, None
        if editor is None:
            return
        self.remove_class("-editing")
        self.refresh(layout=True)
        editor.call_later(editor.remove)

    def toggle(self) -> None:
        if self.kind == SWITCH:
            self._user_changed(not self.raw)

    def step_choice(self, step: int) -> None:
        if self.kind == SELECT:
            choices = list(self.spec.choices)
            index = choices.index(self.raw) if self.raw in choices else 0
            self._user_changed(choices[(index + step) % len(choices)])

    def _user_changed(self, raw: Any) -> None:
        self.raw = raw
        self.refresh()
        self.post_message(ConfigForm.Edited(self.key, raw))

    # ---- events

    # an editor being closed still counts: it handles the keys typed before the close
    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._edited(event.value)

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        event.stop()
        self._edited(event.text_area.text)

    def _edited(self, raw: str) -> None:
        self.raw = raw
        self.refresh(layout=self.kind == MULTILINE)
        self.post_message(ConfigForm.Edited(self.key, raw))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()  # enter leaves the field (the screen's binding); nothing to submit

    def on_descendant_blur(self, event: events.DescendantBlur) -> None:
        if event.widget is self.editor and self.screen.focused is not self.editor:
            self.stop_editing()  # focus went elsewhere: a click, another screen's dialog

    def on_focus(self) -> None:
        self.refresh()  # the label turns bold
        self.post_message(ConfigForm.FieldFocused(self.key))

    def on_blur(self) -> None:
        self.refresh()

    def on_descendant_focus(self) -> None:
        self.post_message(ConfigForm.FieldFocused(self.key))

    def on_click(self, event: events.Click) -> None:
        event.stop()
        if self.editable:
            self.start_editing()
        elif self.kind == SWITCH:
            self.screen.set_focus(self)
            self.toggle()
        else:
            self.screen.set_focus(self)
            self.post_message(ConfigForm.ChoicesRequested(self.key))


class ConfigForm(VerticalScroll, can_focus=False):
    """Every setting of `specs`, grouped, showing `raw` values."""

    class Edited(Message):
        """The user changed a setting."""

        def __init__(self, key: str, raw: Any):
            super().__init__()
            self.key = key
            self.raw = raw

    class FieldFocused(Message):
        def __init__(self, key: str):
            super().__init__()
            self.key = key

    class ChoicesRequested(Message):
        """The user asked for the list of a setting's choices."""

        def __init__(self, key: str):
            super().__init__()
            self.key = key

    network_type: reactive[str] = reactive("lora")
    """The chosen network type: settings of other types are hidden (FieldSpec.applies_to)."""
    family: reactive[str] = reactive("")
    """The model family the config trains: other families' settings (and a group left empty)
    are hidden (FieldSpec.applies_to_family)."""

    def __init__(self, specs: Iterable[FieldSpec], raw: dict[str, Any], base_dir: Path, **kwargs):
        super().__init__(**kwargs)
        self.rows: dict[str, SettingLine] = {}
        self._groups: list[list[Widget]] = []  # each group's title and lines, in order
        for group, title in GROUPS.items():
            lines = [SettingLine(spec, raw[spec.key], base_dir) for spec in specs if spec.group == group]
            if lines:
                self.rows.update((line.key, line) for line in lines)
                self._groups.append([Static(title, classes="group-title", id=f"group-{group}"), *lines])
        self._later: list[Widget] = []
        self._when_complete: list[Callable[[], object]] = []

    def compose(self) -> ComposeResult:
        # the groups that fill the first screen now, the others just after it is drawn
        rows = 0
        for widgets in self._groups:
            if rows < self.app.size.height:
                yield from widgets
            else:
                self._later.extend(widgets)
            rows += len(widgets) + 1

    def on_mount(self) -> None:
        if self._later:
            self.call_after_refresh(self._mount_later)

    async def _mount_later(self) -> None:
        widgets, self._later = self._later, []
        await self.mount_all(widgets)
        self.watch_network_type(self.network_type)
        callbacks, self._when_complete = self._when_complete, []
        for callback in callbacks:
            callback()

    @property
    def complete(self) -> bool:
        """Every setting is mounted (from just after the first frame on)."""
        return not self._later

    def when_complete(self, callback: Callable[[], object]) -> None:
        """Run `callback` once every setting is mounted (now, if they are)."""
        if self.complete:
            callback()
        else:
            self._when_complete.append(callback)

    def watch_network_type(self, network_type: str) -> None:
        for line in self.rows.values():
            line.set_class(not line.spec.applies_to(network_type), "-other-network")

    def watch_family(self, family: str) -> None:
        shown_groups = set()
        for row in self.rows.values():
            other = bool(family) and not row.spec.applies_to_family(family)
            row.set_class(other, "-other-family")
            if not other:
                shown_groups.add(row.spec.group)
        for title, *_ in self._groups:  # mounted or not yet (the form mounts in two parts)
            title.set_class(title.id.removeprefix("group-") not in shown_groups, "-other-family")

    def set_raw(self, key: str, raw: Any) -> None:
        self.rows[key].set_raw(raw)

    def show_message(self, key: str, text: str, kind: str = "error") -> None:
        self.rows[key].show_message(text, kind)

    def shown_lines(self) -> list[SettingLine]:
        """The lines of the settings that apply, in order (what tab and the arrows step through)."""
        return [
            line
            for line in self.rows.values()
            if line.is_attached and not line.has_class("-other-network") and not line.has_class("-other-family")
        ]

    def line_of(self, widget: Widget | None) -> SettingLine | None:
        """The line a focused widget (a line or its editor) belongs to."""
        while widget is not None and widget is not self:
            if isinstance(widget, SettingLine):
                return widget
            widget = widget.parent  # type: ignore[assignment]
        return None

    def focus_setting(self, key: str, *, edit: bool = False) -> Widget:
        """Focus a setting now (its editor with `edit`, for text); returns what got focus."""
        line = self.rows[key]
        target = line.start_editing() if edit and line.editable else line
        if target is line:
            self.screen.set_focus(line, scroll_visible=False)
        self.scroll_to_center(line, animate=False)
        return target

    def step(self, from_widget: Widget | None, step: int) -> Widget | None:
        """Focus the next (step 1) or previous (-1) setting, leaving any editor."""
        lines = self.shown_lines()
        if not lines:
            return None
        current = self.line_of(from_widget)
        if current is not None:
            current.stop_editing()
        index = lines.index(current) + step if current in lines else (0 if step > 0 else len(lines) - 1)
        line = lines[max(0, min(index, len(lines) - 1))]
        self.screen.set_focus(line)
        return line
