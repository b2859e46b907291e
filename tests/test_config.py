"""The config schema: defaults, validation messages, TOML round trip, versions."""
import dataclasses
from pathlib import Path

import pytest

from engine.config.schema import (
    CONFIG_VERSION,
    GROUPS,
    config_from_dict,
    dumps_config,
    load_config,
    loads_config,
    parse_optimizer_args,
    replace_setting,
    save_config,
    schema,
    validate,
    with_absolute_paths,
)
from engine.errors import ConfigError
from tests.datasets import write_image

BASE = {"model": {"pretrained_model": "runwayml/stable-diffusion-v1-5"}}


def test_every_setting_is_documented_and_grouped():
    specs = list(schema())
    assert len(specs) > 60
    for spec in specs:
        assert spec.help and spec.help.endswith((".", ")")), spec.key
        assert spec.group in GROUPS
        if spec.choices:
            assert spec.default in spec.choices or spec.default is None, spec.key


def test_required_settings_from_the_issue_exist():
    keys = {spec.key for spec in schema()}
    for key in [
        "model.pretrained_model", "model.vae", "model.family", "model.v_parameterization", "model.clip_skip",
        "dataset.image_dir", "dataset.reg_dir", "captions.caption_extension", "dataset.resolution",
        "dataset.enable_buckets", "dataset.min_bucket_resolution", "dataset.max_bucket_resolution",
        "dataset.bucket_step", "dataset.bucket_no_upscale", "captions.shuffle_caption", "captions.keep_tokens",
        "captions.caption_dropout_rate", "captions.weighted_captions", "captions.max_token_length",
        "augmentation.flip", "augmentation.color", "augmentation.random_crop", "network.type", "network.rank",
        "network.alpha", "network.train_unet", "network.train_text_encoder", "optimizer.optimizer",
        "optimizer.optimizer_args", "optimizer.learning_rate", "optimizer.unet_lr", "optimizer.text_encoder_lr",
        "optimizer.lr_scheduler", "optimizer.lr_scheduler_num_cycles", "optimizer.lr_scheduler_power",
        "optimizer.lr_warmup_steps", "optimizer.lr_warmup_percent", "optimizer.max_grad_norm",
        "training.batch_size", "training.epochs", "training.max_steps", "training.gradient_accumulation_steps",
        "precision.mixed_precision", "precision.save_precision", "precision.gradient_checkpointing",
        "precision.cache_latents", "training.noise_offset", "training.min_snr_gamma", "training.seed",
        "training.stop_text_encoder_training", "sampling.prompts", "sampling.prompts_file",
        "sampling.every_n_epochs", "sampling.every_n_steps", "sampling.at_start", "sampling.sampler",
        "saving.output_dir", "saving.output_name", "saving.save_every_n_epochs", "saving.save_every_n_steps",
        "saving.save_last_n", "saving.save_state", "logging.tensorboard",
    ]:
        assert key in keys, key


def test_toml_round_trip_is_identical():
    config = config_from_dict(BASE)
    config = replace_setting(config, "optimizer.unet_lr", 2e-4)
    config = replace_setting(config, "sampling.prompts", "a city --w 512 --h 512\n# comment\nsecond --d 3")
    config = replace_setting(config, "optimizer.optimizer_args", "weight_decay=0.05 betas=0.9,0.99")
    text = dumps_config(config)
    again = loads_config(text)
    assert again == config
    assert dumps_config(again) == text


def test_save_and_load(tmp_path):
    config = config_from_dict(BASE)
    save_config(config, tmp_path / "c.toml")
    assert load_config(tmp_path / "c.toml") == config
    assert not list(tmp_path.glob(".*.tmp"))


def test_config_is_frozen():
    config = config_from_dict(BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.network.rank = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "section, values, field, words",
    [
        ("network", {"rank": 8, "alpha": 16}, "network.alpha", "above rank 8"),
        ("network", {"rank": 0}, "network.rank", "at least 1"),
        ("optimizer", {"optimizer": "Adam"}, "optimizer.optimizer", "not one of"),
        ("optimizer", {"learning_rate": "fast"}, "optimizer.learning_rate", "expected a number"),
        ("training", {"batch_size": 1.5}, "training.batch_size", "whole number"),
        ("dataset", {"resolution": "512,x"}, "dataset.resolution", "512,x"),
        ("dataset", {"enable_buckets": False, "resolution": "512,650"}, "dataset.resolution", "multiples of 8"),
        ("optimizer", {"optimizer_args": "relative_step"}, "optimizer.optimizer_args", "key=value"),
        ("optimizer", {"lr_warmup_steps": 10, "lr_warmup_percent": 5.0}, "optimizer.lr_warmup_percent", "not both"),
        ("optimizer", {"lr_scheduler": "adafactor"}, "optimizer.lr_scheduler", "Adafactor optimizer"),
        ("network", {"nope": 1}, "network.nope", "unknown setting"),
        ("captions", {"caption_extension": "txt"}, "captions.caption_extension", "dot"),
        ("saving", {"output_name": "../x"}, "saving.output_name", "folder name"),
    ],
)
def test_bad_values_name_the_field_and_what_is_allowed(section, values, field, words):
    data = {**BASE, section: values}
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data, "my.toml")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"my.toml: {field}:")
    assert words in message


