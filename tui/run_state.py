"""RunState: everything the dashboard shows about one run, folded from its events.

What each event means is engine.run.fold's `RunProgress`, the same fold the runs list
uses; RunState adds what only the dashboard draws: the curves, the lists of samples,
checkpoints and notices, and the timing and NaN marks its health check needs.

The tailer thread owns one RunState, folds every event into it and hands the UI a
`snapshot()`: a copy that the thread no longer touches. Memory is bounded whatever the
run length: curves live in fixed-size `SeriesSummary` objects, and the lists (samples,
checkpoints, notices, log lines) keep only their newest entries.

Health checks that depend on the clock or the disk (stalled, disk nearly full, crashed)
are computed by `check_health` from a snapshot, the time and the free space.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from engine.run.advice import Advice, ValidationPoint, advise, best_point
from engine.run.eta import pauses_ahead
from engine.run.events import (CACHING_TEXT, CHECKPOINT, CONTROL, CRASHED, EPOCH_END, ERROR, FAILED, LOADING_MODEL,
                               RUN_END, RUN_START, RUNNING, SAMPLE, SAVING, STARTING, STOPPED, VALIDATING,
                               VALIDATION, WARNING, as_float, as_int)
from engine.run.fold import CheckpointRecord, RunProgress
from engine.run.format import format_clock, format_duration
from tui.series_summary import SeriesSummary

MAX_SAMPLES = 400
MAX_CHECKPOINTS = 200
MAX_NOTICES = 200
MAX_TRACEBACK_LINES = 40
MAX_VALIDATIONS = 2000

# A run is stalled when nothing has happened for STALL_FACTOR usual gaps between step
# events, and never sooner than STALL_MIN_SECONDS (sampling and saving pause the steps
# legitimately). The engine writes steps in bursts (one per logging flush), so only gaps
# of at least GAP_MIN_SECONDS count as "usual": a burst's own gaps are microseconds.
STALL_FACTOR = 10
STALL_MIN_SECONDS = 120.0
GAP_MIN_SECONDS = 1.0
# Before the first steps, and in a phase that reports no count (loading the model, saving,
# validating, encoding the captions: the engine's heartbeat says it lives), only a long
# standstill counts.
STALL_BEFORE_STEPS_SECONDS = 30 * 60.0
UNCOUNTED_PHASES = (LOADING_MODEL, CACHING_TEXT, SAVING, VALIDATING)
# Free space below this (or below twice the biggest file the run writes) is flagged.
LOW_DISK_BYTES = 512 * 1024 * 1024

NO_SPACE_MARKERS = ("no space left", "errno 28", "disk quota exceeded", "enospc", "disk full")


@dataclass(frozen=True)
class Notice:
    """A warning, error, control outcome or run end, as the notices panel lists it."""

    time: float | None
    level: str  # "warning", "error", "control", "info"
    text: str
    detail: str = ""  # the traceback of an error


def _is_no_space(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in NO_SPACE_MARKERS)


@dataclass
class RunState(RunProgress):
    """The run's progress (engine.run.fold) plus what the dashboard draws and checks."""

    last_step_time: float | None = None
    step_gap: float | None = None  # smoothed seconds between bursts of step events
    nan_step: int | None = None  # first step with a non-finite loss
    no_space_message: str = ""
    largest_file_bytes: int = 0
    loss_series: SeriesSummary = field(default_factory=SeriesSummary)
    loss_avg_series: SeriesSummary = field(default_factory=SeriesSummary)
    loss_epoch_series: SeriesSummary = field(default_factory=SeriesSummary)
    lr_unet_series: SeriesSummary = field(default_factory=SeriesSummary)
    lr_text_encoder_series: SeriesSummary = field(default_factory=SeriesSummary)
    samples: deque = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))
    checkpoints: deque = field(default_factory=lambda: deque(maxlen=MAX_CHECKPOINTS))
    notices: deque = field(default_factory=lambda: deque(maxlen=MAX_NOTICES))
    # counters the UI compares to skip rebuilding lists that did not change
    samples_version: int = 0
    checkpoints_version: int = 0
    notices_version: int = 0
    # validation (engine.train.validation): the curve, the latest bands, the best file
    validation_series: SeriesSummary = field(default_factory=SeriesSummary)
    train_fixed_series: SeriesSummary = field(default_factory=SeriesSummary)
    validations: deque = field(default_factory=lambda: deque(maxlen=MAX_VALIDATIONS))  # ValidationPoint
    validation_bands: dict = field(default_factory=dict)
    validation_seconds: float | None = None
    best_validation_path: str = ""
    validation_version: int = 0
    run_config: dict = field(default_factory=dict)  # the config run_start carried (the schedule)

    # ------------------------------------------------------------------ folding

    def _folded(self, event: dict[str, Any], kind: Any, when: float | None) -> None:
        """The lists and alerts of one event RunProgress.fold has just folded."""
        if kind == RUN_START:
            self.no_space_message = ""
            config = event.get("config")
            self.run_config = config if isinstance(config, dict) else {}
            self.last_step_time = when  # the silence before the first step counts from here
            if self.starts > 1:
                self._notice(when, "info", f"resumed at step {self.step}")
        elif kind == EPOCH_END:
            if self.loss_epoch is not None:
                self.loss_epoch_series.add(self.epoch, self.loss_epoch)
        elif kind == SAMPLE:
            self.samples.append(self.last_sample)
            self.samples_version += 1
        elif kind == CHECKPOINT:
            self.checkpoints.append(self.last_checkpoint)
            self.largest_file_bytes = max(self.largest_file_bytes, self.last_checkpoint.bytes)
            self.checkpoints_version += 1
        elif kind == VALIDATION:
            self._fold_validation(event)
        elif kind == CONTROL:
            self._notice(when, "control", self.last_control)
        elif kind == WARNING:
            if _is_no_space(self.last_warning):
                self.no_space_message = self.last_warning
            self._notice(when, "warning", self.last_warning)
        elif kind == ERROR:
            self.error_traceback = _last_lines(self.error_traceback, MAX_TRACEBACK_LINES)
            if _is_no_space(self.error_message) or _is_no_space(self.error_traceback):
                self.no_space_message = self.error_message
            self._notice(when, "error", self.error_message, self.error_traceback)
        elif kind == RUN_END:
            text = f"run {self.status}" + (f": {self.end_message}" if self.end_message else "")
            self._notice(when, "error" if self.status == FAILED else "info", text)

    def _fold_phase(self, event: dict[str, Any], when: float | None) -> None:
        before = self.step
        super()._fold_phase(event, when)
        if self.step > before and when is not None:
            self.last_step_time = when  # a heartbeat told of a new step before its step event

    def _folded_steps(self, steps: list[dict[str, Any]]) -> None:
        """The curves, the first NaN and the usual gap between steps, from a run of steps."""
        xs = [as_int(e.get("step"), 0) for e in steps]
        losses = [e.get("loss") for e in steps]
        self.loss_series.extend(xs, losses)
        self.loss_avg_series.extend(xs, [e.get("loss_avg") for e in steps])
        self.lr_unet_series.extend(xs, [e.get("lr_unet") for e in steps])
        self.lr_text_encoder_series.extend(xs, [e.get("lr_text_encoder") for e in steps])
        if self.nan_step is None:
            for x, loss in zip(xs, losses):
                if type(loss) is not float:
                    loss = as_float(loss)
                if loss is not None and not math.isfinite(loss):
                    self.nan_step = x
                    break
        # the usual silence between step events, smoothed so one slow step (a save)
        # barely moves it
        gap_average, previous_time = self.step_gap, self.last_step_time
        for event in steps:
            when = event.get("time")
            if type(when) is not float:
                when = as_float(when)
            if when is not None and previous_time is not None and when - previous_time >= GAP_MIN_SECONDS:
                gap = when - previous_time
                gap_average = gap if gap_average is None else 0.9 * gap_average + 0.1 * gap
            if when is not None:
                previous_time = when
        self.step_gap = gap_average
        self.last_step_time = previous_time

    def _fold_validation(self, event: dict[str, Any]) -> None:
        latest = self.latest_validation
        point = ValidationPoint(as_int(latest["step"], self.step), as_int(latest["epoch"], self.epoch),
                                latest["loss"], latest["train_loss"])
        if self.validations and self.validations[-1].step >= point.step:
            # a resumed run evaluates on from its saved state: drop what came after it
            kept = [p for p in self.validations if p.step < point.step]
            self.validations.clear()
            self.validations.extend(kept)
        self.validations.append(point)
        self.validation_series.add(point.step, point.loss)
        if point.train_loss is not None:
            self.train_fixed_series.add(point.step, point.train_loss)
        bands = event.get("bands")
        self.validation_bands = {str(k): as_float(v) for k, v in bands.items()} if isinstance(bands, dict) else {}
        self.validation_seconds = as_float(event.get("seconds"))
        self.best_validation_path = str(event.get("best_path") or self.best_validation_path)
        self.validation_version += 1

    @property
    def best_validation(self) -> ValidationPoint | None:
        return best_point(list(self.validations))

    def best_checkpoint(self) -> CheckpointRecord | None:
        """The LoRA file with the lowest validation loss (None without validation)."""
        scored = [r for r in self.checkpoints if r.kind == "lora" and r.validation_loss is not None]
        return min(scored, key=lambda r: r.validation_loss) if scored else None

    def advice(self) -> Advice:
        """The validation advice line (engine.run.advice), naming the best evaluation's file."""
        points = list(self.validations)
        best = best_point(points)
        best_file = ""
        if best is not None:
            at_best = [r for r in self.checkpoints if r.kind == "lora" and r.step == best.step]
            best_file = Path(at_best[-1].path).name if at_best else Path(self.best_validation_path).name
        return advise(points, best_file)

    def _notice(self, when: float | None, level: str, text: str, detail: str = "") -> None:
        self.notices.append(Notice(when, level, text, detail))
        self.notices_version += 1

    # ------------------------------------------------------------------ reading

    def snapshot(self) -> "RunState":
        """A copy the UI may keep while this one goes on folding (about 30 µs)."""
        other = copy.copy(self)
        for name in ("loss_series", "loss_avg_series", "loss_epoch_series", "lr_unet_series",
                     "lr_text_encoder_series", "validation_series", "train_fixed_series"):
            setattr(other, name, getattr(self, name).copy())
        other.samples = self.samples.copy()
        other.checkpoints = self.checkpoints.copy()
        other.notices = self.notices.copy()
        other.validations = self.validations.copy()
        other.phase_seconds = dict(self.phase_seconds)
        other.run_config = self.run_config  # replaced, never changed in place
        return other

    @property
    def epoch_step(self) -> tuple[int, int]:
        """(steps done in the current epoch, steps per epoch), for the epoch bar."""
        per_epoch = self.steps_per_epoch
        if not per_epoch:
            return (0, 0)
        done_epochs = max(0, self.epoch - 1)  # epochs count from 1
        return (max(0, min(per_epoch, self.step - done_epochs * per_epoch)), per_epoch)

    def eta_seconds(self) -> float | None:
        """Time to the end: the steps left at the measured speed, plus the sampling,
        validation and saving pauses still ahead at what each took last time."""
        if not self.total_steps or not self.steps_per_s or self.steps_per_s <= 0:
            return None
        return max(0, self.total_steps - self.step) / self.steps_per_s + self.pause_seconds_ahead()

    def pause_seconds_ahead(self) -> float:
        """The pauses still ahead (engine.run.eta), each as long as its phase took last time;
        the one in progress counts what is left of it."""
        ahead = pauses_ahead(self.run_config, step=self.step, steps_per_epoch=self.steps_per_epoch,
                             total_steps=self.total_steps, epochs=self.epochs)
        seconds = sum(count * self.phase_seconds.get(phase, 0.0) for phase, count in ahead.items())
        if self.phase in ahead and self.phase_since is not None and self.last_event_time is not None:
            took = self.phase_seconds.get(self.phase, 0.0)
            seconds += max(0.0, took - (self.last_event_time - self.phase_since))
        return seconds


