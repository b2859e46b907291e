"""The run folder: its layout, the engine's pid file, control requests and run status.

    runs/<output_name>/
      config.toml    frozen config (absolute paths)
      events.jsonl   engine.run.events
      engine.log     the engine's stdout/stderr
      engine.pid     {"pid", "start_ticks", "started", "host"} while the engine lives
                     (start_ticks: the process's start time as psutil reports it)
      control/       request files: stop, save, sample, skip (the engine removes them when done)
      samples/ checkpoints/ state/ tb/

Light module: the TUI reads runs through it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.atomic import atomic_write_text
from engine.errors import LoradeckError
from engine.run.events import CRASHED, EVENTS_FILE, RUNNING, STARTING, STEP, EventTail, _json_safe, parse_lines
from engine.run.fold import RunProgress

CONFIG_FILE = "config.toml"
LOG_FILE = "engine.log"
PID_FILE = "engine.pid"
CONTROL_DIR = "control"
SAMPLES_DIR = "samples"
CHECKPOINTS_DIR = "checkpoints"
STATE_DIR = "state"
TENSORBOARD_DIR = "tb"

CONTROL_REQUESTS = ("stop", "save", "sample", "skip")  # skip: the sampling in progress

class RunDir:
    """Paths of one run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def events(self) -> Path:
        return self.path / EVENTS_FILE

    @property
    def log(self) -> Path:
        return self.path / LOG_FILE

    @property
    def pid_file(self) -> Path:
        return self.path / PID_FILE

    @property
    def control(self) -> Path:
        return self.path / CONTROL_DIR

    @property
    def samples(self) -> Path:
        return self.path / SAMPLES_DIR

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def state(self) -> Path:
        return self.path / STATE_DIR

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD_DIR

    def create(self) -> None:
        for folder in (self.path, self.control, self.samples, self.checkpoints, self.state):
            folder.mkdir(parents=True, exist_ok=True)

    def is_run(self) -> bool:
        return self.config.exists() or self.events.exists()

    # ---- saved state and leftovers (engine.train.state and engine.atomic write them)

    def saved_state_step(self) -> int | None:
        """The step a resume starts from: the complete state `latest.json` names, else the
        newest complete one; None when there is none (killed before its first save)."""
        name = latest_state_name(self.state)
        if name is None:
            complete = [path.name for path in self.state.glob("step-*") if (path / "state.json").is_file()]
            name = max(complete, default=None)
        match = _STATE_FOLDER.match(name or "")
        return int(match.group(1)) if match else None

    def start_over_note(self) -> str:
        """For a resume: "" when a saved state is there to continue from, else the note that
        the run starts again from step 0 (it ended before its first save: nothing is lost).
        Raises LoradeckError when it can do neither: LoRA files but no state (saving.save_state
        off, or the first state save failed) would be overwritten by a new start."""
        if self.saved_state_step() is not None:
            return ""
        if any(self.checkpoints.glob("*.safetensors")):
            raise LoradeckError(f"{self.path}: no saved trainer state to resume from, and starting it again from "
                                f"step 0 would overwrite its LoRA files; move them out of {self.checkpoints} to "
                                "start again, or train a new run under another saving.output_name")
        return f"{self.path} has no saved state (it ended before its first save): training starts again from step 0"

    def remove_temporary_files(self) -> int:
        """Remove what saves killed half-way left (temporary LoRA files and samples, state
        folders not yet renamed); how many. Only the engine writes those, so only an engine
        starting (or resuming) calls this."""
        leftovers = [path for folder in (self.checkpoints, self.samples) for path in folder.glob(".*.tmp")]
        leftovers += list(self.state.glob(".step-*.tmp-*"))
        for path in leftovers:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return len(leftovers)

    # ---- engine process

    def write_pid(self, pid: int | None = None) -> None:
        pid = os.getpid() if pid is None else pid
        record = {
            "pid": pid,
            "start_ticks": process_start_time(pid),
            "started": time.time(),
            "host": socket.gethostname(),
        }
        atomic_write_text(self.pid_file, json.dumps(record))

    def clear_pid(self) -> None:
        try:
            record = json.loads(self.pid_file.read_text())
        except (OSError, ValueError):
            return
        if record.get("pid") == os.getpid():
            self.pid_file.unlink(missing_ok=True)

    def read_pid(self) -> dict[str, Any] | None:
        try:
            record = json.loads(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None

    def engine_alive(self) -> bool:
        """True while the engine that wrote engine.pid still runs (pid reuse is detected)."""
        record = self.read_pid()
        if record is None:
            return False
        if record.get("host") not in (None, socket.gethostname()):
            return True  # another machine's engine on a shared disk: trust the file
        started = process_start_time(record["pid"])
        if started is None:
            return False
        expected = record.get("start_ticks")
        # a second of slack: the OS derives the start time from the boot time, which
        # moves a little when the clock is adjusted
        return expected is None or abs(expected - started) < START_TIME_SLACK

    # ---- control requests

    def request(self, action: str) -> Path:
        """Ask the engine to stop, save or sample at its next step boundary."""
        if action not in CONTROL_REQUESTS:
            raise ValueError(f"unknown request {action!r}; expected one of {CONTROL_REQUESTS}")
        self.control.mkdir(parents=True, exist_ok=True)
        path = self.control / action
        atomic_write_text(path, json.dumps({"requested": time.time(), "by": os.getpid()}))
        return path

    def pending_requests(self) -> list[str]:
        """Requests waiting for the engine (cheap: one listdir)."""
        try:
            names = os.listdir(self.control)
        except FileNotFoundError:
            return []
        return [name for name in CONTROL_REQUESTS if name in names]

    def clear_request(self, action: str) -> None:
        (self.control / action).unlink(missing_ok=True)


START_TIME_SLACK = 1.0  # seconds
LATEST_STATE_FILE = "latest.json"  # in state/: {"folder": "step-00000120", "step": 120}
_STATE_FOLDER = re.compile(r"^step-(\d+)$")


def latest_state_name(state_dir: Path) -> str | None:
    """The state folder `latest.json` names, when that folder holds a complete state."""
    try:
        data = json.loads((state_dir / LATEST_STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    name = data.get("folder") if isinstance(data, dict) else None
    return name if isinstance(name, str) and (state_dir / name / "state.json").is_file() else None


def process_start_time(pid: int) -> float | None:
    """When the process started (seconds since the epoch), or None if it is gone.

    Comparing it with the recorded value tells our engine from a new process that got
    the same pid. A zombie has finished; a process we may not inspect counts as 0.
    """
    import psutil  # on first use: reading a run folder needs no process table

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except psutil.NoSuchProcess:  # ZombieProcess included
        return None
    except psutil.AccessDenied:
        return 0.0


# --------------------------------------------------------------------------- summaries


@dataclass
class RunSummary(RunProgress):
    """What the runs list shows for one run: its progress (engine.run.fold), by folder."""

    name: str = ""

    @property
    def checkpoints(self) -> int:
        """LoRA files written."""
        return self.lora_checkpoints

    @property
    def message(self) -> str:
        """Why the run ended, or its error."""
        return self.end_message or self.error_message

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        end = self.ended if self.ended is not None else (time.time() if self.status == RUNNING
                                                         else self.last_event_time)
        return None if end is None else max(0.0, end - self.started)

    def as_json(self) -> dict[str, Any]:
        """JSON-ready; a NaN loss is the string "nan", as in events.jsonl."""
        return _json_safe({
            "path": str(self.path),
            "name": self.name,
            "status": self.status,
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": self.epoch,
            "epochs": self.epochs,
            "progress": round(self.progress, 4),
            "loss": self.loss,
            "loss_avg": self.loss_avg,
            "steps_per_s": self.steps_per_s,
            "started": self.started,
            "duration": self.duration,
            "message": self.message,
            "checkpoints": self.checkpoints,
            "lora": str(self.path / self.last_lora) if self.last_lora else None,
            "validation": self.latest_validation,
            "best_validation": self.best_validation_so_far,
        })


def resolve_status(run: RunDir, folded_status: str) -> str:
    """The status events say, corrected by the pid file: no run end + no engine = crashed."""
    if folded_status not in (RUNNING, STARTING):
        return folded_status
    if run.engine_alive():
        return RUNNING
    if folded_status == RUNNING or run.events.exists() or run.pid_file.exists():
        return CRASHED
    return folded_status


class RunFollower:
    """Keeps one run's summary current by folding only the events appended since last time.

    A runs list that refreshes every few seconds must not re-read a 100,000-step
    events file each time; `refresh()` costs one stat when nothing was appended.
    """

    def __init__(self, path: str | Path):
        self.run = RunDir(path)
        self._reset()

    def _reset(self) -> None:
        self._tail = EventTail(self.run.events)
        self._folded = RunSummary(path=self.run.path, name=self.run.name)
        self._identity: tuple[int, int] | None = None

    def refresh(self) -> RunSummary:
        try:
            stat = self.run.events.stat()
        except FileNotFoundError:
            stat = None
        if stat is not None:
            identity = (stat.st_dev, stat.st_ino)
            if self._identity not in (None, identity) or stat.st_size < self._tail.offset:
                self._reset()  # the file was replaced: fold it again from the start
            self._identity = identity
            self._folded.fold_all(_summary_events(self._tail))
        return replace(self._folded, status=resolve_status(self.run, self._folded.status))


_STEP_MARK = f'"type":"{STEP}"'.encode()  # as EventWriter writes it (compact JSON)


def _summary_events(tail: EventTail) -> list[dict[str, Any]]:
    """The appended events a summary needs: all but steps, and the last step of each run
    of steps (a summary keeps only the newest step's numbers, so it is exact). Skipping
    the JSON of the other steps makes a 100,000-step run list in a few milliseconds."""
    data = tail.read_new_lines()
    if _STEP_MARK not in data:
        return parse_lines(data)[0]
    kept: list[bytes] = []
    pending_step = None
    for line in data.splitlines():
        # the writer puts "type" right after v, seq and time: look only there, so a
        # config value that happens to read "type":"step" is not taken for a step
        if _STEP_MARK in line[:96]:
            pending_step = line
            continue
        if pending_step is not None:
            kept.append(pending_step)
            pending_step = None
        kept.append(line)
    if pending_step is not None:
        kept.append(pending_step)
    events, damaged = parse_lines(b"\n".join(kept))
    tail.skipped_lines += damaged
    return events


def summarize_run(path: str | Path) -> RunSummary:
    """Status and progress of a run folder, from its events and engine.pid.

    A run without a run-end event whose engine is gone is `crashed`.
    """
    return RunFollower(path).refresh()


def list_runs(runs_dir: str | Path) -> list[RunSummary]:
    """Every run folder under `runs_dir`, newest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    runs = [summarize_run(child) for child in root.iterdir() if child.is_dir() and RunDir(child).is_run()]
    runs.sort(key=lambda run: run.started or 0.0, reverse=True)
    return runs
