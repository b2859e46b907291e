"""The Kohya GUI's own 63 configs (tests/fixtures/kohya_gui, its presets/lora and test/config,
Apache-2.0): every SD 1.x/2.x, SDXL and Flux.1 one imports, presets as partial configs; the GUI's
relative paths, step count and dropped values are read as the GUI's sd-scripts run reads them."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import pytest

from engine.config.kohya_import import import_kohya, import_kohya_file
from engine.config.schema import config_from_dict, loads_config
from engine.errors import ConfigError
from engine.plan.training_plan import make_plan
from tests.datasets import plan_dataset, write_image
from tui.cli import main

GUI = Path(__file__).parent / "fixtures" / "kohya_gui"
CONFIGS = sorted([*GUI.glob("presets/lora/*.json"), *GUI.glob("test/config/*.json")])
# the only refusal: a fine-tuning metadata file (no config at all)
REFUSED = {"meta-1_lat.json": "a fine-tuning metadata file"}


def test_every_shipped_config_imports(capsys):
    assert len(CONFIGS) == 63
    imported = 0
    for path in CONFIGS:
        status = main(["import-kohya", str(path)])
        out, err = capsys.readouterr()
        if path.name in REFUSED:
            assert status == 1 and len(err.strip().splitlines()) == 1 and REFUSED[path.name] in err, path.name
            continue
        assert status == 0, f"{path.name}: {err}"
        assert "Traceback" not in err and "unknown key" not in err, path.name  # every key is accounted for
        config = config_from_dict(tomllib.loads(out), partial=True)
        if path.parent.name == "lora" and not config.model.pretrained_model.startswith("put the full path"):
            # a preset carries no base model (the Flux one its placeholder text, kept as written)
            assert config.model.pretrained_model == "" and "  left to set: model.pretrained_model" in err
        imported += 1
    assert imported == 62


def test_each_config_trains_what_the_gui_trains():
    def config(name):
        folder = "presets/lora" if (GUI / "presets/lora" / name).exists() else "test/config"
        return import_kohya_file(GUI / folder / name)

    expected = {
        "iA3-Prodigy.json": ("ia3", "Prodigy", "sd15"),
        "ia3-sd15.json": ("ia3", "Prodigy", "sd15"),
        "Diag-OFT-AdamW8bit-toml.json": ("diag-oft", "AdamW8bit", "sd15"),
        "DyLoRA-Adafactor-toml.json": ("dylora", "Adafactor", "sd15"),
        "dreambooth-DAdaptAdam.json": ("lora", "DAdaptAdam", "sd15"),
        "SDXL - LoRA kudou-reira dadaptadam v1.1.json": ("lora", "DAdaptAdam", "sdxl"),
        "SDXL - LoKR v1.0.json": ("lokr", "Prodigy", "sdxl"),
        "sd15 - EDG_LoConOptiSettings.json": ("locon", "AdamW8bit", "sd15"),
    }
    for name, (kind, optimizer, family) in expected.items():
        result = config(name)
        assert result.config.network.type == kind, name
        assert result.config.optimizer.optimizer == optimizer, name
        assert (result.config.model.family == "sdxl") == (family == "sdxl"), name
    # --network_train_unet_only in additional_parameters wins over the config, as on sd-scripts' command line
    kudou = config("SDXL - LoRA kudou-reira dadaptadam v1.1.json")
    assert kudou.config.network.train_text_encoder is False
    assert any(note.startswith("additional_parameters --network_train_unet_only") for note in kudou.notes)
    # --lr_scheduler_type CosineAnnealingLR --lr_scheduler_args "T_max=1000" "eta_min=0e-0"
    lokr = config("sd15 - LoKr v2.0.json").config.optimizer
    assert (lokr.lr_scheduler_type, lokr.lr_scheduler_args) == ("CosineAnnealingLR", "T_max=1000 eta_min=0e-0")
    # --max_grad_norm=0: no clipping; max_grad_norm 0 in the JSON alone is dropped by the GUI (sd-scripts: 1.0)
    assert config("SDXL - edgLoRAXL.json").config.optimizer.max_grad_norm == 0.0
    # max_train_steps 0 with a dataset TOML: the GUI passes no count, sd-scripts trains 1600
    assert config("locon-AdamW8bit-toml.json").config.training.max_steps == 1600
    # a preset's max_train_steps is kept; 0 or empty asks for the GUI's own count; none at all leaves the
    # GUI's default 1600 in place
    assert config("SDXL - LoRA AI_Now ADamW v1.0.json").config.training.max_steps == 320
    assert config("SDXL - LoRA face dogu_cat v1.0.json").config.training.gui_step_count is True
    assert config("SDXL - LoRA kudou-reira prodigy v4.0.json").config.training.max_steps == 1600
    assert config("SDXL - LoRA adafactor v1.0.json").config.training.epochs == 30  # max_train_epochs


def test_preset_imports_as_a_partial_config_that_plan_and_train_refuse(tmp_path, capsys):
    preset = GUI / "presets/lora/SDXL - LoRA AI_characters standard v1.1.json"
    out = tmp_path / "preset.toml"
    assert main(["import-kohya", str(preset), "-o", str(out)]) == 0
    assert "left to set: model.pretrained_model" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="model.pretrained_model"):
        loads_config(out.read_text())
    for command in (["plan", str(out)], ["train", str(out)]):
        assert main(command) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "model.pretrained_model: a base model is required" in err
    assert not (tmp_path / "runs").exists()  # train refused before any run folder
    # --model fills it in; the config then loads and plans
    plan_dataset(tmp_path)
    filled = tmp_path / "filled.toml"
    assert main(["import-kohya", str(preset), "--model", "stabilityai/stable-diffusion-xl-base-1.0",
                 "-o", str(filled)]) == 0
    assert "left to set" not in capsys.readouterr().err
    config = loads_config(filled.read_text())
    assert config.model.pretrained_model == "stabilityai/stable-diffusion-xl-base-1.0"
    assert main(["plan", str(filled)]) == 0


def kohya_checkout(root: Path, images: int = 3) -> Path:
    """The Kohya GUI's folder as its test configs expect it: test/config/*.json and *.toml,
    and test/img/10_darius kawasaki person with a few images."""
    shutil.copytree(GUI / "test", root / "test")
    folder = root / "test" / "img" / "10_darius kawasaki person"
    for index in range(images):
        write_image(folder / f"{index}.jpg", (512, 512))
    write_image(folder / "skipped.bmp", (512, 512))  # the GUI's count reads .jpg .jpeg .png .webp only
    return root


def test_relative_paths_start_from_the_gui_folder(tmp_path, capsys):
    """./test/config/dataset.toml in test/config/X.json is two folders up, and so is the
    TOML's own ./test/img/...: both are read from the GUI's folder, which the report names."""
    root = kohya_checkout(tmp_path / "kohya_ss")
    result = import_kohya_file(root / "test/config/locon-AdamW8bit-toml.json")
    config = result.config
    assert config.dataset.dataset_config == str(root / "test/config/dataset.toml")
    assert config.dataset.dataset_config_base == str(root)
    assert config.saving.output_dir == str(root / "test/output")
    assert any(note.startswith(f"relative paths start from the Kohya GUI's folder {root} (where dataset_config "
                               "./test/config/dataset.toml is") for note in result.notes)
    plan = make_plan(config, tmp_path / "elsewhere")
    assert plan.images == 4 and plan.image_repeats == 40  # the TOML's image_dir, read from the GUI's folder
    # a train_data_dir config from the same folder, and --kohya-dir given by hand
    moved = tmp_path / "moved.json"
    shutil.copy(root / "test/config/locon-AdamW8bit.json", moved)
    assert import_kohya_file(moved).config.dataset.image_dir == "./test/img"  # not found: kept, and said
    given = import_kohya_file(moved, kohya_dir=root)
    assert given.config.dataset.image_dir == str(root / "test/img")
    assert any("given with --kohya-dir" in note for note in given.notes)


def gui_max_train_steps(train_data_dir: Path, reg_data_dir: str, batch: int, accumulation: int, epoch: int) -> int:
    """kohya_gui/lora_gui.py's count when max_train_steps is 0, rewritten: every subfolder
    "<repeats>_<name>", its .jpg/.jpeg/.png/.webp files, no buckets, x2 with a reg folder."""
    total_steps = 0
    for folder in [f for f in sorted(train_data_dir.iterdir()) if f.is_dir()]:
        try:
            repeats = int(folder.name.split("_")[0])
        except ValueError:
            continue
        images = [f for f in folder.iterdir() if f.name.lower().endswith((".jpg", ".jpeg", ".png", ".webp"))]
        total_steps += repeats * len(images)
    reg_factor = 1 if reg_data_dir == "" else 2
    return int(math.ceil(float(total_steps) / int(batch) / int(accumulation) * int(epoch) * int(reg_factor)))


@pytest.mark.parametrize("batch, accumulation, epoch, reg", [(1, 1, 3, ""), (4, 1, 4, ""), (3, 2, 5, "reg"),
                                                             (2, 1, 2, "reg")])
def test_gui_step_count_is_the_guis_and_the_plan_says_where_it_differs(tmp_path, batch, accumulation, epoch, reg):
    plan_dataset(tmp_path)
    gui = {"LoRA_type": "Standard", "pretrained_model_name_or_path": "x", "train_data_dir": "img",
           "reg_data_dir": reg, "train_batch_size": batch, "gradient_accumulation_steps": accumulation,
           "epoch": epoch, "max_train_steps": 0, "max_train_epochs": 0, "network_dim": 8, "network_alpha": 8}
    config = import_kohya(gui, json_folder=tmp_path).config
    assert config.training.gui_step_count and config.training.max_steps == 0
    plan = make_plan(config, tmp_path)
    expected = gui_max_train_steps(tmp_path / "img", reg, batch, accumulation, epoch)
    assert plan.total_steps == expected
    assert plan.epochs == math.ceil(expected / plan.steps_per_epoch)  # sd-scripts' num_train_epochs
    per_bucket = epoch * plan.steps_per_epoch
    assert plan.step_note.startswith(f"Kohya GUI step count: {expected} = ceil(")
    if expected != per_bucket:
        assert f"the per-bucket count would be {epoch} × {plan.steps_per_epoch} = {per_bucket}" in plan.step_note
    else:
        assert "the same as the per-bucket count" in plan.step_note


def test_the_plan_command_prints_the_step_note(tmp_path, capsys):
    plan_dataset(tmp_path)
    (tmp_path / "gui.json").write_text(json.dumps({
        "LoRA_type": "Standard", "pretrained_model_name_or_path": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "train_data_dir": "img", "reg_data_dir": "", "train_batch_size": 4, "epoch": 4, "max_train_steps": "0", "network_dim": 8, "network_alpha": 8}))
    assert main(["import-kohya", str(tmp_path / "gui.json"), "-o", str(tmp_path / "c.toml")]) == 0
    capsys.readouterr()
    assert main(["plan", str(tmp_path / "c.toml")]) == 0
    out = capsys.readouterr().out
    expected = gui_max_train_steps(tmp_path / "img", "", 4, 1, 4)
    assert f"Total steps       {expected}" in out and "Kohya GUI step count" in out


def test_values_the_gui_drops_take_sd_scripts_defaults():
    base = {"LoRA_type": "Standard", "pretrained_model_name_or_path": "x", "network_dim": 8}
    result = import_kohya({**base, "max_grad_norm": 0, "caption_extension": "", "network_alpha": 0, "clip_skip": 0})
    config = result.config
    assert config.optimizer.max_grad_norm == 1.0  # sd-scripts' default: the GUI never passes a 0
    assert config.captions.caption_extension == ".caption"
    assert config.network.alpha == 1.0 and config.model.clip_skip == 1
    assert any(note.startswith("max_grad_norm 0 -> 1: the GUI does not pass a 0") for note in result.notes)
    # given on sd-scripts' command line it is passed: 0 turns clipping off
    assert import_kohya({**base, "network_alpha": 8, "max_grad_norm": 0, "additional_parameters": "--max_grad_norm=0"}
                        ).config.optimizer.max_grad_norm == 0.0
