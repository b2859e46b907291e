"""What the engine is doing right now, said every few seconds: `phase` events.

A slow run must look alive. Steps reach events.jsonl only at each logging flush (every
`logging.log_every_n_steps`), and loading a model, caching latents, sampling or
validating can each take minutes without a step. The trainer tells a `PhaseReporter`
where it is (`enter` a phase, `advance` within it, `step` = the optimizer step), which
costs an attribute write; a small thread turns that into `phase` events:

- at once when a phase begins (so it sorts with the events around it),
- when the progress moved, at most every PROGRESS_SECONDS,
- and every HEARTBEAT_SECONDS while nothing moved, so a reader knows the engine lives and
  where it stands (a heartbeat repeats the last numbers; readers tell it from progress).

Phases (PHASES): loading_model, caching_latents (done/total images), caching_text
(captions), training (done = step of total steps; with steps_per_s measured over the last
half minute), sampling (done/total denoising steps of all prompts; detail "image 2/4"),
saving, validating. Stdlib only.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from engine.run.events import PHASE, TRAINING

HEARTBEAT_SECONDS = 3.0
PROGRESS_SECONDS = 1.0
TICK_SECONDS = 0.25
SPEED_WINDOW_SECONDS = 30.0


class PhaseReporter:
    def __init__(self, events, *, heartbeat_seconds: float | None = None, progress_seconds: float | None = None):
        self.events = events
        self.heartbeat_seconds = HEARTBEAT_SECONDS if heartbeat_seconds is None else heartbeat_seconds
        self.progress_seconds = PROGRESS_SECONDS if progress_seconds is None else progress_seconds
        self.step = 0  # the optimizer step: the loop sets it after every step
        self.epoch = 0  # the 1-based epoch in progress
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._phase = ""
        self._since = 0.0
        self._done = 0
        self._total = 0
        self._detail = ""
        self._said: tuple = ()  # the numbers of the last event
        self._last_emit = 0.0
        self._steps: deque[tuple[float, int]] = deque()  # (time, step) for the training speed

    # ---- the trainer's side (cheap: no I/O but at a phase change)

    def enter(self, phase: str, total: int = 0, detail: str = "") -> None:
        """A new phase begins: said at once (after the last progress of the one before)."""
        with self._lock:
            if self._phase and self._numbers() != self._said:
                self._emit()
            self._phase, self._since = phase, time.time()
            self._done, self._total, self._detail = 0, int(total), detail
            if phase == TRAINING:
                self._steps.clear()
            self._emit()

    def advance(self, done: int, total: int | None = None, detail: str | None = None) -> None:
        """Progress within the phase (said by the thread within PROGRESS_SECONDS)."""
        self._done = int(done)
        if total is not None:
            self._total = int(total)
        if detail is not None:
            self._detail = detail

    @property
    def phase(self) -> str:
        return self._phase

    # ---- the thread

    def start(self) -> "PhaseReporter":
        self._thread = threading.Thread(target=self._run, name="loradeck-phase", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(min(TICK_SECONDS, self.progress_seconds)):
            with self._lock:
                if not self._phase:
                    continue
                quiet = time.time() - self._last_emit
                moved = self._numbers() != self._said
                if (moved and quiet >= self.progress_seconds) or quiet >= self.heartbeat_seconds:
                    self._emit()

    def _numbers(self) -> tuple:
        done = self.step if self._phase == TRAINING else self._done
        return (self._phase, self.step, done, self._total, self._detail)

    def _emit(self) -> None:
        """Write one phase event (with the lock held)."""
        now = time.time()
        numbers = self._numbers()
        phase, step, done, total, detail = numbers
        fields: dict[str, Any] = {"phase": phase, "step": step, "epoch": self.epoch, "done": done,
                                  "total": total, "since": self._since}
        if detail:
            fields["detail"] = detail
        if phase == TRAINING:
            speed = self._speed(now, step)
            if speed is not None:
                fields["steps_per_s"] = speed
        self.events.emit(PHASE, **fields)
        self._said, self._last_emit = numbers, now

    def _speed(self, now: float, step: int) -> float | None:
        """Steps per second over the last half minute of training (the host's clock: the
        GPU may run a few steps behind, which evens out over the window)."""
        if not self._steps or self._steps[-1][1] != step:
            self._steps.append((now, step))
        while len(self._steps) > 2 and now - self._steps[0][0] > SPEED_WINDOW_SECONDS:
            self._steps.popleft()
        (first_time, first_step), (_last_time, last_step) = self._steps[0], self._steps[-1]
        if last_step <= first_step or now <= first_time:
            return None
        return (last_step - first_step) / (now - first_time)
