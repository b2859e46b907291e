"""RunState: everything the dashboard shows about one run, folded from its events.

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
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.run.advice import Advice, ValidationPoint, advise, best_point
from engine.run.events import (CHECKPOINT, CONTROL, EPOCH_END, ERROR, RUN_END, RUN_START, SAMPLE, STEP,
                               VALIDATION, WARNING, as_float)
from engine.run.format import format_clock, format_duration
from engine.run.folder import CRASHED, FAILED, FINISHED, RUNNING, STARTING, STOPPED
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
# Before the first steps (loading the model, caching latents) only a long silence counts.
STALL_BEFORE_STEPS_SECONDS = 30 * 60.0
# Free space below this (or below twice the biggest file the run writes) is flagged.
LOW_DISK_BYTES = 512 * 1024 * 1024

NO_SPACE_MARKERS = ("no space left", "errno 28", "disk quota exceeded", "enospc")


@dataclass(frozen=True)
class SampleRecord:
    path: str  # relative to the run folder
    epoch: int
    step: int
    prompt_index: int
    prompt: str
    negative_prompt: str = ""
    seed: Any = None
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class CheckpointRecord:
    path: str  # relative to the run folder
    epoch: int
    step: int
    bytes: int
    kind: str
    final: bool
    validation_loss: float | None = None


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
class RunState:
    path: Path
    # from run_start
    run_name: str = ""
    status: str = STARTING  # as the events say; the pid check turns running into crashed
    total_steps: int = 0
    steps_per_epoch: int = 0
    epochs: int = 0
    images: int = 0
    batch_size: int = 0
    device: str = ""
    precision: str = ""
    starts: int = 0  # run_start events: more than one means resumed
    started: float | None = None
    # from steps
    step: int = 0
    epoch: int = 0
    loss: float | None = None
    loss_avg: float | None = None
    lr_unet: float | None = None
    lr_text_encoder: float | None = None
    steps_per_s: float | None = None
    images_per_s: float | None = None
    gpu_memory_mb: float | None = None
    gpu_memory_total_mb: float | None = None
    gpu_util: float | None = None
    last_step_time: float | None = None
    step_gap: float | None = None  # smoothed seconds between bursts of step events
    nan_step: int | None = None  # first step with a non-finite loss
    # the rest
    last_event_time: float | None = None
    ended: float | None = None
    end_message: str = ""
    error_message: str = ""
    error_traceback: str = ""
    no_space_message: str = ""
    warnings: int = 0
    events: int = 0
    unknown_events: int = 0
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

    # ------------------------------------------------------------------ folding

    def fold_all(self, events: list[dict[str, Any]]) -> None:
        """Fold events in order; runs of step events take the batch path."""
        steps: list[dict[str, Any]] = []
        for event in events:
            if event.get("type") == STEP:
                steps.append(event)
                continue
            if steps:
                self._fold_steps(steps)
                steps = []
            self.fold(event)
        if steps:
            self._fold_steps(steps)

    def fold(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == STEP:
            self._fold_steps([event])
            return
        self.events += 1
        when = event.get("time")
        if type(when) is not float:
            when = as_float(when)
        if when is not None:
            self.last_event_time = when
        if kind == RUN_START:
            self._fold_run_start(event, when)
        elif kind == EPOCH_END:
            self.epoch = _int(event.get("epoch"), self.epoch)
            loss_epoch = as_float(event.get("loss_epoch"))
            if loss_epoch is not None:
                self.loss_epoch_series.add(self.epoch, loss_epoch)
        elif kind == SAMPLE:
            self.samples.append(SampleRecord(
                path=str(event.get("path", "")),
                epoch=_int(event.get("epoch"), self.epoch),
                step=_int(event.get("step"), self.step),
                prompt_index=_int(event.get("prompt_index"), 0),
                prompt=str(event.get("prompt", "")),
                negative_prompt=str(event.get("negative_prompt") or ""),
                seed=event.get("seed"),
                width=_int(event.get("width"), 0),
                height=_int(event.get("height"), 0),
            ))
            self.samples_version += 1
        elif kind == CHECKPOINT:
            record = CheckpointRecord(
                path=str(event.get("path", "")),
                epoch=_int(event.get("epoch"), self.epoch),
                step=_int(event.get("step"), self.step),
                bytes=_int(event.get("bytes"), 0),
                kind=str(event.get("kind", "lora")),
                final=bool(event.get("final", False)),
                validation_loss=as_float(event.get("validation_loss")),
            )
            self.checkpoints.append(record)
            self.largest_file_bytes = max(self.largest_file_bytes, record.bytes)
            self.checkpoints_version += 1
        elif kind == VALIDATION:
            self._fold_validation(event)
        elif kind == CONTROL:
            request = event.get("request", "?")
            self._notice(when, "control", f"{request}: {event.get('outcome', '')}".rstrip(": "))
        elif kind == WARNING:
            self.warnings += 1
            message = str(event.get("message", ""))
            if event.get("path"):
                message = f"{message} ({event['path']})"
            if _is_no_space(message):
                self.no_space_message = message
            self._notice(when, "warning", message)
        elif kind == ERROR:
            self.error_message = str(event.get("message", "")) or "error"
            self.error_traceback = _last_lines(str(event.get("traceback") or ""), MAX_TRACEBACK_LINES)
            if _is_no_space(self.error_message) or _is_no_space(self.error_traceback):
                self.no_space_message = self.error_message
            self._notice(when, "error", self.error_message, self.error_traceback)
        elif kind == RUN_END:
            self.status = str(event.get("status") or FINISHED)
            self.ended = when
            self.step = _int(event.get("step"), self.step)
            self.epoch = self._epoch_of(_int(event.get("epoch"), self.epoch))
            self.end_message = str(event.get("message") or "")
            text = f"run {self.status}" + (f": {self.end_message}" if self.end_message else "")
            self._notice(when, "error" if self.status == FAILED else "info", text)
        else:
            self.unknown_events += 1  # newer engines may add types: ignore, but count

    def _fold_run_start(self, event: dict[str, Any], when: float | None) -> None:
        plan = event.get("plan") or {}
        self.starts += 1
        self.run_name = str(event.get("run_name") or self.run_name or self.path.name)
        self.total_steps = _int(plan.get("total_steps"), self.total_steps)
        self.steps_per_epoch = _int(plan.get("steps_per_epoch"), self.steps_per_epoch)
        self.epochs = _int(plan.get("epochs"), self.epochs)
        self.images = _int(plan.get("images"), self.images)
        self.batch_size = _int(plan.get("batch_size"), self.batch_size)
        self.device = str(event.get("device") or self.device)
        self.precision = str(event.get("precision") or self.precision)
        self.step = _int(event.get("start_step"), self.step)
        self.epoch = self._epoch_of(_int(event.get("start_epoch"), self.epoch))
        if self.started is None:
            self.started = when
        # a resumed run is live again: forget the previous end and its failure
        self.status = RUNNING
        self.ended = None
        self.end_message = ""
        self.error_message = ""
        self.error_traceback = ""
        self.no_space_message = ""
        self.last_step_time = when  # the silence before the first step counts from here
        if self.starts > 1:
            self._notice(when, "info", f"resumed at step {self.step}")

    def _epoch_of(self, completed: int) -> int:
        """The epoch the dashboard shows, from run_start's and run_end's count of completed
        epochs: a run that stopped mid-epoch is in the next one, as its steps say."""
        if self.steps_per_epoch and self.step > completed * self.steps_per_epoch:
            return completed + 1
        return completed

    def _fold_steps(self, steps: list[dict[str, Any]]) -> None:
        """A run of step events: the hot path (100,000s of them when attaching)."""
        xs = [_int(e.get("step"), 0) for e in steps]
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
        self.events += len(steps)
        # what the dashboard shows as "now" comes from the newest step only
        last = steps[-1]
        if previous_time is not None:
            self.last_event_time = previous_time
        self.step = xs[-1]
        self.epoch = _int(last.get("epoch"), self.epoch)
        self.loss = as_float(last.get("loss"))
        self.loss_avg = as_float(last.get("loss_avg"))
        self.lr_unet = as_float(last.get("lr_unet"))
        self.lr_text_encoder = as_float(last.get("lr_text_encoder"))
        self.steps_per_s = as_float(last.get("steps_per_s"))
        self.images_per_s = as_float(last.get("images_per_s"))
        if "gpu_memory_mb" in last:
            self.gpu_memory_mb = as_float(last.get("gpu_memory_mb"))
            self.gpu_memory_total_mb = as_float(last.get("gpu_memory_total_mb"))
            self.gpu_util = as_float(last.get("gpu_util"))

    def _fold_validation(self, event: dict[str, Any]) -> None:
        loss = as_float(event.get("loss"))
        if loss is None:
            return
        point = ValidationPoint(_int(event.get("step"), self.step), _int(event.get("epoch"), self.epoch), loss,
                                as_float(event.get("train_loss")))
        if self.validations and self.validations[-1].step >= point.step:
            # a resumed run evaluates on from its saved state: drop what came after it
            kept = [p for p in self.validations if p.step < point.step]
            self.validations.clear()
            self.validations.extend(kept)
        self.validations.append(point)
        self.validation_series.add(point.step, loss)
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
        return other

    @property
    def progress(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    @property
    def epoch_step(self) -> tuple[int, int]:
        """(steps done in the current epoch, steps per epoch), for the epoch bar."""
        per_epoch = self.steps_per_epoch
        if not per_epoch:
            return (0, 0)
        done_epochs = max(0, self.epoch - 1)  # epochs count from 1
        return (max(0, min(per_epoch, self.step - done_epochs * per_epoch)), per_epoch)

    def eta_seconds(self) -> float | None:
        if not self.total_steps:
            return None
        remaining = max(0, self.total_steps - self.step)
        if self.steps_per_s and self.steps_per_s > 0:
            return remaining / self.steps_per_s
        return None


def _int(value: Any, default: int) -> int:
    if value is None or isinstance(value, bool):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


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
        activity = max(t for t in (state.last_step_time, state.last_event_time, last_activity, state.started, 0.0)
                       if t is not None)
        silence = now - activity if activity else 0.0
        if state.step > 0:
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
