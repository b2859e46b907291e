"""Dataset health: find every image that would break or quietly spoil a training run.

    report = scan(target_for(Path("ws/img")), progress=print)
    report.findings  -> [Finding(path="10_cat/a.jpg", code="corrupt", severity="error", ...)]

The API the app uses (all keyword arguments optional; a scan without them behaves as
it always did):

    scan(target, workers=None, progress=None, should_stop=None, on_file=None) -> ScanReport
      progress(done, total)   (0, total) as soon as the names are listed, before any file
                              is stat'ed; then as the cached files are found (in batches)
                              and as each decoded file finishes
      should_stop() -> bool   checked between files; True ends the scan with ScanCancelled
                              (what was decoded is cached, so a rescan resumes from there)
      on_file(path, findings) once per image as soon as its own findings are known: the
                              cached and unreadable ones as the listing reaches them (in
                              the pool, all before the first decoded one), then each as it
                              is decoded; `findings` are that image's decode and caption
                              findings (possibly none). Dataset-wide findings (duplicate,
                              near_duplicate, blurry, orphan_caption, bad_folder_name,
                              unreadable_folder) come only in the returned report, whose
                              findings are the complete, sorted list.
    target_for(dir) / target_for_workspace(workspace) -> ScanTarget
    ScanCancelled

All callbacks run in the thread that called `scan`. One scan runs at a time (a second
call waits for the first). Each image is decoded once, in worker processes on every core
(engine.health.workers, engine.health.image_checks); what a decode tells is cached by
path, size and mtime (engine.health.cache), so scanning an unchanged dataset again only
lists files (engine.health.listing) and compares numbers. The dataset-wide comparisons
(duplicates, blur, captions, folders) are redone each time from the facts
(engine.health.findings). Fixes live in engine.health.exif_fix and
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
from engine.health.findings import caption_path_of, dataset_findings, image_findings
from engine.health.cache import load_cache, save_cache
from engine.health.listing import list_files, stat_image
from engine.health.report import DatasetFiles, Finding, ScanReport, ScanSettings, Skipped
from engine.health.image_checks import ImageFacts
from engine.health.workers import inspect_files
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
    on_file: Callable[[str, list[Finding]], None] | None = None,
) -> ScanReport:
    """Check every image under target.root (the callbacks: see the module docstring)."""
    # One scan at a time: a rescan started while a cancelled one winds down waits for
    # it to save its cache, and then decodes only what that one had not reached.
    with _one_scan_at_a_time:
        return _scan(target, workers, progress, should_stop, on_file)


_one_scan_at_a_time = threading.Lock()
KNOWN_BATCH = 500  # cached or unreadable images counted together in one progress call


def _scan(target, workers, progress, should_stop, on_file) -> ScanReport:
    root, settings = target.root, target.settings
    if not root.is_dir():
        raise LoradeckError(f"{root}: image folder does not exist")
    # The names first (the directory says each entry's type): the total is known at once,
    # and each image is stat'ed (the cache's key) as the scan comes to it, while the
    # images before it are already decoding.
    files = list_files(root, settings.caption_extension, stat_images=False)
    total = len(files.images)
    report = progress or (lambda done, count: None)
    report(0, total)
    cached = load_cache(target.cache_path, root, settings.max_pixels)
    facts: dict[str, ImageFacts] = {}
    captions = _Captions(root, files, settings)

    reported = 0

    def known(relative: str, result: ImageFacts, *, batched: bool = False) -> None:
        facts[relative] = result
        if on_file is not None:
            on_file(relative, image_findings(relative, result, captions.texts_for(relative),
                                              settings, files.problems))
        if not batched or len(facts) % KNOWN_BATCH == 0:
            count()

    def count() -> None:
        nonlocal reported
        if len(facts) != reported:
            reported = len(facts)
            report(reported, total)

    def to_decode():
        """The images the cache does not know, in name order. The others are known on the
        way: what is not a readable regular file is never opened (its reason is its
        finding), and a cached image's facts are its stamp's."""
        for relative in files.images:
            if relative not in files.problems and relative not in files.stats:
                stamp, problem = stat_image(os.path.join(root, relative))
                if stamp is None:
                    files.problems[relative] = problem
                else:
                    files.stats[relative] = stamp
            # (counted in batches: a cached dataset is known in a blink)
            if relative in files.problems:
                known(relative, ImageFacts(error_code="unreadable", error=files.problems[relative]), batched=True)
                continue
            entry = cached.get(relative)
            if entry is not None and entry[0] == files.stats[relative]:
                known(relative, entry[1], batched=True)
                continue
            count()
            path = str(root / relative)
            relative_of[path] = relative
            yield path
        count()

    relative_of: dict[str, str] = {}

    def on_result(path: str, result: ImageFacts) -> None:
        known(relative_of[path], result)

    finished = inspect_files(
        to_decode(), on_result, max_pixels=settings.max_pixels, workers=workers,
        should_stop=should_stop or (lambda: False), expected=total,
    )
    if relative_of or cached.keys() != files.stats.keys():
        # Saved even when stopped early: the files decoded so far need no second decode
        # (and the cached ones a stopped scan had not come to yet keep their entries).
        listed = set(files.images)
        entries = {relative: entry for relative, entry in cached.items() if relative in listed and relative not in facts}
        entries.update({relative: (files.stats[relative], facts[relative]) for relative in facts
                        if relative in files.stats})
        save_cache(target.cache_path, root, settings.max_pixels, entries)
    if not finished:
        raise ScanCancelled()
    skipped = [Skipped(path, why) for path, why in files.skipped.items()]
    return ScanReport(root, total, dataset_findings(files, facts, captions.all(), settings), skipped)


class _Captions:
    """Caption texts, each read once, when first needed. One that cannot be read gets its
    reason in files.problems instead (to the trainer it is an error, not an empty caption)."""

    def __init__(self, root: Path, files: DatasetFiles, settings: ScanSettings):
        self.root, self.files, self.settings = root, files, settings
        self.listed = set(files.captions)
        self.texts: dict[str, str] = {}

    def texts_for(self, image: str) -> dict[str, str]:
        """The texts read so far, with the caption of `image` among them (if it has one)."""
        self._read(caption_path_of(image, self.settings))
        return self.texts

    def all(self) -> dict[str, str]:
        for relative in self.files.captions:
            self._read(relative)
        return self.texts

    def _read(self, relative: str) -> None:
        if relative in self.texts or relative in self.files.problems or relative not in self.listed:
            return
        try:
            self.texts[relative] = decode_caption(read_regular_file(self.root / relative))
        except OSError as error:
            self.files.problems[relative] = reason(error)
