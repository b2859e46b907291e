"""Dataset health: find every image that would break or quietly spoil a training run.

    report = scan(target_for(Path("ws/img")), progress=print)
    report.findings  -> [Finding(path="10_cat/a.jpg", code="corrupt", severity="error", ...)]

Each image is decoded once, in worker processes on every core (engine.health.image_checks);
what a decode tells is cached by path, size and mtime (engine.health.cache), so
scanning an unchanged dataset again only lists files and compares numbers. The
dataset-wide comparisons (duplicates, blur, captions, folders) are redone each time
from the facts (engine.health.findings). Fixes live in engine.health.exif_fix and
engine.dataset.quarantine. Light module: no torch.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine.config.schema import TrainConfig, load_config
from engine.dataset.folders import decode_caption, parse_folder_name
from engine.errors import LoradeckError
from engine.health.file_access import read_regular_file, reason
from engine.health.findings import dataset_findings
from engine.health.cache import load_cache, save_cache
from engine.health.listing import list_files
from engine.health.report import DatasetFiles, ScanReport, ScanSettings, Skipped
from engine.health.image_checks import ImageFacts, inspect_files
from engine.config.workspace import CONFIG_NAME, Workspace

class ScanCancelled(Exception):
    """The caller's `should_stop` asked the scan to stop; what was decoded is cached."""


# ---- what to scan, with which rules


@dataclass(frozen=True)
class ScanTarget:
    root: Path  # the image folder
    settings: ScanSettings
    cache_path: Path
    config_problem: str = ""  # why the workspace config was not used (defaults were)


def target_for_workspace(workspace: Workspace) -> ScanTarget:
    config, problem = TrainConfig(), ""
    if workspace.config_path.exists():
        # A broken config is the config screen's business; the images can still be checked.
        try:
            config = load_config(workspace.config_path)
        except LoradeckError as error:
            problem = f"{error}; checking with the default dataset settings"
    return ScanTarget(
        root=workspace.image_dir,
        settings=ScanSettings.from_config(config, kohya_layout=True),
        cache_path=workspace.state_dir / "health-cache.json",
        config_problem=problem,
    )


def target_for(path: str | os.PathLike) -> ScanTarget:
    """DIR of `loradeck scan DIR`: a workspace, a workspace's image folder, or any folder."""
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise LoradeckError(f"{path}: not a folder")
    entries = {entry.name: entry for entry in _entries(path)}  # a LoradeckError when it cannot be read
    if CONFIG_NAME in entries or ("img" in entries and _is_folder(entries["img"])):
        return target_for_workspace(Workspace(path))
    parent = Workspace(path.parent)
    if parent.exists() and parent.image_dir == path:
        return target_for_workspace(parent)
    # A bare folder follows the Kohya layout when it is called img or any subfolder
    # already has the <repeats>_ prefix; otherwise its subfolders are just folders.
    kohya = path.name == "img" or any(
        parse_folder_name(entry.name) is not None and _is_folder(entry) for entry in entries.values()
    )
    return ScanTarget(
        root=path,
        settings=ScanSettings.from_config(TrainConfig(), kohya_layout=kohya),
        cache_path=path / ".loradeck-scan-cache",
    )


def _entries(path: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as listing:
            return list(listing)
    except OSError as error:
        raise LoradeckError(f"{path}: cannot read the folder: {reason(error)}") from None


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


# ---- the scan


def scan(
    target: ScanTarget,
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ScanReport:
    """Check every image under target.root. `progress(done, total)` is called as files finish."""
    # One scan at a time: a rescan started while a cancelled one winds down waits for
    # it to save its cache, and then decodes only what that one had not reached.
    with _one_scan_at_a_time:
        return _scan(target, workers, progress, should_stop)


_one_scan_at_a_time = threading.Lock()


def _scan(target, workers, progress, should_stop) -> ScanReport:
    root, settings = target.root, target.settings
    if not root.is_dir():
        raise LoradeckError(f"{root}: image folder does not exist")
    files = list_files(root, settings.caption_extension)
    cached = load_cache(target.cache_path, root, settings.max_pixels)
    # What is not a readable regular file is never opened: its reason is its finding.
    facts: dict[str, ImageFacts] = {relative: ImageFacts(error_code="unreadable", error=files.problems[relative])
                                    for relative in files.images if relative in files.problems}
    todo: list[str] = []
    for relative in files.images:
        if relative in facts:
            continue
        entry = cached.get(relative)
        if entry is not None and entry[0] == files.stats[relative]:
            facts[relative] = entry[1]
        else:
            todo.append(relative)
    total = len(files.images)
    report = progress or (lambda done, count: None)
    report(len(facts), total)
    relative_of = {str(root / relative): relative for relative in todo}

    def on_result(path: str, result: ImageFacts) -> None:
        facts[relative_of[path]] = result
        report(len(facts), total)

    finished = inspect_files(
        list(relative_of), on_result, max_pixels=settings.max_pixels, workers=workers,
        should_stop=should_stop or (lambda: False),
    )
    if todo or cached.keys() != files.stats.keys():
        # Saved even when stopped early: the files decoded so far need no second decode.
        save_cache(target.cache_path, root, settings.max_pixels,
                   {relative: (files.stats[relative], facts[relative]) for relative in facts
                    if relative in files.stats})
    if not finished:
        raise ScanCancelled()
    captions = _read_captions(root, files)
    skipped = [Skipped(path, why) for path, why in files.skipped.items()]
    return ScanReport(root, total, dataset_findings(files, facts, captions, settings), skipped)


def _read_captions(root: Path, files: DatasetFiles) -> dict[str, str]:
    """The text of every caption file; one that cannot be read gets its reason in
    files.problems instead (to the trainer it is an error, not an empty caption)."""
    captions = {}
    for relative in files.captions:
        if relative in files.problems:
            continue
        try:
            captions[relative] = decode_caption(read_regular_file(root / relative))
        except OSError as error:
            files.problems[relative] = reason(error)
    return captions
