"""`loradeck plan CONFIG [--json]`: what the run will do, before it starts."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.config.schema import load_config
from engine.plan.training_plan import Plan, make_plan
from engine.run.format import format_bytes

HELP = "Show images, repeats, buckets, steps per epoch and total steps of a config."


def add_arguments(parser) -> None:
    parser.add_argument("config", type=Path, help="training config (TOML)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def format_plan(plan: Plan) -> str:
    lines = ["Folders"]
    for folder in plan.folders:
        kind = " (regularisation)" if folder.is_reg else ""
        held_out = f", {folder.held_out} held out for validation" if folder.held_out else ""
        lines.append(
            f"  {folder.name}{kind}: {folder.images} images x {folder.repeats} repeats"
            f" = {folder.instances}  ({folder.captioned} captioned{held_out})"
        )
    lines.append(f"Model family      {plan.family_label}")
    lines.append(f"Images            {plan.images}")
    validation = (f"{plan.validation_images} images ({plan.validation_where})" if plan.validation_source
                  else "off (set validation.image_dir or validation.split_fraction)")
    lines.append(f"Validation        {validation}")
    lines.append(f"Images x repeats  {plan.image_repeats}")
    if plan.reg_images:
        lines.append(f"Regularisation    {plan.reg_images} images, {plan.reg_instances} per epoch")
    lines.append("Buckets")
    for bucket in plan.buckets:
        lines.append(f"  {bucket.width}x{bucket.height}: {bucket.count} images, {bucket.batches} batches")
    lines.append(f"Batch size        {plan.batch_size} x {plan.gradient_accumulation_steps} accumulation")
    lines.append(f"Steps per epoch   {plan.steps_per_epoch}")
    lines.append(f"Epochs            {plan.epochs}")
    lines.append(f"Total steps       {plan.total_steps}")
    saves = ", ".join(f"e{c['epoch']}/s{c['step']}" for c in plan.checkpoints)
    lines.append(f"Checkpoints       {len(plan.checkpoints)}: {saves}")
    lines.append(f"LoRA file         {format_bytes(plan.lora_file_bytes)} ({plan.lora_parameters:,} parameters)")
    lines.append(f"VRAM (estimate)   {plan.vram_estimate.summary()}")
    lines.append(f"RAM (estimate)    about {plan.vram_estimate.ram_gb:.1f} GiB of system memory while the model loads")
    for problem in plan.problems:
        lines.append(f"warning: {problem}")
    return "\n".join(lines)


def run(args) -> int:
    notes: list[str] = []
    config = load_config(args.config, notes)
    for note in notes:  # an older config, migrated (engine.config.schema.migrate)
        print(f"note: {args.config}: {note}", file=sys.stderr)
    plan = make_plan(config, args.config.resolve().parent)
    if args.json:
        print(json.dumps(plan.as_json(), indent=1))
    else:
        print(format_plan(plan))
    return 0
