"""`loradeck plan CONFIG [--json]`: what the run will do, before it starts."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.config.schema import load_config, resolve_path
from engine.plan.preflight import check_before_run, plan_with_warnings
from engine.plan.training_plan import Plan
from engine.run.format import format_bytes

MAX_LISTED = 50  # checkpoints named on the plan's line; the count is always whole


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
    if plan.step_note:
        lines.append(f"                  {plan.step_note}")
    shown = plan.checkpoints if len(plan.checkpoints) <= MAX_LISTED else plan.checkpoints[:MAX_LISTED - 1] + plan.checkpoints[-1:]
    saves = ", ".join(f"e{c['epoch']}/s{c['step']}" for c in shown)
    if len(shown) < plan.checkpoint_count:
        head, last = saves.rsplit(", ", 1)
        saves = f"{head}, … {last}"
    lines.append(f"Checkpoints       {plan.checkpoint_count}: {saves}")
    lines.append(f"LoRA file         {format_bytes(plan.lora_file_bytes)} ({plan.lora_parameters:,} parameters)")
    lines.append(f"VRAM (estimate)   {plan.vram_estimate.summary()}")
    lines.append(f"RAM (estimate)    about {plan.vram_estimate.ram_gb:.1f} GiB of system memory while the model loads")
    for problem in plan.problems:
        lines.append(f"warning: {problem}")
    return "\n".join(lines)


def estimate_line(plan: Plan, runs_dir: Path) -> str:
    """How long the run would take, from a run this machine made (engine.plan.duration)."""
    from engine.plan.duration import estimate_duration, recent_speed
    from engine.run.format import format_duration

    speed = recent_speed(runs_dir, plan.family_label)
    estimate = estimate_duration(plan, speed) if speed is not None else None
    if estimate is None:
        return "Estimated         after a first run on this machine"
    return f"Estimated         {format_duration(estimate.seconds)} of training {estimate.note}"


def run(args) -> int:
    notes: list[str] = []
    config = load_config(args.config, notes)
    for note in notes:  # an older config, migrated (engine.config.schema.migrate)
        print(f"note: {args.config}: {note}", file=sys.stderr)
    base_dir = args.config.resolve().parent
    # what `loradeck train` would refuse, refused here with the same line
    plan = plan_with_warnings(config, base_dir, check_before_run(config, base_dir))
    if args.json:
        print(json.dumps(plan.as_json(), indent=1))
    else:
        print(format_plan(plan))
        print(estimate_line(plan, resolve_path(base_dir, config.saving.output_dir) or base_dir))
    return 0
