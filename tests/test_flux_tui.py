"""Flux.1 from the TUI: the config screen shows the family the base model is and Flux's own
settings, `ctrl+t` trains the tiny Flux in a real engine process, the dashboard shows the run
and its samples, and the LoRA it wrote is in sd-scripts' Flux layout with its metadata."""
from __future__ import annotations

import pytest

from engine.config.schema import load_config
from engine.network.lora import read_lora_file
from engine.run.folder import RunDir
from tests.conftest import app_training_workspace
from tests.run_recordings import screen_text
from tests.test_config_screen import settle, type_into
from tests.test_sdxl_tui import SIZE, assert_finished_with_one_sample, kill_engine, train_with_ctrl_t
from tui.app import make_app


@pytest.fixture
def sd15_workspace(tmp_path, tiny_model_dir, one_thread_env, monkeypatch):
    """A workspace whose config trains the tiny SD1.5 model; the test points it at Flux."""
    return app_training_workspace(
        tmp_path, tiny_model_dir, one_thread_env, monkeypatch, training={"epochs": 1},
        optimizer={"learning_rate": 5e-3}, network={"train_text_encoder": False},
        sampling={"prompts": "a dog --w 64 --h 64 --s 2 --d 5 --g 3.5", "every_n_epochs": 1},
        saving={"output_name": "flux-tui"})


@pytest.mark.slow
async def test_flux_model_shows_on_the_config_screen_trains_with_ctrl_t_and_shows_on_the_dashboard(
        sd15_workspace, tiny_flux_dir):
    root = sd15_workspace
    run = RunDir(root / "runs" / "flux-tui")
    app = make_app(root, start_screen="config")
    try:
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert not app.screen.form.rows["flux.guidance_scale"].display  # SD 1.x: no Flux settings
            await type_into(pilot, "base model", "model.pretrained_model", str(tiny_flux_dir))
            await settle(pilot)
            panel = app.screen.plan_panel
            assert panel.plan.family == "flux" and "Model Flux.1" in panel.plan_text()
            assert app.screen.form.rows["flux.guidance_scale"].display  # read from the folder's configs
            assert "Model Flux.1" in screen_text(app)

            await train_with_ctrl_t(pilot, app, run, "flux-tui · Flux.1", steps=4)
        assert load_config(root / "loradeck.toml").model.pretrained_model == str(tiny_flux_dir)
    finally:
        kill_engine(run)

    assert_finished_with_one_sample(run, "flux", steps=4)
    tensors, metadata = read_lora_file(run.checkpoints / "flux-tui.safetensors")
    assert metadata["ss_base_model_version"] == "flux1" and metadata["modelspec.architecture"] == "flux-1-dev/lora"
    assert metadata["ss_timestep_sampling"] == "sigmoid" and metadata["ss_guidance_scale"] == "1.0"
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in tensors
    assert "lora_unet_single_blocks_1_linear1.lora_up.weight" in tensors
    assert all(key.startswith("lora_unet_") for key in tensors)  # text encoders frozen
