"""Compare a run's checkpoints: every prompt × every LoRA file (× every LoRA weight), one image.

    loradeck grid runs/city-v2 --weights 0.6,0.8,1.0

Columns are the run's checkpoints in training order, rows are the prompts (one row per
prompt and weight). Each cell is rendered with the prompt's fixed seed, so the only thing
that changes along a row is the LoRA: that is how a user picks the best epoch. A weight
of 0 shows the base model without the LoRA.

The base model is loaded once, as the run's frozen config names it; each LoRA file is
loaded with diffusers' own `load_lora_weights` (the same loader users run later) and
scaled with `set_adapters`. The image carries a `loradeck_grid` PNG text chunk (JSON:
columns, rows and each cell's box) so scripts and tests can read the layout.
"""
from __future__ import annotations

import json
import math
import os
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config.schema import load_config
from engine.errors import LoradeckError, UsageError
from engine.run.events import CHECKPOINT, SAMPLE, as_float, read_events
from engine.config.prompts import SamplePrompt, load_prompts, read_prompts_file
from engine.run.folder import RunDir

if TYPE_CHECKING:
    from PIL import Image

GRID_TEXT_KEY = "loradeck_grid"
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
PADDING = 8
GUTTER = 4


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    epoch: int | None
    step: int | None

    @property
    def label(self) -> str:
        where = []
        if self.epoch is not None:
            where.append(f"epoch {self.epoch}")
        if self.step is not None:
            where.append(f"step {self.step}")
        return self.path.stem + ("\n" + ", ".join(where) if where else "")


@dataclass(frozen=True)
class GridRow:
    prompt: SamplePrompt
    weight: float

    @property
    def label(self) -> str:
        p = self.prompt
        return (
            f"{p.prompt}\nweight {self.weight:g} | seed {p.seed}\n"
            f"{p.sampler} {p.steps} step{'' if p.steps == 1 else 's'} | CFG {p.cfg:g} | {p.width}x{p.height}"
        )


# --------------------------------------------------------------------------- inputs


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a .safetensors file (safe_open reads only the header)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError):
        raise LoradeckError(f"{path}: not a readable .safetensors file") from None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def find_checkpoints(run: RunDir, exclude: frozenset[str] = frozenset()) -> list[Checkpoint]:
    """The run's LoRA files in training order (by the step in their ss_* metadata), but
    the file names in `exclude` (the -best copy of one of them)."""
    files = sorted(run.checkpoints.glob("*.safetensors")) if run.checkpoints.is_dir() else []
    files = [path for path in files if path.name not in exclude]
    checkpoints = []
    for path in files:
        metadata = safetensors_metadata(path)
        checkpoints.append(
            Checkpoint(path=path, epoch=_int_or_none(metadata.get("ss_epoch")), step=_int_or_none(metadata.get("ss_steps")))
        )
    checkpoints.sort(key=lambda c: (c.step if c.step is not None else float("inf"), c.path.stat().st_mtime, c.path.name))
    return checkpoints


def validation_losses(run: RunDir) -> dict[str, float]:
    """Each LoRA file's validation loss, from the run's checkpoint events (file name -> loss)."""
    losses: dict[str, float] = {}
    for event in read_events(run.events):
        if event.get("type") == CHECKPOINT and event.get("kind", "lora") == "lora":
            loss = as_float(event.get("validation_loss"))
            if loss is not None:
                losses[Path(str(event.get("path", ""))).name] = loss
    return losses


def column_labels(checkpoints: list[Checkpoint], losses: dict[str, float] | None) -> tuple[list[str], str | None]:
    """The grid's column labels and the best-by-validation file name; with `losses` each
    column shows its validation loss and the lowest is marked."""
    if losses is None:
        return [c.label for c in checkpoints], None
    scored = [c.path.name for c in checkpoints if c.path.name in losses]
    best = min(scored, key=lambda name: losses[name]) if scored else None
    labels = []
    for checkpoint in checkpoints:
        label = checkpoint.label
        loss = losses.get(checkpoint.path.name)
        if loss is not None:
            label += f"\nvalidation {loss:.4f}" + ("\n* BEST by validation" if checkpoint.path.name == best else "")
        labels.append(label)
    return labels, best


