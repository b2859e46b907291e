"""The loradeck App: four screens (health, captions, config, runs), themes, global keys.

Screens live in tui/screens/, widgets in tui/widgets/. Every screen is built with the
workspace: `SomeScreen(workspace)`. The app never imports torch or the HF stack.
"""
from __future__ import annotations

import importlib
import inspect
from functools import partial
from pathlib import Path
from typing import Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Input, TextArea

from engine.config.workspace import Workspace
from tui import terminal_graphics
from tui.key_order import OrderedKeys
from tui.themes import DEFAULT_THEME, load_settings, load_themes, save_setting

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
PRELOAD_AFTER_S = 1.5  # after start-up: the first screen is drawn and its own work (a scan) has begun
PRELOAD_GAP_S = 0.1  # one screen module at a time, so a key pressed meanwhile waits little


def _screen_factory(app: "LoradeckApp", mode: str):
    module_name, class_name, _key, _title = SCREENS[mode]

    def build():
        module = importlib.import_module(module_name)
        return getattr(module, class_name)(app.workspace)

    return build


class LoradeckApp(OrderedKeys, App):
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
        for mode in SCREENS:
            self.add_mode(mode, _screen_factory(self, mode))
        # the theme is set before the app starts: its styles are then parsed once, not
        # parsed and parsed again for the theme chosen
        themes, self.theme_problems = load_themes()
        for loaded in themes:
            self.register_theme(loaded)
        wanted = theme or load_settings().get("theme") or DEFAULT_THEME
        self.theme = wanted if wanted in self.available_themes else DEFAULT_THEME

    # ---- start-up

    def run(self, *args, **kwargs):
        # what the terminal can draw must be asked before Textual reads the keyboard
        terminal_graphics.probe()
        return super().run(*args, **kwargs)

    def on_mount(self) -> None:
        for problem in self.theme_problems:
            self.notify(f"{problem.path}: {problem.message}", title="Theme not loaded", severity="warning")
        self.switch_mode(self.start_screen)
        if not self.workspace.config_path.exists() and self.attach_run is None:
            from tui.screens.welcome import WelcomeScreen

            self.push_screen(WelcomeScreen(self.workspace), self._after_welcome)
        # the other screens' code and styles are read once the first screen is up, while the
        # user looks at it: the first `3` then builds the config screen without importing its
        # code or re-reading every style sheet of the app (which Textual does for a new one)
        self._screens_to_preload = [mode for mode in SCREENS if mode != self.start_screen]
        if self.attach_run is None:  # attaching, the CPU is the replay's
            self.set_timer(PRELOAD_AFTER_S, self._preload_next_screen)

    def _preload_next_screen(self) -> None:
        if not self._screens_to_preload:
            # the new rules are for widgets not built yet: no need to restyle the ones shown
            self.stylesheet.reparse()
            return
        module_name, class_name, _key, _title = SCREENS[self._screens_to_preload.pop(0)]
        screen_class = getattr(importlib.import_module(module_name), class_name)
        folder = Path(inspect.getfile(screen_class)).parent
        paths = screen_class.CSS_PATH if isinstance(screen_class.CSS_PATH, list) else [screen_class.CSS_PATH]
        for path in filter(None, paths):
            if not self.stylesheet.has_source(str(folder / path), ""):
                self.stylesheet.read(folder / path)
        self.set_timer(PRELOAD_GAP_S, self._preload_next_screen)

    def _after_welcome(self, created: bool | None) -> None:
        if created:
            self.notify(f"Workspace ready: {self.workspace.config_path}", title="loradeck")

    def watch_theme(self, theme: str) -> None:
        if self.is_mounted and theme in self.available_themes:
            save_setting("theme", theme)

    # ---- navigation

    def action_show(self, mode: str) -> None:
        if self.current_mode != mode:
            self.switch_mode(mode)
        self.workspace_state_set(screen=mode)

    def workspace_state_set(self, **values) -> None:
        # in a thread: a synced write costs tens of ms that a screen switch should not wait for
        self.run_worker(partial(self._save_workspace_state, values), thread=True, group="app-state")

    def _save_workspace_state(self, values: dict) -> None:
        state = self.workspace.load_state("app")
        state.update(values)
        try:
            self.workspace.save_state("app", state)
        except OSError:
            pass  # a read-only workspace can still be viewed

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # while a text field has focus the keys type into it: the footer offers no screen keys
        if action in ("show", "keys", "quit") and isinstance(self.focused, (Input, TextArea)):
            return False
        return super().check_action(action, parameters)

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
