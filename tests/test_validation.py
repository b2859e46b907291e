"""Validation loss: the seeded split, the fixed-noise evaluator, a deterministic curve
(re-run and resume), TensorBoard, the -best file (for every family), early stop, the advice
rules, the dashboard's panel and checkpoint marks, `loradeck runs --json`, the grid's labels."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.config.schema import config_from_dict, load_config
from engine.dataset.folders import held_out_count, scan_dataset
from engine.errors import ConfigError
from engine.network.lora import read_lora_file
from engine.plan.training_plan import make_plan
from engine.run.advice import ValidationPoint, advise, best_point, evaluations_since_best, explanation
from engine.run.events import read_events
from engine.train.loop import train
from tests.datasets import write_caption, write_image
from tests.conftest import TINY_FAMILIES, stop_when_epoch_ends
from tests.run_recordings import RecordedRun, dashboard_ready, screen_text, wait_until, workspace  # noqa: F401
from tui.cli import main as loradeck

P = ValidationPoint
SPLIT = {"validation": {"split_fraction": 0.25, "seed": 5, "train_sample": 2, "timesteps": 3}}


def ten_images(root: Path) -> Path:
    for index in range(10):
        write_caption(write_image(root / "img" / "2_sks dog" / f"{index:02d}.png", (64, 64),
                                  color=(20 * index, 100, 200 - 15 * index)), f"sks dog, photo {index}")
    return root


def config_of(**sections):
    data = {"model": {"pretrained_model": "tiny/model"},
            "dataset": {"resolution": "64", "min_bucket_resolution": 64, "max_bucket_resolution": 128}}
    for group, values in sections.items():
        data.setdefault(group, {}).update(values)
    return config_from_dict(data)


def events_of(run, kind):
    return [event for event in read_events(run.events) if event["type"] == kind]


def curve(run) -> list[tuple]:
    return [(e["step"], e["epoch"], e["loss"], e["train_loss"], tuple(sorted(e["bands"].items())))
            for e in events_of(run, "validation")]


# --------------------------------------------------------------------------- split


def test_split_is_seeded_stable_and_left_out_of_training(tmp_path):
    root = ten_images(tmp_path)
    config = config_of(validation={"split_fraction": 0.2, "seed": 3})
    first, again = scan_dataset(config, root), scan_dataset(config, root)
    held = sorted(item.path.name for item in first.validation_items)
    assert len(held) == 2 and held == sorted(item.path.name for item in again.validation_items)
    other_seeds = {tuple(sorted(i.path.name for i in scan_dataset(
        config_of(validation={"split_fraction": 0.2, "seed": seed}), root).validation_items)) for seed in range(8)}
    assert len(other_seeds) > 1  # the seed chooses
    trained = {item.path.name for item in first.training_instances()}
    assert len(trained) == 8 and not trained & set(held)
    assert first.folders[0].images == 8  # the LoRA's metadata counts trained images

    plan = make_plan(config, root, first)
    assert (plan.images, plan.image_repeats, plan.validation_images) == (8, 16, 2)
    assert plan.steps_per_epoch == 16 and plan.folders[0].held_out == 2 and plan.validation_source == "split"
    assert held_out_count(10, 0.2) == 2 and held_out_count(3, 0.05) == 1 and held_out_count(1, 0.5) == 0
    assert held_out_count(2, 0.5) == 1  # never the last training image


def test_validation_folder_plan_command_and_bad_settings(tmp_path, capsys):
    from engine.config.schema import save_config
    from tui.widgets.config.plan_panel import render_plan

    root = ten_images(tmp_path)
    write_image(root / "val" / "a.png", (64, 64), color=(1, 2, 3))  # loose images are fine here
    write_image(root / "val" / "1_more" / "b.png", (64, 96), color=(9, 9, 9))
    config = config_of(validation={"image_dir": "val"})
    dataset = scan_dataset(config, root)
    assert sorted(i.path.name for i in dataset.validation_items) == ["a.png", "b.png"]
    assert len(dataset.train_items) == 10
    save_config(config, root / "lora.toml")
    assert loradeck(["plan", str(root / "lora.toml")]) == 0
    out = capsys.readouterr().out
    assert "Images            10" in out and "Validation        2 images (from the validation folder)" in out
    # the config screen's plan panel shows both counts
    shown = render_plan(make_plan(config, root, dataset), None)
    assert "Images [b]10[/b]" in shown and "Validation [b]2[/b]" in shown
    assert "Validation [$text-muted]off[/]" in render_plan(make_plan(config_of(), root), None)

    with pytest.raises(ConfigError, match="validation.split_fraction: give a validation folder or a split"):
        config_of(validation={"image_dir": "val", "split_fraction": 0.1})
    with pytest.raises(ConfigError, match="validation.early_stop_patience: early stop needs validation"):
        config_of(validation={"early_stop_patience": 3})
    with pytest.raises(ConfigError, match="validation.split_fraction: must be at most 0.5"):
        config_of(validation={"split_fraction": 0.9})


# --------------------------------------------------------------------------- the evaluator


def test_fixed_noise_and_scores_do_not_depend_on_batching(tmp_path, tiny_model_dir):
    from engine.model.loading import load_base_model
    from engine.train.validation import Evaluator, fixed_noise

    assert torch.equal(fixed_noise(1, "a/b.png", 125, (4, 8, 8)), fixed_noise(1, "a/b.png", 125, (4, 8, 8)))
    assert not torch.equal(fixed_noise(1, "a/b.png", 125, (4, 8, 8)), fixed_noise(1, "a/b.png", 375, (4, 8, 8)))
    root = ten_images(tmp_path)
    model = load_base_model(config_of(model={"pretrained_model": str(tiny_model_dir)}), root, device="cpu",
                            dtype=torch.float32)
    scores = []
    for batch_size in (1, 3):
        config = config_of(model={"pretrained_model": str(tiny_model_dir)},
                           validation={"split_fraction": 0.3, "batch_size": batch_size, "train_sample": 4})
        evaluator = Evaluator.build(config, model, scan_dataset(config, root), device=torch.device("cpu"))
        assert evaluator.timesteps == [125, 375, 625, 875]  # the middle of 4 equal slices of the schedule
        model.unet.train()
        told = []
        scores.append(evaluator.evaluate(model.unet, model.text_encoders, lambda done, total: told.append((done, total))))
        # held-out images first, then the training sample, a batch at a time
        assert told == ([(n, 7) for n in range(1, 8)] if batch_size == 1 else [(3, 7), (6, 7), (7, 7)])
        assert model.unet.training  # the mode is put back
    one, three = scores
    assert (one.images, one.train_images) == (3, 4) and sorted(one.bands) == ["t125", "t375", "t625", "t875"]
    torch.testing.assert_close(torch.tensor([one.loss, one.train_loss, *one.bands.values()]),
                               torch.tensor([three.loss, three.train_loss, *three.bands.values()]))
    assert one.loss == pytest.approx(sum(one.bands.values()) / 4)


# --------------------------------------------------------------------------- the trainer


@pytest.fixture(scope="module")
def reference(tmp_path_factory, family_model_dir):
    """An uninterrupted run with validation (split) and TensorBoard, of the module's family."""
    from engine.config.schema import save_config, with_absolute_paths
    from engine.run.folder import RunDir
    from tests.conftest import small_run_settings, write_tiny_dataset

    root = write_tiny_dataset(tmp_path_factory.mktemp("validation-reference"))
    data = small_run_settings(family_model_dir)
    data.update(SPLIT)
    data["logging"]["tensorboard"] = True
    data["saving"]["output_name"] = "reference"
    run = RunDir(root / "runs" / "reference")
    run.create()
    save_config(with_absolute_paths(config_from_dict(data), root), run.config)
    assert train(run.path) == 0
    return run


