"""The quarantine: where files go instead of being deleted, and how they come back.

    img/_quarantine/
      manifest.json           every move, so `loradeck scan DIR --undo-quarantine` can undo it
      10_cat/broken.jpg       same relative path as before
      10_cat/broken.txt       its caption travels with it

Two kinds of entries: "moved" (an image or caption taken out of the dataset) and
"original" (the untouched original of a file that a fix rewrote in place, e.g. the
EXIF orientation baked into the pixels). Undo puts both back. Nothing is ever deleted.

Entries carry the number of the user's action that made them (one `x`, one "fix all"):
`undo_last_action` takes back the newest action only, so undo works as a stack;
`undo_quarantine` takes back everything.
"""
from __future__ import annotations

import json
import os
import posixpath
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from engine.atomic import atomic_path, atomic_write_text
from engine.dataset.folders import QUARANTINE_DIR
from engine.errors import LoradeckError

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class QuarantineEntry:
    kind: str  # "moved" or "original"
    path: str  # where the file was (relative to root)
    stored: str  # where it is now (relative to root, under _quarantine/)
    reason: str  # the finding code
    time: float
    # For "original": size and mtime of the fixed file written in its place, so undo
    # never overwrites a file edited since.
    fixed_size: int = -1
    fixed_mtime_ns: int = -1
    # The user action it belongs to (next_action); 0 for manifests written before actions
    # were numbered, and for entries an undo had to leave behind.
    action: int = 0


@dataclass
class UndoResult:
    restored: list[str]
    skipped: list[tuple[str, str]]  # (path, why)
    actions_left: int = 0  # actions still on the undo stack


def quarantine_dir(root: Path) -> Path:
    return root / QUARANTINE_DIR


def read_manifest(root: Path) -> list[QuarantineEntry]:
    path = quarantine_dir(root) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as error:
        raise LoradeckError(f"{path}: cannot read the quarantine manifest ({error})") from None
    entries = data.get("entries", []) if isinstance(data, dict) else None
    try:
        return [QuarantineEntry(**entry) for entry in entries]
    except TypeError:  # not a list of entries, or an entry with missing or unknown fields
        raise LoradeckError(f"{path}: cannot read the quarantine manifest (not a list of entries)") from None


def _write_manifest(root: Path, entries: list[QuarantineEntry]) -> None:
    document = {"version": MANIFEST_VERSION, "entries": [asdict(entry) for entry in entries]}
    atomic_write_text(quarantine_dir(root) / MANIFEST_NAME, json.dumps(document, indent=1))


def next_action(root: Path) -> int:
    """The number for a new user action: one more than any in the manifest."""
    return max((entry.action for entry in read_manifest(root)), default=0) + 1


def record(root: Path, new_entries: list[QuarantineEntry]) -> None:
    if new_entries:
        _write_manifest(root, read_manifest(root) + new_entries)


def free_spot(root: Path, relative: str) -> str:
    """`_quarantine/<relative>`, or `name (2).ext` when an earlier move took that name."""
    stem, extension = posixpath.splitext(posixpath.join(QUARANTINE_DIR, relative))
    candidate, number = stem + extension, 2
    while (root / candidate).exists():
        candidate, number = f"{stem} ({number}){extension}", number + 1
    return candidate


def _move(root: Path, relative: str, reason: str, action: int) -> QuarantineEntry:
    stored = free_spot(root, relative)
    (root / stored).parent.mkdir(parents=True, exist_ok=True)
    os.replace(root / relative, root / stored)
    return QuarantineEntry("moved", relative, stored, reason, time.time(), action=action)


def quarantine_files(root: Path, items: list[tuple[str, str]], caption_extension: str,
                     action: int | None = None) -> list[QuarantineEntry]:
    """Move each (relative path, reason) and the caption beside it into the quarantine, as
    one undoable action (`action`, by default a new one)."""
    # a manifest we could not add to would leave the moves un-undoable: refuse first
    action = next_action(root) if action is None else action
    entries: list[QuarantineEntry] = []
    try:
        for relative, reason in items:
            source = root / relative
            if not source.is_file():
                continue  # moved already (its caption came along with an image, or twice listed)
            entries.append(_move(root, relative, reason, action))
            caption = posixpath.splitext(relative)[0] + caption_extension
            if caption != relative and (root / caption).is_file():
                entries.append(_move(root, caption, reason, action))
    except OSError as error:
        raise LoradeckError(f"{error.filename}: cannot move into {QUARANTINE_DIR}/ ({error.strerror})") from None
    finally:
        record(root, entries)  # whatever moved before an error can still be undone
    return entries


def keep_original(root: Path, relative: str, reason: str) -> str:
    """Copy a file into the quarantine before a fix rewrites it; returns the stored path."""
    stored = free_spot(root, relative)
    with atomic_path(root / stored) as temporary:
        shutil.copy2(root / relative, temporary)
    return stored


def undo_quarantine(root: Path) -> UndoResult:
    """Put every quarantined file back where it was, newest first."""
    return _undo(root, lambda entry: True)


def undo_last_action(root: Path) -> UndoResult:
    """Put back what the newest action moved or replaced (the top of the undo stack).

    An entry that cannot go back (its name is taken again, its fixed file was edited) stays
    in the quarantine, off the stack (action 0): the next undo takes back the action before,
    and `undo_quarantine` tries it again.
    """
    newest = max((entry.action for entry in read_manifest(root)), default=0)
    return _undo(root, lambda entry: entry.action == newest)


def _undo(root: Path, chosen) -> UndoResult:
    result = UndoResult([], [])
    entries = read_manifest(root)
    if not entries:
        return result
    kept: list[QuarantineEntry] = []
    for entry in reversed(entries):
        if not chosen(entry):
            kept.append(entry)
            continue
        why = _restore(root, entry)
        if why:
            result.skipped.append((entry.path, why))
            kept.append(replace(entry, action=0))
        else:
            result.restored.append(entry.path)
    kept.reverse()
    _write_manifest(root, kept)
    _remove_empty_folders(quarantine_dir(root))
    result.actions_left = len({entry.action for entry in kept if entry.action > 0})
    return result


def _restore(root: Path, entry: QuarantineEntry) -> str:
    """Restores one entry; returns why it could not, or ""."""
    stored, target = root / entry.stored, root / entry.path
    if not stored.is_file():
        return f"{entry.stored} is gone from the quarantine"
    if entry.kind == "original":
        try:
            current = target.stat()
        except FileNotFoundError:
            current = None
        if current is not None and (current.st_size, current.st_mtime_ns) != (entry.fixed_size, entry.fixed_mtime_ns):
            return "the fixed file was changed since; the original stays in the quarantine"
    elif target.exists():
        return "a file with that name is back in the dataset; the quarantined one stays"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(stored, target)
    return ""


def _remove_empty_folders(folder: Path) -> None:
    """Only folders the quarantine made and emptied; the manifest keeps the root."""
    for path in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            path.rmdir()
        except OSError:
            pass  # not empty
