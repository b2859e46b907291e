"""Reading a dataset file without ever blocking on one that is not a file.

    data = read_regular_file(path)   # bytes; NotRegularFile for a FIFO, socket or device

A named pipe called `x.png` makes a plain `open().read()` wait forever for a writer,
and a symbolic link to /dev/zero never ends. The file is opened non-blocking and
checked with `fstat` on the open descriptor before a byte is read, so even an entry
swapped for a FIFO after the folder was listed is reported, not waited on.
Standard library only.
"""
from __future__ import annotations

import errno
import os
import stat

# No image a trainer can decode (Pillow's bomb limit, 16-bit RGBA, uncompressed) comes
# near this; a bigger "image" is a mistake (a disk image or a video renamed) or sparse.
MAX_FILE_BYTES = 1 << 30

SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


class NotRegularFile(OSError):
    """The path is a FIFO, socket, device or folder: nothing a trainer can read as a file."""


class FileTooLarge(OSError):
    def __init__(self, size: int):
        super().__init__(errno.EFBIG, f"{size / 1e9:.1f} GB, larger than any image or caption file can be")
        self.size = size


def read_regular_file(path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; OSError when it cannot be read."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise NotRegularFile(errno.EINVAL, not_a_file(status.st_mode))
        if status.st_size > limit:
            raise FileTooLarge(status.st_size)
        with os.fdopen(descriptor, "rb", closefd=False) as stream:
            return stream.read()
    finally:
        os.close(descriptor)


def special_kind(mode: int) -> str:
    return next((name for test, name in SPECIAL_KINDS if test(mode)), "not a regular file")


def not_a_file(mode: int) -> str:
    return f"{special_kind(mode)}, not a file: the trainer cannot read it"


def reason(error: OSError) -> str:
    """An OSError in its own words ("Permission denied"), without errno and path."""
    return error.strerror or str(error) or type(error).__name__