def family_bands(run, count: int) -> list[str]:
    """The band names of the run's family's objective: DDPM's steps (t166, t500, t833 of
    1000), flow matching's sigmas (t0.167, t0.5, t0.833)."""
    import torch

    from engine.model.loading import load_base_model
    from engine.train.validation import band_name

    model = load_base_model(load_config(run.config), run.path, device="cpu", dtype=torch.float32)
    return sorted(band_name(point) for point in model.objective.validation_timesteps(count))


def test_run_with_validation_writes_a_curve_checkpoint_losses_tensorboard_and_best_file(reference, family):
    run = reference
    bands = family_bands(run, 3)
    assert bands == (["t0.167", "t0.5", "t0.833"] if family == "flux" else ["t166", "t500", "t833"])
    start = events_of(run, "run_start")[0]
    # 4 images, one held out: 3 x 2 repeats / batch 2 = 3 steps per epoch
    assert start["plan"]["validation_images"] == 1 and start["plan"]["steps_per_epoch"] == 3
    validations = events_of(run, "validation")
    assert [(e["step"], e["epoch"]) for e in validations] == [(3, 1), (6, 2)]
    counted = [e for e in events_of(run, "phase") if e["phase"] == "validating" and e["total"]]
    assert counted and {(e["done"], e["total"]) for e in counted} <= {(0, 3), (1, 3), (2, 3), (3, 3)}
    assert (3, 3) in {(e["done"], e["total"]) for e in counted}  # each evaluation counts its 1 + 2 images
    for event in validations:
        assert (event["images"], event["train_images"]) == (1, 2)
        assert sorted(event["bands"]) == bands and event["seconds"] >= 0
    loras = [e for e in events_of(run, "checkpoint") if e["kind"] == "lora"]
    assert [e["validation_loss"] for e in loras] == [e["loss"] for e in validations]
    best = min(validations, key=lambda e: e["loss"])
    assert validations[-1]["best_step"] == best["step"] and validations[-1]["best_path"] == "checkpoints/reference-best.safetensors"
    best_tensors, metadata = read_lora_file(run.path / validations[-1]["best_path"])
    at_best = [e for e in loras if e["step"] == best["step"]][0]
    checkpoint_tensors, _ = read_lora_file(run.path / at_best["path"])
    assert metadata["ss_steps"] == str(best["step"])
    for key, value in checkpoint_tensors.items():
        assert torch.equal(best_tensors[key], value), key

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tensorboard = EventAccumulator(str(run.tensorboard))
    tensorboard.Reload()
    tags = tensorboard.Tags()["scalars"]
    assert {"loss/validation", f"loss/validation_{bands[0]}", "loss/train_fixed"} <= set(tags)
    values = [round(s.value, 5) for s in tensorboard.Scalars("loss/validation")]
    assert values == [round(e["loss"], 5) for e in validations]

    summary = json.loads(_runs_json(run))
    assert summary["validation"]["step"] == 6 and summary["best_validation"]["loss"] == best["loss"]


