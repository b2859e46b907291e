"""What a run will do before it starts: images, repeats, buckets, steps, checkpoints, file size.

The plan is computed from a config and its dataset and never changes the config. The
trainer runs on this plan (engine.train.loop): one bucket per batch, ceil per bucket; under
several processes each takes an equal share, ceil(batches / processes); ceil(share /
gradient accumulation) optimizer steps per epoch. `SaveSchedule` says when LoRA files are
written, for the plan's list and for the trainer alike.

Light module.
"""
from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from engine.dataset.buckets import batches_in_bucket
from engine.config.schema import TrainConfig, resolve_path
from engine.config.network_types import NetworkSpec
from engine.dataset.folders import Dataset, FolderInfo, scan_dataset
from engine.plan.kohya_steps import SD_SCRIPTS_DEFAULT_STEPS, GuiStepCount, difference_note, gui_step_count
from engine.plan.model_shapes import network_size_of
from engine.model.families import config_family, family_named
from engine.plan.vram import VramEstimate, estimate_vram
from engine.run.format import format_bytes

BYTES_PER_VALUE = {"float": 4, "fp16": 2, "bf16": 2}
MAX_LISTED_CHECKPOINTS = 1000  # a run saving every step of a long run would list millions


@dataclass(frozen=True)
class FolderPlan:
    name: str
    path: str
    repeats: int
    images: int
    captioned: int
    instances: int
    is_reg: bool
    held_out: int = 0  # images of this folder kept for validation (validation.split_fraction)


@dataclass(frozen=True)
class BucketPlan:
    width: int
    height: int
    count: int  # image instances per epoch (repeats and regularisation included)
    batches: int


