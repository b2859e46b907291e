"""DashboardScreen: one run, live: progress, curves, samples, checkpoints, notices, log.

Opening it replays the run's history and then follows it (`RunTailer`); closing it, or
quitting the app, leaves the run alone: the engine is its own process and the only
thing the dashboard ever writes is a control request file (stop, save, sample).
Failures are loud: a red banner says failed/crashed/NaN/disk full/stalled, the log tab
comes forward, and `r` resumes a stopped, crashed or failed run.
"""
from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from tui.workers import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Log, Static, TabbedContent, TabPane

from engine.errors import LoradeckError
from engine.run.format import format_bytes, format_clock, format_duration, format_loss, format_speed
from engine.run.events import CRASHED, FAILED, FINISHED, RUNNING, SAMPLING, STARTING, STOPPED, TRAINING
from engine.run.folder import RunDir
from engine.run.next_steps import ending_lines, is_demo
from engine.config.workspace import Workspace
from engine.run.fold import SampleRecord
from tui.run_state import RunState
from tui.screens.confirm import ConfirmScreen
from tui.screens.run_plot import RunPlotScreen
from tui.widgets.dashboard.notice_list import NoticeList
from tui.widgets.dashboard.phase_row import PHASE_WORDS, PhaseRow
from tui.widgets.dashboard.progress_row import ProgressRow
from tui.widgets.dashboard.run_tailer import LOG_TAIL_LINES, RunTailer, RunView
from tui.widgets.dashboard.sample_panel import SamplePanel
from tui.widgets.dashboard.sparkline_panel import SparklinePanel
from tui.widgets.dashboard.validation_panel import ValidationPanel
from tui.widgets.shared.text_line import TextLine
from tui.widgets.shared.key_footer import KeyFooter

TABS = ("tab-notices", "tab-checkpoints", "tab-log")
# actions that need a live engine / a finished-but-resumable run
LIVE_ACTIONS = ("stop", "save", "sample")


def group_samples(samples) -> list[list[SampleRecord]]:
    """Samples taken together (same step) as one group, oldest group first."""
    groups: list[list[SampleRecord]] = []
    for record in samples:
        if groups and groups[-1][0].step == record.step and groups[-1][0].epoch == record.epoch:
            groups[-1].append(record)
        else:
            groups.append([record])
    for group in groups:
        group.sort(key=lambda r: r.prompt_index)
    return groups


EPOCH_KEYS = Binding.Group("Epoch", compact=True)
PROMPT_KEYS = Binding.Group("Prompt", compact=True)


