"""RunTailer: replays a run folder's history, then follows it, in one thread worker.

An invisible widget. Its worker reads `events.jsonl` through `EventTail` (history in
large chunks, then whatever was appended, from a saved byte offset), folds the events
into a `RunState`, watches the engine's pid, the control folder, engine.log and the free
disk space, and posts `RunTailer.Updated` carrying a `RunView` snapshot, only when
something changed. Updates merge (`can_replace`): when the UI is busy, only the newest
snapshot is drawn, so a fast stream never floods it. Nothing is ever written to the run
folder: any number of viewers may follow the same run.
"""
from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tui.workers import work
from textual.message import Message
from textual.widget import Widget
from textual.worker import get_current_worker

from engine.run.events import EventTail, parse_lines
from engine.run.folder import RunDir
from tui.run_state import Health, RunState, check_health

POLL_SECONDS = 0.5
# while following, new steps alone are shown at most this often (a redraw of the dashboard
# costs ~10 ms: twice a second was 2% of a core at 10 steps/s); anything else at once
STEP_PUBLISH_SECONDS = 1.0
REPLAY_CHUNK_BYTES = 1024 * 1024
# histories bigger than this (about 8,000 steps) get a preview while they replay
PREVIEW_MIN_BYTES = 2 * 1024 * 1024
PREVIEW_HEAD_BYTES = 64 * 1024
PREVIEW_TAIL_BYTES = 128 * 1024
# ...and between head and tail, this many evenly spaced samples of the history, so the
# preview's curves already span the whole run (about 2,000 of its steps: 0.02-0.05 s, in
# the dashboard's first frame)
PREVIEW_SAMPLES = 128
PREVIEW_SAMPLE_BYTES = 4 * 1024
# how long the replay waits for the preview to be painted (see `drawn`)
PREVIEW_DRAW_SECONDS = 1.0
# while a long history replays, say how far it got this often
REPLAY_PROGRESS_SECONDS = 0.25
PID_CHECK_SECONDS = 2.0
DISK_CHECK_SECONDS = 15.0
CHECKPOINT_CHECK_SECONDS = 30.0
LOG_TAIL_BYTES = 32 * 1024
LOG_TAIL_LINES = 200

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


@dataclass(frozen=True)
class RunView:
    """One consistent picture of a run for the UI (never mutated after posting)."""

    run_dir: Path
    state: RunState
    health: Health
    log_lines: tuple[str, ...]
    log_version: int
    pending: tuple[str, ...]  # control requests the engine has not picked up yet
    missing_checkpoints: frozenset[str]  # checkpoint files gone from disk (keep-last-N)
    free_bytes: int | None
    replayed: float | None  # fraction of history read while replaying, None once following
    skipped_lines: int