def _last_lines(text: str, count: int) -> str:
    lines = text.rstrip("\n").splitlines()
    return "\n".join(lines[-count:])


# --------------------------------------------------------------------------- health


@dataclass(frozen=True)
class Health:
    """What is wrong with a run right now, as the alert banner shows it."""

    status: str  # running / finished / stopped / failed / crashed / starting
    alerts: tuple[tuple[str, str], ...] = ()  # (level "error"/"warning", text)
    can_resume: bool = False
    stalled_for: float | None = None

    def key(self) -> tuple:
        """Equal keys mean the banner would look the same (stalled time rounded)."""
        return (self.status, self.alerts, self.can_resume)


def check_health(state: RunState, *, alive: bool, now: float, last_activity: float | None,
                 free_bytes: int | None, has_config: bool, engine_started: bool = True) -> Health:
    """Status after the pid check, and the alerts: failure, crash, NaN, stall, disk.

    `engine_started`: the folder shows an engine was started (events or a pid file); a
    run without a run end whose engine is gone is then crashed (as engine.run.folder says).
    """
    status = state.status
    if status in (RUNNING, STARTING) and not alive and (status == RUNNING or state.events or engine_started):
        status = CRASHED
    alerts: list[tuple[str, str]] = []
    if status == FAILED:
        alerts.append(("error", f"FAILED: {state.error_message or state.end_message or 'the engine reported a failure'}"))
    elif status == CRASHED:
        alerts.append(("error", f"CRASHED: the engine is gone without a run end (last step {state.step})"))
    if state.nan_step is not None:
        alerts.append(("error", f"NaN loss at step {state.nan_step}"))
    if state.no_space_message:
        alerts.append(("error", f"DISK FULL: {state.no_space_message}"))
    elif free_bytes is not None and free_bytes < max(LOW_DISK_BYTES, 2 * state.largest_file_bytes):
        alerts.append(("warning", f"disk nearly full: {free_bytes / 2**20:.0f} MiB free in the run folder"))
    stalled_for = None
    if status in (RUNNING, STARTING):
        # heartbeats (phase events that repeat themselves) show the engine lives, not that it moves
        activity = max(t for t in (state.last_step_time, state.last_progress_time, last_activity, state.started, 0.0)
                       if t is not None)
        silence = now - activity if activity else 0.0
        if state.step > 0 and state.phase not in UNCOUNTED_PHASES:
            limit = max(STALL_MIN_SECONDS, STALL_FACTOR * (state.step_gap or 0.0))
        else:
            limit = STALL_BEFORE_STEPS_SECONDS
        if activity and silence > limit:
            stalled_for = silence
            if not state.step:
                usual = "no step yet"
            else:
                usual = f"steps usually every {format_duration(state.step_gap)}" if state.step_gap \
                    else "steps usually under a second apart"
            # the time of the last sign of life, not a growing duration: the text stays put
            alerts.append(("warning", f"STALLED: no progress since {format_clock(activity)} ({usual})"))
    can_resume = has_config and status in (STOPPED, CRASHED, FAILED)
    return Health(status, tuple(alerts), can_resume, stalled_for)
