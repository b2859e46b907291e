"""RunPlotScreen: one of the run's curves as a full-screen braille plot, live.

Opened from the dashboard (g); left/right pick the curve; the dashboard hands it every
new snapshot while it is open.
"""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Static

from tui.run_state import RunState
from tui.widgets.dashboard.loss_plot import LossPlot
from tui.widgets.dashboard.sparkline_panel import RUN_SERIES
from tui.widgets.dashboard.validation_panel import VALIDATION_SERIES
from tui.widgets.shared.key_footer import KeyFooter


class RunPlotScreen(ModalScreen[None]):
    CSS_PATH = "dashboard.tcss"

    BINDINGS = [
        Binding("left", "series(-1)", "◀ Curve"),
        Binding("right", "series(1)", "Curve ▶"),
        Binding("escape", "close", "Back"),
        Binding("g", "close", "Back", show=False),
    ]

    def __init__(self, state: RunState, series_index: int = 0) -> None:
        super().__init__()
        self.state = state
        self.series_index = series_index

    def compose(self) -> ComposeResult:
        yield Static("", id="plot-title")
        yield LossPlot(id="plot")
        yield KeyFooter()

    def on_mount(self) -> None:
        self._draw()

    def show_state(self, state: RunState) -> None:
        self.state = state
        self._draw()

    def curves(self) -> tuple:
        """The run's curves; the validation ones too when the run has evaluations."""
        return RUN_SERIES + (VALIDATION_SERIES if self.state.validations else ())

    def _draw(self) -> None:
        curves = self.curves()
        self.series_index %= len(curves)
        _widget_id, label, attribute, formatter = curves[self.series_index]
        summary = getattr(self.state, attribute)
        x_label = "epoch" if attribute == "loss_epoch_series" else "step"
        detail = (f"{summary.count} values, {summary.bin_width} {x_label}(s) per bin"
                  + (f", {summary.nonfinite} not finite" if summary.nonfinite else ""))
        title = Text(f"{self.state.run_name or self.state.path.name} · {label} · {detail}\n")
        for index, (_w, name, _a, _f) in enumerate(curves):
            title.append(f" {name} ", "reverse" if index == self.series_index else "")
        self.query_one("#plot-title", Static).update(title)
        self.query_one("#plot", LossPlot).show(summary, formatter=formatter, x_label=x_label)

    def action_series(self, delta: int) -> None:
        self.series_index = (self.series_index + delta) % len(self.curves())
        self._draw()

    def action_close(self) -> None:
        self.dismiss(None)
