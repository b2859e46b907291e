"""Start-up: `loradeck --help` imports no command, and the terminal is asked what it can
draw once, in one round trip, with textual-image asking nothing more when it is imported.
(The start-up times themselves are bench/startup.py's, never assertions here.)"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tui.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command_without_importing_any():
    script = (
        "import sys\n"
        "from tui import cli\n"
        "try:\n"
        "    cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('MODULES', ' '.join(sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout
    help_text, _, modules = out.partition("MODULES ")
    for name in COMMANDS:
        assert name in help_text
    loaded = set(modules.split())
    assert not {name for name in loaded if name.startswith(("engine.cli", "textual", "tui.cli_app", "numpy"))}


def test_a_command_still_gets_its_arguments(capsys):
    from tui.cli import main

    with pytest.raises(SystemExit):
        main(["scan", "--help"])
    assert "--quarantine" in capsys.readouterr().out


PROBE = r"""
import json, sys
from tui import terminal_graphics
graphics = terminal_graphics.probe()
sys.stderr.write("PROBED\n"); sys.stderr.flush()
sys.stdin.readline()  # the test reads what was written to the terminal meanwhile
auto = terminal_graphics.widget_class("auto")
widgets = terminal_graphics.image_widgets()
name = next(name for name in ("SixelImage", "TGPImage", "HalfcellImage", "UnicodeImage") if getattr(widgets, name) is auto)
sys.stderr.write(json.dumps({"sixel": graphics.sixel, "kitty": graphics.kitty, "cell": graphics.cell,
                             "auto": name}) + "\n")
"""


def _read_until(fd: int, marker: bytes, seconds: float) -> bytes:
    data = b""
    deadline = time.monotonic() + seconds
    while marker not in data and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.05)[0]:
            try:
                data += os.read(fd, 4096)
            except OSError:  # the other side has closed (Linux says EIO)
                break
    return data


@pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal")
@pytest.mark.parametrize("answer, expected", [
    ("\x1b_Gi=31;OK\x1b\\\x1b[6;20;10t\x1b[?62;22c", {"kitty": True, "sixel": False, "auto": "TGPImage"}),
    ("\x1b[?62;4;22c", {"kitty": False, "sixel": True, "auto": "SixelImage"}),
    ("\x1b[?1;2c", {"kitty": False, "sixel": False, "auto": "HalfcellImage"}),  # tmux
])
def test_the_terminal_is_asked_once_and_textual_image_asks_nothing(answer, expected):
    terminal, pane = os.openpty()
    child = subprocess.Popen([sys.executable, "-c", PROBE], stdin=pane, stdout=pane, stderr=subprocess.PIPE,
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.close(pane)
    try:
        asked = _read_until(terminal, b"\x1b[c", 20)
        assert b"\x1b_G" in asked and asked.endswith(b"\x1b[c")  # Kitty query, then DA1 last
        os.write(terminal, answer.encode())
        assert _read_until(child.stderr.fileno(), b"PROBED", 20).startswith(b"PROBED")
        os.write(terminal, b"\n")
        result = child.stderr.readline()
        child.wait(20)
        later = _read_until(terminal, b"\x1b", 0.3)
    finally:
        child.kill()
        os.close(terminal)
    assert b"\x1b[" not in later and b"\x1b_G" not in later  # textual-image's import asked nothing
    shown = json.loads(result)
    assert {key: shown[key] for key in expected} == expected
    if "6;20;10t" in answer:
        assert shown["cell"] == [10, 20]
