"""End to end: start a tiny-model training from the TUI, detach, re-attach, stop it.

The real engine runs as its own process (engine.run.launch); the app only reads the run
folder and writes the stop request. Quitting the first app must leave the run going.
"""
from __future__ import annotations

import os
import signal

import pytest

from engine.run.events import read_events
from engine.run.folder import RunDir
from tests.conftest import app_training_workspace
from tests.run_recordings import dashboard_ready, screen_text, wait_until
from tui.app import make_app
from tui.screens.confirm import ConfirmScreen
from tui.screens.dashboard import DashboardScreen

SIZE = (120, 40)
ENGINE_TIMEOUT = 240.0  # importing torch and loading the model on two busy cores


@pytest.fixture
def training_workspace(tmp_path, tiny_model_dir, one_thread_env, monkeypatch):
    # long enough that it is still going when we stop it; no save but the stop's own
    return app_training_workspace(tmp_path, tiny_model_dir, one_thread_env, monkeypatch, training={"epochs": 500},
                                  saving={"output_name": "e2e", "save_every_n_epochs": 0})


@pytest.mark.slow
async def test_start_detach_reattach_and_stop(training_workspace):
    root = training_workspace
    run = RunDir(root / "runs" / "e2e")
    try:
        # ---- start from the runs screen; its dashboard opens on the new run
        app = make_app(root, start_screen="runs")
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("t")
            await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen), ENGINE_TIMEOUT, "the dashboard")
            screen = app.screen
            assert screen.run.path == run.path
            await wait_until(pilot, lambda: screen.view is not None and screen.view.state.step >= 2
                             and screen.view.health.status == "running", ENGINE_TIMEOUT, "training steps")
            await pilot.pause()
            assert "RUNNING" in screen_text(app) and "e2e" in screen_text(app)
            await pilot.press("q")  # detach: quit the app; it says the run goes on
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 10, "the quit question")
            assert "e2e goes on training" in screen_text(app)
            await pilot.press("y")
        assert run.engine_alive(), "quitting the app must leave the run going"

        # ---- re-attach: history replayed, then followed
        app = make_app(root, start_screen="runs", attach_run=run.path)
        async with app.run_test(size=SIZE) as pilot:
            screen = await dashboard_ready(pilot)
            assert screen.view.health.status == "running"
            seen = screen.view.state.step
            assert seen >= 2
            await wait_until(pilot, lambda: screen.view.state.step > seen, ENGINE_TIMEOUT, "new steps")
            # ---- graceful stop, confirmed
            await pilot.press("x")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            await wait_until(pilot, lambda: screen.view.health.status == "stopped", ENGINE_TIMEOUT, "the stop")
            await pilot.pause()
            text = screen_text(app)
            assert "STOPPED" in text and "stop: stopped after step" in text
            await pilot.press("t")
            table = screen.query_one("#dash-checkpoints")
            assert table.row_count >= 1

        events = list(read_events(run.events))
        end = events[-1]
        assert end["type"] == "run_end" and end["status"] == "stopped"
        assert [e["request"] for e in events if e["type"] == "control"] == ["stop"]
        checkpoints = [e for e in events if e["type"] == "checkpoint" and e["kind"] == "lora"]
        assert checkpoints and (run.path / checkpoints[-1]["path"]).stat().st_size == checkpoints[-1]["bytes"]
        assert checkpoints[-1]["step"] == end["step"]
        assert not run.pending_requests()
    finally:
        record = run.read_pid()
        if record and run.engine_alive():
            os.kill(record["pid"], signal.SIGKILL)
