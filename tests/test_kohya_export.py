"""`loradeck export-kohya`: a config as the Kohya GUI's JSON and sd-scripts' command line;
import → export → import gives the same config for every config the GUI ships."""
from __future__ import annotations

import json
import shlex

import pytest

from engine.config.kohya_export import export_kohya
from engine.config.kohya_import import import_kohya_file
from engine.config.schema import config_to_dict, load_config
from tests.datasets import plan_dataset
from tests.test_kohya_gui_configs import CONFIGS, REFUSED
from tui.cli import main


@pytest.mark.parametrize("path", [path for path in CONFIGS if path.name not in REFUSED], ids=lambda path: path.name)
def test_import_export_import_is_stable(tmp_path, path):
    first = import_kohya_file(path).config
    exported = export_kohya(first, path.parent)
    (tmp_path / "again.json").write_text(json.dumps(exported.gui))
    base = first.dataset.dataset_config_base or None  # the TOML's paths start there: the GUI's folder
    again = import_kohya_file(tmp_path / "again.json", kohya_dir=base).config
    assert config_to_dict(again) == config_to_dict(first)


def test_command_writes_json_and_prints_the_sd_scripts_command_line(tmp_path, capsys):
    plan_dataset(tmp_path)
    config = tmp_path / "loradeck.toml"
    config.write_text(
        '[model]\npretrained_model = "/models/sdxl.safetensors"\nfamily = "sdxl"\n'
        '[network]\ntype = "lokr"\nrank = 16\nalpha = 8.0\nconv_dim = 8\nconv_alpha = 4.0\nfactor = 8\n'
        '[optimizer]\noptimizer = "Prodigy"\nlearning_rate = 1.0\noptimizer_args = "d_coef=2 betas=0.9,0.99"\n'
        'max_grad_norm = 0.0\n'
        '[training]\nepochs = 3\n[sampling]\nprompts = "a city --w 1024 --h 1024"\n'
        '[metadata]\ntitle = "City"\n')
    out = tmp_path / "kohya.json"
    assert main(["export-kohya", str(config), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    gui = json.loads(out.read_text())
    assert gui["LoRA_type"] == "LyCORIS/LoKr" and gui["sdxl"] is True and gui["factor"] == 8
    assert gui["train_data_dir"] == str(tmp_path / "img")  # absolute: the GUI reads paths from its own folder
    assert gui["max_train_epochs"] == 3 and gui["additional_parameters"] == "--max_grad_norm=0"
    command = shlex.split(err.splitlines()[1])
    assert command[:4] == ["accelerate", "launch", "--num_cpu_threads_per_process=2", "sdxl_train_network.py"]
    position = command.index("--network_args")
    assert command[position + 1: position + 6] == ["preset=full", "algo=lokr", "conv_dim=8", "conv_alpha=4", "factor=8"]
    assert {"--network_module=lycoris.kohya", "--max_train_epochs=3", "--max_grad_norm=0", "--optimizer_type=Prodigy",
            "--metadata_title=City", f"--train_data_dir={tmp_path / 'img'}"} <= set(command)
    prompts = tmp_path / "kohya.prompt.txt"
    assert f"--sample_prompts={prompts}" in command and prompts.read_text() == "a city --w 1024 --h 1024\n"
    # and the GUI JSON imports back to the same config (the image folder now absolute)
    again = config_to_dict(import_kohya_file(out).config)
    original = config_to_dict(load_config(config))
    assert again["dataset"].pop("image_dir") == str(tmp_path / "img") and original["dataset"].pop("image_dir") == "img"
    assert again == original


def test_several_processes_export_as_accelerates_launch_reads_them(tmp_path):
    from accelerate.commands.launch import launch_command_parser

    plan_dataset(tmp_path)
    config = tmp_path / "loradeck.toml"
    config.write_text('[model]\npretrained_model = "/models/sd15.safetensors"\n[training]\nepochs = 2\nprocesses = 2\n')
    exported = export_kohya(load_config(config), tmp_path)
    assert exported.gui["num_processes"] == 2 and exported.gui["multi_gpu"] is True
    launch = launch_command_parser().parse_args(exported.command[2:])
    assert launch.multi_gpu and launch.num_processes == 2 and launch.training_script == "train_network.py"
    assert "--max_train_epochs=2" in launch.training_script_args  # sd-scripts shares each epoch among them