def test_missing_base_model_is_reported():
    with pytest.raises(ConfigError, match="model.pretrained_model"):
        config_from_dict({})


def test_validate_lists_every_problem():
    config = config_from_dict(BASE)
    bad = replace_setting(replace_setting(config, "network.alpha", 99.0), "training.batch_size", 0)
    keys = [key for key, _ in validate(bad)]
    assert "network.alpha" in keys and "training.batch_size" in keys


def test_bad_toml_is_one_line(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[model\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "not valid TOML" in str(caught.value) and "\n" not in str(caught.value)


def test_version_0_flat_configs_are_migrated():
    config = config_from_dict({"version": 0, "pretrained_model": "x", "rank": 16, "alpha": 8.0, "epochs": 3, "v2": True})
    assert config.network.rank == 16 and config.training.epochs == 3 and config.version == CONFIG_VERSION
    assert config.model.family == "sd2"


def test_version_1_v2_flag_becomes_the_family_with_a_note(tmp_path, capsys):
    """`model.v2` and `model.family = "sd2"` said the same thing; version 2 keeps the family."""
    from tui.cli import main

    notes: list[str] = []
    config = config_from_dict({"version": 1, "model": {"pretrained_model": "x", "v2": True}}, notes=notes)
    assert config.model.family == "sd2" and config.version == CONFIG_VERSION
    assert notes == ['model.v2 = true is now model.family = "sd2" (config version 2); the next save writes it so']
    assert config_from_dict({"version": 1, "model": {"pretrained_model": "x", "v2": False}}).model.family == "auto"
    notes = []
    sdxl = config_from_dict({"version": 1, "model": {"pretrained_model": "x", "v2": True, "family": "sdxl"}},
                            notes=notes)
    assert sdxl.model.family == "sdxl" and notes == ["model.v2 = true dropped: model.family = 'sdxl' says what the "
                                                     "model is"]
    # a hand-written file without a version is migrated too, never refused
    assert config_from_dict({"model": {"pretrained_model": "x", "v2": True}}).model.family == "sd2"
    # saved, it is version 2 without the flag; `loradeck plan` says what changed
    path = tmp_path / "old.toml"
    path.write_text('version = 1\n[model]\npretrained_model = "owner/sd2-model"\nv2 = true\n'
                    '[dataset]\nimage_dir = "img"\n')
    write_image(tmp_path / "img" / "1_sks dog" / "0.png", (64, 64))  # plan refuses a dataset with no image
    assert main(["plan", str(path)]) == 0
    captured = capsys.readouterr()
    assert 'model.v2 = true is now model.family = "sd2"' in captured.err and "Model family      SD 2.x" in captured.out
    save_config(load_config(path), path)
    assert "v2" not in path.read_text() and 'family = "sd2"' in path.read_text() and "version = 2" in path.read_text()


def test_newer_version_is_refused():
    with pytest.raises(ConfigError, match="newer"):
        config_from_dict({**BASE, "version": 99})


def test_optimizer_args_kohya_style():
    assert parse_optimizer_args("scale_parameter=False relative_step=False warmup_init=False") == {
        "scale_parameter": False, "relative_step": False, "warmup_init": False,
    }
    assert parse_optimizer_args("betas=(0.9,0.99) weight_decay=0.01 d_coef=2") == {
        "betas": (0.9, 0.99), "weight_decay": 0.01, "d_coef": 2,
    }


def test_absolute_paths_for_frozen_copy(tmp_path):
    (tmp_path / "img").mkdir()
    config = config_from_dict({"model": {"pretrained_model": "runwayml/stable-diffusion-v1-5"}})
    frozen = with_absolute_paths(config, tmp_path)
    assert frozen.dataset.image_dir == str(tmp_path / "img")
    assert frozen.model.pretrained_model == "runwayml/stable-diffusion-v1-5"  # hub id kept
    assert config.dataset.image_dir == "img"  # original untouched


def test_workspace_folders_come_from_a_config_that_does_not_validate_yet(tmp_path):
    """Captioning and the health check come before a base model is chosen."""
    from engine.config.workspace import Workspace

    (tmp_path / "loradeck.toml").write_text(
        '[dataset]\nimage_dir = "pictures"\n[saving]\noutput_dir = "/srv/runs"\n[captions]\nkeep_tokens = -3\n'
    )
    workspace = Workspace(tmp_path)
    assert workspace.image_dir == tmp_path / "pictures"
    assert workspace.runs_dir == Path("/srv/runs")
    assert workspace.setting("captions.keep_tokens") == 0  # not allowed: the default
    assert Workspace(tmp_path / "none").image_dir == tmp_path / "none" / "img"
