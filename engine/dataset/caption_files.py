"""Caption files of a dataset folder: find them fast, read and write them safely.

- `list_caption_files(root)` walks the tree with os.scandir (no per-file stat: a
  10,000-image dataset lists in tens of milliseconds); images are .png .jpg .jpeg .webp
  .bmp, `_quarantine/` and hidden folders are skipped.
- Reads return a `Stamp` (the size and a digest of the bytes read) and every write is a
  compare-and-swap against the stamp its text was read with: a caption changed on disk
  since then raises `CaptionChanged` instead of being overwritten. The check and the
  rename run under an exclusive lock on the caption's folder, so two loradeck processes
  (two `loradeck tags`, the editor and the auto-captioner) never both pass it; another
  program that rewrites a caption is seen whatever its timing, except in the
  microseconds between the check and the rename. Writes are atomic (engine.atomic).
- Review marks live beside the dataset in `<root>/.loradeck-reviewed.json`, never in
  the captions (trainers would read them as tags).

Light module: standard library (and engine.dataset.folders's folder rules).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the content check alone guards writes
    fcntl = None  # type: ignore[assignment]

from engine.atomic import atomic_path, atomic_write_text
from engine.dataset.folders import IMAGE_EXTENSIONS, QUARANTINE_DIR, decode_caption
from engine.errors import LoradeckError

REVIEW_FILE = ".loradeck-reviewed.json"

# What a caption file held: (size, digest of its bytes); None means there was no file.
# From the bytes, not the times: a rewrite within one clock tick, or one that restores the
# modification time, is still a change, and a file touched but not changed is not one.
Stamp = tuple[int, bytes] | None


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


def _stamp_of(data: bytes) -> Stamp:
    return (len(data), hashlib.blake2b(data, digest_size=16).digest())


def caption_stamp(path: str | Path) -> Stamp:
    """The stamp of the caption file as it is on disk now (None: there is none)."""
    try:
        with open(path, "rb") as handle:
            return _stamp_of(handle.read())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise LoradeckError(f"{path}: cannot read ({error.strerror})") from error


def read_caption(path: str | Path) -> tuple[str | None, Stamp]:
    """The whole caption text (None when there is no file) and the stamp it was read at."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None, None
    except OSError as error:
        raise LoradeckError(f"{path}: cannot read ({error.strerror})") from error
    return decode_caption(data), _stamp_of(data)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on a folder that every loradeck caption writer takes for its
    check-and-rename. Where the file system has no locks (some network mounts) the
    content check still runs, unlocked."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        handle = None
    try:
        if handle is not None and fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        if handle is not None:
            os.close(handle)  # closing releases the lock


@contextlib.contextmanager
def _unchanged_since(path: Path, expected: Stamp | str) -> Iterator[None]:
    """Hold the folder lock while the file still has the `expected` stamp ("any": an
    overwrite the user chose); raise CaptionChanged when it does not."""
    with _folder_lock(path.parent):
        if expected != "any" and caption_stamp(path) != expected:
            raise CaptionChanged(path)
        yield


def write_caption(path: Path, text: str | None, expected: Stamp | str = "any") -> Stamp:
    """Write (or, with text None, remove) a caption file atomically; return the new stamp.

    `expected` is the stamp the caller read the file at; when the file on disk no
    longer has it, `CaptionChanged` is raised and nothing is written (a compare-and-swap;
    the caller re-reads and decides). Pass "any" to write regardless (the user chose to
    overwrite).
    """
    path = Path(path)
    if text is None:
        # Only ever a caption file loradeck created (undoing "add tag" on an image
        # that had none): absent and empty mean different things to a trainer. A file
        # changed since loradeck wrote it holds someone else's words: never deleted.
        with _unchanged_since(path, expected):
            if expected == "any" and caption_stamp(path) is not None:
                raise CaptionChanged(path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return None
    data = text.encode("utf-8")
    with atomic_path(path, replace_guard=lambda _temp: _unchanged_since(path, expected)) as temp:
        temp.write_bytes(data)
    return _stamp_of(data)


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
