"""RunsScreen: every run of the workspace with its status, refreshed while shown.

A thread worker keeps one `RunFollower` per run folder, so a refresh reads only what
each engine appended since the last one (a stat per run when nothing moved), and posts
the summaries; rows update in place. Enter opens the dashboard, `t` starts training the
workspace config, `r` resumes and `x` stops the run under the cursor; `g` renders its
comparison grid (`loradeck grid` in a subprocess: the app never imports torch) and shows
it, `m` renames it, `d` moves it to the trash (engine.run.manage). Under the table: the
selected run's LoRA file and how to load it. (`loradeck attach RUN_DIR` opens that run's
dashboard without this list: tui/app.py.)
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from tui.workers import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Header, Static
from textual.worker import get_current_worker

from engine.run.format import COLUMNS, summary_row
from engine.errors import LoradeckError
from engine.run.events import CRASHED, FAILED, RUNNING, STOPPED
from engine.run.folder import RunDir, RunFollower, RunSummary
from engine.run.next_steps import how_to_load, lora_file, shown_path
from engine.config.workspace import Workspace
from tui.screens.confirm import ConfirmScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.image_view import ImageViewScreen
from tui.widgets.captions.dialogs import TagPrompt
from tui.widgets.shared.key_footer import KeyFooter

REFRESH_SECONDS = 2.0
RESUMABLE = (STOPPED, CRASHED, FAILED)


def grid_command(run: RunSummary) -> list[str]:
    """`loradeck grid RUN_DIR` (marking the best file when the run has validation losses)."""
    command = [sys.executable, "-m", "tui.cli", "grid", str(run.path)]
    return command + (["--mark-best"] if run.best_validation_so_far else [])


class RunsScreen(Screen):
    CSS_PATH = "runs.tcss"

    BINDINGS = [
        # priority: the table's own (hidden) enter binding would hide "Open" from the footer
        Binding("enter", "open", "Open", priority=True),
        Binding("t", "train", "Train"),
        Binding("r", "resume", "Resume"),
        Binding("x", "stop", "Stop"),
        Binding("g", "grid", "Grid"),
        Binding("m", "rename", "Rename"),
        Binding("d", "delete", "Delete"),
    ]

    class GridDone(Message):
        """The grid subprocess ended: the image, or why there is none."""

        def __init__(self, run_name: str, image: Path | None, problem: str) -> None:
            super().__init__()
            self.run_name, self.image, self.problem = run_name, image, problem

    class GridProgress(Message):
        def __init__(self, line: str) -> None:
            super().__init__()
            self.line = line

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, RunsScreen.GridProgress)

    class Refreshed(Message):
        """The newest summaries of every run; an older pending one is dropped."""

        def __init__(self, runs: list[RunSummary]) -> None:
            super().__init__()
            self.runs = runs

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, RunsScreen.Refreshed)

    def __init__(self, workspace: Workspace) -> None:
        super().__init__()
        self.workspace = workspace
        self.runs: list[RunSummary] = []
        self._wake = threading.Event()
        self._shown = threading.Event()  # the worker idles while a dashboard covers the list
        self._shown.set()
        self._grid_run: str | None = None  # the run whose grid is rendering
        self._grid_line = ""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="runs-where")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="runs-empty")
        yield Static("", id="runs-detail", markup=False)
        yield KeyFooter()

    def on_mount(self) -> None:
        table = self.query_one("#runs-table", DataTable)
        for column in COLUMNS:
            table.add_column(column.lower(), key=column)
        self.query_one("#runs-where", Static).update(f"runs in {self.workspace.runs_dir}")
        self._refresh_runs()

    def on_screen_suspend(self) -> None:
        self._shown.clear()

    def on_screen_resume(self) -> None:
        self._shown.set()
        self._wake.set()

    def on_unmount(self) -> None:
        self._shown.set()
        self._wake.set()

    # ------------------------------------------------------------------ refreshing

    @work(thread=True, exclusive=True, group="runs-refresh")
    def _refresh_runs(self) -> None:
        worker = get_current_worker()
        followers: dict[Path, RunFollower] = {}
        while not worker.is_cancelled:
            while not self._shown.wait(0.5):
                if worker.is_cancelled:
                    return
            runs_dir = self.workspace.runs_dir
            try:
                folders = [runs_dir / name for name in os.listdir(runs_dir)]
            except OSError:
                folders = []
            current = {folder for folder in folders if folder.is_dir() and RunDir(folder).is_run()}
            for gone in set(followers) - current:
                del followers[gone]
            for folder in current - set(followers):
                followers[folder] = RunFollower(folder)
            runs = [follower.refresh() for follower in followers.values()]
            runs.sort(key=lambda run: run.started or 0.0, reverse=True)
            self.post_message(self.Refreshed(runs))
            self._wake.wait(REFRESH_SECONDS)
            self._wake.clear()

    def on_runs_screen_refreshed(self, message: Refreshed) -> None:
        self.runs = message.runs
        table = self.query_one("#runs-table", DataTable)
        wanted = [str(run.path) for run in message.runs]
        existing = [str(key.value) for key in table.rows]
        if wanted != existing:
            selected = self.selected_run()
            table.clear()
            for run in message.runs:
                table.add_row(*summary_row(run), key=str(run.path))
            if selected is not None and str(selected.path) in wanted:
                table.move_cursor(row=wanted.index(str(selected.path)))
        else:
            for run in message.runs:
                for column, value in zip(COLUMNS, summary_row(run)):
                    if table.get_cell(str(run.path), column) != value:
                        table.update_cell(str(run.path), column, value)
        empty = self.query_one("#runs-empty", Static)
        empty.display = not message.runs
        if not message.runs:
            empty.update("No runs yet. Press t to start training the workspace config "
                         f"({self.workspace.config_path.name}).")
        self.refresh_bindings()
        self._show_detail()

    def selected_run(self) -> RunSummary | None:
        table = self.query_one("#runs-table", DataTable)
        if not self.runs or table.cursor_row is None or table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
        return next((run for run in self.runs if str(run.path) == key), None)

    def on_data_table_row_highlighted(self) -> None:
        self.refresh_bindings()
        self._show_detail()

    def _show_detail(self) -> None:
        """The selected run's LoRA file (whole path), how to load it, and why it ended."""
        run = self.selected_run()
        detail = self.query_one("#runs-detail", Static)
        detail.display = run is not None
        if run is None:
            return
        lora = lora_file(RunDir(run.path), run)
        lines = [f"grid: {self._grid_line or 'starting…'}"] if self._grid_run == run.name else []
        if lora is None:
            lines.append(f"{run.name}: no LoRA file yet")
        else:
            shown = shown_path(lora, self.workspace.root)
            lines += [f"LoRA {shown}", how_to_load(lora, shown)]
        if run.message and run.status in (FAILED, CRASHED, STOPPED):
            lines.append(f"{run.status}: {run.message}")
        detail.update("\n".join(lines))

    # ------------------------------------------------------------------ actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("open", "resume", "stop", "grid", "rename", "delete"):
            run = self.selected_run() if self.is_mounted else None
            if run is None:
                return False
            if action == "resume":
                return run.status in RESUMABLE
            if action == "stop":
                return run.status == RUNNING
            if action in ("rename", "delete"):
                return run.status != RUNNING
            if action == "grid":
                return bool(run.last_lora) and self._grid_run is None
        return True

    def on_data_table_row_selected(self, message: DataTable.RowSelected) -> None:
        message.stop()
        self.action_open()

    def action_open(self) -> None:
        run = self.selected_run()
        if run is not None:
            self.app.push_screen(DashboardScreen(self.workspace, run.path))

    def action_stop(self) -> None:
        run = self.selected_run()
        if run is None or run.status != RUNNING:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                RunDir(run.path).request("stop")
                self.notify(f"Stop requested for {run.name}.")
                self._wake.set()

        self.app.push_screen(ConfirmScreen(
            f"Stop {run.name} gracefully?\n\nThe engine finishes the current step, saves the LoRA "
            "and its state, and exits."), answered)

    def action_train(self) -> None:
        config = self.workspace.config_path
        if not config.exists():
            self.notify(f"No {config.name} in {self.workspace.root}: make one on the Config screen (3).",
                        severity="error")
            return
        self.notify(f"Starting training from {config.name}…")
        self._launch(config, None)

    def action_resume(self) -> None:
        run = self.selected_run()
        if run is None or run.status not in RESUMABLE:
            return
        self.notify(f"Resuming {run.name}…")
        self._launch(None, run.path)  # the run's frozen config

    @work(thread=True, exclusive=True, group="runs-launch")
    def _launch(self, config: Path | None, resume: Path | None) -> None:
        from engine.run.launch import start_training

        try:
            run_dir = start_training(config, detach=True, resume=resume)
        except (LoradeckError, OSError) as error:
            self.app.call_from_thread(self.notify, f"could not start: {error}", severity="error")
            return
        self._wake.set()
        self.app.call_from_thread(self.app.push_screen, DashboardScreen(self.workspace, run_dir))

    # ------------------------------------------------------------------ grid, rename, delete

    def action_grid(self) -> None:
        """Render every sample prompt against every LoRA file of the run, then show it."""
        run = self.selected_run()
        if run is None or self._grid_run is not None:
            return

        def render(yes: bool | None = True) -> None:
            if yes:
                self._grid_run, self._grid_line = run.name, ""
                self.refresh_bindings()
                self._show_detail()
                self._render_grid(run)

        if run.status == RUNNING:
            self.app.push_screen(ConfirmScreen(
                f"{run.name} is still training: the grid would share its GPU (and its memory).\n"
                "Render it now?"), render)
        else:
            render()

    @work(thread=True, exclusive=True, group="runs-grid")
    def _render_grid(self, run: RunSummary) -> None:
        try:
            process = subprocess.Popen(grid_command(run), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       stdin=subprocess.DEVNULL, text=True, bufsize=1)
        except OSError as error:
            self.post_message(self.GridDone(run.name, None, f"cannot start the grid: {error}"))
            return
        last = ""
        for line in process.stderr:  # progress: one line per checkpoint, then any error
            if line.strip():
                last = line.strip()
                self.post_message(self.GridProgress(last))
        output = process.stdout.read().strip().splitlines()
        status = process.wait()
        image = Path(output[-1]) if status == 0 and output else None
        self.post_message(self.GridDone(run.name, image, "" if image else last or f"exit status {status}"))

    def on_runs_screen_grid_progress(self, message: GridProgress) -> None:
        self._grid_line = message.line
        self._show_detail()

    def on_runs_screen_grid_done(self, message: GridDone) -> None:
        self._grid_run = None
        self.refresh_bindings()
        self._show_detail()
        if message.image is None:
            self.notify(f"grid of {message.run_name}: {message.problem}", severity="error", timeout=10)
            return
        self.app.push_screen(ImageViewScreen(message.image, f"{message.run_name}: every prompt × every checkpoint"))

    def action_rename(self) -> None:
        run = self.selected_run()
        if run is None or run.status == RUNNING:
            return

        def rename(name: str | None) -> None:
            if not name or name.strip() == run.name:
                return
            from engine.run.manage import rename_run

            try:
                target = rename_run(run.path, name)
            except LoradeckError as error:
                self.notify(str(error), severity="error")
                return
            self.notify(f"{run.name} is now {target.name}")
            self._wake.set()

        # a one-line prompt (no tag suggestions): the run folder's new name
        self.app.push_screen(TagPrompt(f"Rename {run.name}", "the run folder's new name · enter renames · "
                                       "escape keeps it", [], value=run.name), rename)

    def action_delete(self) -> None:
        run = self.selected_run()
        if run is None or run.status == RUNNING:
            return

        def delete(yes: bool | None) -> None:
            if not yes:
                return
            from engine.run.manage import trash_run

            try:
                target = trash_run(run.path)
            except LoradeckError as error:
                self.notify(str(error), severity="error")
                return
            self.notify(f"{run.name} moved to {shown_path(target, self.workspace.root)} (delete it there to free "
                        "the space)", timeout=8)
            self._wake.set()

        self.app.push_screen(ConfirmScreen(
            f"Move {run.name} to the trash?\n\nIt goes to {self.workspace.runs_dir.name}/.trash/ with its LoRA "
            "files, samples and state; nothing is deleted."), delete)
