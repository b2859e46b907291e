"""Stop, kill and resume: a run interrupted any way ends where an uninterrupted one does,
with the same LoRA weights, and checkpoint names keep counting (stopping and resuming for
every family)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from engine.run.events import read_events
from engine.network.lora import read_lora_file
from engine.train.state import load_state
from engine.train.loop import train
from tui.cli import main as loradeck
from tests.conftest import TINY_FAMILIES, stop_when_epoch_ends

SETTINGS = dict(
    # text encoder trained for 3 steps only, and a schedule that moves: both must resume right
    training={"epochs": 2, "stop_text_encoder_training": 3},
    optimizer={"learning_rate": 1e-3, "lr_scheduler": "cosine"},
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, family_model_dir):
    """The LoRA of an uninterrupted run with SETTINGS, for the module's family."""
    from engine.config.schema import config_from_dict, save_config, with_absolute_paths
    from engine.run.folder import RunDir
    from tests.conftest import small_run_settings, write_tiny_dataset

    root = write_tiny_dataset(tmp_path_factory.mktemp("reference"))
    data = small_run_settings(family_model_dir)
    for group, values in SETTINGS.items():
        data[group].update(values)
    data["saving"]["output_name"] = "reference"
    run = RunDir(root / "runs" / "reference")
    run.create()
    save_config(with_absolute_paths(config_from_dict(data), root), run.config)
    assert train(run.path) == 0
    tensors, _ = read_lora_file(run.checkpoints / "reference.safetensors")
    return tensors


def assert_same_weights(tensors, reference, exact=True):
    """A resumed run is the same code path as the uninterrupted one: bit-equal weights.

    Only a run whose first half ran in another process with another thread count (kill -9)
    may differ, by float reduction order.
    """
    assert tensors.keys() == reference.keys()
    for key, value in reference.items():
        if exact:
            assert torch.equal(tensors[key], value), key
        else:
            torch.testing.assert_close(tensors[key], value, rtol=1e-5, atol=1e-6, msg=key)


def events_of(run, kind):
    return [event for event in read_events(run.events) if event["type"] == kind]


# every family stops at an epoch end and resumes bit-exactly in the network-type and validation
# tests, and mid-epoch below; this one adds the text-encoder stop and a moving schedule
@pytest.mark.parametrize("family", TINY_FAMILIES[:1], indirect=True)
def test_stop_after_epoch_one_then_resume_matches_uninterrupted(tmp_path, tiny_dataset, family_run, monkeypatch,
                                                                 reference):
    run = family_run(tiny_dataset, "stopped", **SETTINGS)
    stop_when_epoch_ends(run, monkeypatch, epoch=1)  # the user presses stop as epoch 1 ends
    assert train(run.path) == 0
    end = events_of(run, "run_end")[-1]
    assert (end["status"], end["step"], end["epoch"]) == ("stopped", 4, 1)
    assert events_of(run, "control")[-1]["request"] == "stop"
    assert not run.pending_requests()
    # the epoch save already holds step 4: no second file for the stop
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["stopped-000001.safetensors"]
    monkeypatch.undo()

    assert train(run.path, resume=True) == 0
    starts = events_of(run, "run_start")
    assert starts[-1]["resumed"] is True and starts[-1]["start_step"] == 4 and starts[-1]["start_epoch"] == 1
    steps = [event["step"] for event in events_of(run, "step")]
    assert steps == list(range(1, 9))  # one run's worth of steps, counted on from the stop
    assert events_of(run, "run_end")[-1]["status"] == "finished" and events_of(run, "run_end")[-1]["step"] == 8
    assert events_of(run, "step")[-1]["lr_text_encoder"] == 0.0  # still stopped after step 3
    tensors, metadata = read_lora_file(run.checkpoints / "stopped.safetensors")
    assert metadata["ss_steps"] == "8"
    assert_same_weights(tensors, reference)


