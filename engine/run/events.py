"""The run's event stream: `events.jsonl`, one JSON object per line, flushed per event.

Every event carries `v` (schema version), `seq` (0, 1, 2... within the file), `time`
(Unix seconds) and `type`. Types and their fields:

    run_start   run_name, config (dict), plan (dict: images, image_repeats, reg_images,
                buckets [{width, height, count}], steps_per_epoch, total_steps, epochs,
                batch_size, effective_batch), start_step, start_epoch, resumed (bool),
                seed (the one used: a random seed, -1 in the config, as drawn),
                device, precision, pid; optional vram_estimate_gb (engine.plan.vram)
    step        step, epoch, loss, loss_avg, lr_unet, lr_text_encoder, steps_per_s,
                images_per_s; optional gpu_memory_mb, gpu_memory_total_mb, gpu_util,
                data_wait (share of the interval spent waiting for batches)
    epoch_end   epoch, step, loss_epoch
    sample      path (relative to the run folder), epoch, step, prompt_index, prompt,
                negative_prompt, seed, width, height, steps, cfg, sampler
    checkpoint  path (relative), epoch, step, bytes, kind ("lora" or "state"), final (bool);
                optional validation_loss (the file's, when validation is on)
    validation  step, epoch, loss, train_loss (or null), bands {"t125": loss, ...}, images,
                train_images, seconds, best (bool: a new best), best_step, best_epoch,
                best_loss, evaluations_since_best, best_path (relative; "" if none)
    control     request ("stop", "save", "sample", "skip"), outcome (text)
    phase       phase (PHASES), step, epoch, done, total (0: not known), since (when the
                phase began); optional detail ("image 2/4"), steps_per_s (training). Said
                when a phase begins, as it progresses (at most every second) and every few
                seconds while nothing moves (a heartbeat: the same numbers again), whatever
                the logging interval (engine.train.phase)
    warning     message; optional code, path
    error       message, traceback
    run_end     status ("finished", "stopped", "failed"), step, epoch, message

The auto-caption job (`loradeck caption --progress-json`) writes the same kind of events
to its stdout, which the TUI's caption bar reads with `parse_line`:

    caption_start     model, total (0: not known yet)
    caption_progress  done, total, path, caption
    caption_done      total, written, skipped, failed
    error             message

Readers tolerate a half-written last line and unknown types. Light module.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

EVENTS_VERSION = 1
EVENTS_FILE = "events.jsonl"

RUN_START = "run_start"
STEP = "step"
EPOCH_END = "epoch_end"
SAMPLE = "sample"
CHECKPOINT = "checkpoint"
CONTROL = "control"
VALIDATION = "validation"
WARNING = "warning"
ERROR = "error"
RUN_END = "run_end"
PHASE = "phase"

EVENT_TYPES = (RUN_START, STEP, EPOCH_END, SAMPLE, CHECKPOINT, VALIDATION, CONTROL, WARNING, ERROR, RUN_END, PHASE)

# what the engine is doing (phase events), in the order a run goes through them
LOADING_MODEL, CACHING_LATENTS, CACHING_TEXT = "loading_model", "caching_latents", "caching_text"
TRAINING, SAMPLING, SAVING, VALIDATING = "training", "sampling", "saving", "validating"
PHASES = (LOADING_MODEL, CACHING_LATENTS, CACHING_TEXT, TRAINING, SAMPLING, SAVING, VALIDATING)
CAPTION_START = "caption_start"
CAPTION_PROGRESS = "caption_progress"
CAPTION_DONE = "caption_done"

RUN_END_STATUSES = ("finished", "stopped", "failed")

# a run's status: a run end's, or what a reader infers (engine.run.folder.resolve_status)
FINISHED, STOPPED, FAILED = RUN_END_STATUSES
RUNNING = "running"
STARTING = "starting"  # no run start yet
CRASHED = "crashed"  # no run end, and the engine is gone


def _json_safe(value: Any) -> Any:
    """NaN and infinity are not JSON; write them as strings readers can recognise."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf"
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class EventWriter:
    """Appends events to a run's `events.jsonl`; each line is flushed and fsynced.

    On resume, the sequence continues from the file's last event. `EventWriter.on_stream`
    writes the same lines to an open stream instead (a job's stdout), not fsynced.
    """

    def __init__(self, run_dir: str | Path, *, fsync: bool = True):
        self.path = Path(run_dir) / EVENTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._seq = _next_sequence(self.path)
        self._handle = open(self.path, "a", encoding="utf-8")
        self._owns_handle = True

    @classmethod
    def on_stream(cls, stream) -> "EventWriter":
        writer = cls.__new__(cls)
        writer.path, writer._fsync, writer._lock, writer._seq = None, False, threading.Lock(), 0
        writer._handle, writer._owns_handle = stream, False
        return writer

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            event = {"v": EVENTS_VERSION, "seq": self._seq, "time": time.time(), "type": type}
            event.update(_json_safe(fields))
            self._handle.write(json.dumps(event, separators=(",", ":")) + "\n")
            self._handle.flush()
            if self._fsync:
                os.fsync(self._handle.fileno())
            self._seq += 1
            return event

    def close(self) -> None:
        with self._lock:
            if self._owns_handle and not self._handle.closed:
                self._handle.close()

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _next_sequence(path: Path) -> int:
    last = None
    for event in read_events(path):
        last = event
    if last is None:
        return 0
    return int(last.get("seq", -1)) + 1