def _runs_json(run) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert loradeck(["runs", str(run.path), "--json"]) == 0
    return json.dumps(json.loads(out.getvalue())[0])


@pytest.mark.parametrize("family", TINY_FAMILIES[:1], indirect=True)  # the resume test below compares every family's
def test_same_seed_gives_the_same_curve(reference, tmp_path, family_run):
    from tests.conftest import write_tiny_dataset

    run = family_run(write_tiny_dataset(tmp_path), "again", **SPLIT)
    assert train(run.path) == 0
    assert curve(run) == curve(reference)  # bit-equal: the same code path on the same numbers


def test_stop_and_resume_gives_the_same_curve(reference, tmp_path, family_run, monkeypatch):
    from tests.conftest import write_tiny_dataset

    run = family_run(write_tiny_dataset(tmp_path), "resumed", **SPLIT)
    stop_when_epoch_ends(run, monkeypatch, epoch=1)  # the user presses stop as epoch 1 ends
    assert train(run.path) == 0
    assert events_of(run, "run_end")[-1]["status"] == "stopped"
    monkeypatch.undo()
    assert train(run.path, resume=True) == 0
    assert curve(run) == curve(reference)
    # the resumed run knew its best from the state
    assert events_of(run, "validation")[-1]["best_step"] == events_of(reference, "validation")[-1]["best_step"]