def grid_prompts(run: RunDir, config: Any, prompts_file: Path | None) -> tuple[list[SamplePrompt], list[str]]:
    """The prompts to render, every one with a fixed seed.

    A prompt without --d takes the seed the trainer wrote down for the same prompt (so a
    column matches that epoch's sample), else the run's seed plus its index.
    """
    if prompts_file is None:
        prompts, warnings = load_prompts(config, run.path)
    else:
        path = Path(prompts_file)
        if not path.exists():
            raise LoradeckError(f"{path}: no such prompts file (--prompts)")
        prompts, warnings = read_prompts_file(path, default_sampler=config.sampling.sampler, setting="--prompts")
    recorded: dict[tuple[str, str], int] = {}
    for event in read_events(run.events):
        if event.get("type") == SAMPLE and isinstance(event.get("seed"), int):
            recorded.setdefault((str(event.get("prompt", "")), str(event.get("negative_prompt", ""))), event["seed"])
    fixed = []
    for index, prompt in enumerate(prompts):
        if not prompt.seed_given:
            seed = recorded.get((prompt.prompt, prompt.negative_prompt), config.training.seed + index)
            prompt = replace(prompt, seed=seed, seed_given=True)
        fixed.append(prompt)
    return fixed, warnings


def parse_weights(text: str) -> list[float]:
    """'0.6,0.8,1.0' -> [0.6, 0.8, 1.0]."""
    weights = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            weight = float(part)
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight):
            raise UsageError(f"--weights: {part!r} is not a number (write e.g. 0.6,0.8,1.0)")
        weights.append(weight)
    if not weights:
        raise UsageError("--weights: give at least one LoRA weight, e.g. 1.0")
    return weights


# --------------------------------------------------------------------------- layout


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font: Any, width: int, *, first_paragraph_lines: int = 0) -> list[str]:
    """Lines of `text` no wider than `width` pixels (explicit newlines kept).

    `first_paragraph_lines` caps the first paragraph (a long prompt), ending it with '…'.
    """
    per_line = max(4, int(width / max(1.0, font.getlength("n"))))
    lines: list[str] = []
    for number, paragraph in enumerate(text.split("\n")):
        wrapped = textwrap.wrap(paragraph, per_line, break_long_words=True) or [""]
        if number == 0 and first_paragraph_lines and len(wrapped) > first_paragraph_lines:
            wrapped = wrapped[:first_paragraph_lines]
            wrapped[-1] = wrapped[-1][: per_line - 1] + "…"
        lines.extend(wrapped)
    return lines


