"""`with time_limit(20):` fails a test that hangs instead of hanging the suite (SIGALRM:
main thread, Unix). Used where bad input could make a command loop forever."""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator


class Hang(Exception):
    """The block ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def interrupt(_signal, _frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
