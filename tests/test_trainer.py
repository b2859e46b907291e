"""The trainer end to end on the tiny models (CPU): it learns, for every family, writes the run
folder of DESIGN.md with events that follow engine/run/events.py, and refuses corrupt datasets."""
from __future__ import annotations

import json

import pytest
import torch

from engine.config.schema import load_config
from engine.run.events import EVENT_TYPES, EVENTS_VERSION, read_events
from engine.network.lora import read_lora_file
from engine.train.loop import train
from tests.datasets import write_image
from tests.trainer_eval import fixed_batch_loss

REQUIRED_FIELDS = {
    "run_start": {"run_name", "config", "plan", "start_step", "start_epoch", "resumed", "device", "precision", "pid"},
    "step": {"step", "epoch", "loss", "loss_avg", "lr_unet", "lr_text_encoder", "steps_per_s", "images_per_s"},
    "epoch_end": {"epoch", "step", "loss_epoch"},
    "checkpoint": {"path", "epoch", "step", "bytes", "kind", "final"},
    "control": {"request", "outcome"},
    "warning": {"message"},
    "error": {"message", "traceback"},
    "run_end": {"status", "step", "epoch", "message"},
    "phase": {"phase", "step", "epoch", "done", "total", "since"},
}


def check_schema(events: list[dict]) -> None:
    assert [event["seq"] for event in events] == list(range(len(events)))
    for event in events:
        assert event["v"] == EVENTS_VERSION and isinstance(event["time"], float)
        assert event["type"] in EVENT_TYPES
        missing = REQUIRED_FIELDS[event["type"]] - set(event)
        assert not missing, (event["type"], missing)


def test_short_run_learns_and_writes_the_run_folder(tmp_path, tiny_dataset, family, family_run):
    from engine.model.families import family_named

    run = family_run(
        tiny_dataset, "learns",
        training={"epochs": 4},
        optimizer={"learning_rate": 1e-3, "lr_scheduler": "cosine", "lr_warmup_steps": 2},
        captions={"shuffle_caption": True, "keep_tokens": 1},
        augmentation={"flip": True},
        saving={"save_every_n_epochs": 1, "save_last_n": 2},
        logging={"tensorboard": True, "log_every_n_steps": 3},
    )
    assert train(run.path) == 0

    # 4 images x 2 repeats / batch 2 = 4 steps per epoch, 4 epochs
    events = list(read_events(run.events))
    check_schema(events)
    kinds = [event["type"] for event in events]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    start = events[0]
    assert start["plan"]["steps_per_epoch"] == 4 and start["plan"]["total_steps"] == 16
    assert start["start_step"] == 0 and start["resumed"] is False and start["precision"] == "no"
    assert start["plan"]["family"] == family
    steps = [event for event in events if event["type"] == "step"]
    assert [event["step"] for event in steps] == list(range(1, 17))
    assert [event["epoch"] for event in steps] == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    assert steps[0]["lr_unet"] == pytest.approx(0.5e-3)  # warm-up: 1 of 2 steps
    assert steps[1]["lr_unet"] == pytest.approx(1e-3)
    assert steps[-1]["lr_unet"] == pytest.approx(0.0, abs=1e-12)  # cosine to zero
    assert [e["epoch"] for e in events if e["type"] == "epoch_end"] == [1, 2, 3, 4]
    assert events[-1]["status"] == "finished" and events[-1]["step"] == 16

    # LoRA files: epochs 1-3 with keep-last-2, then the final one; a state per save
    loras = [e for e in events if e["type"] == "checkpoint" and e["kind"] == "lora"]
    assert [e["path"] for e in loras] == [
        "checkpoints/learns-000001.safetensors", "checkpoints/learns-000002.safetensors",
        "checkpoints/learns-000003.safetensors", "checkpoints/learns.safetensors",
    ]
    assert [e["final"] for e in loras] == [False, False, False, True]
    assert sorted(p.name for p in run.checkpoints.iterdir()) == [
        "learns-000002.safetensors", "learns-000003.safetensors", "learns.safetensors",
    ]
    assert json.loads((run.state / "latest.json").read_text())["folder"] == "step-00000016"
    assert sorted(p.name for p in run.state.iterdir()) == ["latest.json", "step-00000012", "step-00000016"]

    # ss_* metadata of sd-scripts
    tensors, metadata = read_lora_file(run.checkpoints / "learns.safetensors")
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "4.0"
    assert metadata["ss_steps"] == "16" and metadata["ss_epoch"] == "4" and metadata["ss_seed"] == "11"
    assert metadata["ss_num_train_images"] == "8"
    assert json.loads(metadata["ss_dataset_dirs"]) == {"2_sks dog": {"n_repeats": 2, "img_count": 4}}
    assert json.loads(metadata["ss_tag_frequency"])["2_sks dog"]["sks dog"] == 4
    assert metadata["ss_resolution"] == "(64, 64)" and metadata["ss_sd_model_name"] == f"tiny-{family}"
    descriptor = family_named(family)
    for key, value in descriptor.lora_metadata(load_config(run.config)).items():  # ss_base_model_version, ...
        assert metadata[key] == str(value), key
    # one Kohya prefix per adapted part (U-Net and text encoders train by default; a part behind a
    # switch, Flux's T5, does not), nothing else
    prefixes = {component.prefix for component in descriptor.lora_components if not component.switch}
    assert {next(p for p in prefixes if key.startswith(p + "_")) for key in tensors} == prefixes
    assert float(metadata["ss_training_finished_at"]) >= float(metadata["ss_training_started_at"])
    assert all(t.dtype == torch.float32 for t in tensors.values())

    # TensorBoard scalars under the names sd-scripts users know
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(run.tensorboard))
    board.Reload()
    tags = set(board.Tags()["scalars"])
    assert {"loss/current", "loss/average", "loss/epoch", "lr/unet", "lr/textencoder"} <= tags
    assert len(board.Scalars("loss/current")) == 16

    # the point of it all: the loss on a fixed batch (fixed noise and timesteps) went down
    before = fixed_batch_loss(run.path, None)
    after = fixed_batch_loss(run.path, run.checkpoints / "learns.safetensors")
    assert after < before


