"""The loradeck App: four screens (health, captions, config, runs), themes, global keys.

Screens live in tui/screens/, widgets in tui/widgets/. Every screen is built with the
workspace: `SomeScreen(workspace)`. The app never imports torch or the HF stack.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from textual.app import App
from textual.binding import Binding

from engine.workspace import Workspace

# textual-image asks the terminal about graphics support when imported; that only works
# before Textual takes over stdin, so the shared image widget is imported here, early.
import tui.widgets.image_preview  # noqa: E402,F401

# mode name -> (module, class, key, title)
SCREENS: dict[str, tuple[str, str, str, str]] = {
    "health": ("tui.screens.health", "HealthScreen", "1", "Health"),
    "captions": ("tui.screens.captions", "CaptionsScreen", "2", "Captions"),
    "config": ("tui.screens.config", "ConfigScreen", "3", "Config"),
    "runs": ("tui.screens.runs", "RunsScreen", "4", "Runs"),
}


def _screen_factory(app: "LoradeckApp", mode: str):
    module_name, class_name, _key, _title = SCREENS[mode]

    def build():
        module = importlib.import_module(module_name)
        return getattr(module, class_name)(app.workspace)

    return build


class LoradeckApp(App):
    TITLE = "loradeck"
    CSS_PATH = "app.tcss"
    BINDINGS = [
        Binding(key, f"show('{mode}')", title, priority=False)
        for mode, (_m, _c, key, title) in SCREENS.items()
    ] + [
        Binding("question_mark", "show_help", "Keys"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, workspace: Workspace, *, start_screen: str | None = None,
                 image_protocol: str | None = None, attach_run: Path | None = None):
        super().__init__()
        self.workspace = workspace
        self.image_protocol = image_protocol
        self.attach_run = attach_run
        self.start_screen = start_screen or "health"
        for mode in SCREENS:
            self.add_mode(mode, _screen_factory(self, mode))

    def on_mount(self) -> None:
        self.switch_mode(self.start_screen)

    def action_show(self, mode: str) -> None:
        if self.current_mode != mode:
            self.switch_mode(mode)

    def action_show_help(self) -> None:
        self.action_show_help_panel()


def make_app(workspace: str | Path, *, start_screen: str | None = None,
             image_protocol: str | None = None, attach_run: str | Path | None = None) -> LoradeckApp:
    """The one factory used by the CLI and by tests."""
    return LoradeckApp(
        Workspace.at(workspace),
        start_screen=start_screen,
        image_protocol=image_protocol,
        attach_run=Path(attach_run) if attach_run else None,
    )
