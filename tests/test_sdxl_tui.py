"""SDXL from the TUI: the config screen shows the family the base model is, `ctrl+t` trains
the tiny SDXL model in a real engine process, the dashboard shows the SDXL run and its
samples, and diffusers' StableDiffusionXLPipeline loads the LoRA it wrote."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from engine.config.schema import load_config
from engine.network.lora import read_lora_file
from engine.run.events import read_events
from engine.run.folder import RunDir
from tests.conftest import app_training_workspace
from tests.run_recordings import screen_text, wait_until
from tests.test_config_screen import settle, type_into
from tests.test_lora_file import load_in_diffusers, render
from tests.test_sdxl import sdxl_pipeline, tiny_sdxl_dir  # noqa: F401 (fixtures)
from tui.app import make_app
from tui.screens.dashboard import DashboardScreen

SIZE = (120, 40)
ENGINE_TIMEOUT = 300.0  # importing torch and loading two text encoders on two busy cores


@pytest.fixture
def sd15_workspace(tmp_path, tiny_model_dir, one_thread_env, monkeypatch):
    """A workspace whose config trains the tiny SD1.5 model; the test points it at SDXL."""
    return app_training_workspace(
        tmp_path, tiny_model_dir, one_thread_env, monkeypatch, training={"epochs": 1},
        optimizer={"learning_rate": 5e-3},
        sampling={"prompts": "a dog --w 64 --h 64 --s 2 --d 5", "every_n_epochs": 1},
        saving={"output_name": "xl-tui"})


async def train_with_ctrl_t(pilot, app, run, title: str, *, steps: int) -> None:
    """Press ctrl+t on the config screen; the dashboard opens on `run`, which finishes after
    `steps` steps with `title` (name · family) on its status line."""
    await pilot.press("ctrl+t")
    await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen), ENGINE_TIMEOUT, "the dashboard")
    screen = app.screen
    assert screen.run.path == run.path
    await wait_until(pilot, lambda: screen.view is not None and screen.view.health.status == "finished",
                     ENGINE_TIMEOUT, "the run to finish")
    await pilot.pause()
    text = screen_text(app)
    assert "FINISHED" in text and title in text
    assert screen.view.state.step == steps


def assert_finished_with_one_sample(run, family: str, *, steps: int) -> None:
    """The run's events: planned for `family` and `steps` steps, finished, one sample at the end."""
    events = list(read_events(run.events))
    start = next(event for event in events if event["type"] == "run_start")
    assert start["plan"]["family"] == family and start["plan"]["total_steps"] == steps
    assert events[-1]["type"] == "run_end" and events[-1]["status"] == "finished"
    assert [event["path"] for event in events if event["type"] == "sample"] == [f"samples/e0001-s{steps:06d}-p00.png"]


def kill_engine(run) -> None:
    """End a run's engine left behind by a failed test (by its recorded pid)."""
    record = run.read_pid()
    if record and run.engine_alive():
        os.kill(record["pid"], signal.SIGKILL)


@pytest.mark.slow
async def test_sdxl_model_shows_on_the_config_screen_trains_with_ctrl_t_and_shows_on_the_dashboard(
        sd15_workspace, tiny_sdxl_dir, sdxl_pipeline):  # noqa: F811
    root = sd15_workspace
    run = RunDir(root / "runs" / "xl-tui")
    app = make_app(root, start_screen="config")
    try:
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            panel = app.screen.plan_panel
            assert "Model SD 1.x" in panel.plan_text() and panel.plan.family == "sd15"
            # the same form, an SDXL base model: the family is read from the folder's configs
            await type_into(pilot, "base model", "model.pretrained_model", str(tiny_sdxl_dir))
            await settle(pilot)
            text = panel.plan_text()
            assert panel.plan.family == "sdxl" and "Model SDXL" in text
            assert "! SDXL: dataset.resolution is '64'; 1024,1024 is recommended" in text
            assert "Model SDXL" in screen_text(app)

            await train_with_ctrl_t(pilot, app, run, "xl-tui · SDXL", steps=4)
        assert load_config(root / "loradeck.toml").model.pretrained_model == str(tiny_sdxl_dir)
    finally:
        kill_engine(run)

    assert_finished_with_one_sample(run, "sdxl", steps=4)
    assert (run.path / "samples" / "e0001-s000004-p00.png").is_file()
    lora = run.checkpoints / "xl-tui.safetensors"
    tensors, metadata = read_lora_file(lora)
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert any(key.startswith("lora_te2_") for key in tensors)
    pipeline = sdxl_pipeline()
    base = render(pipeline)
    assert load_in_diffusers(pipeline, lora) == []
    assert np.abs(render(pipeline) - base).max() > 0
