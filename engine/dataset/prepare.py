"""Building the Kohya folder from a flat folder of images, and changing a folder's repeats.

    prepared = prepare_folder(Path("~/photos/cat"), Path("ws/img"), subject="ohwx", class_name="cat",
                              repeats=10, mode="link")
    # ws/img/10_ohwx cat/ holds a link to every image of ~/photos/cat and to its caption

    set_repeats(Path("ws/img/10_ohwx cat"), 5)   # -> ws/img/5_ohwx cat

The blog step "set up the folder structure" (`<repeats>_<subject> <class>`): images (and
the caption beside each, same stem) are moved or linked (symbolic links, so the flat
folder stays as it was), never copied over anything: a name already in the target folder
is skipped and reported. Changing repeats renames the folder; a folder of that name
already there is refused. Light module.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from engine.dataset.folders import is_image_file, parse_folder_name
from engine.errors import LoradeckError, UsageError

MODES = ("link", "move")


@dataclass
class Prepared:
    folder: Path
    images: int = 0  # placed (moved or linked)
    captions: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why)

    def summary(self) -> str:
        where = f"{self.folder.parent.name}/{self.folder.name}"
        line = f"{where}: {self.images} images and {self.captions} captions"
        if self.skipped:
            line += f"; {len(self.skipped)} skipped (already there)"
        return line


def kohya_folder_name(subject: str, class_name: str, repeats: int) -> str:
    """`10_ohwx cat`: repeats, then the subject and class tokens the folder trains on."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise UsageError(f"repeats: {repeats!r} is not a whole number of 1 or more")
    tokens = " ".join(part.strip() for part in (subject, class_name) if part and part.strip())
    if not tokens:
        raise UsageError("subject and class: give at least one (e.g. subject ohwx, class cat)")
    if "/" in tokens or "\\" in tokens or tokens.startswith("."):
        raise UsageError(f"{tokens!r}: the subject and class name a folder; no slashes, no leading dot")
    return f"{repeats}_{tokens}"


def _place(source: Path, target: Path, mode: str) -> None:
    """Move or link one file to a name checked to be free just before."""
    if mode == "move":
        shutil.move(source, target)  # a rename; a copy and delete across disks
    else:
        target.symlink_to(source.resolve())


def prepare_folder(source: Path, image_dir: Path, *, subject: str, class_name: str, repeats: int,
                   mode: str = "link", caption_extension: str = ".txt") -> Prepared:
    """Put every image of the flat folder `source` (and its caption) into
    `image_dir/<repeats>_<subject> <class>/`, moved or linked; never over an existing file."""
    if mode not in MODES:
        raise UsageError(f"mode: {mode!r}; use link or move")
    source = source.expanduser()
    if not source.is_dir():
        raise UsageError(f"{source}: no such folder")
    images = sorted(entry for entry in source.iterdir() if entry.is_file() and is_image_file(entry.name))
    if not images:
        raise UsageError(f"{source}: no images in it (png, jpg, jpeg, webp, bmp; subfolders are not read)")
    folder = image_dir.expanduser() / kohya_folder_name(subject, class_name, repeats)
    if folder.resolve() == source.resolve():
        raise UsageError(f"{source} is already the Kohya folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LoradeckError(f"{folder}: cannot create the folder ({error.strerror or error})") from None
    result = Prepared(folder)
    for image in images:
        caption = image.with_suffix(caption_extension)
        pieces = [(image, "images")] + ([(caption, "captions")] if caption.is_file() else [])
        if any(os.path.lexists(folder / piece.name) for piece, _kind in pieces):
            result.skipped.append((image.name, f"{folder.name}/ already has {image.name} or its caption"))
            continue
        try:
            for piece, kind in pieces:
                _place(piece, folder / piece.name, mode)
                setattr(result, kind, getattr(result, kind) + 1)
        except OSError as error:
            raise LoradeckError(f"{image}: cannot {mode} it into {folder} ({error.strerror or error}); "
                                f"{result.images} images done") from None
    return result


def set_repeats(folder: Path, repeats: int) -> Path:
    """Rename `<old>_<tokens>` to `<repeats>_<tokens>`; the new folder, or the same when unchanged."""
    parsed = parse_folder_name(folder.name)
    if parsed is None:
        raise UsageError(f"{folder.name}: not a <repeats>_<name> folder")
    target = folder.with_name(kohya_folder_name(parsed[1], "", repeats))
    if target == folder:
        return folder
    if os.path.lexists(target):
        raise LoradeckError(f"{target.name} already exists beside {folder.name}; merge them by hand")
    try:
        os.rename(folder, target)
    except OSError as error:
        raise LoradeckError(f"cannot rename {folder.name} to {target.name} ({error.strerror or error})") from None
    return target
