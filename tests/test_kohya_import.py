"""Kohya GUI JSON configs in the shapes they are saved in the wild."""
import json
import shutil
from pathlib import Path

import pytest

from engine.config.schema import loads_config
from engine.errors import LoradeckError
from engine.config.kohya_import import import_kohya, import_kohya_file
from tests.datasets import plan_dataset
from tui.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "kohya"


def test_strings_and_empty_values():
    result = import_kohya_file(FIXTURES / "lora_gui_strings.json")
    config = result.config
    assert config.network.rank == 64 and config.network.alpha == 56.0
    assert config.optimizer.learning_rate == 1e-4
    assert config.optimizer.unet_lr == 1e-4 and config.optimizer.text_encoder_lr == 5e-5
    assert config.optimizer.optimizer == "Adafactor"
    assert config.optimizer_kwargs == {"scale_parameter": False, "relative_step": False, "warmup_init": False}
    assert config.dataset.resolution == "512,650"
    assert config.resolution_size == (512, 650)
    assert config.precision.attention == "xformers"
    assert config.precision.cache_latents == "memory"
    assert config.optimizer.lr_warmup_percent == 10.0
    assert config.optimizer.lr_scheduler_num_cycles == config.training.epochs == 10  # "": the GUI sends the epochs
    assert config.training.seed == 1234 and config.training.batch_size == 2
    assert config.model.clip_skip == 1 and config.captions.keep_tokens == 1
    assert config.precision.mixed_precision == "bf16" and config.training.min_snr_gamma == 5.0
    assert config.saving.output_name == "city-v2"
    assert config.dataset.image_dir == "/home/me/lora/img"
    assert "logging_dir" in result.ignored and "use_wandb" in result.ignored
    assert "network_dim" not in result.ignored


def test_native_types_percentages_and_overrides(tmp_path):
    plan_dataset(tmp_path)
    shutil.copy(FIXTURES / "lora_gui_native.json", tmp_path / "k.json")
    result = import_kohya_file(tmp_path / "k.json")
    config = result.config
    assert config.precision.attention == "xformers"
    assert config.precision.cache_latents == "disk"
    assert config.training.epochs == 6 and config.training.max_steps == 0  # max_train_epochs wins, as in sd-scripts
    assert config.training.seed == 42  # "" keeps the default
    assert config.optimizer.text_encoder_lr is None and config.optimizer.unet_lr is None
    assert config.optimizer.lr_scheduler_num_cycles == 3
    assert config.resolution_size == (768, 768)
    # the GUI's LoRA tab does not pass stop_text_encoder_training to sd-scripts: neither do we
    assert config.training.stop_text_encoder_training == 0
    assert any(note.startswith("stop_text_encoder_training 50% not used: the GUI's LoRA tab does not pass it")
               for note in result.notes)
    # the relative train_data_dir "img" is found next to the JSON: the GUI's folder, said in the report
    assert config.dataset.image_dir == str(tmp_path / "img")
    assert any(f"Kohya GUI's folder {tmp_path}" in note for note in result.notes)


