"""PlanPanel: what the run in the form will do, recomputed as the form changes.

The numbers are `engine.plan.preflight.plan_with_warnings` on the form's config, exactly what
`loradeck plan` prints: images per folder × repeats, buckets, steps per epoch, total
steps, the checkpoints, the LoRA file size, and a duration estimated from the speed of
the most recent run on this machine, scaled to the plan's pixels and batch
(engine.plan.duration).

Planning runs in a thread worker after a short pause in typing (debounced), so the form
never waits on the dataset scan. The scanned dataset is reused while the settings that
decide it (dataset group, caption extension) stay the same; `rescan()` drops it (after
images or captions changed on another screen).
"""
from __future__ import annotations

import math

import threading
from pathlib import Path

from tui.workers import work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.markup import escape
from textual.message import Message
from textual.reactive import reactive
from textual.timer import Timer
from textual.widgets import Static
from textual.worker import get_current_worker

from engine.config.schema import TrainConfig
from engine.dataset.folders import Dataset, scan_dataset
from engine.errors import LoradeckError
from engine.plan.duration import RunSpeed, estimate_duration, recent_speed  # noqa: F401 - the config screen's
from engine.plan.preflight import plan_with_warnings
from engine.plan.training_plan import Plan
from engine.run.format import format_bytes

PLAN_DELAY_S = 0.3  # pause in typing before planning
MAX_BUCKET_LINES = 8
MAX_CHECKPOINT_LINES = 6


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


class PlanPanel(VerticalScroll):
    """The plan of the latest config given to `schedule`."""

    class Planned(Message):
        def __init__(self, plan: Plan, config: TrainConfig, serial: int):
            super().__init__()
            self.plan = plan
            self.config = config
            self.serial = serial

    class Failed(Message):
        def __init__(self, reason: str, config: TrainConfig, serial: int):
            super().__init__()
            self.reason = reason
            self.config = config
            self.serial = serial

    speed: reactive[RunSpeed | None] = reactive(None, init=False)

    def __init__(self, base_dir: Path, **kwargs):
        super().__init__(**kwargs)
        self.base_dir = Path(base_dir)
        self.plan: Plan | None = None
        self.planned_config: TrainConfig | None = None  # the config `plan` (or `error`) is for
        self.error: str | None = None
        self._wanted: TrainConfig | None = None
        self._serial = 0
        self._timer: Timer | None = None
        self._dataset_lock = threading.Lock()
        self._dataset_key: tuple | None = None
        self._dataset: Dataset | None = None

    def compose(self) -> ComposeResult:
        yield Static("planning…", id="plan-body")

    # ---- requests

    def schedule(self, config: TrainConfig, *, now: bool = False) -> None:
        """Plan `config` after a short pause (or at once); a newer request replaces it."""
        if config == self._wanted:
            return
        self._wanted = config
        if self._timer is not None:
            self._timer.stop()
        if now:
            self._start()
        else:
            self._timer = self.set_timer(PLAN_DELAY_S, self._start)

    def rescan(self) -> None:
        """Forget the scanned dataset and plan the current config again."""
        with self._dataset_lock:
            self._dataset_key = self._dataset = None
        config, self._wanted = self._wanted, None
        if config is not None:
            self.schedule(config, now=True)

    @property
    def is_current(self) -> bool:
        """True when the shown plan is for the latest scheduled config."""
        return self._wanted is not None and self.planned_config == self._wanted

    def _start(self) -> None:
        self._timer = None
        self._serial += 1
        self.query_one("#plan-body", Static).set_class(True, "-stale")
        self._compute(self._wanted, self._serial)

    @work(thread=True, exclusive=True, group="plan")
    def _compute(self, config: TrainConfig, serial: int) -> None:
        worker = get_current_worker()
        try:
            dataset = self._dataset_for(config)
            plan = plan_with_warnings(config, self.base_dir, dataset)
        except LoradeckError as error:
            message: Message = self.Failed(str(error), config, serial)
        except (ValueError, ArithmeticError, OSError) as error:  # a config the form already flags
            message = self.Failed(f"cannot plan these settings yet ({error})", config, serial)
        else:
            message = self.Planned(plan, config, serial)
        if not worker.is_cancelled:
            self.post_message(message)

    def _dataset_for(self, config: TrainConfig) -> Dataset:
        key = (config.dataset, config.captions.caption_extension, config.validation.image_dir,
               config.validation.split_fraction, config.validation.seed)
        with self._dataset_lock:
            if key == self._dataset_key and self._dataset is not None:
                return self._dataset
        dataset = scan_dataset(config, self.base_dir)
        with self._dataset_lock:
            self._dataset_key, self._dataset = key, dataset
        return dataset

    # ---- results

    def on_plan_panel_planned(self, message: Planned) -> None:
        if message.serial != self._serial:
            return  # an older request finished late
        self.plan, self.error, self.planned_config = message.plan, None, message.config
        self._show_result()

    def on_plan_panel_failed(self, message: Failed) -> None:
        if message.serial != self._serial:
            return
        self.plan, self.error, self.planned_config = None, message.reason, message.config
        self._show_result()

    def watch_speed(self) -> None:
        self._show_result()

    def _show_result(self) -> None:
        body = self.query_one("#plan-body", Static)
        body.set_class(False, "-stale")
        if self.error is not None:
            body.update(f"[$error]{escape(self.error)}[/]")
        elif self.plan is not None:
            body.update(render_plan(self.plan, self.speed))

    def plan_text(self) -> str:
        """The panel's text as shown (for tests and copy-paste)."""
        return str(self.query_one("#plan-body", Static).visual)


