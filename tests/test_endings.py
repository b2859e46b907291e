"""Endings and next steps: where the LoRA is and how to load it, what to try next, quitting
while a run goes on, and the runs list's grid, rename and delete (to the trash)."""
from __future__ import annotations

import sys

from PIL import Image

from engine.config.schema import load_config
from engine.run.next_steps import DEMO_STATE
from tests.run_recordings import (
    RecordedRun,
    dashboard_ready,
    healthy_run,
    screen_text,
    wait_until,
    workspace,  # noqa: F401 - the fixture
)
from tui.app import make_app
from tui.screens import runs as runs_screen
from tui.screens.confirm import ConfirmScreen
from tui.screens.image_view import ImageViewScreen
from tui.screens.runs import RunsScreen

SIZE = (120, 40)


async def test_a_finished_demo_run_says_where_the_lora_is_how_to_load_it_and_what_next(workspace):
    from engine.config.workspace import Workspace

    Workspace.at(workspace).save_state(DEMO_STATE, {"demo": True})
    recorded = healthy_run(workspace)
    app = make_app(workspace, start_screen="runs", attach_run=recorded.path)
    async with app.run_test(size=(80, 24)) as pilot:
        await dashboard_ready(pilot)
        text = " ".join(line.strip() for line in screen_text(app).splitlines())
        assert "LoRA: runs/healthy/checkpoints/healthy-000003.safetensors" in text
        assert 'load_lora_weights("runs/healthy/checkpoints", weight_name="healthy-000003.safetensors")' in text
        assert "deliberate problems" in text and "1 (Health) finds and fixes them" in text


async def test_quitting_during_a_live_run_says_it_goes_on_and_how_to_reattach(workspace):
    recorded = RecordedRun(workspace, "live").start(steps_per_epoch=10, epochs=3).steps(1, 4)
    recorded.write().engine_alive()  # this test process stands in for the engine
    app = make_app(workspace, start_screen="health")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("q")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the quit question")
        text = screen_text(app)
        assert "live goes on training" in text and "loradeck attach" in text and "4 (Runs)" in text
        await pilot.press("n")  # stay
        assert not isinstance(app.screen, ConfirmScreen) and app.farewell == []
        await pilot.press("q", "y")
        await pilot.pause()
    assert app.farewell[0].startswith("live goes on training") and str(recorded.path.name) in app.farewell[0]


async def test_runs_list_shows_the_lora_renders_the_grid_renames_and_trashes(workspace, monkeypatch):
    monkeypatch.setattr(runs_screen, "REFRESH_SECONDS", 0.1)
    recorded = healthy_run(workspace)
    # the grid command as a stand-in (the real one is tests/test_samples_grid.py): writes a PNG
    grid_png = recorded.path / "grid.png"
    script = (f"import sys; from PIL import Image; print('healthy-000001.safetensors (1/3)', file=sys.stderr); "
              f"Image.new('RGB', (96, 64), (10, 200, 10)).save({str(grid_png)!r}); print({str(grid_png)!r})")
    monkeypatch.setattr(runs_screen, "grid_command", lambda run: [sys.executable, "-c", script])
    app = make_app(workspace, start_screen="runs")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_until(pilot, lambda: screen.runs, what="the runs")
        await pilot.pause()
        detail = str(screen.query_one("#runs-detail").render())
        assert "LoRA runs/healthy/checkpoints/healthy-000003.safetensors" in detail
        assert "healthy-000003.safetensors" in screen_text(app)  # the LORA column

        # g: the grid is rendered in the background, then shown on the whole screen
        await pilot.press("g")
        await wait_until(pilot, lambda: isinstance(app.screen, ImageViewScreen), what="the grid")
        assert app.screen.path == grid_png and Image.open(grid_png).size == (96, 64)
        await pilot.press("plus")  # zoom in on the grid
        assert app.screen.zoom == 2 and "2×" in screen_text(app)
        await pilot.press("escape")

        # m: rename the folder (and the name in its frozen config)
        await pilot.press("m")
        await pilot.pause()
        await pilot.press("ctrl+u", *"healthy-v2", "enter")
        renamed = workspace / "runs" / "healthy-v2"
        await wait_until(pilot, lambda: [run.name for run in screen.runs] == ["healthy-v2"], what="the new name")
        assert not recorded.path.exists() and renamed.is_dir()
        assert load_config(renamed / "config.toml").saving.output_name == "healthy-v2"

        # d: to the trash after a yes, never deleted
        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the delete question")
        assert "trash" in screen_text(app)
        await pilot.press("y")
        await wait_until(pilot, lambda: not screen.runs, what="an empty list")
        (trashed,) = (workspace / "runs" / ".trash").iterdir()
        assert trashed.name.startswith("healthy-v2 ") and (trashed / "checkpoints" / "healthy-000003.safetensors").exists()
        assert isinstance(app.screen, RunsScreen)