def parse_line(line: bytes | str) -> dict[str, Any] | None:
    """One event, or None for a blank, damaged or non-object line."""
    try:
        event = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(event, dict) or "type" not in event:
        return None
    return event


def read_events(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every complete event in the file (a half-written last line is skipped)."""
    tail = EventTail(path)
    yield from tail.read_new()


@dataclass
class EventTail:
    """Follows a growing events file from a saved byte offset (like `tail -f`).

    `read_new()` returns only the complete lines appended since the last call; a
    half-written last line stays in the file for the next call. Re-attaching is reading
    from offset zero. A file that shrank (replaced) is read again from the start.
    """

    path: str | Path
    offset: int = 0
    skipped_lines: int = 0
    _inode: int | None = field(default=None, repr=False)

    def read_new(self, max_bytes: int | None = None) -> list[dict[str, Any]]:
        events, damaged = parse_lines(self.read_new_lines(max_bytes))
        self.skipped_lines += damaged
        return events

    def read_new_lines(self, max_bytes: int | None = None) -> bytes:
        """The complete lines appended since the last call, unparsed (b"" when none)."""
        path = Path(self.path)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return b""
        if (self._inode is not None and stat.st_ino != self._inode) or stat.st_size < self.offset:
            self.offset = 0
        self._inode = stat.st_ino
        if stat.st_size == self.offset:
            return b""
        with open(path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read() if max_bytes is None else handle.read(max_bytes)
        end = data.rfind(b"\n")
        if end < 0:
            return b""
        complete = data[: end + 1]
        self.offset += len(complete)
        return complete


def parse_lines(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """The events in a block of complete lines, and how many lines were damaged.

    One `json.loads` over the whole block as a JSON array is about twice as fast as one
    call per line, which is what lets a 100,000-step history replay in well under a
    second. JSON strings never hold a raw newline, so joining lines with commas is
    exact; a blank or damaged line sends the block down the line-by-line path.
    """
    try:
        parsed = json.loads("[" + data.decode("utf-8").strip("\n").replace("\n", ",") + "]")
    except ValueError:  # includes UnicodeDecodeError
        parsed = None
    if parsed is not None and all(type(event) is dict and "type" in event for event in parsed):
        return parsed, 0
    events, damaged = [], 0
    for line in data.splitlines():
        if not line.strip():
            continue
        event = parse_line(line)
        if event is None:
            damaged += 1
        else:
            events.append(event)
    return events, damaged


def as_float(value: Any) -> float | None:
    """A numeric event field as float; "nan"/"inf" strings become float nan/inf."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def as_int(value: Any, default: int) -> int:
    """A numeric event field as int, or `default` when it is missing or not a number."""
    if value is None or isinstance(value, bool):
        return default
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return default