def test_early_stop_after_patience_keeps_the_best_file(tmp_path, make_run, monkeypatch):
    from engine.train import validation
    from tests.conftest import write_tiny_dataset

    scripted = iter([1.0, 0.9, 0.95, 0.97, 0.5, 0.4])  # no better than 0.9 for two evaluations after epoch 2

    def evaluate(self, denoiser, text_encoders, progress=None):
        loss = next(scripted)
        return validation.Scores(loss, {"t500": loss}, None, 0.0, 1, 0)

    monkeypatch.setattr(validation.Evaluator, "evaluate", evaluate)
    run = make_run(write_tiny_dataset(tmp_path), "early", training={"epochs": 6},
                   validation={"split_fraction": 0.25, "early_stop_patience": 2, "train_sample": 0})
    assert train(run.path) == 0
    end = events_of(run, "run_end")[-1]
    assert end["status"] == "finished" and end["step"] == 12 and end["epoch"] == 4
    assert end["message"].startswith("early stop: no better validation loss in 2 evaluations")
    assert "checkpoints/early-best.safetensors" in end["message"]
    _, metadata = read_lora_file(run.checkpoints / "early-best.safetensors")
    assert (metadata["ss_epoch"], metadata["ss_steps"]) == ("2", "6")
    assert (run.checkpoints / "early.safetensors").exists()  # the final file as always
    assert [e["evaluations_since_best"] for e in events_of(run, "validation")] == [0, 0, 1, 2]


# --------------------------------------------------------------------------- advice


def test_advice_rules():
    assert advise([]).rule == "waiting" and advise([P(1, 1, 1.0)]).rule == "waiting"
    falling = advise([P(10, 1, 1.0), P(20, 2, 0.9), P(30, 3, 0.8)])
    assert falling.rule == "falling" and "more epochs are likely to help" in falling.text
    past = advise([P(10, 1, 1.0), P(20, 2, 0.8), P(30, 3, 0.85), P(40, 4, 0.9)], "x-000002.safetensors")
    assert past.rule == "past_best"
    assert past.text == ("lowest at epoch 2, higher in the 2 evaluations since: epoch 2's file is the one to try "
                         "(x-000002.safetensors)")
    # one evaluation above the best is not yet "rising since"
    assert advise([P(10, 1, 1.0), P(20, 2, 0.8), P(30, 3, 0.85)]).rule != "past_best"
    flat = advise([P(10, 1, 1.0), P(20, 2, 1.002), P(30, 3, 0.998)])
    assert flat.rule == "flat" and "learning rate may be too low" in flat.text
    assert advise([P(10, 1, 1.0), P(20, 2, 1.002)]).rule != "flat"  # two are too few to call flat
    memorising = advise([P(10, 1, 1.0, 0.9), P(20, 2, 0.8, 0.7), P(30, 3, 0.8, 0.6), P(40, 4, 0.8, 0.5)])
    assert memorising.rule == "memorising" and "memorising" in memorising.text
    levelled = advise([P(10, 1, 1.0), P(20, 2, 0.8), P(30, 3, 0.801)])
    assert levelled.rule == "levelled" and "epoch 2's file is the lowest" in levelled.text
    points = [P(10, 1, 1.0), P(20, 2, 0.8), P(30, 3, 0.8)]
    assert best_point(points) == points[1] and evaluations_since_best(points) == 1  # the earliest of equals
    text = explanation(past)
    assert "first rule that matches" in text and "Rule 'past best'" in text and "lowest 0.8 at epoch 2" in text


# --------------------------------------------------------------------------- dashboard, grid


def validated_run(workspace: Path) -> RecordedRun:
    """Five epochs; validation lowest at epoch 2 and rising since; a checkpoint per epoch."""
    recorded = RecordedRun(workspace, "validated").start(steps_per_epoch=10, epochs=5)
    losses = [0.30, 0.25, 0.27, 0.29, 0.31]
    best = 0
    for epoch, loss in enumerate(losses, start=1):
        recorded.steps(epoch * 10 - 9, epoch * 10)
        best = epoch if loss < losses[best - 1] or best == 0 else best
        recorded.event("validation", step=epoch * 10, epoch=epoch, loss=loss, train_loss=0.3 - 0.03 * epoch,
                       bands={"t125": loss - 0.1, "t875": loss + 0.1}, images=5, train_images=8, seconds=1.5,
                       best=best == epoch, best_step=best * 10, best_epoch=best, best_loss=losses[best - 1],
                       evaluations_since_best=epoch - best, best_path="checkpoints/validated-best.safetensors")
        relative = f"checkpoints/validated-{epoch:06d}.safetensors"
        (recorded.path / relative).write_bytes(b"\0" * 1024)
        recorded.event("checkpoint", path=relative, epoch=epoch, step=epoch * 10, bytes=1024, kind="lora",
                       final=epoch == 5, validation_loss=loss)
    recorded.event("run_end", status="finished", step=50, epoch=5, message="")
    return recorded.write()


