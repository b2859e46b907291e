"""Errors a user can act on. The CLI prints them as one line, never as a traceback."""
from __future__ import annotations

import errno
import re


class LoradeckError(Exception):
    """Something the user must fix: a bad config value, a missing file, a corrupt image.

    The message is one line saying what is wrong and where. Exit status 1.
    """

    exit_status = 1


class UsageError(LoradeckError):
    """Bad command-line usage. Exit status 2."""

    exit_status = 2


class ConfigError(LoradeckError):
    """A config value that is not allowed. `field` is the dotted name, e.g. `network.alpha`."""

    def __init__(self, field: str, message: str, source: str = ""):
        self.field = field
        self.reason = message
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: {message}")


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for
    one-line errors built from a library's multi-line ones."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


_NO_SPACE = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file size limit reached"}
_OS_ERROR_IN_TEXT = re.compile(r"\(os error (\d+)\)")  # how Rust writers (safetensors) report an OS error


def no_space_reason(error: BaseException) -> str | None:
    """"disk full" (or its quota and file-size-limit cousins) when `error` is a write that
    ran out of room, from Python's OSError or a Rust writer's message; None otherwise."""
    code = error.errno if isinstance(error, OSError) else None
    if code is None:
        match = _OS_ERROR_IN_TEXT.search(str(error))
        code = int(match.group(1)) if match else None
    return _NO_SPACE.get(code)


def one_line(message: str) -> str:
    """`message` with every character that would break or hide its line (newlines, tabs,
    the other separators str.splitlines knows, control characters) written as an escape,
    so a file's bad key or value shows as `\\x1e` instead of splitting the error in two."""
    return "".join(char if char.isprintable() or char == " " else repr(char)[1:-1] for char in message)