class DashboardScreen(Screen):
    CSS_PATH = "dashboard.tcss"

    BINDINGS = [
        Binding("escape", "back", "Runs"),
        Binding("x", "stop", "Stop"),
        Binding("c", "save", "Save"),
        Binding("n", "sample", "Sample"),
        Binding("s", "skip_sample", "Skip sample"),
        Binding("r", "resume", "Resume"),
        Binding("g", "plot", "Plot"),
        # one footer entry per pair (the footer must fit 80 columns); `?` lists both keys
        Binding("left_square_bracket", "sample_group(-1)", "Previous epoch", group=EPOCH_KEYS),
        Binding("right_square_bracket", "sample_group(1)", "Next epoch", group=EPOCH_KEYS),
        Binding("comma", "sample_prompt(-1)", "Previous prompt", group=PROMPT_KEYS),
        Binding("full_stop", "sample_prompt(1)", "Next prompt", group=PROMPT_KEYS),
        Binding("t", "next_tab", "Panel"),
        # shown in `?` and the palette; the footer has no room left at 80 columns
        Binding("v", "focus_validation", "Validation (then ? explains the advice)", show=False),
    ]

    def __init__(self, workspace: Workspace, run_dir: str | Path) -> None:
        super().__init__()
        self.workspace = workspace
        self.run = RunDir(Path(run_dir).expanduser().resolve())
        self.view: RunView | None = None
        self._groups: list[list[SampleRecord]] = []
        self._samples_version = -1
        self._group_index = -1  # -1: follow the newest samples
        self._prompt_index = 0
        self._checkpoints_key: tuple | None = None
        self._log_version = -1
        self._status: str | None = None
        self._phase = ""
        self._alerts_key: tuple | None = None
        self._ending_key: tuple | None = None
        self._plot: RunPlotScreen | None = None

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        with Horizontal(id="dash-head"):
            yield TextLine("…", id="dash-badge")
            yield TextLine(f"{self.run.name} · reading events…", id="dash-status")
        yield Static("", id="dash-alerts")
        yield Static("", id="dash-ending")
        with Vertical(id="dash-top"):
            yield ProgressRow("epoch", id="dash-epoch")
            yield ProgressRow("step", id="dash-step")
            yield PhaseRow(id="dash-phase")
            yield SparklinePanel(id="dash-sparklines")
            yield ValidationPanel(id="dash-validation")
            yield TextLine("", id="dash-speed")
        with Horizontal(id="dash-bottom"):
            yield SamplePanel(id="dash-samples")
            with TabbedContent(id="dash-tabs", initial="tab-notices"):
                with TabPane("Notices", id="tab-notices"):
                    yield NoticeList(id="dash-notices")
                with TabPane("Checkpoints", id="tab-checkpoints"):
                    yield DataTable(id="dash-checkpoints", cursor_type="row", zebra_stripes=True)
                with TabPane("Log", id="tab-log"):
                    yield Log(id="dash-log", max_lines=LOG_TAIL_LINES, auto_scroll=True)
        yield RunTailer(self.run.path, id="dash-tailer")
        yield KeyFooter()

    def on_mount(self) -> None:
        table = self.query_one("#dash-checkpoints", DataTable)
        table.add_columns("file", "epoch", "step", "size")
        self._tailer = self.query_one("#dash-tailer", RunTailer)
        self.query_one("#dash-samples", SamplePanel).border_title = "samples"
        # elapsed time and "last step Ns ago" move with the clock, not with events
        self.set_interval(1.0, self._tick)
        # a long history's preview is in the first frame (its replay follows)
        preview = self._tailer.first_view()
        if preview is not None:
            self._show_view(preview)

    # ------------------------------------------------------------------ updates

    def on_run_tailer_updated(self, message: RunTailer.Updated) -> None:
        message.stop()
        self._show_view(message.view)

    def _show_view(self, view: RunView) -> None:
        self.view = view
        state = view.state
        self._show_status(view)
        self._show_alerts(view)
        self._show_ending(view)
        self._show_progress(state, view.health.status)
        self._show_phase(view)
        self.query_one("#dash-sparklines", SparklinePanel).show(state)
        self.query_one("#dash-validation", ValidationPanel).show(state)
        self._show_speed(state)
        self._show_samples(state)
        self._show_checkpoints(state, view.missing_checkpoints)
        self.query_one("#dash-notices", NoticeList).show(state.notices, state.notices_version)
        self._show_log(view)
        status = view.health.status
        if status != self._status and view.replayed is None:
            if status in (FAILED, CRASHED):
                # the message is in the banner; what led to it is at the end of the log
                self.query_one("#dash-tabs", TabbedContent).active = "tab-log"
            self._status = status
            self.refresh_bindings()
        if state.phase != self._phase:
            self._phase = state.phase  # skip is offered while sampling only
            self.refresh_bindings()
        if self._plot is not None and self._plot.is_attached:
            self._plot.show_state(state)
        if view.replayed is not None:
            self.call_after_refresh(self._tailer.drawn)

    def _tick(self) -> None:
        if self.view is not None and self.view.health.status in (RUNNING, STARTING):
            self._show_status(self.view)
            self._show_phase(self.view)

    def _show_phase(self, view: RunView) -> None:
        self.query_one("#dash-phase", PhaseRow).show_phase(view.state, view.health.status in (RUNNING, STARTING))

    def _show_status(self, view: RunView) -> None:
        state, status = view.state, view.health.status
        badge = self.query_one("#dash-badge", TextLine)
        if badge.text != f" {status.upper()} ":
            badge.show(f" {status.upper()} ")
            badge.set_classes(f"-{status}")
        parts = [state.run_name or self.run.name]
        if state.model_family:
            parts.append(state.model_family)
        if state.device:
            precision = "fp32" if state.precision in ("no", "") else state.precision  # accelerate's "no"
            parts.append(f"{state.device} {precision}")
        if state.started is not None:
            end = state.ended if state.ended is not None else (time.time() if status == RUNNING else state.last_event_time)
            parts.append(f"started {format_clock(state.started)}, {format_duration((end or state.started) - state.started)}")
        if status == RUNNING and state.phase not in ("", TRAINING) and state.phase_since is not None:
            # caching or sampling for minutes is not a stall: say what it is doing instead
            parts.append(f"{PHASE_WORDS.get(state.phase, (state.phase,))[0]} for "
                         f"{format_duration(time.time() - state.phase_since)}")
        elif status == RUNNING and state.last_step_time is not None and state.step:
            parts.append(f"last step {format_duration(time.time() - state.last_step_time)} ago")
        if state.starts > 1:
            parts.append(f"resumed ×{state.starts - 1}")
        if view.replayed is not None:
            parts.append(f"replaying history {view.replayed:.0%}")
        for request in view.pending:
            parts.append(f"{request} requested…")
        if view.skipped_lines:
            parts.append(f"{view.skipped_lines} damaged lines skipped")
        self.query_one("#dash-status", TextLine).show(" · ".join(parts))

    def _show_alerts(self, view: RunView) -> None:
        health = view.health
        if health.key() == self._alerts_key:
            return  # Static.update costs a layout pass: only when the banner changes
        self._alerts_key = health.key()
        alerts = self.query_one("#dash-alerts", Static)
        if not health.alerts:
            alerts.set_classes("")
            alerts.update("")
            return
        level = "error" if any(kind == "error" for kind, _ in health.alerts) else "warning"
        lines = [text for _kind, text in health.alerts]
        if health.can_resume:
            lines[0] += "  —  press r to resume"
        alerts.update(Text("\n".join(lines)))
        alerts.set_classes(f"-{level}")

    def _show_ending(self, view: RunView) -> None:
        """A finished or stopped run: where its LoRA is, how to load it, what to try next."""
        status = view.health.status
        key = (status, view.state.last_lora, view.state.checkpoints_version)
        if key == self._ending_key:
            return
        self._ending_key = key
        ending = self.query_one("#dash-ending", Static)
        ending.display = status in (FINISHED, STOPPED) and view.replayed is None
        if ending.display:
            lines = ending_lines(self.run, view.state, root=self.workspace.root, demo=is_demo(self.workspace))
            if status == STOPPED:
                lines[-1] = "Next: r resumes the run where it stopped"
            ending.update(Text("\n".join(lines)))

    def _show_progress(self, state: RunState, status: str) -> None:
        done, per_epoch = state.epoch_step
        epochs = f"/{state.epochs}" if state.epochs else ""
        self.query_one("#dash-epoch", ProgressRow).show(
            done, per_epoch, f"{done}/{per_epoch}" if per_epoch else "", label=f"epoch {state.epoch}{epochs}")
        eta = state.eta_seconds() if status == RUNNING else None
        detail = [f"{state.step}/{state.total_steps}" if state.total_steps else f"{state.step}"]
        detail.append(format_speed(state.steps_per_s))
        if eta is not None:
            detail.append(f"ETA {format_duration(eta)}")
        self.query_one("#dash-step", ProgressRow).show(state.step, state.total_steps, " ".join(detail))

    def _show_speed(self, state: RunState) -> None:
        parts = []
        if state.images_per_s:
            parts.append(f"{state.images_per_s:.2f} img/s")
        if state.gpu_memory_mb is not None:
            total = f"/{state.gpu_memory_total_mb / 1024:.1f}" if state.gpu_memory_total_mb else ""
            parts.append(f"GPU memory {state.gpu_memory_mb / 1024:.1f}{total} GiB")
        if state.gpu_util is not None:
            parts.append(f"GPU {state.gpu_util:.0f}%")
        if state.warnings:
            parts.append(f"{state.warnings} warnings")
        speed = self.query_one("#dash-speed", TextLine)
        speed.show(" · ".join(parts))
        if speed.display != bool(parts):
            speed.display = bool(parts)

    # ------------------------------------------------------------------ samples

    def _show_samples(self, state: RunState) -> None:
        if state.samples_version != self._samples_version:
            self._samples_version = state.samples_version
            self._groups = group_samples(state.samples)
        self._draw_sample()

    def _current_group(self) -> int:
        if not self._groups:
            return -1
        if self._group_index < 0:
            return len(self._groups) - 1
        return min(self._group_index, len(self._groups) - 1)

    def _draw_sample(self) -> None:
        panel = self.query_one("#dash-samples", SamplePanel)
        index = self._current_group()
        if index < 0:
            panel.show(self.run.path, None)
            return
        group = self._groups[index]
        self._prompt_index = min(self._prompt_index, len(group) - 1)
        record = group[self._prompt_index]
        following = " (newest)" if self._group_index < 0 else f" (set {index + 1}/{len(self._groups)})"
        panel.show(self.run.path, record, f"{self._prompt_index + 1}/{len(group)}{following}")

    def action_sample_group(self, delta: int) -> None:
        if not self._groups:
            return
        index = self._current_group() + delta
        # stepping past the newest set goes back to following new samples
        self._group_index = -1 if index >= len(self._groups) - 1 and delta > 0 else max(0, index)
        self._draw_sample()

    def action_sample_prompt(self, delta: int) -> None:
        index = self._current_group()
        if index < 0:
            return
        self._prompt_index = (self._prompt_index + delta) % len(self._groups[index])
        self._draw_sample()

    # ------------------------------------------------------------------ lists

    def _show_checkpoints(self, state: RunState, missing: frozenset[str]) -> None:
        key = (state.checkpoints_version, missing)
        if key == self._checkpoints_key:
            return
        self._checkpoints_key = key
        table = self.query_one("#dash-checkpoints", DataTable)
        # a run with validation gets a column of each file's validation loss, the best marked
        scored = any(record.validation_loss is not None for record in state.checkpoints)
        if scored != (len(table.columns) == 5):
            table.clear(columns=True)
            table.add_columns("file", "epoch", "step", "size", *(["val loss"] if scored else []))
        table.clear()
        best = state.best_checkpoint()
        for record in reversed(state.checkpoints):
            name = Path(record.path).name + (" (state)" if record.kind != "lora" else "") + (" final" if record.final else "")
            size = "removed" if record.path in missing else format_bytes(record.bytes)
            cells = [name, str(record.epoch), str(record.step), size]
            if scored:
                loss = "" if record.validation_loss is None else format_loss(record.validation_loss)
                cells.append(loss + (" ★ best" if record is best else ""))
            table.add_row(*cells)

    def _show_log(self, view: RunView) -> None:
        if view.log_version == self._log_version:
            return
        self._log_version = view.log_version
        log = self.query_one("#dash-log", Log)
        # keep following the end unless the reader has scrolled up to read something
        at_end = log.scroll_y >= log.max_scroll_y - 1 or not log.region.height
        log.clear()
        log.write_lines(view.log_lines, scroll_end=False)
        if at_end:
            log.scroll_end(animate=False, immediate=True, x_axis=False)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "tab-log":
            # a log filled while its tab was hidden opens at its newest lines
            log = self.query_one("#dash-log", Log)
            self.call_after_refresh(log.scroll_end, animate=False, x_axis=False)

    def action_focus_validation(self) -> None:
        panel = self.query_one("#dash-validation", ValidationPanel)
        if panel.display:
            panel.focus()
        else:
            self.notify("This run has no validation (set validation.image_dir or validation.split_fraction).")

    def action_next_tab(self) -> None:
        tabs = self.query_one("#dash-tabs", TabbedContent)
        tabs.active = TABS[(TABS.index(tabs.active) + 1) % len(TABS)] if tabs.active in TABS else TABS[0]

    # ------------------------------------------------------------------ control

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in LIVE_ACTIONS:  # a starting engine handles them at its first step
            return self.view is not None and self.view.health.status in (RUNNING, STARTING)
        if action == "skip_sample":
            return self.view is not None and self.view.health.status == RUNNING and self.view.state.phase == SAMPLING
        if action == "resume":
            return self.view is not None and self.view.health.can_resume
        return True

    def _request(self, action: str, said: str) -> None:
        try:
            self.run.request(action)
        except OSError as error:
            self.notify(f"could not write the {action} request: {error}", severity="error")
            return
        self.notify(said)
        self._tailer.poke()

    def action_stop(self) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self._request("stop", "Stop requested: the engine finishes the step, saves and exits.")

        self.app.push_screen(ConfirmScreen(
            f"Stop {self.run.name} gracefully?\n\nThe engine finishes the current step, saves the "
            "LoRA and its state, and exits. `r` resumes it later."), answered)

    def action_skip_sample(self) -> None:
        self._request("skip", "Skip requested: the sampling ends after its current denoising step.")

    def action_save(self) -> None:
        self._request("save", "Save requested: a checkpoint follows at the next step.")

    def action_sample(self) -> None:
        self._request("sample", "Samples requested: they follow at the next step.")

    def action_resume(self) -> None:
        self.notify(f"Resuming {self.run.name}…")
        self._resume()

    @work(thread=True, exclusive=True, group="dashboard-resume")
    def _resume(self) -> None:
        from engine.run.launch import start_training

        try:
            start_training(None, detach=True, resume=self.run.path)  # with its frozen config
        except (LoradeckError, OSError) as error:
            self.app.call_from_thread(self.notify, f"resume failed: {error}", severity="error")
            return
        self.app.call_from_thread(self.notify, f"{self.run.name} resumed")
        self._tailer.poke()

    def action_plot(self) -> None:
        if self.view is None:
            return
        self._plot = RunPlotScreen(self.view.state)
        self.app.push_screen(self._plot)

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()
        else:  # the dashboard `loradeck attach` opened
            self.app.leave_attached_run()