def read_log_tail(path: Path, max_bytes: int = LOG_TAIL_BYTES, max_lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last lines of engine.log, with progress-bar carriage returns and colours removed."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            handle.seek(start)
            data = handle.read()
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if start > 0 and lines:
        lines = lines[1:]  # began mid-line
    if lines and lines[-1] == "":
        lines.pop()
    # a tqdm bar rewrites one line with \r; what the terminal would show is the last part
    cleaned = [_ANSI.sub("", line.rstrip("\r").rsplit("\r", 1)[-1]) for line in lines[-max_lines:]]
    return cleaned


class RunTailer(Widget):
    """Follows one run folder; posts `RunTailer.Updated` with a `RunView`."""

    DEFAULT_CSS = """
    RunTailer {
        display: none;
    }
    """

    class Updated(Message):
        """A new snapshot of the run. A newer one supersedes any not yet handled."""

        def __init__(self, view: RunView) -> None:
            super().__init__()
            self.view = view

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, RunTailer.Updated) and message.view.run_dir == self.view.run_dir

    def __init__(self, run_dir: str | Path, *, poll_seconds: float | None = None,
                 id: str | None = None) -> None:
        super().__init__(id=id)
        self.run_dir = Path(run_dir)
        self.poll_seconds = POLL_SECONDS if poll_seconds is None else poll_seconds
        self._wake = threading.Event()
        self._drawn = threading.Event()
        self._watcher = _FolderWatcher(RunDir(self.run_dir))
        self._preview: RunState | None = None  # a long history's preview, shown before the replay

    def on_mount(self) -> None:
        # start once the screen has painted: its first frame need not share the CPU
        self.call_after_refresh(self._follow)

    def first_view(self) -> RunView | None:
        """A long history's preview (its head, evenly spaced samples and tail: a few
        hundred KB, ~0.05 s), read now so that the owner's first frame already shows the
        whole run's curves; None for a short history (its replay, right after the first
        frame, takes no longer). Call before the first frame; the replay follows it."""
        run = self._watcher.run
        size = _file_size(run.events)
        if size <= PREVIEW_MIN_BYTES:
            return None
        self._preview = preview_state(run, size)
        self._watcher.check(self._preview, force=True)
        return self._watcher.view(self._preview, 0, 0.0)

    def on_unmount(self) -> None:
        self._wake.set()  # let the worker see its cancellation now, not after a poll

    def poke(self) -> None:
        """Look again now (after a control request, so its pending mark shows at once)."""
        self._wake.set()

    def drawn(self) -> None:
        """The owner has painted the preview: the full replay may take the CPU now."""
        self._drawn.set()

    @work(thread=True, exclusive=True, group="run-tailer")
    def _follow(self) -> None:
        worker = get_current_worker()
        watcher = self._watcher
        run = watcher.run
        state = RunState(path=run.path)
        tail = EventTail(run.events)

        def publish(shown: RunState, replayed: float | None) -> None:
            self.post_message(self.Updated(watcher.view(shown, tail.skipped_lines, replayed)))

        # ---- history. A long one first gets a quick preview from its head (the plan),
        # samples of its middle and its tail (where the run is now), so the dashboard
        # paints at once (the owner may have shown it already: `first_view`); then every
        # event is folded, in big chunks, and the full picture replaces the preview.
        size = _file_size(run.events)
        preview = self._preview
        if preview is None and size > PREVIEW_MIN_BYTES:
            preview = preview_state(run, size)
            watcher.check(preview, force=True)
            publish(preview, 0.0)
        if preview is not None:
            self._drawn.wait(PREVIEW_DRAW_SECONDS)
        last_progress = time.monotonic()
        while not worker.is_cancelled:
            before = tail.offset
            events = tail.read_new(max_bytes=REPLAY_CHUNK_BYTES)
            if not events and tail.offset == before:
                if _file_size(run.events) - tail.offset > REPLAY_CHUNK_BYTES:
                    state.fold_all(tail.read_new())  # one line longer than a chunk
                    continue
                break
            state.fold_all(events)
            if preview is not None and time.monotonic() - last_progress > REPLAY_PROGRESS_SECONDS:
                last_progress = time.monotonic()
                publish(preview, min(1.0, tail.offset / size))
        if worker.is_cancelled:
            return
        watcher.check(state, force=True)
        publish(state, None)

        # ---- following: cheap polls, a message only when something changed
        published = time.monotonic()
        steps_waiting = False
        while not worker.is_cancelled:
            woken = self._wake.wait(self.poll_seconds)
            self._wake.clear()
            if worker.is_cancelled:
                return
            before = (state.events, state.step)
            state.fold_all(tail.read_new())
            changed = watcher.check(state)
            if state.events != before[0]:
                only_steps = state.events - before[0] == state.step - before[1]
                changed |= not only_steps
                steps_waiting = steps_waiting or only_steps
            due = steps_waiting and time.monotonic() - published >= STEP_PUBLISH_SECONDS
            if changed or due or (woken and steps_waiting):
                publish(state, None)
                published, steps_waiting = time.monotonic(), False


