"""How run numbers read on screen: durations, losses, speeds, sizes, times.

Shared by `loradeck runs` and the TUI's runs list and dashboard so both say the same
thing the same way. Light module. A missing value reads as "-".
"""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.run.folder import RunSummary

MISSING = "-"


def format_duration(seconds: float | None) -> str:
    """12s, 4m05s, 3h07m, 2d04h."""
    if seconds is None or not math.isfinite(seconds):
        return MISSING
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def format_loss(value: float | None) -> str:
    if value is None:
        return MISSING
    if not math.isfinite(value):
        return str(value)  # "nan" / "inf" must stay visible, never blank
    return f"{value:.4f}" if abs(value) >= 1e-3 else f"{value:.2e}"


def format_lr(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.2e}" if math.isfinite(value) else str(value)


def format_speed(steps_per_s: float | None) -> str:
    """Steps per second as it/s, or s/it when a step takes longer than a second."""
    if steps_per_s is None or not math.isfinite(steps_per_s) or steps_per_s <= 0:
        return MISSING
    if steps_per_s >= 1:
        return f"{steps_per_s:.2f} it/s"
    return f"{1 / steps_per_s:.2f} s/it"


def format_bytes(count: float | None) -> str:
    if count is None:
        return MISSING
    value, unit = float(count), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"


def format_clock(timestamp: float | None, *, now: float | None = None) -> str:
    """A start time: HH:MM today, else YYYY-MM-DD HH:MM (local time)."""
    if timestamp is None:
        return MISSING
    local = time.localtime(timestamp)
    today = time.localtime(time.time() if now is None else now)
    if local[:3] == today[:3]:
        return time.strftime("%H:%M", local)
    return time.strftime("%Y-%m-%d %H:%M", local)


def format_progress(step: int, total: int) -> str:
    if not total:
        return f"{step}" if step else MISSING
    return f"{step}/{total} {100 * step / total:.0f}%"


# One row of `loradeck runs` and of the runs screen.
COLUMNS = ("STATUS", "PROGRESS", "LOSS", "AVG LOSS", "SPEED", "STARTED", "DURATION", "NAME", "LORA")


def summary_row(summary: RunSummary) -> tuple[str, ...]:
    return (
        summary.status,
        format_progress(summary.step, summary.total_steps),
        format_loss(summary.loss),
        format_loss(summary.loss_avg),
        format_speed(summary.steps_per_s),
        format_clock(summary.started),
        format_duration(summary.duration),
        summary.name,
        summary.last_lora.rsplit("/", 1)[-1] or MISSING,  # the newest LoRA file, in the run's checkpoints/
    )
