"""How long a planned run will take, from the speed of a run this machine has made.

    speed = recent_speed(runs_dir)          # the newest run with step speeds
    estimate = estimate_duration(plan, speed)
    estimate.seconds, estimate.note         # 6424.0, "scaled from city-v1 (768×768, batch 2, ...)"

A step's cost grows with the pixels of each image and the images in a step (batch ×
gradient accumulation × processes), so the measured seconds per step are scaled by the
ratio of (mean pixels per image × images per step) between the plan and the measured
run; the mean is over the buckets, weighted by their images. A run of another model
family cannot be scaled (an SDXL step is not a bigger SD 1.5 step): the note says so. A
run whose events do not record its sizes gives its speed unscaled, and the note says that
too. The estimate leaves out sampling and validation pauses. Light module.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.run.events import RUN_START, STEP, as_float, as_int, read_events

MIN_SCALE, MAX_SCALE = 1 / 64, 64  # beyond this the guess would mean nothing


@dataclass(frozen=True)
class RunSpeed:
    """Optimizer steps per second measured by a finished or running run, and its sizes."""

    run_name: str
    steps_per_s: float
    mean_pixels: float = 0.0  # per image, 0 when the run did not record its buckets
    images_per_step: int = 0  # batch × accumulation × processes, 0 when not recorded
    family_label: str = ""
    typical_size: str = ""  # "768×768": the most common bucket


@dataclass(frozen=True)
class DurationEstimate:
    seconds: float
    steps_per_s: float  # as estimated for the plan
    note: str  # where the speed comes from, and how it was scaled


def bucket_pixels(buckets: list[dict[str, Any]] | list[Any]) -> tuple[float, str]:
    """(mean pixels per image, the most common bucket as "W×H") of plan buckets (dicts or
    engine.plan.training_plan.BucketPlan)."""
    sizes = []
    for bucket in buckets:
        get = bucket.get if isinstance(bucket, dict) else lambda name, _b=bucket: getattr(_b, name, 0)
        width, height, count = as_int(get("width"), 0), as_int(get("height"), 0), as_int(get("count"), 0)
        if width > 0 and height > 0 and count > 0:
            sizes.append((width, height, count))
    images = sum(count for _w, _h, count in sizes)
    if not images:
        return 0.0, ""
    width, height, _count = max(sizes, key=lambda size: size[2])
    return sum(w * h * count for w, h, count in sizes) / images, f"{width}×{height}"


def run_speed(run_dir: Path, name: str) -> RunSpeed | None:
    """The median step speed of one run folder's events, with the sizes its run_start recorded."""
    speeds: list[float] = []
    plan: dict[str, Any] = {}
    for event in read_events(Path(run_dir) / "events.jsonl"):
        kind = event.get("type")
        if kind == STEP:
            speed = as_float(event.get("steps_per_s"))
            if speed and speed > 0:
                speeds.append(speed)
        elif kind == RUN_START and isinstance(event.get("plan"), dict):
            plan = event["plan"]
    if not speeds:
        return None
    pixels, size = bucket_pixels(plan.get("buckets") or [])
    return RunSpeed(name, statistics.median(speeds), pixels, as_int(plan.get("effective_batch"), 0),
                    str(plan.get("family_label") or ""), size)


def recent_speed(runs_dir: str | Path, family_label: str = "") -> RunSpeed | None:
    """The speed of the most recent run (under `runs_dir`) that has step speeds, of the
    model family `family_label` when one has (its steps compare), else of any."""
    from engine.run.folder import list_runs

    newest = None
    for run in list_runs(runs_dir):
        speed = run_speed(run.path, run.name)
        if speed is None:
            continue
        if not family_label or speed.family_label == family_label:
            return speed
        newest = newest or speed
    return newest


def estimate_duration(plan, speed: RunSpeed) -> DurationEstimate | None:
    """The plan's training time at `speed`, scaled to its pixels and images per step."""
    if not plan.total_steps or speed.steps_per_s <= 0:
        return None
    measured = f"{speed.run_name} on this machine"
    plan_pixels, plan_size = bucket_pixels(plan.buckets)
    images_per_step = plan.effective_batch
    if speed.family_label and plan.family_label and speed.family_label != plan.family_label:
        steps_per_s = speed.steps_per_s
        note = (f"at {steps_per_s:.2f} steps/s of {measured} ({speed.family_label}): "
                f"not comparable to {plan.family_label}, a rough guess")
    elif not (speed.mean_pixels and speed.images_per_step and plan_pixels and images_per_step):
        steps_per_s = speed.steps_per_s
        note = f"at {steps_per_s:.2f} steps/s ({measured}; its image size is not recorded)"
    else:
        scale = (plan_pixels * images_per_step) / (speed.mean_pixels * speed.images_per_step)
        scale = min(MAX_SCALE, max(MIN_SCALE, scale))
        steps_per_s = speed.steps_per_s / scale
        if abs(scale - 1) < 0.02:
            note = f"at {steps_per_s:.2f} steps/s ({measured})"
        else:
            note = (f"at {steps_per_s:.2f} steps/s: {measured} made {speed.steps_per_s:.2f} at "
                    f"{speed.typical_size}, {speed.images_per_step} images a step; scaled by pixels "
                    f"and images to {plan_size}, {images_per_step} a step")
    return DurationEstimate(plan.total_steps / steps_per_s, steps_per_s, note)