@dataclass(frozen=True)
class Plan:
    folders: list[FolderPlan]
    images: int
    image_repeats: int
    reg_images: int
    reg_instances: int
    buckets: list[BucketPlan]
    batch_size: int
    gradient_accumulation_steps: int
    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    epochs: int
    checkpoints: list[dict[str, int]]  # the first MAX_LISTED_CHECKPOINTS - 1 and the final one
    lora_file_bytes: int
    lora_parameters: int
    vram_estimate: VramEstimate
    problems: list[str] = field(default_factory=list)
    num_processes: int = 1
    validation_images: int = 0  # held out, never trained on (engine.dataset.folders.hold_out)
    validation_source: str = ""  # "folder", "split" or "" (no validation)
    family: str = ""  # engine.model.families' name: detected from the base model, or model.family
    step_note: str = ""  # training.gui_step_count: the Kohya GUI's count and how it differs from the buckets'
    checkpoint_count: int = 0  # LoRA files the run writes (all of them; `checkpoints` may list fewer)

    @property
    def family_label(self) -> str:
        """The model family in words (SD 1.x, SD 2.x, SDXL)."""
        return family_named(self.family).label if self.family else ""

    @property
    def effective_batch(self) -> int:
        """Images per optimizer step, over all processes."""
        return self.batch_size * self.gradient_accumulation_steps * self.num_processes

    @property
    def processes_text(self) -> str:
        """" x 2 processes" for a data-parallel run, "" for one process."""
        return f" x {self.num_processes} processes" if self.num_processes > 1 else ""

    @property
    def batches_per_process(self) -> int:
        """Micro-batches each process runs in an epoch (shorter shares are topped up)."""
        return -(-self.batches_per_epoch // self.num_processes)

    @property
    def validation_where(self) -> str:
        """Where the validation images come from, in words."""
        return "from the validation folder" if self.validation_source == "folder" else "held out of the training images"

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["effective_batch"] = self.effective_batch
        data["family_label"] = self.family_label
        return data


def make_plan(config: TrainConfig, base_dir: str | Path, dataset: Dataset | None = None,
              *, num_processes: int | None = None) -> Plan:
    """The plan of `config` on its dataset (scanned unless given), trained by `num_processes`
    (by default the config's `training.processes`; the trainer gives the launch's count)."""
    if num_processes is None:
        num_processes = config.training.processes
    if dataset is None:
        dataset = scan_dataset(config, base_dir)
    instances = dataset.training_instances()
    batch_size = config.training.batch_size
    accumulation = config.training.gradient_accumulation_steps

    bucket_counts: dict[tuple[int, int], int] = {}
    for item in instances:
        bucket_counts[item.bucket] = bucket_counts.get(item.bucket, 0) + 1
    buckets = [
        BucketPlan(w, h, count, batches_in_bucket(count, batch_size))
        for (w, h), count in sorted(bucket_counts.items())
    ]
    batches_per_epoch = sum(b.batches for b in buckets)
    steps_per_epoch = math.ceil(-(-batches_per_epoch // num_processes) / accumulation)
    step_note = ""
    if config.training.max_steps:
        total_steps = config.training.max_steps
        epochs = math.ceil(total_steps / steps_per_epoch) if steps_per_epoch else 0
    elif config.training.gui_step_count:
        count = _gui_count(config, base_dir)
        total_steps = count.steps if count is not None else SD_SCRIPTS_DEFAULT_STEPS
        epochs = math.ceil(total_steps / steps_per_epoch) if steps_per_epoch else 0
        step_note = difference_note(count, steps_per_epoch, total_steps, epochs)
    else:
        epochs = config.training.epochs
        total_steps = epochs * steps_per_epoch

    reg_instances = sum(1 for item in instances if item.is_reg)
    folders = [_folder_plan(folder, instances, dataset.validation_items) for folder in dataset.folders]
    family = config_family(config, base_dir)
    parameters, tensors, layers = network_size_of(config, base_dir)
    value_bytes = BYTES_PER_VALUE[config.precision.save_precision]
    saves = SaveSchedule.of(config, steps_per_epoch, total_steps, epochs)
    # the weights and one alpha per layer, plus the safetensors header (about 160 bytes of
    # JSON per tensor, plus ~2 KiB of ss_* metadata)
    file_bytes = parameters * value_bytes + layers * value_bytes + tensors * 160 + 2048
    return Plan(
        folders=folders,
        images=len(dataset.train_items),
        image_repeats=len(instances) - reg_instances,
        reg_images=len(dataset.reg_items),
        reg_instances=reg_instances,
        buckets=buckets,
        batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        batches_per_epoch=batches_per_epoch,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        epochs=epochs,
        checkpoints=saves.points(MAX_LISTED_CHECKPOINTS),
        checkpoint_count=saves.count(),
        lora_file_bytes=file_bytes,
        lora_parameters=parameters,
        vram_estimate=estimate_vram(config, base_dir, lora_parameters=parameters),
        problems=([problem.message for problem in dataset.problems] + family.plan_notes(config)
                  + _network_problems(family, config)
                  + _warmup_problems(config, total_steps) + _save_count_problems(saves.count(), file_bytes)
                  + _mask_notes(config, dataset)),
        num_processes=num_processes,
        validation_images=len(dataset.validation_items),
        validation_source=("folder" if config.validation.image_dir.strip() else "split") if config.validation.enabled else "",
        family=family.name,
        step_note=step_note,
    )


def _mask_notes(config: TrainConfig, dataset: Dataset) -> list[str]:
    """A masked loss with no mask to read trains unmasked, as in sd-scripts: say so."""
    if config.training.masked_loss and not config.dataset.alpha_mask and not any(
            item.mask_path is not None for item in dataset.items):
        return ["training.masked_loss is on but no image has a mask (no conditioning_data_dir in a dataset TOML "
                "subset, dataset.alpha_mask off): the loss is not masked"]
    return []


def _gui_count(config: TrainConfig, base_dir: str | Path) -> GuiStepCount | None:
    """The Kohya GUI's step count of the config's folders (None with a dataset TOML)."""
    if config.dataset.dataset_config.strip():
        return None
    training = config.training
    return gui_step_count(resolve_path(base_dir, config.dataset.image_dir) or Path(base_dir),
                          bool(config.dataset.reg_dir.strip()), training.batch_size,
                          training.gradient_accumulation_steps, training.epochs)


def _network_problems(family, config: TrainConfig) -> list[str]:
    """The family's word on the network it is asked to train (Flux.1's fused qkv takes only
    some types), which the run refuses."""
    problem = family.network_problem(NetworkSpec.of(config))
    return [f"{problem} (the run refuses it)"] if problem else []


def _warmup_problems(config: TrainConfig, total_steps: int) -> list[str]:
    warmup = config.optimizer.lr_warmup_steps
    if not warmup or warmup <= total_steps or not total_steps:
        return []
    return [f"optimizer.lr_warmup_steps: {warmup} warm-up steps, but the run has {total_steps}: the learning rate "
            f"rises for the whole run and reaches its set value only at the end; about {max(1, total_steps // 10)} "
            "(a tenth of the run) is usual"]


def _save_count_problems(count: int, file_bytes: int) -> list[str]:
    if count <= MAX_LISTED_CHECKPOINTS:
        return []
    return [f"saving: the run writes {count:,} LoRA files ({format_bytes(count * file_bytes)}); save less often, "
            "or keep only the last few with saving.save_last_n"]


def _folder_plan(folder: FolderInfo, instances, validation_items) -> FolderPlan:
    count = sum(1 for item in instances if item.path.parent == folder.path)
    held_out = sum(1 for item in validation_items if item.path.parent == folder.path)
    return FolderPlan(folder.name, str(folder.path), folder.repeats, folder.images, folder.captioned, count,
                      folder.is_reg, held_out)


@dataclass(frozen=True)
class SaveSchedule:
    """When a run writes a LoRA file: after every n-th optimizer step (named by step), at
    every n-th epoch end (named by epoch), and at the end (the final file)."""

    every_n_epochs: int
    every_n_steps: int
    steps_per_epoch: int
    total_steps: int
    epochs: int

    @classmethod
    def of(cls, config: TrainConfig, steps_per_epoch: int, total_steps: int, epochs: int) -> "SaveSchedule":
        saving = config.saving
        return cls(saving.save_every_n_epochs, saving.save_every_n_steps, steps_per_epoch, total_steps, epochs)

    def after_step(self, step: int) -> bool:
        """An intermediate file after optimizer step `step` (the last step saves the final one)."""
        return bool(self.every_n_steps) and step % self.every_n_steps == 0 and step < self.total_steps

    def after_epoch(self, epoch: int, step: int) -> bool:
        """An intermediate file when epoch `epoch` ends at `step` (the last epoch saves the final one)."""
        final = epoch >= self.epochs or step >= self.total_steps
        return bool(self.every_n_epochs) and epoch % self.every_n_epochs == 0 and not final

    def points(self, limit: int | None = None) -> list[dict[str, int]]:
        """The LoRA files the run will write, as {"epoch", "step"} in step order, the last
        being the final one; with `limit`, the first `limit - 1` and the final (`count()`
        says how many there are: a long run saving every step makes millions)."""
        saves = self._intermediate()
        listed = list(itertools.islice(saves, None if limit is None else max(0, limit - 1)))
        if self.total_steps:
            listed.append((self.total_steps, self.epochs))
        return [{"epoch": epoch, "step": step} for step, epoch in listed]

    def count(self) -> int:
        """How many LoRA files the run writes, by arithmetic (no list of them)."""
        if not self.total_steps:
            return 0
        last = self.total_steps - 1  # intermediate saves come before the final step
        by_epoch = 0
        if self.every_n_epochs and self.steps_per_epoch:
            every = self.every_n_epochs
            by_epoch = max(0, min((self.epochs - 1) // every, last // (every * self.steps_per_epoch)))
        by_step = last // self.every_n_steps if self.every_n_steps else 0
        both = 0  # epoch saves that fall on a step save too: one file
        if by_epoch and by_step:
            spacing = self.every_n_epochs * self.steps_per_epoch
            both = by_epoch // (self.every_n_steps // math.gcd(spacing, self.every_n_steps))
        return by_epoch + by_step - both + 1

    def _intermediate(self) -> Iterator[tuple[int, int]]:
        """(step, epoch) of every save before the final one, in step order, lazily."""

        def by_epoch() -> Iterator[tuple[int, int, int]]:
            if not (self.every_n_epochs and self.steps_per_epoch):
                return
            for epoch in range(self.every_n_epochs, self.epochs + 1, self.every_n_epochs):
                step = min(epoch * self.steps_per_epoch, self.total_steps)
                if not self.after_epoch(epoch, step):
                    return  # later epochs end later
                yield step, 0, epoch

        def by_step() -> Iterator[tuple[int, int, int]]:
            if not self.every_n_steps:
                return
            for step in range(self.every_n_steps, self.total_steps, self.every_n_steps):
                yield step, 1, math.ceil(step / self.steps_per_epoch) if self.steps_per_epoch else 0

        previous = None
        for step, _order, epoch in heapq.merge(by_epoch(), by_step()):  # an epoch save names a shared step
            if step != previous:
                previous = step
                yield step, epoch


def family_name_of(config, base_dir) -> str:
    """The family a config trains (engine.model.families: detected from the base model, else
    model.family), for the config form's family-only settings. Light: reads configs only."""
    from engine.model.families import config_family

    return config_family(config, base_dir).name