def render_plan(plan: Plan, speed: RunSpeed | None) -> str:
    """Textual markup for a plan; numbers as `loradeck plan` computes them."""
    lines = ["[b]Folders[/b]"]
    for folder in plan.folders:
        kind = " [$text-muted](reg)[/]" if folder.is_reg else ""
        lines.append(
            f" {escape(folder.name)}{kind}: {folder.images} × {folder.repeats} = [b]{folder.instances}[/b]"
        )
    if not plan.folders:
        lines.append(" [$warning]no image folders[/]")
    lines.append(f"Model [b]{escape(plan.family_label)}[/b]")
    lines.append(f"Images [b]{plan.images}[/b] · × repeats [b]{plan.image_repeats}[/b]")
    lines.append(f"Validation [b]{plan.validation_images}[/b] [$text-muted]{escape(plan.validation_where)}[/]"
                 if plan.validation_source else "Validation [$text-muted]off[/]")
    if plan.reg_images:
        lines.append(f"Regularisation {plan.reg_images} images, {plan.reg_instances} per epoch")
    lines.append(f"[b]Buckets[/b] ({len(plan.buckets)})")
    for bucket in plan.buckets[:MAX_BUCKET_LINES]:
        lines.append(f" {bucket.width}×{bucket.height}: {bucket.count} images, {bucket.batches} batches")
    if len(plan.buckets) > MAX_BUCKET_LINES:
        lines.append(f" [$text-muted]… {len(plan.buckets) - MAX_BUCKET_LINES} more[/]")
    lines.append(
        f"Batch {plan.batch_size} × {plan.gradient_accumulation_steps} accumulation = {plan.effective_batch}"
    )
    lines.append(f"Steps per epoch [b]{plan.steps_per_epoch}[/b]")
    lines.append(f"Epochs [b]{plan.epochs}[/b]")
    lines.append(f"Total steps [b $accent]{plan.total_steps}[/]")
    if plan.step_note:
        lines.append(f"[$text-muted]{escape(plan.step_note)}[/]")
    saves = plan.checkpoints
    shown = saves if len(saves) <= MAX_CHECKPOINT_LINES else saves[:MAX_CHECKPOINT_LINES - 1] + [saves[-1]]
    listed = ", ".join(f"e{c['epoch']}/s{c['step']}" for c in shown)
    if len(shown) < plan.checkpoint_count:
        head, last = listed.rsplit(", ", 1)
        listed = f"{head}, … {last}"
    lines.append(f"Checkpoints [b]{plan.checkpoint_count}[/b]: {listed}")
    lines.append(f"LoRA file [b]{format_bytes(plan.lora_file_bytes)}[/b] ({plan.lora_parameters:,} parameters)")
    vram = plan.vram_estimate
    lines.append(f"VRAM [b]≈{vram.total_gb:.1f} GiB[/b] [$text-muted]at the peak; a {math.ceil(vram.card_gb)} GB card or more[/]")
    estimate = estimate_duration(plan, speed) if speed is not None else None
    if estimate is not None:
        lines.append(f"Estimated [b]{format_duration(estimate.seconds)}[/b] [$text-muted]{escape(estimate.note)}[/]")
    else:
        lines.append("Estimated [$text-muted]after a first run on this machine[/]")
    for problem in plan.problems:
        lines.append(f"[$warning]! {escape(problem)}[/]")
    return "\n".join(lines)