def test_stop_command_mid_epoch_then_resume_matches(tmp_path, tiny_dataset, family_run, reference, monkeypatch):
    """`loradeck stop` from another terminal (here a thread) stops mid-epoch; resume continues."""
    import engine.train.step

    real_loss = engine.train.step.loss_at

    def slow_loss(*args, **kwargs):  # steps slow enough for the requests to land mid-run
        time.sleep(0.25)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(engine.train.step, "loss_at", slow_loss)
    run = family_run(tiny_dataset, "stop-cli", **SETTINGS)
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("status", train(run.path)))
    worker.start()
    deadline = time.monotonic() + 120
    while not any(e["step"] >= 1 for e in events_of(run, "step")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert loradeck(["save-now", str(run.path)]) == 0
    assert loradeck(["sample-now", str(run.path)]) == 0
    while len(events_of(run, "control")) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert loradeck(["stop", str(run.path)]) == 0
    worker.join(120)
    assert result["status"] == 0
    outcomes = {e["request"]: e["outcome"] for e in events_of(run, "control")}
    assert outcomes["sample"] == "no sample prompts configured"
    assert outcomes["save"].startswith("saved at step ") and outcomes["stop"].startswith("stopped after step ")
    saved_at = int(outcomes["save"].rsplit(" ", 1)[1])
    assert (run.checkpoints / f"stop-cli-step{saved_at:08d}.safetensors").exists()
    end = events_of(run, "run_end")[-1]
    assert end["status"] == "stopped" and 1 <= end["step"] < 8
    stopped_at = end["step"]
    assert (run.checkpoints / f"stop-cli-step{stopped_at:08d}.safetensors").exists()
    assert load_state(run.state).progress["step"] == stopped_at
    # with no engine alive, a request is refused instead of being left for the next resume
    assert loradeck(["stop", str(run.path)]) == 1

    assert train(run.path, resume=True) == 0
    assert [e["step"] for e in events_of(run, "step")] == list(range(1, 9))
    tensors, _ = read_lora_file(run.checkpoints / "stop-cli.safetensors")
    assert_same_weights(tensors, reference)


@pytest.mark.slow
@pytest.mark.parametrize("family", TINY_FAMILIES[:1], indirect=True)  # the process side is the family's no more
def test_kill_9_mid_run_then_resume(tmp_path, tiny_dataset, family_run, one_thread_env, reference):
    """A detached engine killed with SIGKILL leaves a loadable checkpoint and state."""
    run = family_run(tiny_dataset, "killed", saving={"save_every_n_epochs": 0, "save_every_n_steps": 1}, **SETTINGS)
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.train.process", str(run.path)],
        env=one_thread_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            states = [e for e in events_of(run, "checkpoint") if e["kind"] == "state"]
            if states and states[-1]["step"] >= 2:
                break
            time.sleep(0.01)
        assert process.poll() is None, "the engine ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(30)
    assert not any(e["type"] == "run_end" for e in read_events(run.events))
    saved = load_state(run.state)
    assert saved is not None and saved.progress["step"] >= 2
    for lora in run.checkpoints.glob("*.safetensors"):
        read_lora_file(lora)  # every file there is complete

    assert train(run.path, resume=True) == 0
    assert events_of(run, "run_end")[-1]["step"] == 8
    assert [e["step"] for e in events_of(run, "step")][-1] == 8
    tensors, _ = read_lora_file(run.checkpoints / "killed.safetensors")
    assert_same_weights(tensors, reference, exact=False)  # first half ran single-threaded


def test_train_command_detaches_and_refuses_to_overwrite(tmp_path, tiny_dataset, tiny_model_dir, one_thread_env,
                                                         capsys, monkeypatch):
    from engine.config.schema import config_from_dict, save_config
    from tests.conftest import small_run_settings

    data = small_run_settings(tiny_model_dir)
    data["training"]["epochs"] = 1
    data["saving"]["output_name"] = "cli"
    config_path = tiny_dataset / "lora.toml"
    save_config(config_from_dict(data), config_path)
    for name, value in one_thread_env.items():
        monkeypatch.setenv(name, value)

    assert loradeck(["train", str(config_path), "--detach"]) == 0
    run_dir = capsys.readouterr().out.strip().splitlines()[-1]
    assert run_dir == str(tiny_dataset / "runs" / "cli")
    from engine.run.folder import RunDir

    run = RunDir(run_dir)
    assert run.config.read_text().count(str(tiny_dataset / "img")) == 1  # frozen with absolute paths
    assert loradeck(["train", str(config_path)]) == 1  # that run folder exists
    assert "already holds a run" in capsys.readouterr().err
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not events_of(run, "run_end"):
        time.sleep(0.1)
    assert events_of(run, "run_end")[-1]["status"] == "finished"
    assert (run.checkpoints / "cli.safetensors").exists()
    assert "finished: 4 steps" in run.log.read_text()
