"""Caption files of a dataset folder: find them fast, read and write them safely.

- `list_caption_files(root)` walks the tree with os.scandir (no per-file stat: a
  10,000-image dataset lists in tens of milliseconds); images are .png .jpg .jpeg .webp
  .bmp, `_quarantine/` and hidden folders are skipped.
- Reads return a `Stamp` (mtime_ns, size) and writes take the stamp the text was read
  with: a caption changed on disk since then raises `CaptionChanged` instead of being
  overwritten. Writes are atomic (engine.atomic).
- Review marks live beside the dataset in `<root>/.loradeck-reviewed.json`, never in
  the captions (trainers would read them as tags).

Light module: standard library (and engine.dataset.folders's folder rules).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from engine.atomic import atomic_write_text
from engine.dataset.folders import IMAGE_EXTENSIONS, QUARANTINE_DIR, decode_caption
from engine.errors import LoradeckError

REVIEW_FILE = ".loradeck-reviewed.json"

# (st_mtime_ns, st_size) of a caption file; None means the file does not exist.
Stamp = tuple[int, int] | None


class CaptionChanged(LoradeckError):
    """A caption file changed on disk since it was read; the write was not done."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(f"{path}: changed on disk since it was loaded")


@dataclass(frozen=True, slots=True)
class CaptionFile:
    # Plain strings: making 20,000 Path objects would be most of a 10,000-image listing.
    image_path: str
    caption_path: str
    relative: str  # image path relative to the dataset root, with "/" separators
    has_caption: bool  # as seen when listed

    @property
    def image(self) -> Path:
        return Path(self.image_path)

    @property
    def caption(self) -> Path:
        return Path(self.caption_path)


@dataclass(frozen=True)
class CaptionFolder:
    """Where a dataset's captions are and how they are written."""

    root: Path
    caption_extension: str = ".txt"
    keep_tokens: int = 0


def caption_folder_of(path: str | Path) -> CaptionFolder:
    """A plain folder is itself; a workspace means its image folder and caption settings.

    The workspace config is read leniently: captioning comes before choosing a base
    model, so a config that does not validate yet must still give these three values.
    """
    from engine.config.schema import CaptionSettings
    from engine.config.workspace import Workspace

    path = Path(path).expanduser()
    workspace = Workspace(path)
    if not workspace.config_path.exists():
        return CaptionFolder(path)
    extension = workspace.setting("captions.caption_extension")
    if not extension.startswith("."):
        extension = CaptionSettings().caption_extension
    keep_tokens = workspace.setting("captions.keep_tokens")
    root = workspace.image_dir
    return CaptionFolder(root, extension, keep_tokens)


def _natural_key(text: str) -> list:
    """img2 before img10, as a file manager sorts."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def list_caption_files(root: str | Path, caption_extension: str = ".txt") -> list[CaptionFile]:
    """Every image under `root` with the caption file that belongs to it, sorted naturally."""
    root = Path(root)
    if not root.is_dir():
        raise LoradeckError(f"{root}: not a folder")
    found: list[CaptionFile] = []
    pending = [(str(root), "")]
    while pending:
        folder, prefix = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as error:
            raise LoradeckError(f"{folder}: cannot list ({error.strerror})") from error
        names = {entry.name for entry in entries}
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            if entry.is_dir():
                if name != QUARANTINE_DIR:
                    pending.append((entry.path, f"{prefix}{name}/"))
                continue
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            caption_name = name[: name.rfind(".")] + caption_extension
            found.append(CaptionFile(
                entry.path, os.path.join(folder, caption_name), prefix + name, caption_name in names,
            ))
    found.sort(key=lambda item: _natural_key(item.relative))
    return found


def caption_stamp(path: str | Path) -> Stamp:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return (stat.st_mtime_ns, stat.st_size)


def read_caption(path: str | Path) -> tuple[str | None, Stamp]:
    """The whole caption text (None when there is no file) and the stamp it was read at."""
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            data = handle.read()
    except FileNotFoundError:
        return None, None
    except OSError as error:
        raise LoradeckError(f"{path}: cannot read ({error.strerror})") from error
    return decode_caption(data), (stat.st_mtime_ns, stat.st_size)


def write_caption(path: Path, text: str | None, expected: Stamp | str = "any") -> Stamp:
    """Write (or, with text None, remove) a caption file atomically; return the new stamp.

    `expected` is the stamp the caller read the file at; when the file on disk no
    longer has it, `CaptionChanged` is raised and nothing is written. Pass "any" to
    write regardless (the user chose to overwrite).
    """
    if expected != "any" and caption_stamp(path) != expected:
        raise CaptionChanged(path)
    if text is None:
        # Only ever a caption file loradeck created (undoing "add tag" on an image
        # that had none): absent and empty mean different things to a trainer. A file
        # changed since loradeck wrote it holds someone else's words: never deleted.
        if expected == "any" and caption_stamp(path) is not None:
            raise CaptionChanged(path)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        return None
    atomic_write_text(path, text)
    return caption_stamp(path)


class ReviewMarks:
    """Which images a user has accepted, stored in `<root>/.loradeck-reviewed.json`."""

    def __init__(self, root: str | Path):
        self.path = Path(root) / REVIEW_FILE
        self._reviewed: set[str] = set()
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        if isinstance(data, dict) and isinstance(data.get("reviewed"), list):
            self._reviewed = {str(item) for item in data["reviewed"]}

    def __contains__(self, relative: str) -> bool:
        return relative in self._reviewed

    def __len__(self) -> int:
        return len(self._reviewed)

    def set(self, relative: str, reviewed: bool = True) -> None:
        before = relative in self._reviewed
        if reviewed == before:
            return
        if reviewed:
            self._reviewed.add(relative)
        else:
            self._reviewed.discard(relative)
        self.save()

    def save(self) -> None:
        data = {"version": 1, "reviewed": sorted(self._reviewed, key=_natural_key)}
        atomic_write_text(self.path, json.dumps(data, indent=0) + "\n")
