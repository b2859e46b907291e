"""The loradeck App: four screens (health, captions, config, runs), themes, global keys.

Screens live in tui/screens/, widgets in tui/widgets/. Every screen is built with the
workspace: `SomeScreen(workspace)`. The app never imports torch or the HF stack.
"""
from __future__ import annotations

import importlib
import inspect
import sys
import time
from collections import deque
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Input

from engine.config.workspace import Workspace
from engine.errors import LoradeckError, first_line
from tui import terminal_graphics
from tui.key_order import OrderedKeys
from tui.themes import DEFAULT_THEME, load_settings, load_themes, save_setting
from tui.workers import WorkFailed

if TYPE_CHECKING:  # the run state (and the plan code it reads) is the dashboard's, not the first frame's
    from tui.run_state import Notice

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
ATTACHED_MODE = "attached-run"  # `loradeck attach RUN`: that run's dashboard, on its own
PRELOAD_AFTER_S = 1.5  # after start-up: the first screen is drawn and its own work (a scan) has begun
PRELOAD_GAP_S = 0.1  # one screen module at a time, so a key pressed meanwhile waits little
MAX_APP_NOTICES = 100


def _screen_factory(app: "LoradeckApp", mode: str):
    module_name, class_name, _key, _title = SCREENS[mode]

    def build():
        module = importlib.import_module(module_name)
        return app.with_width_class(getattr(module, class_name)(app.workspace))

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
        Binding("p", "folders", "Image folders: repeats, a Kohya folder from a flat one", show=False),
        Binding("ctrl+p", "command_palette", "Palette", show=False),
        Binding("q", "quit", "Quit"),
    ]
    farewell: list[str] = []  # printed by the CLI once the terminal is back (live runs going on)

    def __init__(self, workspace: Workspace, *, start_screen: str | None = None,
                 image_protocol: str | None = None, attach_run: Path | None = None,
                 theme: str | None = None):
        super().__init__()
        self.workspace = workspace
        self.image_protocol = image_protocol
        self.attach_run = attach_run
        remembered = workspace.load_state("app").get("screen")
        self.start_screen = start_screen or (remembered if remembered in SCREENS else "health")
        self.notices: deque["Notice"] = deque(maxlen=MAX_APP_NOTICES)  # errors of background work, newest last
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
        if self.attach_run is not None:
            self._open_attached_run(self.attach_run)
        else:
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

    def _open_attached_run(self, run_dir: Path) -> None:
        """`loradeck attach RUN`: the run's dashboard is the first screen, in a mode of its
        own, so nothing else (the runs list, its table and refresh) is built before it is
        drawn. Leaving it (escape) goes to the runs list; `4` from another screen comes back."""
        from tui.screens.dashboard import DashboardScreen

        self.add_mode(ATTACHED_MODE, lambda: self.with_width_class(DashboardScreen(self.workspace, run_dir)))
        self.switch_mode(ATTACHED_MODE)

    def with_width_class(self, screen: Screen) -> Screen:
        """`screen` with its width class (HORIZONTAL_BREAKPOINTS) set before it is first
        styled. Textual sets it at the screen's first resize, just before its first frame,
        which restyled every widget of the screen once more (a tenth of a second on a
        dashboard)."""
        width = self.size.width
        for minimum, name in sorted(self.HORIZONTAL_BREAKPOINTS, reverse=True):
            if width >= minimum:
                screen.add_class(name, update=False)
                break
        return screen

    def leave_attached_run(self) -> None:
        """Escape on the attached dashboard: the runs list, and the dashboard is closed."""
        self.switch_mode("runs")
        self.workspace_state_set(screen="runs")
        if ATTACHED_MODE in self._modes:
            self.remove_mode(ATTACHED_MODE)

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

    def _after_welcome(self, created: "bool | Path | None") -> None:
        if created:
            self.notify(f"Workspace ready: {self.workspace.config_path}", title="loradeck")
        if isinstance(created, Path):  # a flat folder of images: build its Kohya folder now
            self.action_folders(created)

    def watch_theme(self, theme: str) -> None:
        if self.is_mounted and theme in self.available_themes:
            save_setting("theme", theme)

    # ---- failed background work: the one handler (tui/workers.py)

    def on_work_failed(self, message: WorkFailed) -> None:
        from tui.run_state import Notice

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
        # the runs key leads back to an attached run's dashboard while it is open
        shown = ATTACHED_MODE if mode == "runs" and ATTACHED_MODE in self._modes else mode
        if self.current_mode != shown:
            self.switch_mode(shown)
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
        if action in ("show", "keys", "quit") and _is_text_field(self.focused):
            return False
        return super().check_action(action, parameters)

    def action_folders(self, source: Path | None = None) -> None:
        from tui.screens.folders import FoldersScreen

        if not isinstance(self.screen, FoldersScreen):
            self.push_screen(FoldersScreen(self.workspace, source=source))

    def action_keys(self) -> None:
        from tui.screens.help import KeysScreen

        if not isinstance(self.screen, KeysScreen):
            self.push_screen(KeysScreen(self.screen))

    # ---- quitting: a live run goes on, and the user is told how to come back to it

    async def action_quit(self) -> None:
        from engine.run.next_steps import shown_path

        live = live_runs(self.workspace.runs_dir)
        if not live:
            self.exit()
            return
        self.farewell = [f"{run.name} goes on training (its engine is its own process). "
                         f"Re-attach: loradeck attach {shown_path(run.path, Path.cwd())}" for run in live]
        self.farewell.append(f"or open the workspace again: loradeck {shown_path(self.workspace.root, Path.cwd())}, "
                             "then 4 (Runs)")

        def answered(yes: bool | None) -> None:
            if yes:
                self.exit()
            else:
                self.farewell = []

        from tui.screens.confirm import ConfirmScreen

        self.push_screen(ConfirmScreen("Quit loradeck?\n\n" + "\n".join(self.farewell)), answered)

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


def _is_text_field(widget) -> bool:
    """An Input or a TextArea. TextArea (with its document and syntax modules) is imported
    by the screens that use one, not for the first frame: until then nothing is one."""
    text_area = sys.modules.get("textual.widgets._text_area")
    return isinstance(widget, (Input, text_area.TextArea) if text_area else Input)


def live_runs(runs_dir: Path) -> list:
    """The runs (RunDir) of the workspace whose engine is alive (a listdir and a pid check each)."""
    from engine.run.folder import RunDir

    try:
        folders = sorted(runs_dir.iterdir())
    except OSError:
        return []
    return [run for run in map(RunDir, folders) if run.pid_file.exists() and run.engine_alive()]


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
