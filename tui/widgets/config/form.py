"""ConfigForm: every training setting as a keyboard form, generated from the config schema.

One row per setting (label, editor, message line), grouped like `engine.config.schema.GROUPS`.
The editor follows the schema entry: a Switch for on/off, a Select for choices, a
TextArea for multi-line text, an Input otherwise (with path completion for paths).

Attributes down, messages up: the parent sets values (`set_raw`) and messages
(`show_message`) without re-mounting anything; the form posts `Edited` when the user
changes an editor and `FieldFocused` when an editor gets focus.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.suggester import Suggester
from textual.widget import Widget
from textual.widgets import Input, Select, Static, Switch, TextArea

from engine.config.schema import GROUPS, FieldSpec
from tui.config_state import MULTILINE, SELECT, SWITCH, editor_kind

EDITOR_CHANGES = (Input.Changed, Switch.Changed, Select.Changed, TextArea.Changed)


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


class OnOffSwitch(Switch):
    """A one-line switch that says "on" or "off" (a slider alone is only colour, which
    is lost in monochrome terminals and screen captures). Space or enter toggles it."""

    def render(self) -> str:
        return "■ on" if self.value else "□ off"


def editor_id(key: str) -> str:
    return "setting-" + key.replace(".", "--")


class SettingRow(Widget):
    """Label, editor and a message line (an error, or a hint) for one setting."""

    def __init__(self, spec: FieldSpec, raw: Any, base_dir: Path):
        super().__init__(classes="setting")
        self.spec = spec
        self._initial = raw
        self._base_dir = base_dir
        self._message = ("", "")

    @property
    def key(self) -> str:
        return self.spec.key

    def compose(self) -> ComposeResult:
        spec = self.spec
        yield Static(spec.label, classes="setting-label")
        kind = editor_kind(spec)
        if kind == SWITCH:
            yield OnOffSwitch(value=self._initial, id=editor_id(spec.key), classes="setting-editor")
        elif kind == SELECT:
            options = [(str(choice), choice) for choice in spec.choices]
            yield Select(options, value=self._initial, allow_blank=False, compact=True,
                         id=editor_id(spec.key), classes="setting-editor")
        elif kind == MULTILINE:
            yield TextArea(self._initial, soft_wrap=True, compact=True, tab_behavior="focus",
                           id=editor_id(spec.key), classes="setting-editor")
        else:
            placeholder = "unset" if spec.optional else ("default: " + str(spec.default) if spec.default != "" else "")
            yield Input(value=self._initial, placeholder=placeholder, compact=True,
                        suggester=PathSuggester(self._base_dir) if spec.path else None,
                        id=editor_id(spec.key), classes="setting-editor")
        yield Static("", classes="setting-message", markup=False)

    @property
    def editor(self) -> Widget:
        return self.query_one(".setting-editor")

    def set_raw(self, raw: Any) -> None:
        """Show a value without posting a change (it came from the parent, not the user)."""
        editor = self.editor
        with self.prevent(*EDITOR_CHANGES):
            if isinstance(editor, TextArea):
                if editor.text != raw:
                    editor.load_text(raw)
            elif isinstance(editor, Input):
                if editor.value != raw:
                    editor.value = raw
                    editor.cursor_position = len(raw)
            elif editor.value != raw:
                editor.value = raw

    def show_message(self, text: str, kind: str = "error") -> None:
        """An inline reason (kind "error") or hint ("hint"); "" clears it."""
        if self._message == (text, kind):
            return
        self._message = (text, kind)
        self.query_one(".setting-message", Static).update(text)
        self.set_class(bool(text) and kind == "error", "-invalid")
        self.set_class(bool(text) and kind == "hint", "-hint")

    # the editors' own change messages become one Edited message with the setting key
    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(ConfigForm.Edited(self.key, event.value))

    def on_switch_changed(self, event: Switch.Changed) -> None:
        event.stop()
        self.post_message(ConfigForm.Edited(self.key, event.value))

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if event.value is not Select.BLANK:
            self.post_message(ConfigForm.Edited(self.key, event.value))

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        event.stop()
        self.post_message(ConfigForm.Edited(self.key, event.text_area.text))

    def on_descendant_focus(self) -> None:
        self.post_message(ConfigForm.FieldFocused(self.key))


class ConfigForm(VerticalScroll):
    """Every setting of `specs`, grouped, with their editors showing `raw` values."""

    class Edited(Message):
        """The user changed a setting's editor."""

        def __init__(self, key: str, raw: Any):
            super().__init__()
            self.key = key
            self.raw = raw

    class FieldFocused(Message):
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
        self._specs = list(specs)
        self._raw = raw
        self._base_dir = base_dir
        self.rows: dict[str, SettingRow] = {}

    def compose(self) -> ComposeResult:
        for group, title in GROUPS.items():
            specs = [spec for spec in self._specs if spec.group == group]
            if not specs:
                continue
            yield Static(title, classes="group-title", id=f"group-{group}")
            for spec in specs:
                row = SettingRow(spec, self._raw[spec.key], self._base_dir)
                self.rows[spec.key] = row
                yield row

    def watch_network_type(self, network_type: str) -> None:
        for row in self.rows.values():
            row.set_class(not row.spec.applies_to(network_type), "-other-network")

    def watch_family(self, family: str) -> None:
        shown_groups = set()
        for row in self.rows.values():
            other = bool(family) and not row.spec.applies_to_family(family)
            row.set_class(other, "-other-family")
            if not other:
                shown_groups.add(row.spec.group)
        for title in self.query(".group-title"):
            title.set_class(title.id.removeprefix("group-") not in shown_groups, "-other-family")

    def set_raw(self, key: str, raw: Any) -> None:
        self.rows[key].set_raw(raw)

    def show_message(self, key: str, text: str, kind: str = "error") -> None:
        self.rows[key].show_message(text, kind)

    def focus_setting(self, key: str) -> None:
        row = self.rows[key]
        row.editor.focus(scroll_visible=False)
        self.scroll_to_center(row, animate=False)
