"""Renaming a run and putting it in the trash: what the runs screen's m and d do.

    rename_run(run_dir, "city-v2") -> the new folder
    trash_run(run_dir)             -> where it went: <runs>/.trash/<name> <time>/

A run is never deleted outright: the trash is a folder beside the runs, on the same disk
(so moving gigabytes of checkpoints is a rename), that the user empties by hand. A live
run is neither renamed nor trashed (its engine writes into the folder). Light module.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from engine.errors import LoradeckError
from engine.run.folder import RunDir

TRASH_DIR = ".trash"


def _not_live(run: RunDir, doing: str) -> None:
    if run.engine_alive():
        raise LoradeckError(f"{run.name}: its engine is running; stop it before you {doing} it")


def check_run_name(name: str) -> str:
    """The name as a folder name, or a one-line reason it cannot be one."""
    name = name.strip()
    if not name or name in (".", "..") or name.startswith("."):
        raise LoradeckError("a run name must not be empty or start with a dot")
    if "/" in name or "\\" in name or os.sep in name:
        raise LoradeckError(f"{name!r}: a run name is a folder name, without slashes")
    return name


def rename_run(run_dir: str | Path, new_name: str) -> Path:
    """Rename the run folder, and the name in its frozen config (a resumed run saves its files
    under the new name; files already written keep theirs)."""
    from engine.config.schema import load_config, replace_setting, save_config

    run = RunDir(run_dir)
    name = check_run_name(new_name)
    if name == run.name:
        return run.path
    target = run.path.parent / name
    if target.exists():
        raise LoradeckError(f"{target} already exists; choose another name")
    _not_live(run, "rename")
    try:
        os.rename(run.path, target)
    except OSError as error:
        raise LoradeckError(f"cannot rename {run.path} to {name} ({error.strerror or error})") from None
    renamed = RunDir(target)
    if renamed.config.is_file():
        try:
            save_config(replace_setting(load_config(renamed.config), "saving.output_name", name), renamed.config)
        except (LoradeckError, OSError):
            pass  # a damaged frozen config stays as it was: resuming reports it
    return target


def trash_run(run_dir: str | Path) -> Path:
    """Move the run folder into `<runs>/.trash/`; returns where it is now."""
    run = RunDir(run_dir)
    _not_live(run, "delete")
    trash = run.path.parent / TRASH_DIR
    target = trash / f"{run.name} {time.strftime('%Y-%m-%d %H%M%S')}"
    number = 2
    while target.exists():
        target = trash / f"{run.name} {time.strftime('%Y-%m-%d %H%M%S')} ({number})"
        number += 1
    try:
        trash.mkdir(exist_ok=True)
        os.rename(run.path, target)
    except OSError as error:
        raise LoradeckError(f"cannot move {run.path} to {trash} ({error.strerror or error})") from None
    return target
