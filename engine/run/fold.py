"""What a run's events mean: one fold of the event stream into the run's progress.

`RunProgress.fold_all(events)` turns events (engine.run.events) into where the run is:
its plan, status, step and epoch, the newest step's numbers, its failure, its newest
sample and checkpoint. The runs list (`RunSummary` in engine.run.folder, for `loradeck
runs` and the runs screen) and the dashboard (`RunState` in tui.run_state, which adds
the curves and lists it draws in its `_folded` hooks) both fold through it, so an event
means the same thing everywhere.

A run of step events is folded as a batch, and only its newest step sets the numbers:
a reader may skip the JSON of the other steps (the runs list does) and get the same
progress. Bad fields (missing, wrong type) keep the previous value. Light module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.run.events import (CHECKPOINT, CONTROL, EPOCH_END, ERROR, FINISHED, PHASE, RUN_END, RUN_START, RUNNING,
                               SAMPLE, STARTING, STEP, TRAINING, VALIDATION, WARNING, as_float, as_int)


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
    kind: str  # "lora" or "state"
    final: bool
    validation_loss: float | None = None


@dataclass
class RunProgress:
    path: Path
    # from run_start
    run_name: str = ""
    model_family: str = ""  # in words (SD 1.x, SDXL), from the plan
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
    # from the newest step
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
    # the rest
    loss_epoch: float | None = None  # of the newest epoch end
    last_sample: SampleRecord | None = None
    last_checkpoint: CheckpointRecord | None = None
    lora_checkpoints: int = 0
    last_lora: str = ""  # the newest LoRA file (relative to the run folder), "" before the first
    latest_validation: dict[str, Any] | None = None  # {step, epoch, loss, train_loss}
    best_validation_so_far: dict[str, Any] | None = None  # {step, epoch, loss, path}
    last_control: str = ""  # "stop: stopped at step 7"
    last_warning: str = ""  # the message, with its path in brackets
    warnings: int = 0
    error_message: str = ""
    error_traceback: str = ""
    last_event_time: float | None = None
    # what the engine is doing now (phase events, engine.train.phase); "" when not known
    phase: str = ""
    phase_done: int = 0
    phase_total: int = 0
    phase_detail: str = ""
    phase_since: float | None = None
    phase_seconds: dict[str, float] = field(default_factory=dict)  # the last whole duration of each phase
    phase_cut_short: bool = False  # a skip ended the phase in progress: its length says nothing
    # the newest event that moved something (a heartbeat that repeats its numbers does not)
    last_progress_time: float | None = None
    ended: float | None = None
    end_message: str = ""
    events: int = 0  # folded (a reader that skips steps counts fewer)
    unknown_events: int = 0

    # ------------------------------------------------------------------ folding

    def fold_all(self, events: list[dict[str, Any]]) -> None:
        """Fold events in order; runs of step events take the batch path."""
        steps: list[dict[str, Any]] = []
        for event in events:
            if event.get("type") == STEP:
                steps.append(event)
                continue
            if steps:
                self.fold_steps(steps)
                steps = []
            self.fold(event)
        if steps:
            self.fold_steps(steps)

    def fold(self, event: dict[str, Any]) -> None:
        """Fold one event (unknown types are counted and otherwise ignored)."""
        kind = event.get("type")
        if kind == STEP:
            self.fold_steps([event])
            return
        self.events += 1
        when = event.get("time")
        if type(when) is not float:
            when = as_float(when)
        if when is not None:
            self.last_event_time = when
            if kind != PHASE:
                self.last_progress_time = when
        if kind == RUN_START:
            plan = event.get("plan") or {}
            if not isinstance(plan, dict):
                plan = {}
            self.starts += 1
            self.run_name = str(event.get("run_name") or self.run_name or self.path.name)
            self.total_steps = as_int(plan.get("total_steps"), self.total_steps)
            self.steps_per_epoch = as_int(plan.get("steps_per_epoch"), self.steps_per_epoch)
            self.epochs = as_int(plan.get("epochs"), self.epochs)
            self.images = as_int(plan.get("images"), self.images)
            self.batch_size = as_int(plan.get("batch_size"), self.batch_size)
            self.model_family = str(plan.get("family_label") or self.model_family)
            self.device = str(event.get("device") or self.device)
            self.precision = str(event.get("precision") or self.precision)
            self.step = as_int(event.get("start_step"), self.step)
            self.epoch = self._epoch_of(as_int(event.get("start_epoch"), self.epoch))
            if self.started is None:
                self.started = when
            # a resumed run is live again: forget the previous end and its failure
            self.status = RUNNING
            self.phase = ""
            self.ended = None
            self.end_message = ""
            self.error_message = ""
            self.error_traceback = ""
        elif kind == EPOCH_END:
            self.epoch = as_int(event.get("epoch"), self.epoch)
            self.loss_epoch = as_float(event.get("loss_epoch"))
        elif kind == SAMPLE:
            self.last_sample = SampleRecord(
                path=str(event.get("path", "")),
                epoch=as_int(event.get("epoch"), self.epoch),
                step=as_int(event.get("step"), self.step),
                prompt_index=as_int(event.get("prompt_index"), 0),
                prompt=str(event.get("prompt", "")),
                negative_prompt=str(event.get("negative_prompt") or ""),
                seed=event.get("seed"),
                width=as_int(event.get("width"), 0),
                height=as_int(event.get("height"), 0),
            )
        elif kind == CHECKPOINT:
            self.last_checkpoint = CheckpointRecord(
                path=str(event.get("path", "")),
                epoch=as_int(event.get("epoch"), self.epoch),
                step=as_int(event.get("step"), self.step),
                bytes=as_int(event.get("bytes"), 0),
                kind=str(event.get("kind", "lora")),
                final=bool(event.get("final", False)),
                validation_loss=as_float(event.get("validation_loss")),
            )
            if self.last_checkpoint.kind == "lora":
                self.lora_checkpoints += 1
                self.last_lora = self.last_checkpoint.path
        elif kind == VALIDATION:
            loss = as_float(event.get("loss"))
            if loss is None:
                return  # nothing evaluated: nothing to fold
            self.latest_validation = {"step": event.get("step"), "epoch": event.get("epoch"), "loss": loss,
                                      "train_loss": as_float(event.get("train_loss"))}
            best_loss = as_float(event.get("best_loss"))
            if best_loss is not None:
                self.best_validation_so_far = {"step": event.get("best_step"), "epoch": event.get("best_epoch"),
                                               "loss": best_loss, "path": str(event.get("best_path") or "")}
        elif kind == CONTROL:
            request = event.get("request", "?")
            self.last_control = f"{request}: {event.get('outcome', '')}".rstrip(": ")
            self.phase_cut_short = self.phase_cut_short or request == "skip"
        elif kind == WARNING:
            self.warnings += 1
            message = str(event.get("message", ""))
            if event.get("path"):
                message = f"{message} ({event['path']})"
            self.last_warning = message
        elif kind == ERROR:
            self.error_message = str(event.get("message", "")) or "error"
            self.error_traceback = str(event.get("traceback") or "")
        elif kind == PHASE:
            if self.status == RUNNING:  # a late heartbeat after the run end says nothing
                self._fold_phase(event, when)
        elif kind == RUN_END:
            self.phase = ""
            self.status = str(event.get("status") or FINISHED)
            self.ended = when
            self.step = as_int(event.get("step"), self.step)
            self.epoch = self._epoch_of(as_int(event.get("epoch"), self.epoch))
            self.end_message = str(event.get("message") or "")
        else:
            self.unknown_events += 1  # newer engines may add types: ignore, but count
        self._folded(event, kind, when)

    def _fold_phase(self, event: dict[str, Any], when: float | None) -> None:
        phase = str(event.get("phase") or "")
        numbers = (phase, as_int(event.get("step"), self.step), as_int(event.get("done"), 0),
                   as_int(event.get("total"), 0), str(event.get("detail") or ""))
        if numbers != (self.phase, self.step, self.phase_done, self.phase_total, self.phase_detail) and when:
            self.last_progress_time = when  # not a bare heartbeat: the run moved
        since = as_float(event.get("since"))
        if phase != self.phase and self.phase and self.phase_since is not None and since is not None:
            if not self.phase_cut_short:
                self.phase_seconds[self.phase] = max(0.0, since - self.phase_since)
            self.phase_cut_short = False
        self.phase, step, self.phase_done, self.phase_total, self.phase_detail = numbers
        self.phase_since = since
        # the step and the speed, every few seconds whatever the logging interval
        self.step = max(self.step, step)
        self.epoch = max(self.epoch, as_int(event.get("epoch"), 0))
        if phase == TRAINING and as_float(event.get("steps_per_s")):
            self.steps_per_s = as_float(event.get("steps_per_s"))

    def fold_steps(self, steps: list[dict[str, Any]]) -> None:
        """A run of step events: the hot path (100,000s of them when attaching)."""
        self.events += len(steps)
        last = steps[-1]
        for event in reversed(steps):
            when = event.get("time")
            if type(when) is not float:
                when = as_float(when)
            if when is not None:
                self.last_event_time = self.last_progress_time = when
                break
        self.step = as_int(last.get("step"), self.step)
        self.epoch = as_int(last.get("epoch"), self.epoch)
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
        self._folded_steps(steps)

    def _epoch_of(self, completed: int) -> int:
        """The epoch shown, from run_start's and run_end's count of completed epochs: a
        run that stopped mid-epoch is in the next one, as its steps say."""
        if self.steps_per_epoch and self.step > completed * self.steps_per_epoch:
            return completed + 1
        return completed

    # ------------------------------------------------------------------ hooks

    def _folded(self, event: dict[str, Any], kind: Any, when: float | None) -> None:
        """Called after each event other than a step; readers that keep more override it."""

    def _folded_steps(self, steps: list[dict[str, Any]]) -> None:
        """Called after each run of step events (the same for curves and timing)."""

    # ------------------------------------------------------------------ reading

    @property
    def progress(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0


def fold_event(progress: RunProgress, event: dict[str, Any]) -> None:
    """Fold one event into `progress` (the function form of `RunProgress.fold`)."""
    progress.fold(event)
