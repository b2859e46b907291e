"""What the terminal can draw: asked once before the app starts, in one round trip.

textual-image picks Kitty graphics, Sixel or half cells by asking the terminal when it is
imported: one question per protocol, each waiting up to 0.1 s for an answer that tmux and
most terminals never give (so a tmux start-up waited 0.1 s for nothing, an SSH link slower
than that got a wrong answer), and it pulls in numpy on the way. Here the same questions go
out at once, followed by the primary device attributes request (DA1) that every terminal
answers: its answer ends the wait, so the probe costs one round trip. textual-image is
imported later, when the first picture is drawn, with its own questions answered from
this probe (it could not ask them then: Textual reads the keyboard by that time).

    probe()                  # once, before App.run (LoradeckApp.run does it)
    widget_class("auto")     # the textual-image widget class to draw with, or None
"""
from __future__ import annotations

import os
import re
import select
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

# The answer ends the wait; a terminal that answers nothing at all (rare: DA1 is VT100)
# costs this much once, and gets half cells.
ANSWER_TIMEOUT_S = 0.5
# The same queries textual-image sends: a 1x1 Kitty graphics query, the cell size in pixels.
KITTY_QUERY = "\x1b_Gi=31,s=1,v=1,a=q,t=d,f=24;AAAA\x1b\\"
CELL_SIZE_QUERY = "\x1b[16t"
DEVICE_ATTRIBUTES_QUERY = "\x1b[c"
_DEVICE_ATTRIBUTES = re.compile(rb"\x1b\[\?([\d;]*)c")
_KITTY_ANSWER = re.compile(rb"\x1b_Gi=31;([^\x1b]*)\x1b\\")
_CELL_SIZE_ANSWER = re.compile(rb"\x1b\[6;(\d+);(\d+)t")
DEFAULT_CELL = (10, 20)  # textual-image's fallback (a VT340 cell)


@dataclass(frozen=True)
class Graphics:
    terminal: bool  # stdout is a terminal (else: plain unicode, as textual-image does)
    sixel: bool = False
    kitty: bool = False
    cell: tuple[int, int] = DEFAULT_CELL  # pixels per cell (width, height)


_graphics: Graphics | None = None
_widgets: Any = None


def probe() -> Graphics:
    """Ask the terminal once (later calls return the first answer)."""
    global _graphics
    if _graphics is None:
        _graphics = _ask_terminal()
    return _graphics


def _ask_terminal() -> Graphics:
    stdout, stdin = sys.__stdout__, sys.__stdin__
    if stdout is None or stdin is None or not stdout.isatty() or not stdin.isatty():
        return Graphics(terminal=False)
    try:
        import termios
        import tty
    except ImportError:  # Windows: textual-image asks on its own
        return Graphics(terminal=True)
    cell = _cell_from_ioctl(stdout.fileno())
    questions = KITTY_QUERY + ("" if cell else CELL_SIZE_QUERY) + DEVICE_ATTRIBUTES_QUERY
    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)
    answer = b""
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        stdout.write(questions)
        stdout.flush()
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while not _DEVICE_ATTRIBUTES.search(answer):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                break
            answer += os.read(fd, 1024)
    except OSError:
        pass
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)
    attributes = _DEVICE_ATTRIBUTES.search(answer)
    kitty = _KITTY_ANSWER.search(answer)
    size = _CELL_SIZE_ANSWER.search(answer)
    if cell is None and size is not None and int(size.group(1)) and int(size.group(2)):
        cell = (int(size.group(2)), int(size.group(1)))
    return Graphics(
        terminal=True,
        sixel=attributes is not None and b"4" in attributes.group(1).split(b";"),
        kitty=kitty is not None and kitty.group(1) == b"OK",
        cell=cell or DEFAULT_CELL,
    )


def _cell_from_ioctl(fd: int) -> tuple[int, int] | None:
    try:
        import fcntl
        import struct
        import termios

        rows, columns, width, height = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except (ImportError, OSError):
        return None
    if rows and columns and width and height:
        return width // columns, height // rows
    return None


def cell_size() -> tuple[int, int]:
    """Pixels per terminal cell (the probe's answer; a VT340 cell before it or without one)."""
    return _graphics.cell if _graphics is not None else DEFAULT_CELL


def image_widgets() -> Any:
    """textual_image.widget, imported on first use with the probe's answers (None if missing).

    Thread-safe: the image workers call it before their first picture is drawn, so that
    the import (textual-image brings numpy: a few tenths of a second) is not the UI's."""
    global _widgets
    with _import_lock:  # the import swaps sys.__stdout__ for a moment: one thread at a time
        if _widgets is None:
            _widgets = _import_textual_image(_graphics or Graphics(terminal=False))
    return _widgets or None


_import_lock = threading.Lock()


def _import_textual_image(graphics: Graphics) -> Any:
    try:
        from textual_image import _terminal

        # its cached cell size: textual-image asks only when nothing is cached
        setattr(_terminal.get_cell_size, "_result", _terminal.CellSize(*graphics.cell))
        saved, sys.__stdout__ = sys.__stdout__, _NotATerminal(sys.__stdout__)
        try:
            # textual-image asks the terminal only when stdout is one: the answers are ours
            from textual_image import widget
        finally:
            sys.__stdout__ = saved
    except Exception:  # textual-image missing or broken: pictures become text
        return False
    return widget


class _NotATerminal:
    """sys.__stdout__ as textual-image sees it while it is imported: not a terminal."""

    def __init__(self, stream):
        self._stream = stream

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def widget_class(protocol: str | None):
    """The textual-image widget class for a protocol name, or None when none can draw."""
    name = (protocol or "auto").lower()
    if name == "none":
        return None  # the user asked for text only
    widgets = image_widgets()
    if widgets is None:
        return None
    graphics = _graphics or Graphics(terminal=False)
    # textual-image's own order: Sixel, then Kitty graphics, then half cells on a terminal
    best = (widgets.SixelImage if graphics.sixel else widgets.TGPImage if graphics.kitty
            else widgets.HalfcellImage if graphics.terminal else widgets.UnicodeImage)
    classes = {
        "auto": best,
        "kitty": widgets.TGPImage,
        "tgp": widgets.TGPImage,
        "sixel": widgets.SixelImage,
        "halfcell": widgets.HalfcellImage,
        "unicode": widgets.UnicodeImage,
    }
    # An unknown name is a user typo: draw with what the terminal supports.
    return classes.get(name, best)
