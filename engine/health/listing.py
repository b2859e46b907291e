"""The files a health scan looks at, found without opening any of them.

    files = list_files(root, ".txt")    # DatasetFiles: images, captions, folders, and problems
    files = list_files(root, ".txt", stat_images=False)   # names first (a scan's total at once)
    stamp, problem = stat_image(path)   # then each image's (size, mtime_ns), or why it is no file

A dataset folder can hold anything: a symbolic link to itself or to nothing, a folder
the user may not read, a named pipe called `x.png` (reading it waits forever), a device
file. Each entry is classified from its `stat` alone. What the trainer would trip over
gets a reason beside its path: an image or caption that is not a readable regular file
(`DatasetFiles.problems`), a folder that cannot be listed (`.unreadable_folders`). An
entry with another name whose `stat` fails (a looping or dangling link) is `.skipped`,
with why. Hidden folders and _quarantine/ are left out on purpose, as before.

Listing asks the directory for each entry's type (no system call per file): a plain file,
folder or special file is known from it; a symbolic link or an entry of unknown type is
`stat`ed. Only an image's size and mtime (the scan cache's key) need a `stat` of their
own, which `stat_images=False` leaves to the caller (`stat_image`): a scan then has its
total at once and stats each image as it comes to it.
"""
from __future__ import annotations

import errno
import os
import stat

from engine.dataset.folders import QUARANTINE_DIR
from engine.errors import LoradeckError
from engine.health.file_access import not_a_file, reason
from engine.health.image_checks import CANDIDATE_EXTENSIONS
from engine.health.report import DatasetFiles


def list_files(root, caption_extension: str, *, stat_images: bool = True) -> DatasetFiles:
    """Every image and caption under root, in name order. A root that cannot be listed
    is a LoradeckError; anything below it is a reason in the result, never an exception.
    With `stat_images=False`, an image that is a plain file has no `stats` entry yet."""
    files = DatasetFiles()
    seen: set[tuple[int, int]] = set()  # folders walked, so a symlink loop ends

    def walk(folder: str, prefix: str) -> None:
        try:
            status = os.stat(folder)
            if (status.st_dev, status.st_ino) in seen:
                return
            seen.add((status.st_dev, status.st_ino))
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda item: item.name)
        except OSError as error:
            if not prefix:
                raise LoradeckError(f"{folder}: cannot read the folder: {reason(error)}") from None
            files.unreadable_folders[prefix[:-1]] = f"cannot read the folder: {reason(error)}"
            return
        for entry in entries:
            relative = prefix + entry.name
            image = entry.name.lower().endswith(CANDIDATE_EXTENSIONS)
            kind, stamp, problem = _kind_of(entry, stat_file=image and stat_images)
            if kind == "folder":
                if entry.name.startswith(".") or (not prefix and entry.name == QUARANTINE_DIR):
                    continue
                if not prefix:
                    files.folders.append(entry.name)
                walk(entry.path, relative + "/")
            elif image:
                files.images.append(relative)
                if problem:
                    files.problems[relative] = problem
                elif stamp is not None:
                    files.stats[relative] = stamp
            elif entry.name.endswith(caption_extension):
                files.captions.append(relative)
                if problem:
                    files.problems[relative] = problem
            elif kind == "unknown":
                files.skipped[relative] = problem

    walk(os.fspath(root), "")
    return files


def stat_image(path: str) -> tuple[tuple[int, int] | None, str]:
    """((size, mtime_ns), "") of a listed image that is a regular file, or (None, why not)."""
    try:
        status = os.stat(path)
    except OSError as error:
        return None, f"cannot look at it: {reason(error)}"
    if stat.S_ISREG(status.st_mode):
        return (status.st_size, status.st_mtime_ns), ""
    return None, not_a_file(status.st_mode)  # replaced since it was listed


def _kind_of(entry: os.DirEntry, *, stat_file: bool) -> tuple[str, tuple[int, int] | None, str]:
    """`_classify`, from the directory's own type of the entry where it tells enough: a
    plain file, when its stamp is not wanted, or a plain folder (no system call)."""
    try:
        if not entry.is_symlink():
            if entry.is_dir(follow_symlinks=False):
                return "folder", (0, 0), ""
            if not stat_file and entry.is_file(follow_symlinks=False):
                return "file", None, ""
    except OSError:
        pass  # the type could not be read: stat says what it is
    return _classify(entry)


def _classify(entry: os.DirEntry) -> tuple[str, tuple[int, int], str]:
    """(kind, (size, mtime_ns), why it cannot be read as a file). kind is "folder",
    "file", "special" (a FIFO, socket or device) or "unknown" (stat failed)."""
    try:
        status = entry.stat(follow_symlinks=True)
    except OSError as error:
        return "unknown", (0, 0), _unstattable(entry, error)
    if stat.S_ISDIR(status.st_mode):
        return "folder", (0, 0), ""
    if stat.S_ISREG(status.st_mode):
        return "file", (status.st_size, status.st_mtime_ns), ""
    return "special", (0, 0), not_a_file(status.st_mode)


def _unstattable(entry: os.DirEntry, error: OSError) -> str:
    try:
        link = entry.is_symlink()
    except OSError:
        link = False
    if link:
        if error.errno == errno.ELOOP:
            return "a symbolic link that loops (it leads back to itself)"
        if error.errno == errno.ENOENT:
            try:
                return f"a symbolic link to {os.readlink(entry.path)}, which does not exist"
            except OSError:
                return "a symbolic link to a file that does not exist"
    return f"cannot look at it: {reason(error)}"
