"""The pauses a run has still to make: sampling, validation and saving points ahead.

    pauses_ahead(config, step=120, steps_per_epoch=50, total_steps=400, epochs=8)
        -> {"sampling": 6, "validating": 0, "saving": 7}

`config` is the dict a run_start event carries (the frozen config), read leniently: a
missing or odd value counts as "never". The schedules are the trainer's: samples after
every `sampling.every_n_steps` steps and every `sampling.every_n_epochs` epochs;
evaluations likewise (`validation.*`) and before every LoRA file saved; LoRA files as
engine.plan.training_plan.SaveSchedule writes them. Each point is counted once however
many schedules meet there (the trainer makes one pause). Light module.
"""
from __future__ import annotations

from typing import Any

from engine.run.events import SAMPLING, SAVING, VALIDATING, as_int


def _setting(config: dict[str, Any], group: str, name: str) -> Any:
    section = config.get(group) if isinstance(config, dict) else None
    return section.get(name) if isinstance(section, dict) else None


def _every(config: dict[str, Any], group: str, name: str) -> int:
    return max(0, as_int(_setting(config, group, name), 0))


def _points(every_steps: int, every_epochs: int, *, steps_per_epoch: int, total_steps: int, epochs: int) -> set[int]:
    """The steps after which a pause due every N steps or every N epochs happens."""
    points = set(range(every_steps, total_steps + 1, every_steps)) if every_steps else set()
    if every_epochs and steps_per_epoch:
        points |= {min(epoch * steps_per_epoch, total_steps) for epoch in range(every_epochs, epochs + 1, every_epochs)}
    return points


def pauses_ahead(config: dict[str, Any], *, step: int, steps_per_epoch: int, total_steps: int,
                 epochs: int) -> dict[str, int]:
    """How many pauses of each phase come after optimizer step `step`."""
    from engine.plan.training_plan import SaveSchedule  # the plan's code: not needed to open a dashboard

    shape = {"steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "epochs": epochs}
    sampling = _points(_every(config, "sampling", "every_n_steps"), _every(config, "sampling", "every_n_epochs"), **shape)
    saves = {point["step"] for point in SaveSchedule(
        _every(config, "saving", "save_every_n_epochs"), _every(config, "saving", "save_every_n_steps"),
        steps_per_epoch, total_steps, epochs).points()}
    validating: set[int] = set()
    split = _setting(config, "validation", "split_fraction")
    if str(_setting(config, "validation", "image_dir") or "").strip() or (isinstance(split, (int, float)) and split > 0):
        validating = saves | _points(_every(config, "validation", "every_n_steps"),
                                     _every(config, "validation", "every_n_epochs"), **shape)
    return {phase: sum(1 for point in points if point > step)
            for phase, points in ((SAMPLING, sampling), (VALIDATING, validating), (SAVING, saves))}
