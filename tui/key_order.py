"""Keys reach what the user sees focused, in the order typed, at any machine load.

Textual hands each key to whatever has focus *when the app reads the key*, while a widget
handles it later, in its own queue. A key that moves the focus (enter in a dialog, which
closes it) is handled after the app has already handed the next keys on to the old
focus: on a busy machine a value typed right after a jump landed in the jump box, or in
the field that had focus before it. `hold_keys_until` closes that gap: the app keeps
every key that arrives until a widget has handled all it was sent and the new focus is
set, then hands the kept keys on, in order, to what has focus now.

    self.app.hold_keys_until(search_box, self._choose)   # in a priority binding's action
    self.app.hold_keys(); self.app.push_screen(dialog)  # the dialog's on_mount releases them
"""
from __future__ import annotations

from typing import Callable

from textual import events
from textual.app import App
from textual.message import Message
from textual.widget import Widget


class KeysReleased(Message):
    """Posted to the app when a hold ends; it reaches the app after every key kept so far."""


class OrderedKeys(App):
    """An App whose key-moving actions can hold the keys typed meanwhile (see module doc)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._held_keys: list[events.Key] | None = None
        self._holds = 0

    def hold_keys(self) -> None:
        """Keep the keys that arrive from now on until as many `release_keys` calls."""
        if self._held_keys is None:
            self._held_keys = []
        self._holds += 1

    def release_keys(self) -> None:
        """Hand the kept keys on (to what has focus when the app reads this release)."""
        self.post_message(KeysReleased())

    def hold_keys_until(self, widget: Widget, then: Callable[[], object]) -> None:
        """Keep incoming keys until `widget` (and, after it, its screen) has handled what it
        was sent, then run `then` (which moves the focus) and hand the kept keys on."""
        self.hold_keys()

        def after_screen() -> None:
            try:
                then()
            finally:
                self.release_keys()

        # the widget's own queue first (the keys typed into it), then its screen's (what
        # those keys posted: changes, bubbled keys)
        widget.call_later(lambda: widget.screen.call_later(after_screen))

    async def on_event(self, event: events.Event) -> None:
        if self._held_keys is not None and isinstance(event, events.Key) and not event.is_forwarded:
            self._held_keys.append(event)
            return
        await super().on_event(event)

    async def on_keys_released(self, message: KeysReleased) -> None:
        self._holds -= 1
        if self._holds > 0 or self._held_keys is None:
            return
        held, self._held_keys = self._held_keys, None
        for index, key in enumerate(held):
            if self._held_keys is not None:  # a kept key started a new hold: keep the rest for it
                self._held_keys[:0] = held[index:]
                return
            await App.on_event(self, key)


class BindingsInOrder:
    """For a text widget (Input, TextArea): its own key bindings run when it reads the key.

    Textual types a printable key at once but runs a widget's bindings (end, ctrl+u, …) when
    the key has bubbled up to the app. In a quick `end ctrl+u 3 0` the digits were typed
    first and ctrl+u then cleared them: the field showed its default and the value was gone.
    Mixed in before the widget class: `class SettingInput(BindingsInOrder, Input)` (a plain
    class, so Textual's CSS still sees an Input)."""

    async def _on_key(self, event: events.Key) -> None:
        bindings = self._bindings.key_to_bindings.get(event.key)  # type: ignore[attr-defined]
        if bindings and self.check_action(bindings[0].action.partition("(")[0], ()) is not False:  # type: ignore[attr-defined]
            event.stop()
            event.prevent_default()
            await self.run_action(bindings[0].action)  # type: ignore[attr-defined]
            return
        await super()._on_key(event)  # type: ignore[misc]
