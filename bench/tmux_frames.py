"""Time what a user waits for in a real terminal: start a command in a detached tmux pane
and watch the pane until the frame the user waits for is drawn.

    with TmuxPane(120, 40) as pane:
        started = pane.start([python, "-m", "tui.cli", str(workspace)])
        seconds = pane.wait_until(lambda text: "Rescan" in text)   # since process start

The clock starts just before tmux is asked to run the command, so the interpreter's start,
every import and the first paint are inside it; the same tmux round trip is in every
baseline measured with the same pane. The pane is read with `tmux capture-pane` every
POLL_SECONDS (a few ms of CPU each). Each pane has its own tmux server (`-L`), so
nothing here touches the user's tmux. Shared by the benches in this folder.
"""
from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
POLL_SECONDS = 0.01

# A minimal Textual app: what any Textual app costs to start and paint on this machine.
MINIMAL_APP = """
from textual.app import App
from textual.widgets import Footer, Static

class Minimal(App):
    BINDINGS = [("q", "quit", "Quit")]

    def compose(self):
        yield Static("minimal app ready")
        yield Footer()

Minimal().run()
"""
MINIMAL_READY = "minimal app ready"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its threads so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def python() -> str:
    return sys.executable


def environment() -> dict[str, str]:
    """This checkout first on the path, so the engine processes the app starts use it too."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("TMUX", None)
    # a user's install has its .pyc files (pip writes them; a checkout's first run does):
    # the warm-up round writes ours, so no timed start compiles the sources again
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("TERM", "xterm-256color")
    return env


class TmuxPane:
    """One detached tmux server and window of a fixed size."""

    def __init__(self, width: int = 120, height: int = 40, name: str = "loradeck-bench"):
        self.width, self.height = width, height
        self.socket = f"{name}-{os.getpid()}"
        self.started_at = 0.0
        self.cpu = float("nan")
        self._pid: int | None = None
        self._tmux("new-session", "-d", "-s", "bench", "-x", str(width), "-y", str(height), "sleep 1000000")
        self._tmux("set-option", "-g", "remain-on-exit", "on")

    def _tmux(self, *args: str, capture: bool = False) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], check=True, text=True,
                              capture_output=True, env=environment())
        return done.stdout if capture else ""

    def start(self, command: Sequence[str], cwd: Path = ROOT) -> float:
        """Run `command` in a fresh window of this pane's size; returns the start time."""
        self._tmux("kill-window", "-a", "-t", "bench:0")  # keep only the idle first window
        line = "cd " + shlex.quote(str(cwd)) + " && exec " + " ".join(shlex.quote(part) for part in command)
        env_args = []
        for key in ("PYTHONPATH", "TERM", "OMP_NUM_THREADS"):
            value = environment().get(key)
            if value:
                env_args += ["-e", f"{key}={value}"]
        self.started_at = time.perf_counter()
        self._tmux("new-window", "-t", "bench", *env_args, line)
        self._pid = None
        return self.started_at

    def text(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "bench:1", capture=True)

    def wait_until(self, drawn: Callable[[str], bool], timeout: float = 60.0) -> float:
        """Seconds from `start` until the pane shows a frame for which `drawn(text)` holds.
        `self.cpu` is then the CPU seconds the command had used by that frame (all its
        threads): on a machine shared with other work, the steadier number."""
        deadline = time.perf_counter() + timeout
        while True:
            text = self.text()
            now = time.perf_counter()
            if drawn(text):
                self.cpu = cpu_seconds(self.pid())
                return now - self.started_at
            if now > deadline:
                raise TimeoutError(f"not drawn after {timeout:.0f} s; the pane shows:\n{text}")
            time.sleep(POLL_SECONDS)

    def keys(self, *keys: str) -> float:
        """Send keys (tmux names: "3", "Escape", "C-s"); returns the time they were sent."""
        sent = time.perf_counter()
        self._tmux("send-keys", "-t", "bench:1", *keys)
        return sent

    def since(self, moment: float, drawn: Callable[[str], bool], timeout: float = 60.0) -> float:
        """Seconds from `moment` until `drawn` holds."""
        return self.wait_until(drawn, timeout) + self.started_at - moment

    def pid(self) -> int:
        """The command's pid (`exec`: the shell became the command)."""
        if self._pid is None:
            self._pid = int(self._tmux("display-message", "-p", "-t", "bench:1", "#{pane_pid}", capture=True).strip())
        return self._pid

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)

    def __enter__(self) -> "TmuxPane":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def minimal_app_seconds(pane: TmuxPane) -> float:
    """The baseline: a minimal Textual app from process start to its first drawn frame
    (its CPU seconds by then are in `pane.cpu`)."""
    pane.start([python(), "-c", MINIMAL_APP])
    seconds = pane.wait_until(lambda text: MINIMAL_READY in text)
    pane.keys("q")
    return seconds


def median(values: list[float]) -> float:
    return statistics.median(values)


def row(label: str, values: list[float], baseline: list[float], goal: float | None = None) -> str:
    """One line of a bench table: median seconds, the runs, the ratio to the baseline."""
    ours, base = median(values), median(baseline)
    runs = ", ".join(f"{value:.2f}" for value in values)
    verdict = "" if goal is None else (" ✓" if ours <= goal else " ✗") + f" goal ≤ {goal:g} s"
    return f"{label:52s} {ours:6.2f} s  ({runs})  {ours / base:4.1f}× baseline{verdict}"


def cpu_row(label: str, values: list[float], baseline: list[float]) -> str:
    """CPU seconds (median) the command had used by the frame, and the ratio to the baseline's."""
    ours, base = median(values), median(baseline)
    return f"{label:52s} {ours:6.2f} s CPU ({ours / base:4.1f}× the baseline's {base:.2f} s)"


def load_line() -> str:
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
