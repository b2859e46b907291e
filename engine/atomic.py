"""Atomic file writes: temp file in the same folder, fsync, rename.

A reader (or a crash) sees either the old file or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Callable, ContextManager, Iterator


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mode_for(target: Path) -> int:
    """Keep an existing file's permissions; a new file gets the usual 0o666 minus umask."""
    try:
        return target.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def ensure_folder(folder: Path) -> None:
    """mkdir -p, where a file in the way reads "Not a directory: <that file>", not "File exists"."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        in_the_way = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(in_the_way)) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike,
                replace_guard: Callable[[Path], ContextManager[object]] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` atomically.

    For writers that want a file name (safetensors, PIL, torch): write to the yielded
    path, and it is fsynced and renamed over `path` when the block ends without error.
    On error the temporary file is removed and `path` is untouched.

    `replace_guard(temp)`, when given, is entered around the rename alone: a
    compare-and-swap takes its lock and checks the target there, and raises to cancel.
    """
    target = Path(path)
    ensure_folder(target.parent)
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    temp = Path(temp_name)
    try:
        yield temp
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(temp, _mode_for(target))
        with replace_guard(temp) if replace_guard is not None else contextlib.nullcontext():
            os.replace(temp, target)
        _fsync_directory(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as temp:
        with open(temp, "wb") as handle:
            handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))
