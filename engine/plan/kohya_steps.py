"""The number of steps the Kohya GUI passes sd-scripts when its max_train_steps is 0.

The GUI's LoRA tab (kohya_gui/lora_gui.py) counts, without buckets:

    max_train_steps = ceil(Σ images × repeats / batch / accumulation × epoch × reg_factor)

where the images are the files ending .jpg, .jpeg, .png or .webp (any case) in each
subfolder of train_data_dir whose name starts with a number and an underscore (the number
is the repeats), and reg_factor is 2 when a regularisation folder is set, else 1. With a
dataset TOML it passes no count, and sd-scripts trains its default of 1600 steps. sd-scripts
then trains exactly that many steps, whatever its buckets make of an epoch.

`training.gui_step_count` asks for this count (the Kohya import sets it); the plan reports
where it differs from loradeck's per-bucket count.

Light module: standard library only.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

GUI_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
SD_SCRIPTS_DEFAULT_STEPS = 1600


@dataclass(frozen=True)
class GuiStepCount:
    steps: int
    image_repeats: int  # Σ images × repeats, as the GUI counts them
    reg_factor: int
    batch_size: int
    accumulation: int
    epochs: int

    @property
    def formula(self) -> str:
        reg = " × 2 (regularisation)" if self.reg_factor == 2 else ""
        return (f"ceil({self.image_repeats} images × repeats / batch {self.batch_size} / accumulation "
                f"{self.accumulation} × {self.epochs} epochs{reg})")


def _folder_repeats(name: str) -> int | None:
    """The GUI's `int(folder.split("_")[0])`: None where that raises."""
    try:
        return int(name.split("_")[0])
    except ValueError:
        return None


def gui_image_repeats(image_dir: Path) -> int:
    """Σ images × repeats of a training folder, counted as the GUI counts them."""
    total = 0
    try:
        entries = sorted(os.scandir(image_dir), key=lambda entry: entry.name)
    except OSError:
        return 0
    for entry in entries:
        try:
            is_folder = entry.is_dir()
        except OSError:
            continue
        repeats = _folder_repeats(entry.name) if is_folder else None
        if repeats is None:
            continue
        try:
            names = os.listdir(entry.path)
        except OSError:
            continue
        total += repeats * sum(1 for name in names if name.lower().endswith(GUI_IMAGE_EXTENSIONS))
    return total


def gui_step_count(image_dir: Path, has_reg_dir: bool, batch_size: int, accumulation: int, epochs: int) -> GuiStepCount:
    """The GUI's max_train_steps for these settings (its float arithmetic, in its order)."""
    image_repeats = gui_image_repeats(image_dir)
    reg_factor = 2 if has_reg_dir else 1
    steps = int(math.ceil(float(image_repeats) / int(batch_size) / int(accumulation) * int(epochs) * int(reg_factor)))
    return GuiStepCount(steps, image_repeats, reg_factor, batch_size, accumulation, epochs)


def difference_note(count: GuiStepCount | None, steps_per_epoch: int, total_steps: int, epochs: int) -> str:
    """One line: the GUI's count, and where it differs from the per-bucket one."""
    per_bucket = count.epochs * steps_per_epoch if count is not None else 0
    if count is None:
        head = (f"Kohya GUI step count: {total_steps} (a dataset TOML: the GUI passes no count, sd-scripts trains "
                f"its default {SD_SCRIPTS_DEFAULT_STEPS})")
    else:
        head = f"Kohya GUI step count: {total_steps} = {count.formula}"
        if total_steps == per_bucket:
            return f"{head}, the same as the per-bucket count ({count.epochs} epochs × {steps_per_epoch} steps)"
        head += f"; the per-bucket count would be {count.epochs} × {steps_per_epoch} = {per_bucket}"
    if steps_per_epoch and total_steps % steps_per_epoch:
        return f"{head}: the run trains {epochs} epochs, the last cut at step {total_steps}"
    return f"{head}: the run trains {epochs} full epochs"