def test_corrupt_image_is_refused_before_training(tmp_path, tiny_dataset, make_run):
    broken = tiny_dataset / "img" / "2_sks dog" / "broken.png"
    data = write_image(tiny_dataset / "whole.png", (64, 64)).read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # truncated: the header still reads
    run = make_run(tiny_dataset, "corrupt")
    assert train(run.path) == 1
    events = list(read_events(run.events))
    check_schema(events)
    error = next(e for e in events if e["type"] == "error")
    assert "unreadable image" in error["message"] and str(broken) in error["message"]
    assert events[-1]["type"] == "run_end" and events[-1]["status"] == "failed"
    assert not any(run.checkpoints.iterdir())


def test_image_that_breaks_mid_run_is_skipped_with_a_warning(tmp_path, tiny_dataset, make_run, monkeypatch):
    import engine.train.loop

    broken = tiny_dataset / "img" / "2_sks dog" / "1.png"
    run = make_run(tiny_dataset, "midrun", precision={"cache_latents": "none"}, training={"epochs": 1})
    # the file breaks after the pre-flight check, as a failing disk would
    real_check = engine.train.loop.check_images

    def check_then_break(paths):
        problems = real_check(paths)
        data = broken.read_bytes()
        broken.write_bytes(data[: len(data) // 2])
        return problems

    monkeypatch.setattr(engine.train.loop, "check_images", check_then_break)
    assert train(run.path) == 0
    events = list(read_events(run.events))
    check_schema(events)
    warnings = [e for e in events if e["type"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["path"] == str(broken) and warnings[0]["code"] == "unreadable_image"
    # a batch left empty by the broken image makes no step; the run goes on to the end
    assert events[-1]["status"] == "finished" and 3 <= events[-1]["step"] <= 4


def test_nan_loss_stops_the_run_with_an_error(tmp_path, tiny_dataset, make_run, monkeypatch):
    import engine.train.step

    real_loss = engine.train.step.loss_at
    calls = []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(engine.train.step, "loss_at", poisoned)
    run = make_run(tiny_dataset, "nan", saving={"save_every_n_epochs": 0})
    assert train(run.path) == 1
    events = list(read_events(run.events))
    check_schema(events)
    error = next(e for e in events if e["type"] == "error")
    assert "nan at step 3" in error["message"]
    assert events[-1]["status"] == "failed"
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2]
    assert not any(run.checkpoints.iterdir())


def test_random_seed_is_drawn_recorded_and_used(tmp_path, tiny_dataset, make_run):
    """training.seed = -1 (the Kohya GUI's seed 0): a seed is drawn, frozen into the run and
    written into run_start and the LoRA's ss_seed."""
    from engine.config.schema import load_config

    run = make_run(tiny_dataset, "random-seed", training={"seed": -1, "epochs": 1})
    assert train(run.path) == 0
    start = next(e for e in read_events(run.events) if e["type"] == "run_start")
    seed = start["seed"]
    assert 0 <= seed < 2**32 and start["config"]["training"]["seed"] == seed
    assert load_config(run.config).training.seed == seed  # a resume reuses it
    final = sorted(run.checkpoints.glob("*.safetensors"))[-1]
    assert read_lora_file(final)[1]["ss_seed"] == str(seed)