def test_unsupported_network_type_fails_with_one_line(capsys):
    assert main(["import-kohya", str(FIXTURES / "dylora.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Kohya DyLoRA" in err and "LyCORIS/LoHa" in err


# the Kohya GUI's shipped SD1.5 LyCORIS presets (loha-sd15, sd15 - LoKr v2.0, sd15 -
# EDG_LoConOptiSettings) and the other LyCORIS shapes: type, its settings, the plan
LYCORIS_PRESETS = {
    # the GUI passes LoHa use_tucker, not this preset's use_cp (only LoKr gets use_cp): no Tucker, as in the GUI
    "loha-sd15.json": {"type": "loha", "rank": 32, "alpha": 16.0, "conv_dim": 8, "conv_alpha": 4.0,
                       "use_tucker": False},
    "lokr-sd15-v2.json": {"type": "lokr", "rank": 100000, "alpha": 1.0, "conv_dim": 100000, "conv_alpha": 1.0,
                          "factor": 6, "use_tucker": False},
    "locon-edg-sd15.json": {"type": "locon", "rank": 64, "alpha": 64.0, "conv_dim": 32, "conv_alpha": 1.0},
    "locon.json": {"type": "locon", "rank": 32},
    "dora-locon.json": {"type": "dora", "rank": 16, "conv_dim": 8, "conv_alpha": 4.0, "rank_dropout": 0.0},
    "kohya-locon.json": {"type": "locon", "conv_dim": 8, "conv_alpha": 1.0, "network_dropout": 0.1,
                         "module_dropout": 0.05},
}


@pytest.mark.parametrize("name", sorted(LYCORIS_PRESETS))
def test_lycoris_presets_import_and_plan(tmp_path, name):
    from engine.plan.training_plan import make_plan

    plan_dataset(tmp_path)
    data = json.loads((FIXTURES / name).read_text())
    data.update(pretrained_model_name_or_path="runwayml/stable-diffusion-v1-5", train_data_dir=str(tmp_path / "img"))
    if name == "locon.json":
        data["conv_dim"] = 4  # LoCon needs a conv rank; this fixture has none
    result = import_kohya(data, source=name, json_folder=tmp_path)
    network = result.config.network
    for key, value in LYCORIS_PRESETS[name].items():
        assert getattr(network, key) == value, key
    assert ("LoRA_type", "network.type") in result.mapped or ("LoRA_type + dora_wd", "network.type") in result.mapped
    plan = make_plan(result.config, tmp_path)
    assert plan.lora_parameters > 0 and plan.lora_file_bytes > plan.lora_parameters
    assert plan.vram_estimate.total_gb < 40  # a full-matrix LoKr too: its huge rank is no activation


def test_lycoris_settings_a_type_does_not_use_are_noted():
    dora = import_kohya({**json.loads((FIXTURES / "dora-locon.json").read_text()), "pretrained_model_name_or_path": "x"})
    assert any(note.startswith("rank_dropout 0.1 not used: dora") for note in dora.notes)
    loha = json.loads((FIXTURES / "loha-sd15.json").read_text())
    result = import_kohya({**loha, "network_dropout": 0.2, "decompose_both": True, "LyCORIS_preset": "attn-only",
                           "rank_dropout_scale": True, "pretrained_model_name_or_path": "x"})
    # the GUI passes LyCORIS no network_dropout (sd-scripts' neuron_dropout, which lycoris.kohya does not read)
    # and no decompose_both for LoHa: they change nothing there either
    assert "network_dropout" in result.ignored and "decompose_both" in result.ignored
    assert any(note.startswith("rank_dropout_scale True not used: loradeck builds loha") for note in result.notes)
    assert any("LyCORIS_preset 'attn-only' not built" in note for note in result.notes)
    standard = import_kohya({"LoRA_type": "Standard", "conv_dim": 8, "rank_dropout": 0.1, "dora_wd": True,
                             "lora_network_weights": "/x/start.safetensors", "pretrained_model_name_or_path": "x"})
    assert standard.config.network.type == "lora" and standard.config.network.rank_dropout == 0.1
    assert standard.config.network.network_weights == "/x/start.safetensors"
    # the GUI passes Standard LoRA neither conv_dim nor dora_wd
    assert {"conv_dim", "dora_wd"} <= set(standard.ignored)
    assert not any(note.startswith(("conv_dim", "dora_wd")) for note in standard.notes)


def test_bad_number_names_the_key():
    with pytest.raises(LoradeckError, match="network_dim"):
        import_kohya({"network_dim": "lots", "pretrained_model_name_or_path": "x"})


def test_command_writes_toml_that_loads(tmp_path, capsys):
    out = tmp_path / "c.toml"
    assert main(["import-kohya", str(FIXTURES / "lora_gui_strings.json"), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "ignored" in captured.err
    config = loads_config(out.read_text())
    assert config.network.rank == 64
    assert main(["import-kohya", str(FIXTURES / "lora_gui_strings.json"), "-o", str(out)]) == 2


def test_zero_text_encoder_rate_means_unet_only():
    result = import_kohya({"pretrained_model_name_or_path": "x", "LoRA_type": "Standard",
                           "learning_rate": "0.0001", "unet_lr": "0.0001", "text_encoder_lr": "0"})
    assert result.config.network.train_unet and not result.config.network.train_text_encoder
    assert any("U-Net only" in note for note in result.notes)


def test_dreambooth_tab_config_says_so_in_one_line():
    result = import_kohya_file(FIXTURES / "dreambooth_tab.json")
    lines = [note for note in result.notes if "no LoRA settings" in note]
    assert len(lines) == 1 and "DreamBooth" in lines[0] and "rank 32 / alpha 16" in lines[0]
    assert result.config.network.rank == 32
    standard = import_kohya_file(FIXTURES / "lora_gui_strings.json")
    assert not any("no LoRA settings" in note for note in standard.notes)


def test_resolution_with_buckets_off_snaps_to_multiples_of_8():
    result = import_kohya_file(FIXTURES / "standard_buckets_off.json")
    assert result.config.dataset.enable_buckets is False
    assert result.config.resolution_size == (512, 648)
    assert [note for note in result.notes if "max_resolution" in note] == [
        "max_resolution 512,650 -> 512,648: with buckets off the sides must be multiples of 8 (snapped to the nearest)"
    ]
    assert result.config.optimizer_kwargs == {"weight_decay": 0.1, "betas": (0.9, 0.99)}
    # with buckets on the resolution is only an area: kept as written
    assert import_kohya_file(FIXTURES / "lora_gui_strings.json").config.dataset.resolution == "512,650"


def test_command_reports_mapped_changed_and_ignored(capsys):
    assert main(["import-kohya", str(FIXTURES / "lora_gui_strings.json")]) == 0
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert err[0].endswith("lora_gui_strings.json:")
    assert "    network_dim -> network.rank = 64" in err
    assert "    xformers -> precision.attention = 'xformers'" in err
    assert "    max_resolution -> dataset.resolution = '512,650'" in err
    assert any(line.startswith("  kept loradeck's default for") and "lr_scheduler_power" in line for line in err)
    assert err[err.index("  changed 1:") + 1] == "    no max_train_steps: the GUI keeps its default 1600 and trains that many steps"
    # keys that change training are either mapped, noted, or off here as loradeck trains; the rest change nothing
    assert any(line.startswith("  off here, as loradeck trains: ") and "prior_loss_weight" in line for line in err)
    assert any(line.startswith("  ignored 9 keys (no effect on training): ") and "logging_dir" in line for line in err)
    assert loads_config(captured.out).network.rank == 64  # stdout stays the TOML
    assert main(["import-kohya", str(FIXTURES / "standard_buckets_off.json")]) == 0
    err = capsys.readouterr().err.splitlines()
    changed = err.index("  changed 3:")
    assert err[changed + 1].startswith("    max_resolution 512,650 -> 512,648: with buckets off")
    assert err[changed + 2].startswith("    seed 0 means a random seed")
    assert "  ignored 1 keys (no effect on training): cache_latents_to_disk" in err
    assert "    adaptive_noise_scale -> training.adaptive_noise_scale = 0.0" in err


def test_seed_zero_means_a_random_seed():
    result = import_kohya_file(FIXTURES / "standard_buckets_off.json")  # "seed": "0"
    assert result.config.training.seed == -1
    assert any(note.startswith("seed 0 means a random seed in the GUI") for note in result.notes)
    assert import_kohya_file(FIXTURES / "lora_gui_strings.json").config.training.seed == 1234


def test_several_configs_get_one_report_each(capsys, tmp_path):
    (tmp_path / "broken.json").write_text("{ not json")
    files = [str(FIXTURES / "lora_gui_strings.json"), str(FIXTURES / "dreambooth_tab.json"), str(tmp_path / "broken.json")]
    assert main(["import-kohya", *files]) == 1  # the broken one is not imported
    captured = capsys.readouterr()
    assert captured.out == ""
    headers = [line for line in captured.err.splitlines() if not line.startswith(" ")]
    assert headers[0].endswith("lora_gui_strings.json:") and headers[1].endswith("dreambooth_tab.json:")
    assert "broken.json: not imported:" in headers[2] and len(headers) == 3
    assert main(["import-kohya", *files[:2], "-o", str(tmp_path / "x.toml")]) == 2


def test_the_guis_process_count_becomes_training_processes():
    result = import_kohya({"pretrained_model_name_or_path": "x", "LoRA_type": "Standard", "num_processes": "2"})
    assert result.config.training.processes == 2 and "num_processes" not in result.ignored
    default = import_kohya({"pretrained_model_name_or_path": "x", "LoRA_type": "Standard", "num_processes": 0,
                            "multi_gpu": False})
    assert default.config.training.processes == 1 and not any("num_processes" in note for note in default.notes)
    assert "multi_gpu" in default.ignored


def test_a_kohya_config_of_each_family_imports_and_plans(tmp_path, family, family_model_dir):
    """The GUI's model checkbox of the family (none for SD 1.x, "sdxl") picks it for a hub id,
    and the plan uses that family's sizes; with the family's local model the files decide."""
    from engine.model.families import family_named
    from engine.plan.model_shapes import frozen_parameters
    from engine.plan.training_plan import make_plan

    descriptor = family_named(family)
    plan_dataset(tmp_path)
    data = json.loads((FIXTURES / "lora_gui_native.json").read_text())
    data.update(pretrained_model_name_or_path="someone/a-model", train_data_dir=str(tmp_path / "img"))
    data.update({flag: True for flag in descriptor.kohya_flags[:1]})
    result = import_kohya(data, source="gui.json", json_folder=tmp_path)
    assert result.config.model.family == (descriptor.name if descriptor.kohya_flags else "auto")
    assert not set(descriptor.kohya_flags) & set(result.ignored)
    plan = make_plan(result.config, tmp_path)
    assert (plan.family, plan.family_label) == (descriptor.name, descriptor.label)
    assert frozen_parameters(result.config, tmp_path) == dict(descriptor.frozen_parameters)
    assert plan.lora_parameters > 0 and plan.vram_estimate.total_gb > 0
    local = import_kohya({**data, "pretrained_model_name_or_path": str(family_model_dir)}, json_folder=tmp_path)
    assert make_plan(local.config, tmp_path).family == family


def test_flux_preset_imports_and_plans(tmp_path):
    """The Kohya GUI's shipped Flux preset (presets/lora/flux1D - adamw8bit fp8.json): Flux.1 from
    flux1_checkbox, its files and settings mapped, what cannot be honoured said, and a plan with
    VRAM and RAM at 1024²; the same keys in an SD config (flux1_checkbox false) are ignored."""
    from engine.plan.training_plan import make_plan

    plan_dataset(tmp_path)
    data = json.loads((FIXTURES / "flux1D - adamw8bit fp8.json").read_text())
    data.update(pretrained_model_name_or_path="black-forest-labs/FLUX.1-dev", train_data_dir=str(tmp_path / "img"),
                max_resolution="1024,1024", split_mode=True, ae="ae.safetensors")
    result = import_kohya(data, source="flux1D", json_folder=tmp_path)
    config = result.config
    assert config.model.family == "flux" and config.model.ae == "ae.safetensors"
    assert (config.precision.fp8_base, config.precision.cache_text_encoder_outputs) == (True, True)
    assert (config.flux.timestep_sampling, config.flux.guidance_scale, config.flux.model_prediction_type) == (
        "sigmoid", 1.0, "raw")
    assert config.flux.apply_t5_attn_mask and config.flux.t5xxl_max_token_length == 512
    assert config.optimizer.optimizer == "AdamW8bit" and config.network.type == "lora"
    assert any(note.startswith("split_mode: not honoured") for note in result.notes)
    plan = make_plan(config, tmp_path)
    assert plan.family == "flux" and 13 < plan.vram_estimate.total_gb < 20 and plan.vram_estimate.ram_gb > 20
    assert any("min_snr_gamma" in problem for problem in plan.problems)  # the preset's 7 does nothing for Flux
    sdxl = import_kohya({**json.loads((FIXTURES / "flux1D - adamw8bit fp8.json").read_text()), "flux1_checkbox": False,
                         "sdxl": True, "pretrained_model_name_or_path": "x"})
    assert sdxl.config.model.family == "sdxl" and not sdxl.config.precision.fp8_base
    assert {"t5xxl", "timestep_sampling", "flux1_checkbox"} <= set(sdxl.ignored)
    assert any(note.startswith("fp8_base True not trained") for note in sdxl.notes)  # SD/SDXL: no fp8 storage
    # LoRA_type Flux1's own network_args, when set, are said (sd-scripts' per-block ranks, block choice)
    blocks = import_kohya({**data, "train_blocks": "single", "img_attn_dim": "8"}, json_folder=tmp_path)
    assert any(note.startswith("train_blocks 'single' not trained") for note in blocks.notes)
    assert any(note.startswith("img_attn_dim '8' not trained") for note in blocks.notes)
    # Flux's own files start from the GUI's folder, as its other relative paths do
    given = import_kohya({**data, "clip_l": "models/clip_l.safetensors"}, json_folder=tmp_path,
                         kohya_dir=tmp_path / "kohya_ss")
    assert given.config.model.ae == str(tmp_path / "kohya_ss" / "ae.safetensors")
    assert given.config.model.clip_l == str(tmp_path / "kohya_ss" / "models" / "clip_l.safetensors")
