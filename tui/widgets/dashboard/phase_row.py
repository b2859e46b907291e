"""PhaseRow: what the engine is doing now, with its own progress bar.

    loading  ─────────────────────────── the base model · 1m05s
    latents  ━━━━━━━━━━━╸─────────────── 12/36 images · 40s
    sampling ━━━━━━╸──────────────────── image 2/4 · 45/120 steps · 3m10s · s skips
    training ━━━━━━━━━━━━━━━━━━━━━━━━╸── pauses ahead: 3 samplings ≈ 4m30s, 3 saves ≈ 9s

From the engine's phase events (engine.train.phase, folded by engine.run.fold): a run
that is loading, caching or sampling for minutes shows that, and how far it got, instead
of a frozen step count. The row shows only while the run is live.
"""
from __future__ import annotations

import time

from engine.run.eta import pauses_ahead
from engine.run.events import (CACHING_LATENTS, CACHING_TEXT, LOADING_MODEL, SAMPLING, SAVING, TRAINING,
                               VALIDATING)
from engine.run.format import format_duration
from tui.run_state import RunState
from tui.widgets.dashboard.progress_row import ProgressRow

# phase -> (label beside the bar, what it is, the unit of its count)
PHASE_WORDS = {
    LOADING_MODEL: ("loading", "the base model", ""),
    CACHING_LATENTS: ("latents", "caching latents", "images"),
    CACHING_TEXT: ("captions", "encoding captions", "captions"),
    TRAINING: ("training", "", "steps"),
    SAMPLING: ("sampling", "", "steps"),
    SAVING: ("saving", "the LoRA and its state", ""),
    VALIDATING: ("validate", "validation loss", ""),
}
PAUSE_NAMES = {SAMPLING: "sampling", VALIDATING: "validation", SAVING: "save"}


def phase_words(state: RunState, now: float) -> tuple[str, str]:
    """(label, detail) of the phase row for a live run's state."""
    label, what, unit = PHASE_WORDS.get(state.phase, (state.phase[:8], state.phase, ""))
    parts = [what] if what else []
    if state.phase_detail:
        parts.append(state.phase_detail)
    if state.phase == TRAINING:
        parts.append(pauses_text(state))
    elif state.phase_total:
        parts.append(f"{state.phase_done}/{state.phase_total} {unit}".rstrip())
    if state.phase_since is not None and state.phase != TRAINING:
        parts.append(format_duration(now - state.phase_since))
    if state.phase == SAMPLING:
        parts.append("s skips")
    return label, " · ".join(part for part in parts if part)


def pauses_text(state: RunState) -> str:
    """The pauses still ahead and what they cost at the last measured length."""
    ahead = pauses_ahead(state.run_config, step=state.step, steps_per_epoch=state.steps_per_epoch,
                         total_steps=state.total_steps, epochs=state.epochs)
    pieces = []
    for phase, count in ahead.items():
        if not count:
            continue
        name = PAUSE_NAMES[phase] + ("s" if count > 1 else "")
        took = state.phase_seconds.get(phase)
        pieces.append(f"{count} {name}" + (f" ≈ {format_duration(count * took)}" if took else ""))
    return "ahead: " + ", ".join(pieces) if pieces else ""


class PhaseRow(ProgressRow):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("phase", id=id)

    def show_phase(self, state: RunState, live: bool) -> None:
        visible = live and bool(state.phase)
        if self.display != visible:
            self.display = visible
        if not visible:
            return
        label, detail = phase_words(state, time.time())
        if state.phase == TRAINING:
            done, total = state.step, state.total_steps
        else:
            done, total = state.phase_done, state.phase_total
        self.show(done, total, detail, label=label)