def compose_grid(
    cells: list[list["Image.Image"]], row_labels: list[str], column_labels: list[str]
) -> tuple["Image.Image", dict[str, Any]]:
    """One image: column labels on top, row labels on the left, cells[row][column] in between.

    Rows may differ in image size (each prompt has its own); a column is as wide as its
    widest cell, a row as tall as its tallest cell or its label. Returns the image and its
    layout (labels and each cell's box as [left, top, width, height]).
    """
    from PIL import Image, ImageDraw

    if not cells or not cells[0]:
        raise LoradeckError("nothing to put in the grid")
    column_widths = [max(row[c].width for row in cells) for c in range(len(column_labels))]
    font_size = max(12, min(28, min(image.height for row in cells for image in row) // 16))
    font = _font(font_size)
    line_height = font_size + 4
    label_width = max(160, min(480, 14 * font_size))
    column_lines = [_wrap(label, font, width - PADDING) for label, width in zip(column_labels, column_widths)]
    row_lines = [_wrap(label, font, label_width - 2 * PADDING, first_paragraph_lines=4) for label in row_labels]
    header_height = 2 * PADDING + line_height * max(len(lines) for lines in column_lines)
    row_heights = [
        max(max(image.height for image in row), 2 * PADDING + line_height * len(lines))
        for row, lines in zip(cells, row_lines)
    ]

    # a gutter between cells keeps neighbouring images apart
    width = label_width + sum(column_widths) + GUTTER * (len(column_widths) - 1)
    height = header_height + sum(row_heights) + GUTTER * (len(row_heights) - 1)
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    boxes: list[list[list[int]]] = []

    x = label_width
    for lines, column_width in zip(column_lines, column_widths):
        for number, line in enumerate(lines):
            draw.text((x + PADDING // 2, PADDING + number * line_height), line, fill=INK, font=font)
        x += column_width + GUTTER
    y = header_height
    for row, lines, row_height in zip(cells, row_lines, row_heights):
        for number, line in enumerate(lines):
            draw.text((PADDING, y + PADDING + number * line_height), line, fill=INK, font=font)
        x = label_width
        row_boxes = []
        for image, column_width in zip(row, column_widths):
            left = x + (column_width - image.width) // 2
            grid.paste(image.convert("RGB"), (left, y))
            row_boxes.append([left, y, image.width, image.height])
            x += column_width + GUTTER
        boxes.append(row_boxes)
        y += row_height + GUTTER
    layout = {
        "columns": column_labels,
        "rows": row_labels,
        "cells": boxes,
        "label_width": label_width,
        "header_height": header_height,
    }
    return grid, layout


# --------------------------------------------------------------------------- rendering


def _check_writable(out: Path) -> None:
    """Refuse an output the grid could not be written to before minutes of rendering."""
    existing = next((folder for folder in out.parents if folder.exists()), None)
    if out.is_dir():
        raise LoradeckError(f"{out}: is a folder; give -o a file name such as grid.png")
    if existing is not None and (not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK)):
        raise LoradeckError(f"{out}: cannot write the grid ({existing} is not a writable folder)")


class CheckpointAdapters:
    """A run's LoRA files put on the grid's pipeline one at a time, at a weight.

    Standard LoRA and LoCon go through diffusers' `load_lora_weights` and `set_adapters`
    (the loader users run later). diffusers' SD1.5 Kohya converter does not read LoHa,
    LoKr or DoRA files, so those are attached as the trainer's own network (peft's layers
    of the file's type, engine.network.lora), built once per run and refilled per file (so
    are a family's whose files diffusers reads only at the real sizes: Flux.1); a
    weight scales the update and 0 switches the adapters off (the base model)."""

    DIFFUSERS_TYPES = ("lora", "locon")

    def __init__(self, pipeline: Any, family: Any, device: Any, dtype: Any):
        self.pipeline, self.family, self.device, self.dtype = pipeline, family, device, dtype
        self.adapter: str | None = None
        self.network: Any = None

    def load(self, path: Path, number: int) -> None:
        from engine.network.lora import LoraNetwork, file_spec, read_lora_file

        tensors, metadata = read_lora_file(path)
        try:
            spec = file_spec(tensors, metadata)
        except LoradeckError as error:
            raise LoradeckError(f"{path}: {error}") from None
        if spec.type in self.DIFFUSERS_TYPES and self.family.lora_loads_in_diffusers:
            self.adapter = f"checkpoint_{number}"
            self.pipeline.load_lora_weights(str(path), adapter_name=self.adapter)
            return
        if self.network is None:
            self.network = LoraNetwork.build(self.family, self.pipeline, spec)
        elif self.network.spec != spec:
            raise LoradeckError(f"{path}: a {spec.type} network unlike the run's other files; "
                                "render it in a grid of its own")
        try:
            self.network.load_state_dict(tensors)
        except LoradeckError as error:
            raise LoradeckError(f"{path}: {error}") from None
        self.network.cast(self.device, self.dtype)

    def set_weight(self, weight: float) -> None:
        if self.adapter is not None:
            self.pipeline.set_adapters([self.adapter], adapter_weights=[weight])
            return
        self.network.enable(weight != 0)
        self.network.set_multiplier(weight)

    def unload(self) -> None:
        if self.adapter is not None:
            self.pipeline.delete_adapters(self.adapter)
            self.adapter = None


def pick_device(name: str) -> Any:
    """`auto` (CUDA when present, else the CPU) or a torch device name the machine has."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LoradeckError(f"--device: {name} asked for, but this machine has no usable CUDA GPU")
    return device


def render_grid(
    run_dir: str | Path,
    *,
    prompts_file: str | Path | None = None,
    weights: list[float] | None = None,
    output: str | Path | None = None,
    device: str = "auto",
    progress: Any = None,
    mark_best: bool = False,
) -> Path:
    """Render the grid of a run folder and write it atomically; returns the image path.

    `mark_best` labels every column with its validation loss and marks the lowest."""
    import torch

    from engine.model.loading import load_base_model
    from engine.sampling.sampler import build_pipeline, render, save_png

    run = RunDir(run_dir)
    if not run.config.exists():
        raise LoradeckError(f"{run.path}: not a run folder (no {run.config.name})")
    config = load_config(run.config)
    from engine.train.checkpoints import best_file_name

    checkpoints = find_checkpoints(run, exclude=frozenset({best_file_name(config.saving.output_name)}))
    if not checkpoints:
        raise LoradeckError(f"{run.checkpoints}: no LoRA files (.safetensors) to compare yet")
    losses = validation_losses(run) if mark_best else None
    if mark_best and not any(c.path.name in losses for c in checkpoints):
        raise LoradeckError(f"{run.path}: no checkpoint has a validation loss (the run trained without "
                            "validation; see validation.split_fraction); leave out --mark-best")
    labels, best = column_labels(checkpoints, losses)
    prompts, warnings = grid_prompts(run, config, Path(prompts_file) if prompts_file else None)
    if progress:
        for message in warnings:
            progress(f"warning: {message}")
    if not prompts:
        source = prompts_file or "the run's config (sampling.prompts / sampling.prompts_file)"
        raise LoradeckError(f"no sample prompts in {source}; give some with --prompts FILE")
    weights = weights or [1.0]
    out = Path(output) if output else run.path / "grid.png"
    _check_writable(out)

    target = pick_device(device)
    dtype = torch.float32
    if target.type == "cuda" and config.precision.mixed_precision in ("fp16", "bf16"):
        dtype = torch.float16 if config.precision.mixed_precision == "fp16" else torch.bfloat16
    model = load_base_model(config, run.path, device=target, dtype=dtype)
    runtime = model.runtime
    pipeline = build_pipeline(model, runtime.sampling_scheduler(config.sampling.sampler, model.noise_scheduler.config))

    rows = [GridRow(prompt, weight) for prompt in prompts for weight in weights]
    cells: list[list[Image.Image]] = [[] for _ in rows]
    adapters = CheckpointAdapters(pipeline, model.family, target, dtype)
    for number, checkpoint in enumerate(checkpoints):
        if progress:
            progress(f"{checkpoint.path.name} ({number + 1}/{len(checkpoints)})")
        adapters.load(checkpoint.path, number)
        for row_index, row in enumerate(rows):
            adapters.set_weight(row.weight)
            image = render(
                pipeline,
                row.prompt,
                runtime=runtime,
                base_scheduler_config=model.noise_scheduler.config,
                clip_skip=config.model.clip_skip,
                v_prediction=config.model.v_parameterization,
                device=target,
                dtype=dtype,
            )
            cells[row_index].append(image)
        adapters.unload()

    grid, layout = compose_grid(cells, [row.label for row in rows], labels)
    layout["run"] = str(run.path)
    layout["checkpoints"] = [c.path.name for c in checkpoints]
    layout["weights"] = weights
    if losses is not None:
        layout["validation_losses"] = {c.path.name: losses.get(c.path.name) for c in checkpoints}
        layout["best"] = best
    layout["prompts"] = [{"prompt": p.prompt, "negative_prompt": p.negative_prompt, "seed": p.seed} for p in prompts]
    try:
        save_png(grid, out, {GRID_TEXT_KEY: json.dumps(layout)})
    except OSError as error:  # a read-only place or a folder in the way, found only after rendering
        raise LoradeckError(f"{out}: cannot write the grid ({error.strerror or error})") from None
    return out
