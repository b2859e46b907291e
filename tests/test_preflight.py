"""What a run needs is checked before it starts: `loradeck plan` says it in one line (exit 1)
and `loradeck train` refuses it the same way before the run folder takes its name.

Every case runs the real entry point on a workspace whose base model is a diffusers folder
of configs only (the plan reads configs, never weights), so nothing here loads a model.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.schema import load_config
from engine.run.launch import prepare_run
from tests.datasets import PLANNABLE_CONFIG, plannable_workspace
from tests.time_limit import time_limit
from tui.cli import main

BASE_CONFIG = PLANNABLE_CONFIG


def workspace_at(root: Path) -> Path:
    import os

    plannable_workspace(root)
    (root / "lora.safetensors.txt").write_text("not a LoRA")
    (root / "loop").symlink_to("loop")  # a link to itself
    os.mkfifo(root / "fifo.txt")  # reading it would wait for a writer forever
    return root


@pytest.fixture
def workspace(tmp_path) -> Path:
    return workspace_at(tmp_path / "ws")


def with_settings(workspace: Path, **settings: str) -> Path:
    """The base config with `group__name="toml value"` settings added or replaced."""
    lines = BASE_CONFIG.splitlines()
    for key, value in settings.items():
        group, name = key.split("__")
        header = lines.index(f"[{group}]") if f"[{group}]" in lines else None
        if header is None:
            lines += [f"[{group}]", f"{name} = {value}"]
            continue
        end = next((i for i in range(header + 1, len(lines)) if lines[i].startswith("[")), len(lines))
        existing = next((i for i in range(header + 1, end) if lines[i].split(" = ")[0] == name), None)
        if existing is None:
            lines.insert(header + 1, f"{name} = {value}")
        else:
            lines[existing] = f"{name} = {value}"
    path = workspace / "loradeck.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


REFUSED = [
    # (id, settings, text the one line holds)
    ("seed-past-2^32", {"training__seed": "4294967296"}, "training.seed: must be at most 4294967295, got 4294967296"),
    ("seed-negative", {"training__seed": "-2"}, "training.seed: must be at least -1"),
    ("name-300-chars", {"saving__output_name": '"' + "x" * 300 + '"'}, "saving.output_name: is 300 bytes long"),
    ("name-spaces", {"saving__output_name": '"   "'}, "saving.output_name: '   ' is blank"),
    ("name-tab", {"saving__output_name": '"\\t"'}, "saving.output_name: '\\t' is blank"),
    ("name-newline-inside", {"saving__output_name": '"city\\nv1"'}, "holds a control character"),
    ("name-padded", {"saving__output_name": '" city"'}, "starts or ends with a space"),
    ("name-nul", {"saving__output_name": '"a\\u0000b"'}, "saving.output_name: holds a NUL character"),
    ("model-missing-relative", {"model__pretrained_model": '"nomodel"'}, "model.pretrained_model: {ws}/nomodel does not exist"),
    ("model-missing-file", {"model__pretrained_model": '"/nowhere/v1-5.safetensors"'}, "/nowhere/v1-5.safetensors does not exist"),
    ("model-folder-not-diffusers", {"model__pretrained_model": '"img"'}, "{ws}/img is a folder but not a diffusers model"),
    ("model-not-a-model-file", {"model__pretrained_model": '"a-file"'}, "{ws}/a-file is neither a diffusers folder"),
    ("vae-missing", {"model__vae": '"vae.safetensors"'}, "model.vae: {ws}/vae.safetensors does not exist"),
    ("vae-folder-not-vae", {"model__vae": '"img"'}, "model.vae: {ws}/img is a folder but not a diffusers VAE"),
    ("weights-missing", {"network__network_weights": '"old.safetensors"'}, "network.network_weights: LoRA file {ws}/old.safetensors does not exist"),
    ("weights-a-folder", {"network__network_weights": '"img"'}, "network.network_weights: {ws}/img is a folder"),
    ("weights-not-safetensors", {"network__network_weights": '"lora.safetensors.txt"'}, "is not a LoRA file (.safetensors)"),
    ("images-a-file", {"dataset__image_dir": '"a-file"'}, "dataset.image_dir: {ws}/a-file is a file"),
    ("images-none", {"dataset__image_dir": '"model"'}, "dataset.image_dir: no training images in {ws}/model"),
    ("validation-a-file", {"validation__image_dir": '"a-file"'}, "validation.image_dir: {ws}/a-file is a file"),
    ("output-under-a-file", {"saving__output_dir": '"a-file/runs"'}, "saving.output_dir: cannot create the run folder"),
    ("run-folder-is-a-file", {"saving__output_dir": '"."', "saving__output_name": '"a-file"'}, "saving.output_name: {ws}/a-file is a file"),
    ("family-contradicts-model", {"model__family": '"sdxl"'}, "model.family: is sdxl but"),
    ("resolution-below-a-bucket", {"dataset__resolution": '"1"'},
     "dataset.resolution: 1,1: smaller than one bucket step (64x64)"),
    ("output-a-link-loop", {"saving__output_dir": '"loop"'},
     "saving.output_dir: {ws}/loop cannot be used (Too many levels of symbolic links)"),
    ("model-name-too-long", {"model__pretrained_model": '"' + "m" * 300 + '"'}, "cannot be used (File name too long)"),
    ("prompts-a-fifo", {"sampling__prompts": '""', "sampling__prompts_file": '"fifo.txt"'},
     "sampling.prompts_file: {ws}/fifo.txt is not a regular file or folder"),
    ("model-a-fifo", {"model__pretrained_model": '"fifo.txt"'}, "{ws}/fifo.txt is not a regular file or folder"),
]


@pytest.mark.parametrize("settings, expected", [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
@pytest.mark.parametrize("command", ["plan", "train"])
def test_what_train_would_refuse_plan_refuses_first_in_one_line(workspace, capsys, command, settings, expected):
    config = with_settings(workspace, **settings)
    assert main([command, str(config)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = err.strip().splitlines()
    assert line.startswith(f"loradeck {command}: ") and expected.format(ws=workspace) in line, line
    assert not (workspace / "runs").exists()  # the name stays free


def test_the_largest_seed_and_a_long_name_are_accepted(workspace, capsys):
    config = with_settings(workspace, training__seed="4294967295", saving__output_name='"' + "x" * 200 + '"')
    assert main(["plan", str(config)]) == 0
    frozen = load_config(prepare_run(config).config)
    assert frozen.training.seed == 2**32 - 1  # numpy's RandomState takes it (the trainer seeds numpy)
    import numpy

    numpy.random.RandomState(frozen.training.seed)


def test_a_relative_model_is_the_config_folders_wherever_train_runs(workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anywhere but the workspace
    run = prepare_run(workspace / "loradeck.toml")
    assert load_config(run.config).model.pretrained_model == str(workspace / "model")


def test_a_hub_id_is_a_plan_warning_not_an_error(workspace, capsys):
    config = with_settings(workspace, model__pretrained_model='"someone/model"')
    assert main(["plan", str(config)]) == 0
    assert ("warning: model.pretrained_model: someone/model is not a local path" in capsys.readouterr().out)


def test_warmup_longer_than_the_run_is_a_warning(workspace, capsys):
    config = with_settings(workspace, optimizer__lr_warmup_steps="500")
    assert main(["plan", str(config)]) == 0
    out = capsys.readouterr().out
    assert "Total steps       8" in out
    assert "warning: optimizer.lr_warmup_steps: 500 warm-up steps, but the run has 8" in out


def test_an_existing_run_is_a_plan_warning_and_a_train_refusal(workspace, capsys):
    prepare_run(workspace / "loradeck.toml")
    assert main(["plan", str(workspace / "loradeck.toml")]) == 0
    assert "warning: saving.output_name: " in capsys.readouterr().out
    assert main(["train", str(workspace / "loradeck.toml")]) == 1
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize("settings", [
    {"training__max_steps": "100000000000"},
    {"training__max_steps": "9223372036854775807", "saving__save_every_n_steps": "1"},
    {"training__epochs": "100000", "saving__save_every_n_epochs": "1", "saving__save_every_n_steps": "1"},
], ids=["huge-max-steps", "max-int-steps-saving-every-step", "most-epochs-saving-every-step"])
def test_a_huge_run_plans_at_once(workspace, capsys, settings):
    config = with_settings(workspace, **settings)
    with time_limit(20):
        assert main(["plan", str(config)]) == 0
    out = capsys.readouterr().out
    assert len(out) < 10_000  # the plan lists the first saves, the count is whole
    assert "warning: saving: the run writes" in out


def test_a_runs_folder_that_cannot_be_listed_has_no_names_and_train_says_why(workspace):
    from engine.run.naming import existing_run_names

    # the config screen asks for the names on every start: a loop of links must not crash it
    assert existing_run_names(workspace / "loop") == set()