async def test_dashboard_marks_the_best_checkpoint_and_explains_the_advice(workspace):  # noqa: F811
    from textual.widgets import DataTable

    from tui.app import make_app
    from tui.screens.help import ExplanationScreen

    recorded = validated_run(workspace)
    app = make_app(workspace, start_screen="runs", attach_run=recorded.path)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await dashboard_ready(pilot)
        text = screen_text(app)
        assert "val loss" in text and "train set" in text
        assert "★ best 0.2500 at epoch 2, step 20: validated-000002.safetensors" in text
        advice = " ".join(line.strip() for line in text.splitlines())
        assert ("advice: lowest at epoch 2, higher in the 3 evaluations since: epoch 2's file is the one to try "
                "(validated-000002.safetensors)") in advice
        await pilot.press("t")
        table = screen.query_one("#dash-checkpoints", DataTable)
        rows = [table.get_row_at(index) for index in range(table.row_count)]
        assert rows[0] == ["validated-000005.safetensors final", "5", "50", "1.0 KiB", "0.3100"]
        assert rows[3] == ["validated-000002.safetensors", "2", "20", "1.0 KiB", "0.2500 ★ best"]
        await pilot.press("v", "question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, ExplanationScreen), what="the explanation")
        explained = screen_text(app)
        assert "How the validation advice is derived" in explained and "Rule 'past best'" in explained
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is screen, what="the dashboard again")
        # the large plot has the validation curves too
        await pilot.press("g", "left", "left")
        await wait_until(pilot, lambda: "· val loss · 5 values" in screen_text(app), what="the validation plot")


async def test_dashboard_of_a_run_without_validation_has_no_panel(workspace):  # noqa: F811
    from tests.run_recordings import healthy_run
    from tui.app import make_app

    recorded = healthy_run(workspace)
    app = make_app(workspace, start_screen="runs", attach_run=recorded.path)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await dashboard_ready(pilot)
        assert not screen.query_one("#dash-validation").display and "val loss" not in screen_text(app)
        await pilot.press("v")
        await pilot.pause()
        assert "This run has no validation" in " ".join(str(n.message) for n in app._notifications)


def test_grid_labels_mark_the_best_checkpoint(tmp_path, workspace):  # noqa: F811
    from engine.run.folder import RunDir
    from engine.sampling.grid import Checkpoint, column_labels, validation_losses

    recorded = validated_run(workspace)
    losses = validation_losses(RunDir(recorded.path))
    assert losses["validated-000002.safetensors"] == 0.25 and len(losses) == 5
    checkpoints = [Checkpoint(Path(f"validated-{e:06d}.safetensors"), e, e * 10) for e in range(1, 6)]
    labels, best = column_labels(checkpoints, losses)
    assert best == "validated-000002.safetensors"
    assert labels[1].endswith("validation 0.2500\n* BEST by validation") and "BEST" not in labels[0]
    assert column_labels(checkpoints, None) == ([c.label for c in checkpoints], None)


async def test_config_screen_plan_shows_training_and_validation_counts(tmp_path, monkeypatch):
    from engine.config.presets import load_preset
    from engine.config.schema import save_config
    from tests.test_config_screen import settle, type_into
    from tui.app import make_app

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    root = ten_images(tmp_path / "ws")
    save_config(load_preset("sd15-general"), root / "loradeck.toml")
    app = make_app(root, start_screen="config")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert "Validation off" in app.screen.plan_panel.plan_text()
        await type_into(pilot, "validation split", "validation.split_fraction", "0.2")
        await settle(pilot)
        text = app.screen.plan_panel.plan_text()
        assert "Images 8 · × repeats 16" in text and "Validation 2 held out of the training images" in text
