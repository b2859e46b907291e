"""What a run will do before it starts: images, repeats, buckets, steps, checkpoints, file size.

The plan is computed from a config and its dataset and never changes the config. The
trainer runs on this plan (engine.train.loop): one bucket per batch, ceil per bucket; under
several processes each takes an equal share, ceil(batches / processes); ceil(share /
gradient accumulation) optimizer steps per epoch. `SaveSchedule` says when LoRA files are
written, for the plan's list and for the trainer alike.

Light module.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.dataset.buckets import batches_in_bucket
from engine.config.schema import TrainConfig
from engine.dataset.folders import Dataset, FolderInfo, scan_dataset
from engine.plan.model_shapes import network_size_of
from engine.model.families import config_family, family_named
from engine.plan.vram import VramEstimate, estimate_vram

BYTES_PER_VALUE = {"float": 4, "fp16": 2, "bf16": 2}


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
    checkpoints: list[dict[str, int]]
    lora_file_bytes: int
    lora_parameters: int
    vram_estimate: VramEstimate
    problems: list[str] = field(default_factory=list)
    num_processes: int = 1
    validation_images: int = 0  # held out, never trained on (engine.dataset.folders.hold_out)
    validation_source: str = ""  # "folder", "split" or "" (no validation)
    family: str = ""  # engine.model.families' name: detected from the base model, or model.family

    @property
    def family_label(self) -> str:
        """The model family in words (SD 1.x, SD 2.x, SDXL)."""
        return family_named(self.family).label if self.family else ""

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps

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
              *, num_processes: int = 1) -> Plan:
    """The plan of `config` on its dataset (scanned unless given), trained by `num_processes`."""
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
    if config.training.max_steps:
        total_steps = config.training.max_steps
        epochs = math.ceil(total_steps / steps_per_epoch) if steps_per_epoch else 0
    else:
        epochs = config.training.epochs
        total_steps = epochs * steps_per_epoch

    reg_instances = sum(1 for item in instances if item.is_reg)
    folders = [_folder_plan(folder, instances, dataset.validation_items) for folder in dataset.folders]
    family = config_family(config, base_dir)
    parameters, tensors, layers = network_size_of(config, base_dir)
    value_bytes = BYTES_PER_VALUE[config.precision.save_precision]
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
        checkpoints=SaveSchedule.of(config, steps_per_epoch, total_steps, epochs).points(),
        lora_file_bytes=file_bytes,
        lora_parameters=parameters,
        vram_estimate=estimate_vram(config, base_dir, lora_parameters=parameters),
        problems=[problem.message for problem in dataset.problems] + family.plan_notes(config),
        num_processes=num_processes,
        validation_images=len(dataset.validation_items),
        validation_source=("folder" if config.validation.image_dir.strip() else "split") if config.validation.enabled else "",
        family=family.name,
    )


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

    def points(self) -> list[dict[str, int]]:
        """Every LoRA file the run will write, as {"epoch", "step"}; the last is the final one."""
        points: dict[int, int] = {}
        for epoch in range(1, self.epochs + 1):
            step = min(epoch * self.steps_per_epoch, self.total_steps)
            if self.after_epoch(epoch, step):
                points[step] = epoch
        if self.every_n_steps:
            for step in range(self.every_n_steps, self.total_steps + 1, self.every_n_steps):
                if self.after_step(step):
                    points.setdefault(step, math.ceil(step / self.steps_per_epoch) if self.steps_per_epoch else 0)
        if self.total_steps:
            points[self.total_steps] = self.epochs
        return [{"epoch": epoch, "step": step} for step, epoch in sorted(points.items())]


def family_name_of(config, base_dir) -> str:
    """The family a config trains (engine.model.families: detected from the base model, else
    model.family), for the config form's family-only settings. Light: reads configs only."""
    from engine.model.families import config_family

    return config_family(config, base_dir).name
