"""ValidationPanel: the validation curve beside the training loss, the best file, the advice.

Shown only for runs with validation on (a `validation` event arrived). Four lines: the
validation loss and the train-set fixed-noise loss over the run (engine.train.validation),
the best evaluation and its file, and one line of advice from `engine.run.advice`. The
panel takes focus (`v` on the dashboard, or tab); `?` on it opens how the advice was
derived, with the rules and the numbers.
"""
from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widget import Widget
from textual.widgets import Static

from engine.run.advice import explanation
from engine.run.format import format_loss
from tui.widgets.dashboard.sparkline_panel import SeriesSparkline
from tui.widgets.shared.text_line import TextLine


# (widget id, label, state attribute, formatter), as sparkline_panel.RUN_SERIES; the plot (g) adds them
VALIDATION_SERIES = (
    ("spark-validation", "val loss", "validation_series", format_loss),
    ("spark-train-fixed", "train set", "train_fixed_series", format_loss),
)


class ValidationPanel(Widget, can_focus=False):
    BINDINGS = [Binding("question_mark", "explain", "Explain advice")]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.display = False  # until a validation event arrives
        self.state = None
        self._key: tuple[int, int] | None = None

    def compose(self) -> ComposeResult:
        for widget_id, label, _attribute, formatter in VALIDATION_SERIES:
            yield SeriesSparkline(label, formatter, id=widget_id, sparse=True)
        yield TextLine("", id="validation-best")
        yield Static("", id="validation-advice", markup=False)  # wraps: the advice is read whole

    def show(self, state) -> None:
        """Point the panel at a `RunState` snapshot; hidden while the run has no evaluation."""
        self.state = state
        has_validation = bool(state.validations)
        if self.display != has_validation:
            self.display = has_validation
            self.can_focus = has_validation  # focusable only when shown, never focused at start
        # the advice names the best evaluation's file, whose checkpoint event comes after it
        key = (state.validation_version, state.checkpoints_version)
        if not has_validation or key == self._key:
            return
        self._key = key
        for widget_id, _label, attribute, _formatter in VALIDATION_SERIES:
            self.query_one(f"#{widget_id}", SeriesSparkline).show(getattr(state, attribute))
        self.query_one("#validation-best", TextLine).show(best_line(state))
        advice = f"advice: {state.advice().text}"
        line = self.query_one("#validation-advice", Static)
        if str(line.visual) != advice:  # an update costs a layout pass: only when it changes
            line.update(advice)

    def action_explain(self) -> None:
        if self.state is None or not self.state.validations:
            return
        from tui.screens.help import ExplanationScreen

        self.app.push_screen(ExplanationScreen("How the validation advice is derived", explanation(self.state.advice())))


def best_line(state) -> str:
    """`★ best 0.1234 at epoch 5, step 50: lora-000005.safetensors · last 0.1301 · 1.2s`."""
    best = state.best_validation
    if best is None:
        return ""
    checkpoint = state.best_checkpoint()
    file = Path(checkpoint.path).name if checkpoint is not None else Path(state.best_validation_path).name
    last = state.validations[-1]
    parts = [f"★ best {format_loss(best.loss)} at epoch {best.epoch}, step {best.step}" + (f": {file}" if file else "")]
    if last.step != best.step:
        parts.append(f"last {format_loss(last.loss)}")
    if state.validation_seconds is not None:
        parts.append(f"{state.validation_seconds:.1f}s per evaluation")
    parts.append("? explains")
    return " · ".join(parts)
