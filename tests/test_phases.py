"""A slow run looks alive: the engine says its phase and step every few seconds whatever the
logging interval, a slow sample can be skipped, and SIGTERM ends a sampling at once.

The engine is slowed on purpose (every U-Net call and every VAE encode sleeps), on the tiny
SD1.5 and SDXL models, and trains in this process with a fast heartbeat.
"""
from __future__ import annotations

import os
import sys
import signal
import threading
import time

import pytest

from engine.run.events import read_events
from engine.train import phase as phase_module
from engine.train.loop import train
from tests.conftest import new_run
from tests.run_recordings import workspace  # noqa: F401 - the fixture

FAMILIES = ["sd15", "sdxl"]
HEARTBEAT = 0.2
UNET_SLEEP = 0.05


@pytest.fixture
def model_dir(request, tiny_model_dir):
    if request.param == "sd15":
        return tiny_model_dir
    return request.getfixturevalue("tiny_sdxl_dir")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    from engine.model.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-sdxl-phases") / "tiny-sdxl", family="sdxl")


@pytest.fixture
def slow_engine(monkeypatch):
    """Every U-Net call and every latent encode takes a while, as on a busy or small GPU."""
    from diffusers import UNet2DConditionModel

    import engine.train.data as data

    forward, encode = UNet2DConditionModel.forward, data.encode_pixels

    def slow_forward(self, *args, **kwargs):
        time.sleep(UNET_SLEEP)
        return forward(self, *args, **kwargs)

    def slow_encode(*args, **kwargs):
        time.sleep(0.2)
        return encode(*args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", slow_forward)
    monkeypatch.setattr(data, "encode_pixels", slow_encode)
    monkeypatch.setattr(phase_module, "HEARTBEAT_SECONDS", HEARTBEAT)
    monkeypatch.setattr(phase_module, "PROGRESS_SECONDS", 0.05)


def phases_of(events):
    return [e for e in events if e["type"] == "phase"]


def when_sampling(run, reached: int, then) -> threading.Thread:
    """Call `then()` once the engine reports `reached` denoising steps of a sampling."""

    def watch():
        for _ in range(1200):
            if any(e["type"] == "phase" and e["phase"] == "sampling" and e["done"] >= reached
                   for e in read_events(run.events)):
                then()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("model_dir", FAMILIES, indirect=True)
def test_a_slow_run_says_its_phase_and_step_every_few_seconds(tmp_path, tiny_dataset, model_dir, slow_engine):
    run = new_run(model_dir, tmp_path, "slow",
                  logging={"log_every_n_steps": 100},  # steps reach the file only at flushes
                  training={"epochs": 1},
                  sampling={"prompts": "a dog --w 64 --h 64 --s 6 --d 1", "every_n_epochs": 1})
    assert train(run.path) == 0
    events = list(read_events(run.events))
    phases = phases_of(events)
    order = list(dict.fromkeys(e["phase"] for e in phases))
    assert order[:2] == ["loading_model", "caching_latents"]
    assert {"training", "sampling", "saving"} <= set(order)

    latents = [e for e in phases if e["phase"] == "caching_latents"]
    assert [e["done"] for e in latents] == sorted(e["done"] for e in latents)
    assert latents[-1]["done"] == latents[-1]["total"] == 4

    # the steps are told while no step event is written yet (the log interval is 100)
    first_step_event = next(i for i, e in enumerate(events) if e["type"] == "step")
    told = {e["step"] for e in events[:first_step_event] if e["type"] == "phase" and e["phase"] == "training"}
    assert {1, 2, 3} <= told | {0}, told
    assert any(e.get("steps_per_s") for e in phases if e["phase"] == "training")

    sampling = [e for e in phases if e["phase"] == "sampling"]
    assert sampling[-1]["total"] == 6 and sampling[-1]["done"] == 6 and sampling[-1]["detail"] == "image 1/1"

    # never silent for long while it runs (the bound is wide: a loaded test machine stalls
    # threads for seconds), and nothing after the run end
    times = [e["time"] for e in events]
    assert max(later - earlier for earlier, later in zip(times, times[1:])) < 10.0
    assert events[-1]["type"] == "run_end" and events[-1]["status"] == "finished"


@pytest.mark.parametrize("model_dir", FAMILIES, indirect=True)
def test_a_slow_sample_is_skipped_and_training_goes_on(tmp_path, tiny_dataset, model_dir, slow_engine):
    run = new_run(model_dir, tmp_path, "skip", training={"epochs": 1},
                  sampling={"prompts": "a dog --w 64 --h 64 --s 40 --d 1\na cat --w 64 --h 64 --s 40 --d 2",
                            "every_n_epochs": 1})
    watcher = when_sampling(run, 3, lambda: run.request("skip"))
    assert train(run.path) == 0
    watcher.join(1)
    events = list(read_events(run.events))
    (skip,) = [e for e in events if e["type"] == "control"]
    assert skip["request"] == "skip" and skip["outcome"].startswith("sampling skipped at image 1/2")
    assert not [e for e in events if e["type"] == "sample"]  # a half-denoised image is not written
    assert max(e["done"] for e in phases_of(events) if e["phase"] == "sampling") < 40
    assert events[-1]["status"] == "finished" and not run.pending_requests()


def test_sigterm_during_sampling_stops_at_once(tmp_path, tiny_dataset, tiny_model_dir, slow_engine):
    run = new_run(tiny_model_dir, tmp_path, "term", training={"epochs": 3},
                  sampling={"prompts": "a dog --w 64 --h 64 --s 40 --d 1\na cat --w 64 --h 64 --s 40 --d 2",
                            "every_n_epochs": 1})
    watcher = when_sampling(run, 3, lambda: os.kill(os.getpid(), signal.SIGTERM))
    assert train(run.path) == 0
    watcher.join(1)
    events = list(read_events(run.events))
    # the first sampling (the end of epoch 1, step 4) ends where it was; the run stops there
    assert not [e for e in events if e["type"] == "sample"]
    assert [e["outcome"] for e in events if e["type"] == "control"] == ["stopped after step 4"]
    assert events[-1]["type"] == "run_end" and events[-1]["status"] == "stopped" and events[-1]["step"] == 4


# --------------------------------------------------------------------------- the dashboard


async def test_the_dashboard_shows_the_phase_with_its_bar_an_eta_with_pauses_and_skips(workspace):
    from tests.run_recordings import RecordedRun, dashboard_ready, screen_text, wait_until
    from tui.app import make_app
    from tui.widgets.dashboard import run_tailer

    run_tailer.POLL_SECONDS = 0.1
    t0 = time.time() - 200
    recorded = RecordedRun(workspace, "slow", start=t0).start(
        steps_per_epoch=10, epochs=3, config={"sampling": {"every_n_epochs": 1}})
    recorded.event("phase", phase="loading_model", step=0, epoch=0, done=0, total=0, since=t0 + 1, time=t0 + 1)
    recorded.event("phase", phase="caching_latents", step=0, epoch=0, done=12, total=36, since=t0 + 3, time=t0 + 5)
    recorded.write().engine_alive()
    app = make_app(workspace, start_screen="runs", attach_run=recorded.path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await dashboard_ready(pilot)
        text = screen_text(app)
        assert "latents" in text and "caching latents · 12/36 images" in text
        assert "latents for " in text and "last step" not in text
        assert screen.check_action("skip_sample", ()) is False

        # training: the step moves with the heartbeat, though no step event is written yet
        since = len(recorded.lines)
        recorded.event("phase", phase="training", step=3, epoch=1, done=3, total=30, since=t0 + 10,
                       steps_per_s=0.1, time=t0 + 40)
        # a whole sampling (it took 60 s), training again, and a second sampling under way
        recorded.event("phase", phase="sampling", step=10, epoch=1, done=0, total=40, since=t0 + 100,
                       time=t0 + 100)
        recorded.event("phase", phase="training", step=10, epoch=1, done=10, total=30, since=t0 + 160,
                       time=t0 + 160)
        recorded.event("phase", phase="sampling", step=10, epoch=1, done=10, total=40, since=t0 + 190,
                       detail="image 1/2", time=t0 + 195)
        recorded.flush_new(since)
        await wait_until(pilot, lambda: screen.view.state.phase_total == 40, what="the second sampling")
        await pilot.pause()
        text = screen_text(app)
        assert "10/30" in text and "image 1/2 · 10/40 steps" in text and "s skips" in text
        # the ETA: 20 steps at 0.1 steps/s, two samplings ahead and what is left of this one
        assert screen.view.state.eta_seconds() == pytest.approx(200 + 2 * 60 + (60 - 5))
        assert "ETA 6m15s" in text

        # s asks the engine to skip the sampling in progress
        await wait_until(pilot, lambda: screen.check_action("skip_sample", ()), what="the skip key")
        await pilot.press("s")
        assert recorded.run.pending_requests() == ["skip"]
        await wait_until(pilot, lambda: "skip requested" in screen.query_one("#dash-status").text,
                         what="the pending skip")
        since = len(recorded.lines)
        recorded.event("control", request="skip", outcome="sampling skipped at image 1/2 (0 written)",
                       time=t0 + 197)
        recorded.event("phase", phase="training", step=10, epoch=1, done=10, total=30, since=t0 + 197,
                       time=t0 + 197)
        recorded.run.clear_request("skip")
        recorded.flush_new(since)
        await wait_until(pilot, lambda: screen.view.state.phase == "training", what="training again")
        await pilot.pause()
        text = screen_text(app)
        assert "ahead: 2 samplings ≈ 2m00s" in text, text
        assert screen.view.state.notices[-1].text == "skip: sampling skipped at image 1/2 (0 written)"

        # a validation counts its images
        since = len(recorded.lines)
        recorded.event("phase", phase="validating", step=20, epoch=2, done=2, total=3, since=t0 + 198,
                       time=t0 + 199)
        recorded.flush_new(since)
        await wait_until(pilot, lambda: screen.view.state.phase == "validating", what="the validation")
        await pilot.pause()
        assert "validation loss · 2/3 images" in screen_text(app)


@pytest.mark.slow
async def test_the_dashboard_of_a_slowed_engine_shows_caching_steps_and_a_skippable_sample(
        tmp_path, tiny_model_dir, one_thread_env, monkeypatch):
    """The real engine in its own process, slowed (tests/slow_engine.py), logging steps only
    every 1000: the dashboard still shows caching, each step, and a sampling it can skip."""
    import engine.run.launch as launch
    from engine.config.schema import config_from_dict, save_config
    from tests.conftest import small_run_settings, write_tiny_dataset
    from tests.run_recordings import dashboard_ready, screen_text, wait_until
    from tui.app import make_app
    from tui.screens.confirm import ConfirmScreen
    from tui.widgets.dashboard import run_tailer

    for name, value in {**one_thread_env, "LORADECK_TEST_UNET_SLEEP": "0.4", "LORADECK_TEST_ENCODE_SLEEP": "1.0",
                        "XDG_CONFIG_HOME": str(tmp_path / "xdg")}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(launch, "engine_command", lambda run, resume, processes=1: [
        sys.executable, "-m", "tests.slow_engine", str(run.path)] + (["--resume"] if resume else []))
    monkeypatch.setattr(run_tailer, "POLL_SECONDS", 0.1)
    root = write_tiny_dataset(tmp_path / "ws")
    data = small_run_settings(tiny_model_dir)
    data["logging"]["log_every_n_steps"] = 1000
    data["training"].update({"epochs": 3, "batch_size": 1})  # 8 steps an epoch
    data["saving"].update({"output_name": "slow", "save_every_n_epochs": 0})
    data["sampling"] = {"prompts": "a dog --w 64 --h 64 --s 40 --d 1", "every_n_epochs": 1}
    save_config(config_from_dict(data), root / "loradeck.toml")
    run_dir = root / "runs" / "slow"
    app = make_app(root, start_screen="runs")
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("t")
            screen = await dashboard_ready(pilot)
            state = lambda: screen.view.state  # noqa: E731
            # (the phase the dashboard saw, or the length it recorded once the phase was over)
            await wait_until(pilot, lambda: state().phase == "caching_latents"
                             or "caching_latents" in state().phase_seconds, 240, "caching latents")
            # steps show as they happen, though no step event is written before the epoch ends
            await wait_until(pilot, lambda: state().phase == "training" and state().step >= 2
                             and state().loss_series.count == 0, 60, "step 2 before any step event")
            await pilot.pause()
            assert "/24 " in screen_text(app) and state().loss_series.count == 0
            # the epoch's sampling: its own bar, then s skips it and training goes on
            await wait_until(pilot, lambda: state().phase == "sampling" and state().phase_done >= 2, 60, "sampling")
            assert "s skips" in screen_text(app) and "/40 steps" in screen_text(app)
            await wait_until(pilot, lambda: screen.check_action("skip_sample", ()), 10, "the skip key")
            await pilot.press("s")
            await wait_until(pilot, lambda: state().last_control.startswith("skip: sampling skipped"), 60, "the skip")
            await wait_until(pilot, lambda: state().phase == "training", 30, "training again")
            assert not list((run_dir / "samples").glob("*.png"))
            # a stop asked for during the next sampling ends it at once, too
            await wait_until(pilot, lambda: state().phase == "sampling" and state().step == 16, 90, "the second sampling")
            await pilot.press("x")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 10, "the stop question")
            await pilot.press("y")
            await wait_until(pilot, lambda: screen.view.health.status == "stopped", 60, "the stop")
            assert state().step == 16 and state().phase == ""
            # the libraries' import chatter stays out of the user's log
            assert "torchvision" not in (run_dir / "engine.log").read_text()
    finally:
        from engine.run.folder import RunDir

        run = RunDir(run_dir)
        record = run.read_pid()
        if record and run.engine_alive():
            os.kill(record["pid"], signal.SIGKILL)


def test_text_caching_and_validation_count_their_progress(tmp_path, family_model_dir):
    """The caching-text and validating phases count captions and images (a T5 pass over
    thousands of captions, or a large held-out set, takes minutes on a busy GPU)."""
    import torch

    from engine.config.schema import config_from_dict
    from engine.model.loading import load_base_model
    from tests.conftest import small_run_settings

    config = config_from_dict(small_run_settings(family_model_dir))
    model = load_base_model(config, tmp_path, device="cpu", dtype=torch.float32)
    told = []
    captions = [f"photo {index % 70}" for index in range(140)]  # 70 distinct, a family's batches of them
    cache = model.runtime.text_state_cache(model, captions, config, progress=told.append)
    assert len(told) > 1 and told == sorted(set(told)) and told[-1] == 70 and len(cache) == 70