def preview_state(run: RunDir, size: int) -> RunState:
    """The run folded from the head of its events (the plan), evenly spaced samples of the
    middle (the curves' shape over the whole run) and the tail (where the run is now)."""
    state = RunState(path=run.path)
    blocks: list[bytes] = []
    try:
        with open(run.events, "rb") as handle:
            head = handle.read(PREVIEW_HEAD_BYTES)
            blocks.append(head[: head.rfind(b"\n") + 1])
            tail_start = max(len(head), size - PREVIEW_TAIL_BYTES)
            middle = tail_start - len(head)
            # samples at most half the middle: a shorter history is read through in the replay
            samples = min(PREVIEW_SAMPLES, middle // (2 * PREVIEW_SAMPLE_BYTES))
            for index in range(1, samples + 1):
                handle.seek(len(head) + index * middle // (samples + 1))
                blocks.append(_whole_lines(handle.read(PREVIEW_SAMPLE_BYTES)))
            handle.seek(tail_start)
            blocks.append(_whole_lines(handle.read(PREVIEW_TAIL_BYTES)))
    except OSError:
        return state
    for block in blocks:
        state.fold_all(parse_lines(block)[0])
    return state


def _whole_lines(block: bytes) -> bytes:
    """The whole lines of a block read from the middle of a file."""
    return block[block.find(b"\n") + 1: block.rfind(b"\n") + 1]


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class _FolderWatcher:
    """The run folder's other signals, each checked at its own pace (by the worker, or
    before it starts by `RunTailer.first_view`)."""

    def __init__(self, run: RunDir):
        self.run = run
        self.alive = False
        self.free_bytes: int | None = None
        self.pending: tuple[str, ...] = ()
        self.missing: frozenset[str] = frozenset()
        self.log_lines: tuple[str, ...] = ()
        self.log_version = 0
        self.health: Health | None = None
        self._log_identity: tuple | None = None
        self._log_mtime: float | None = None
        self._checkpoints_version = -1
        self._next_pid = self._next_disk = self._next_checkpoints = 0.0

    def check(self, state: RunState, *, force: bool = False) -> bool:
        """Refresh what is due; True when anything the UI shows changed."""
        now = time.monotonic()
        changed = False
        if force or now >= self._next_pid:
            self._next_pid = now + PID_CHECK_SECONDS
            alive = self.run.engine_alive()
            changed |= alive != self.alive
            self.alive = alive
        if force or now >= self._next_disk:
            self._next_disk = now + DISK_CHECK_SECONDS
            self.free_bytes = _free_bytes(self.run.path)
        if force or now >= self._next_checkpoints or state.checkpoints_version != self._checkpoints_version:
            self._next_checkpoints = now + CHECKPOINT_CHECK_SECONDS
            self._checkpoints_version = state.checkpoints_version
            missing = frozenset(c.path for c in state.checkpoints if not (self.run.path / c.path).exists())
            changed |= missing != self.missing
            self.missing = missing
        pending = tuple(self.run.pending_requests())
        changed |= pending != self.pending
        self.pending = pending
        changed |= self._check_log()
        health = check_health(state, alive=self.alive, now=time.time(), last_activity=self._log_mtime,
                              free_bytes=self.free_bytes, has_config=self.run.config.exists(),
                              engine_started=self.run.events.exists() or self.run.pid_file.exists())
        changed |= self.health is None or health.key() != self.health.key()
        self.health = health
        return changed

    def _check_log(self) -> bool:
        try:
            stat = self.run.log.stat()
        except OSError:
            return False
        identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if identity == self._log_identity:
            return False
        self._log_identity = identity
        self._log_mtime = stat.st_mtime  # engine output is a sign of life (sampling, caching)
        self.log_lines = tuple(read_log_tail(self.run.log))
        self.log_version += 1
        return True

    def view(self, state: RunState, skipped_lines: int, replayed: float | None) -> RunView:
        return RunView(
            run_dir=self.run.path,
            state=state.snapshot(),
            health=self.health,
            log_lines=self.log_lines,
            log_version=self.log_version,
            pending=self.pending,
            missing_checkpoints=self.missing,
            free_bytes=self.free_bytes,
            replayed=replayed,
            skipped_lines=skipped_lines,
        )


def _free_bytes(path: Path) -> int | None:
    try:
        stats = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return stats.f_bavail * stats.f_frsize
