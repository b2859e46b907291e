"""Background work in the app: Textual's `@work`, with failures handled in one place.

Textual's default (`exit_on_error=True`) closes the whole app when a worker raises, so a
`PermissionError` in a runs folder or a caption that cannot be read would end the
session. `work` here is Textual's with `exit_on_error=False`; a worker that raises posts
`WorkFailed`, which bubbles to the app, whose one handler (`LoradeckApp.on_work_failed`)
shows the error in one line and keeps it in the app's notices. The screen that started the
worker still gets Textual's `Worker.StateChanged` (ERROR) to put its own state right.

Every module of tui/ takes `work` from here, not from textual (tests/test_app_shell.py
checks it).
"""
from __future__ import annotations

import traceback
from functools import wraps
from inspect import iscoroutinefunction
from typing import Any, Callable

from textual import work as textual_work
from textual.message import Message


class WorkFailed(Message):
    """A background worker raised `error`; posted from its node, handled by the app."""

    def __init__(self, group: str, error: BaseException, trace: str) -> None:
        super().__init__()
        self.group = group
        self.error = error
        self.trace = trace


def work(method: Callable | None = None, **options: Any):
    """`@work(thread=True, exclusive=True, group=...)` as Textual's, but a failure is reported
    to the app (WorkFailed) instead of closing it."""
    options["exit_on_error"] = False
    group = options.get("group", "default")

    def decorate(function: Callable) -> Callable:
        def report(node, error: Exception) -> None:
            node.post_message(WorkFailed(group, error, traceback.format_exc()))  # thread-safe

        if iscoroutinefunction(function):
            @wraps(function)
            async def guarded(node, *args, **kwargs):
                try:
                    return await function(node, *args, **kwargs)
                except Exception as error:
                    report(node, error)
                    raise
        else:
            @wraps(function)
            def guarded(node, *args, **kwargs):
                try:
                    return function(node, *args, **kwargs)
                except Exception as error:
                    report(node, error)
                    raise
        return textual_work(guarded, **options)

    return decorate(method) if method is not None else decorate
