"""The loradeck App: four screens (health, captions, config, runs), themes, global keys.

Screens live in tui/screens/, widgets in tui/widgets/. Every screen is built with the
workspace: `SomeScreen(workspace)`. The app never imports torch or the HF stack.
"""
from __future__ import annotations

import importlib
import time
from collections import deque
from functools import partial
from pathlib import Path
from typing import Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from engine.config.workspace import Workspace
from engine.errors import LoradeckError, first_line
from tui.run_state import Notice
from tui.themes import DEFAULT_THEME, load_settings, load_themes, save_setting
from tui.workers import WorkFailed

# textual-image asks the terminal about graphics support when imported; that only works
# before Textual takes over stdin (else the answer arrives as keystrokes), so the shared
# image widget is imported here, before any app runs.
import tui.widgets.shared.image_preview  # noqa: E402,F401

# mode name -> (module, class, key, title)
SCREENS: dict[str, tuple[str, str, str, str]] = {
    "health": ("tui.screens.health", "HealthScreen", "1", "Health"),
    "captions": ("tui.screens.captions", "CaptionsScreen", "2", "Captions"),
    "config": ("tui.screens.config", "ConfigScreen", "3", "Config"),
    "runs": ("tui.screens.runs", "RunsScreen", "4", "Runs"),
}
SCREEN_HELP = {
    "health": "Find corrupt, rotated, duplicate and low-resolution images; fix or quarantine them",
    "captions": "Review and edit every caption with the image on screen; auto-caption",
    "config": "Every training setting, checked as you type, with the run's numbers",
    "runs": "Runs of this workspace; attach to the live dashboard",
}
SCREEN_KEYS = Binding.Group("Screens", compact=True)
MAX_APP_NOTICES = 100


def _screen_factory(app: "LoradeckApp", mode: str):
    module_name, class_name, _key, _title = SCREENS[mode]

    def build():
        module = importlib.import_module(module_name)
        return getattr(module, class_name)(app.workspace)

    return build


class LoradeckApp(App):
    TITLE = "loradeck"
    CSS_PATH = "app.tcss"
    # screens restyle themselves below 110 columns (phones, split tmux panes, 80x24)
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    # the four screen keys share one footer entry ("1234 Screens") so that `?` and `q` still
    # fit an 80-column footer; `?` and the palette list each of them by name
    BINDINGS = [
        Binding(key, f"show('{mode}')", title, group=SCREEN_KEYS)
        for mode, (_module, _class, key, title) in SCREENS.items()
    ] + [
        Binding("question_mark", "keys", "Keys"),
        Binding("ctrl+p", "command_palette", "Palette", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, workspace: Workspace, *, start_screen: str | None = None,
                 image_protocol: str | None = None, attach_run: Path | None = None,
                 theme: str | None = None):
        super().__init__()
        self.workspace = workspace
        self.image_protocol = image_protocol
        self.attach_run = attach_run
        remembered = workspace.load_state("app").get("screen")
        self.start_screen = start_screen or (remembered if remembered in SCREENS else "health")
        self.theme_problems = []
        self._requested_theme = theme
        self.notices: deque[Notice] = deque(maxlen=MAX_APP_NOTICES)  # errors of background work, newest last
        for mode in SCREENS:
            self.add_mode(mode, _screen_factory(self, mode))

    # ---- start-up

    def on_mount(self) -> None:
        themes, self.theme_problems = load_themes()
        for theme in themes:
            self.register_theme(theme)
        wanted = self._requested_theme or load_settings().get("theme") or DEFAULT_THEME
        self.theme = wanted if wanted in self.available_themes else DEFAULT_THEME
        for problem in self.theme_problems:
            self.notify(f"{problem.path}: {problem.message}", title="Theme not loaded", severity="warning")
        self.switch_mode(self.start_screen)
        if not self.workspace.config_path.exists() and self.attach_run is None:
            from tui.screens.welcome import WelcomeScreen

            self.push_screen(WelcomeScreen(self.workspace), self._after_welcome)

    def _after_welcome(self, created: bool | None) -> None:
        if created:
            self.notify(f"Workspace ready: {self.workspace.config_path}", title="loradeck")

    def watch_theme(self, theme: str) -> None:
        if self.is_mounted and theme in self.available_themes:
            save_setting("theme", theme)

    # ---- failed background work: the one handler (tui/workers.py)

    def on_work_failed(self, message: WorkFailed) -> None:
        error = message.error
        line = str(error) if isinstance(error, LoradeckError) else f"{type(error).__name__}: {first_line(error)}"
        self.notices.append(Notice(time.time(), "error", line, message.trace))
        self.notify(line, title="Background work failed", severity="error", timeout=10)

    def action_notices(self) -> None:
        from tui.screens.help import ExplanationScreen

        lines = [f"{time.strftime('%H:%M:%S', time.localtime(notice.time))}  {notice.text}" for notice in self.notices]
        self.push_screen(ExplanationScreen("Notices: errors of background work, newest last",
                                           "\n".join(lines) or "none so far"))

    # ---- navigation

    def action_show(self, mode: str) -> None:
        if self.current_mode != mode:
            self.switch_mode(mode)
        self.workspace_state_set(screen=mode)

    def workspace_state_set(self, **values) -> None:
        state = self.workspace.load_state("app")
        state.update(values)
        try:
            self.workspace.save_state("app", state)
        except OSError:
            pass  # a read-only workspace can still be viewed

    def action_keys(self) -> None:
        from tui.screens.help import KeysScreen

        if not isinstance(self.screen, KeysScreen):
            self.push_screen(KeysScreen(self.screen))

    # ---- command palette: every screen, every theme, every key of the current screen

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for mode, (_module, _class, key, title) in SCREENS.items():
            yield SystemCommand(f"Go to {title}", f"{SCREEN_HELP[mode]}  [{key}]", partial(self.action_show, mode))
        for name in sorted(self.available_themes):
            yield SystemCommand(f"Theme: {name}", "Switch theme (remembered)", partial(setattr, self, "theme", name))
        yield SystemCommand("Notices", "Errors of background work this session (each was shown once)",
                            self.action_notices)
        seen = {"show", "keys", "quit", "command_palette"}
        for key, active in screen.active_bindings.items():
            binding = active.binding
            action = binding.action
            if not binding.description or action.split("(")[0] in seen:
                continue
            seen.add(action.split("(")[0])
            yield SystemCommand(
                binding.description,
                f"key: {self.get_key_display(binding)}",
                partial(self.run_action, action, active.node),
            )


def make_app(workspace: str | Path, *, start_screen: str | None = None,
             image_protocol: str | None = None, attach_run: str | Path | None = None,
             theme: str | None = None) -> LoradeckApp:
    """The one factory used by the CLI and by tests."""
    return LoradeckApp(
        Workspace.at(workspace),
        start_screen=start_screen,
        image_protocol=image_protocol,
        attach_run=Path(attach_run) if attach_run else None,
        theme=theme,
    )
