"""Every shipped preset loads and validates; `loradeck presets` lists and writes them."""
from __future__ import annotations

import argparse

import pytest

from engine.config.schema import load_config, validate
from engine.errors import LoradeckError
from engine.config.presets import PRESETS_DIR, list_presets, load_preset


def test_the_required_presets_ship():
    names = [preset.name for preset in list_presets()]
    assert names[0] == "sd15-general"  # the welcome screen offers the first one by default
    assert {"sd15-general", "sd15-style", "sd15-character", "seed-workflow"} <= set(names)
    assert len(names) == len(list(PRESETS_DIR.glob("*.toml")))


@pytest.mark.parametrize("preset", list_presets(), ids=lambda preset: preset.name)
def test_every_preset_loads_and_validates(preset):
    config = load_preset(preset.name)
    assert validate(config) == []
    assert preset.title and preset.description
    assert config.model.pretrained_model  # a usable hub id, no placeholder
    assert config.dataset.enable_buckets


def test_seed_workflow_settings():
    config = load_preset("seed-workflow")
    assert config.optimizer.optimizer == "Adafactor"
    assert config.optimizer_kwargs == {"scale_parameter": False, "relative_step": False, "warmup_init": False}
    assert config.precision.mixed_precision == "bf16"
    assert config.network.rank == 64 and 0 < config.network.alpha < 64
    assert config.resolution_size == (768, 768)
    assert config.saving.save_every_n_epochs == 1


def test_unknown_preset_names_the_choices():
    with pytest.raises(LoradeckError, match="seed-workflow"):
        load_preset("nope")


def test_cli_lists_and_writes_presets(tmp_path, capsys):
    from engine.cli import presets as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    out = tmp_path / "seed.toml"
    assert command.run(parser.parse_args(["--write", "seed-workflow", str(out)])) == 0
    assert load_config(out) == load_preset("seed-workflow")
    with pytest.raises(LoradeckError, match="already exists"):
        command.run(parser.parse_args(["--write", "seed-workflow", str(out)]))
    assert command.run(parser.parse_args(["--write", "sd15-style", str(out), "--force"])) == 0
    assert load_config(out) == load_preset("sd15-style")
    assert command.run(parser.parse_args([])) == 0
    listing = capsys.readouterr().out
    for preset in list_presets():
        assert preset.name in listing and preset.title in listing
