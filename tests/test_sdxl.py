"""What is SDXL's own, on the tiny SDXL-layout model (CPU): the model and its detection,
two-encoder conditioning with size/crop numbers, LoRA files in Kohya's SDXL layout that
diffusers' StableDiffusionXLPipeline loads, its Kohya configs, plan advice and memory
constants, its single files. Training, resume, validation, samples and the grid run for
SDXL as for every family in the trainer's feature tests (tests/conftest.py's `family`)."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.config.schema import config_from_dict
from engine.model.families import config_family, family_named, folder_family
from engine.network.lora import (LoraNetwork, attach_lora_file, learning_rates, lora_layers, network_shape, read_lora_file,
                                 save_lora_file)
from tests.conftest import pipelines_of, small_run_settings
from tests.test_lora_file import load_in_diffusers, render
from tests.test_single_file import assert_same_weights, no_network  # noqa: F401 (a fixture)

SDXL = family_named("sdxl")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tiny_model_dirs):
    return tiny_model_dirs("sdxl")


@pytest.fixture
def sdxl_pipeline(tiny_sdxl_dir):
    return pipelines_of(tiny_sdxl_dir)


# --------------------------------------------------------------------------- the model


def test_tiny_sdxl_has_sdxl_structure_and_is_detected(tiny_sdxl_dir, tiny_model_dir, sdxl_pipeline):
    pipeline = sdxl_pipeline()
    unet = pipeline.unet.config
    assert unet.addition_embed_type == "text_time"
    assert unet.cross_attention_dim == (pipeline.text_encoder.config.hidden_size
                                        + pipeline.text_encoder_2.config.hidden_size)
    assert unet.projection_class_embeddings_input_dim == (pipeline.text_encoder_2.config.projection_dim
                                                          + 6 * unet.addition_time_embed_dim)
    assert list(unet.transformer_layers_per_block) == [1, 1, 2]
    assert type(pipeline.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert pipeline.tokenizer_2.pad_token == "!"
    assert folder_family(tiny_sdxl_dir) is SDXL and folder_family(tiny_model_dir) is family_named("sd15")
    config = config_from_dict({"model": {"pretrained_model": str(tiny_sdxl_dir)}})
    assert config_family(config, ".") is SDXL


def test_loaded_model_carries_both_encoders(tiny_sdxl_dir):
    from engine.model.loading import load_base_model

    config = config_from_dict({"model": {"pretrained_model": str(tiny_sdxl_dir)}})
    model = load_base_model(config, ".", device="cpu", dtype=torch.float32)
    assert model.family is SDXL and model.text_encoder_2 is not None and model.tokenizer_2 is not None
    assert model.noise_scheduler.config.num_train_timesteps == 1000
    assert not any(p.requires_grad for encoder in model.text_encoders for p in encoder.parameters())


def test_our_conditioning_is_diffusers_encode_prompt(sdxl_pipeline):
    from engine.model.families.sdxl.conditioning import encode_tokens
    from engine.model.text_conditioning import tokenize_caption

    pipeline = sdxl_pipeline()
    caption = "a photo of a dog, red, street"
    ids, _ = tokenize_caption(pipeline.tokenizer, caption)
    ids_2, _ = tokenize_caption(pipeline.tokenizer_2, caption)
    with torch.no_grad():
        states, pooled = encode_tokens(pipeline.text_encoder, pipeline.text_encoder_2, ids[None], ids_2[None])
        expected, _, expected_pooled, _ = pipeline.encode_prompt(caption, do_classifier_free_guidance=False)
    torch.testing.assert_close(states, expected)
    torch.testing.assert_close(pooled, expected_pooled)


def test_examples_carry_the_size_and_crop_actually_applied(tmp_path, tiny_sdxl_dir):
    from engine.dataset.folders import scan_dataset
    from engine.train.data import ExampleRules, TrainingImages, bucket_crop
    from tests.datasets import write_caption, write_image

    write_caption(write_image(tmp_path / "img" / "1_sks dog" / "wide.png", (160, 64)), "sks dog")
    data = small_run_settings(tiny_sdxl_dir)
    data["augmentation"] = {"random_crop": True, "flip": True}
    data["dataset"].update({"enable_buckets": False})
    config = config_from_dict(data)
    dataset = scan_dataset(config, tmp_path)
    item = dataset.items[0]
    assert item.bucket == (64, 64)
    rules = ExampleRules.from_config(config, size_conditioning=True)
    images = TrainingImages(dataset.training_instances(), rules, _NoText())
    seen = set()
    for epoch in range(8):
        example = images[(epoch, 0)]
        assert example["original_size"].tolist() == [64, 160]  # (height, width)
        assert example["target_size"].tolist() == [64, 64]
        top, left = example["crop_top_left"].tolist()
        assert top == 0 and 0 <= left <= 96
        seen.add(left)
        # the crop numbers are the crop of the pixels: rebuild that crop from the full image
        rng = random.Random(f"{rules.seed}:{epoch}:0")
        flipped = rng.random() < 0.5
        crop_seed = rng.random()
        _, crop_left, _ = bucket_crop((160, 64), (64, 64), random.Random(crop_seed))
        assert left == (160 - crop_left - 64 if flipped else crop_left)
        full = np.asarray(_stripe_image(item.path))
        pixels = ((example["pixels"].numpy().transpose(1, 2, 0) + 1) * 127.5).round()
        window = full[:, crop_left : crop_left + 64].astype(np.float64)
        if flipped:
            window = window[:, ::-1]
        np.testing.assert_allclose(pixels, window, atol=1.0)
    assert len(seen) > 1


class _NoText:
    def example(self, caption):
        return {}


def _stripe_image(path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


# --------------------------------------------------------------------------- LoRA files


def _randomize(network):
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


def sd_scripts_unet_modules(unet_config, conv: bool) -> set[str]:
    """The U-Net modules sd-scripts' networks.lora adapts on SDXL, by their names in its own
    U-Net (library/sdxl_original_unet.py, rewritten here for the config's channels and
    transformer depths): every Linear in each Transformer2DModel; with conv on (LoCon),
    each ResnetBlock2D's convolutions, time projection and 1x1 skip, Downsample2D's `op`
    and Upsample2D's `conv`."""
    channels, depths = unet_config.block_out_channels, unet_config.transformer_layers_per_block

    def transformer(at: str, depth: int) -> set[str]:
        per_layer = [f"attn{n}_{name}" for n in (1, 2) for name in ("to_q", "to_k", "to_v", "to_out_0")]
        return {f"{at}_proj_in", f"{at}_proj_out", *(f"{at}_transformer_blocks_{layer}_{name}"
                                                     for layer in range(depth)
                                                     for name in (*per_layer, "ff_net_0_proj", "ff_net_2"))}

    def resnet(at: str, in_channels: int, out_channels: int) -> set[str]:
        if not conv:
            return set()
        skip = {f"{at}_skip_connection"} if in_channels != out_channels else set()
        return {f"{at}_in_layers_2", f"{at}_emb_layers_1", f"{at}_out_layers_3", *skip}

    modules, block, skips = set(), 1, [channels[0]]  # input block 0 is conv_in
    for level, width in enumerate(channels):
        for layer in range(2):
            modules |= resnet(f"input_blocks_{block}_0", skips[-1] if layer == 0 else width, width)
            if level > 0:
                modules |= transformer(f"input_blocks_{block}_1", depths[level])
            block, skips = block + 1, skips + [width]
        if level < len(channels) - 1:
            modules |= {f"input_blocks_{block}_0_op"} if conv else set()
            block, skips = block + 1, skips + [width]
    deepest = channels[-1]
    modules |= resnet("middle_block_0", deepest, deepest) | transformer("middle_block_1", depths[-1])
    modules |= resnet("middle_block_2", deepest, deepest)
    block, previous = 0, deepest
    for level in reversed(range(len(channels))):
        width = channels[level]
        for layer in range(3):
            modules |= resnet(f"output_blocks_{block}_0", previous + skips.pop(), width)
            previous = width
            if level > 0:
                modules |= transformer(f"output_blocks_{block}_1", depths[level])
                if layer == 2 and conv:
                    modules.add(f"output_blocks_{block}_2_conv")
            block += 1
    return {f"lora_unet_{name}" for name in modules}


@pytest.mark.parametrize("network_type", ["lora", "locon"])
def test_lora_file_has_sd_scripts_sdxl_keys_and_diffusers_reads_them(tmp_path, sdxl_pipeline, network_type):
    from engine.config.network_types import NetworkSpec

    ours = sdxl_pipeline()
    conv = network_type == "locon"
    network = LoraNetwork.build(SDXL, ours, NetworkSpec(type=network_type, rank=4, alpha=2.0,
                                                        conv_dim=2 if conv else 0, conv_alpha=1.0))
    _randomize(network)
    path = tmp_path / "xl.safetensors"
    save_lora_file(path, network.state_dict(torch.float32))
    tensors, _ = read_lora_file(path)
    modules = {key.split(".")[0] for key in tensors}
    # key for key sd-scripts' names: its own U-Net's module names, CLIP's under lora_te1 / lora_te2
    assert {m for m in modules if m.startswith("lora_unet_")} == sd_scripts_unet_modules(ours.unet.config, conv)
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in modules
    assert "lora_unet_middle_block_1_transformer_blocks_1_attn2_to_k" in modules  # SDXL's deeper stacks
    assert {m.split("_text_model_")[0] for m in modules if not m.startswith("lora_unet_")} == {"lora_te1", "lora_te2"}
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj" in modules
    assert "lora_te2_text_model_encoder_layers_3_mlp_fc2" in modules
    assert network_shape(tensors) == (4, 2.0, True, True)

    # diffusers' own SGM-to-diffusers conversion puts every tensor on the module it adapts
    fresh = sdxl_pipeline()
    assert load_in_diffusers(fresh, path) == []
    theirs = {name: module for part in ("unet", "text_encoder", "text_encoder_2")
              for name, module in ((f"{part}.{n}", m) for n, m in getattr(fresh, part).named_modules())
              if hasattr(module, "lora_A") and module.lora_A}
    mine = {f"{component.part}.{name}": layer for component, part in network.adapted()
            for name, layer in lora_layers(part)}
    assert theirs.keys() == mine.keys() and len(mine) == len(modules)
    for name, layer in mine.items():
        adapter = next(iter(theirs[name].lora_A))
        for attribute in ("lora_A", "lora_B"):
            torch.testing.assert_close(getattr(theirs[name], attribute)[adapter].weight,
                                       getattr(layer, attribute)["loradeck"].weight)
        assert theirs[name].scaling[adapter] == pytest.approx(next(iter(layer.scaling.values())))
    if not conv:
        base = render(sdxl_pipeline())
        loaded = render(fresh)
        assert np.abs(loaded - base).max() > 1e-3
        np.testing.assert_allclose(loaded, render(ours), atol=1e-5)


def test_sdxl_file_keyed_by_diffusers_module_names_loads_as_the_same_network(tmp_path, sdxl_pipeline):
    """loradeck's SDXL files before sd-scripts' names (and other Kohya-format files written
    after diffusers' modules) are read: their U-Net keys are renamed to the original layout's."""
    from engine.model.family import LoraComponent

    ours = sdxl_pipeline()
    network = LoraNetwork.attach(SDXL, ours, rank=4, alpha=2.0)
    _randomize(network)
    written, diffusers_named = network.state_dict(), {}
    for component, part in network.adapted():
        for name, layer in lora_layers(part):
            key = LoraComponent.key(component, name)  # the names a diffusers-layout file carries
            for suffix in ("lora_down.weight", "lora_up.weight", "alpha"):
                diffusers_named[f"{key}.{suffix}"] = written[f"{component.key(name)}.{suffix}"]
    assert len(diffusers_named) == len(written)
    assert "lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight" in diffusers_named
    assert "lora_unet_up_blocks_0_attentions_2_transformer_blocks_1_ff_net_2.alpha" in diffusers_named
    path = tmp_path / "old.safetensors"
    save_lora_file(path, diffusers_named)
    loaded = attach_lora_file(SDXL, sdxl_pipeline(), path).state_dict()
    assert loaded.keys() == written.keys()
    for key, value in written.items():
        assert torch.equal(loaded[key], value), key


def test_sgm_names_of_every_sdxl_base_unet_layer_diffusers_converts_back():
    """Every Linear and Conv2d of SDXL base's U-Net (its shipped config, on the meta device):
    the original-layout name we give it is the one diffusers' single-file converter maps back
    to that module, and the diffusers-named Kohya key of it renames to the same."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from engine.model.families.sdxl import SGM_LAYERS, SGM_UP_WITH_ATTENTION, sgm_named
    from engine.model.ldm_checkpoints import UNET_PREFIX, unet_module_to_ldm

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SDXL.config_folder / "unet"))
    layers = {name: module for name, module in unet.named_modules()
              if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))}
    weights = [key.rsplit(".", 1) for key in unet.state_dict()]  # (module, weight or bias), norms too
    original = {f"{UNET_PREFIX}{unet_module_to_ldm(module, SGM_LAYERS, SGM_UP_WITH_ATTENTION)}.{kind}": f"{module}.{kind}"
                for module, kind in weights}
    assert set(convert_ldm_unet_checkpoint(original, unet.config).items()) == {(name, name) for name in unet.state_dict()}
    assert len(layers) > 700
    component = SDXL.lora_components[0]
    renamed = sgm_named({f"lora_unet_{name.replace('.', '_')}.alpha": name for name in layers})
    assert renamed == {f"{component.key(name)}.alpha": name for name in layers}


# --------------------------------------------------------------------------- import and plan


def test_sdxl_kohya_config_imports_and_plans_like_sd_scripts(tmp_path):
    from engine.config.kohya_import import import_kohya_file
    from engine.plan.training_plan import make_plan
    from tests.datasets import write_caption, write_image

    fixture = tmp_path / "sdxl.json"
    fixture.write_text((Path(__file__).parent / "fixtures" / "kohya" / "sdxl_lora_gui.json")
                       .read_text())
    for name, size in (("square", (1024, 1024)), ("wide", (1344, 768)), ("tall", (768, 1344))):
        write_caption(write_image(tmp_path / "img" / "10_city" / f"{name}.png", size), "city")
    result = import_kohya_file(fixture)
    config = result.config
    assert config.model.family == "sdxl"
    assert config.precision.cache_text_encoder_outputs and config.precision.gradient_checkpointing
    assert not config.network.train_text_encoder  # network_train_unet_only / text_encoder_lr 0
    assert any("sdxl_no_half_vae" in note for note in result.notes)
    assert not {"sdxl", "sdxl_cache_text_encoder_outputs", "sdxl_no_half_vae"} & set(result.ignored)

    plan = make_plan(config, tmp_path)
    assert plan.family == "sdxl"
    # sd-scripts' buckets at 1024² area, step 64: each image's exact aspect ratio exists
    assert [(b.width, b.height, b.count) for b in plan.buckets] == [(768, 1344, 10), (1024, 1024, 10),
                                                                     (1344, 768, 10)]
    assert plan.steps_per_epoch == 30 and plan.total_steps == 300 and plan.epochs == 10
    # SDXL base's sizes: 3.5 G frozen parameters in bf16 (6.5 GiB); checkpointed activations
    # (4 × (0.19 + 32 × 0.0003) GiB at 1024²) are below the VAE encoding a 1024² image while
    # latents are cached (4 × 0.44 GiB), which is the peak's transient
    vram = plan.vram_estimate
    assert 6.4 < vram.weights_gb < 6.6
    assert vram.activations_gb == pytest.approx(4 * (0.19 + 32 * 0.0003))
    assert vram.vae_encode_gb == pytest.approx(4 * 0.44)
    assert vram.total_gb == pytest.approx((vram.weights_gb + vram.lora_gb + vram.vae_encode_gb) * 1.05)
    assert vram.card_gb < 12  # a 24 GB card has room to spare
    assert vram.ram_gb == pytest.approx(vram.weights_gb)  # bf16: every part passes through RAM once as loaded
    assert not plan.problems  # 1024², checkpointing, cached text-encoder outputs, bf16: nothing to advise
    sd15 = make_plan(replace_family(config, "sd15"), tmp_path).vram_estimate
    assert sd15.weights_gb < vram.weights_gb / 3 and sd15.total_gb < vram.total_gb / 2


def replace_family(config, family):
    from engine.config.schema import replace_setting

    return replace_setting(replace_setting(config, "model.family", family), "model.pretrained_model",
                           "stable-diffusion-v1-5/stable-diffusion-v1-5")


def test_vram_estimate_uses_the_measured_sdxl_constants():
    from engine.plan.vram import estimate_vram

    def config(checkpointing):
        return config_from_dict({"model": {"pretrained_model": "stabilityai/stable-diffusion-xl-base-1.0",
                                           "family": "sdxl"},
                                 "dataset": {"resolution": "1024"}, "network": {"train_text_encoder": False},
                                 "training": {"batch_size": 1}, "precision": {"mixed_precision": "bf16",
                                                                             "gradient_checkpointing": checkpointing}})

    off, on = estimate_vram(config(False)), estimate_vram(config(True))
    # 4 × 512² of pixels × 2.08 / 0.19 GiB (bench/train_speed.py --memory-model --family sdxl)
    rank = config(False).network.rank
    assert off.activations_gb == pytest.approx(4 * (2.08 + rank * 0.0003), rel=1e-6)
    assert on.activations_gb == pytest.approx(4 * (0.19 + rank * 0.0003), rel=1e-6)


def test_sdxl_plan_names_its_family_and_what_a_24gb_card_wants(tmp_path, tiny_dataset, tiny_sdxl_dir, tiny_model_dir,
                                                                capsys):
    from tui.cli import main
    from engine.config.schema import save_config
    from engine.plan.training_plan import make_plan
    from engine.plan.vram import out_of_memory_advice

    data = small_run_settings(tiny_sdxl_dir)
    data["precision"].update({"mixed_precision": "fp16", "gradient_checkpointing": False})
    config = config_from_dict(data)
    plan = make_plan(config, tiny_dataset)
    assert plan.family == "sdxl" and plan.family_label == "SDXL"
    notes = [note for note in plan.problems if note.startswith("SDXL:")]
    # the text encoders train (the default), so their outputs cannot be cached: no note for that
    assert [note.split(" is ")[0] for note in notes] == ["SDXL: dataset.resolution",
                                                         "SDXL: precision.gradient_checkpointing"]
    assert any("fp16" in note and "model.vae" in note for note in plan.problems)
    advice = out_of_memory_advice(config, tiny_dataset, 0)
    assert "about 11x less activation memory" in advice and "turn off network.train_text_encoder" in advice

    sd15 = config_from_dict({**small_run_settings(tiny_model_dir), "precision": data["precision"]})
    assert make_plan(sd15, tiny_dataset).problems == []
    assert "about 4x less" in out_of_memory_advice(sd15, tiny_dataset, 0)
    assert "train_text_encoder" not in out_of_memory_advice(sd15, tiny_dataset, 0)

    path = tiny_dataset / "xl.toml"
    save_config(config, path)
    assert main(["plan", str(path)]) == 0
    output = capsys.readouterr().out
    assert "Model family      SDXL" in output
    assert "warning: SDXL: dataset.resolution is '64'; 1024,1024 is recommended" in output


def test_second_text_encoder_trains_at_its_own_learning_rate(tiny_sdxl_dir):
    from engine.model.loading import load_base_model
    from engine.train.optimizers import make_optimizer

    config = config_from_dict({"model": {"pretrained_model": str(tiny_sdxl_dir)},
                               "optimizer": {"unet_lr": 1e-4, "text_encoder_lr": 5e-5, "text_encoder_2_lr": 2e-5}})
    model = load_base_model(config, ".", device="cpu", dtype=torch.float32)
    network = LoraNetwork.attach(model.family, model, rank=2, alpha=2.0)
    groups = network.param_groups(learning_rates(config))
    assert [(group["name"], group["lr"]) for group in groups] == [
        ("unet", 1e-4), ("text_encoder", 5e-5), ("text_encoder_2", 2e-5)]
    second = {id(p) for _, layer in lora_layers(model.text_encoder_2) for p in layer.parameters() if p.requires_grad}
    assert {id(p) for p in groups[2]["params"]} == second
    assert sum(len(group["params"]) for group in groups) == len(network.parameters())
    optimizer = make_optimizer(config, groups, torch.device("cpu"))
    assert [group["lr"] for group in optimizer.param_groups] == [1e-4, 5e-5, 2e-5]
    unset = config_from_dict({"model": {"pretrained_model": str(tiny_sdxl_dir)}, "optimizer": {"text_encoder_lr": 5e-5}})
    assert unset.text_encoder_2_learning_rate == 5e-5


def _sd_scripts_buckets(max_reso, min_size, max_size, divisible):
    """sd-scripts' library/model_util.py make_bucket_resolutions, as published."""
    import math

    max_width, max_height = max_reso
    max_area = max_width * max_height
    resos = set()
    width = int(math.sqrt(max_area) // divisible) * divisible
    resos.add((width, width))
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


def test_sdxl_kohya_config_with_upscaling_buckets_plans_sd_scripts_buckets_and_steps(tmp_path):
    """bucket_no_upscale off: sd-scripts' predefined buckets at 1024² and, per image, the one of
    nearest aspect ratio (BucketManager.select_bucket); steps are ceil(count / batch) per bucket."""
    import json
    import math
    from pathlib import Path

    from engine.config.kohya_import import import_kohya_file
    from engine.plan.training_plan import make_plan
    from tests.datasets import write_caption, write_image

    data = json.loads((Path(__file__).parent / "fixtures" / "kohya" / "sdxl_lora_gui.json").read_text())
    data.update({"bucket_no_upscale": False, "train_batch_size": 2, "epoch": 3})
    (tmp_path / "sdxl.json").write_text(json.dumps(data))
    sizes = [(1000, 700), (700, 1000), (640, 640), (2000, 900), (900, 2000), (1500, 1500), (1200, 1100)]
    for index, size in enumerate(sizes):
        write_caption(write_image(tmp_path / "img" / "3_city" / f"{index}.png", size), "city")
    config = import_kohya_file(tmp_path / "sdxl.json").config
    plan = make_plan(config, tmp_path)

    resos = _sd_scripts_buckets((1024, 1024), data["min_bucket_reso"], data["max_bucket_reso"], data["bucket_reso_steps"])
    ratios = [w / h for w, h in resos]
    expected: dict[tuple[int, int], int] = {}
    for width, height in sizes:
        bucket = resos[min(range(len(resos)), key=lambda i: abs(ratios[i] - width / height))]
        expected[bucket] = expected.get(bucket, 0) + 3  # 3 repeats
    assert {(b.width, b.height): b.count for b in plan.buckets} == expected
    steps = sum(math.ceil(count / 2) for count in expected.values())
    assert plan.steps_per_epoch == steps
    # max_train_steps 0: the GUI passes sd-scripts its own count, 7 images × 3 repeats / batch 2 × 3 epochs
    assert plan.total_steps == math.ceil(len(sizes) * 3 / 2 * 3) == 32 and plan.epochs == 3


# --------------------------------------------------------------------------- single files


@pytest.fixture(scope="session")
def tiny_sdxl_file(tiny_sdxl_dir, tmp_path_factory):
    from engine.model.single_file import export_single_file

    # named like an SD1.5 file on purpose: the family comes from the keys, never the name
    return export_single_file(tiny_sdxl_dir, tmp_path_factory.mktemp("xl-single") / "sd15-pruned.safetensors")


def test_sdxl_single_file_is_the_original_layout_and_round_trips(tiny_sdxl_file, tiny_sdxl_dir, sdxl_pipeline,
                                                                 no_network):
    from safetensors import safe_open

    from engine.model.families import file_family
    from engine.model.single_file import load_single_file

    with safe_open(str(tiny_sdxl_file), framework="pt") as handle:
        keys = set(handle.keys())
    assert "model.diffusion_model.label_emb.0.0.weight" in keys  # the size/pooled-text embedding
    assert "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "conditioner.embedders.1.model.text_projection" in keys
    assert "first_stage_model.encoder.conv_in.weight" in keys
    assert file_family(tiny_sdxl_file) is SDXL

    reference = sdxl_pipeline()
    parts = load_single_file(tiny_sdxl_file, config_dir=tiny_sdxl_dir)
    assert set(parts) == {"unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"}
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert_same_weights(getattr(reference, name), parts[name])
    assert type(parts["text_encoder_2"]).__name__ == "CLIPTextModelWithProjection"
    assert parts["tokenizer_2"].pad_token == "!"
    assert parts["scheduler"].config == reference.scheduler.config

    # an independent reader: diffusers' own StableDiffusionXLPipeline.from_single_file. It tells
    # the two encoders apart by width, which the tiny model's share (32), so it gives the
    # second CLIP-L's weights; OpenCLIP's layout is checked by its published formula instead
    from diffusers import StableDiffusionXLPipeline

    theirs = StableDiffusionXLPipeline.from_single_file(str(tiny_sdxl_file), config=str(tiny_sdxl_dir),
                                                        local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(reference, name), getattr(theirs, name))
    from safetensors.torch import load_file

    tensors = load_file(str(tiny_sdxl_file))
    second = reference.text_encoder_2.text_model.encoder.layers[0].self_attn
    open_clip = "conditioner.embedders.1.model."
    assert torch.equal(tensors[open_clip + "transformer.resblocks.0.attn.in_proj_weight"],
                       torch.cat([second.q_proj.weight, second.k_proj.weight, second.v_proj.weight]))
    assert torch.equal(tensors[open_clip + "text_projection"], reference.text_encoder_2.text_projection.weight.T)
    assert torch.equal(tensors[open_clip + "positional_embedding"],
                       reference.text_encoder_2.text_model.embeddings.position_embedding.weight)


# --------------------------------------------------------------------------- bench


def _train_speed():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_speed_sdxl", Path(__file__).parents[1] / "bench" / "train_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speed_bench_runs_sdxl_rows(capsys):
    import json

    bench = _train_speed()
    assert bench.FULL_SDXL == {"resolutions": [1024], "batches": [1, 4, 8], "ranks": [16, 64], "steps": 10, "warmup": 3}
    assert bench.main(["--quick", "--json", "--family", "sdxl", "--ranks", "4", "--batches", "1", "--text-encoder", "on",
                       "--checkpointing", "on", "--steps", "1", "--warmup", "1"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [row["status"] for row in results] == ["ok"]


@pytest.mark.slow
def test_sdxl_activation_constants_are_what_the_meta_device_measures(capsys):
    import json

    assert _train_speed().main(["--memory-model", "--family", "sdxl"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    measured = {row["gradient_checkpointing"]: row["per_512_image_gib"] for row in rows}
    assert measured == pytest.approx(dict(SDXL.activations_per_image), abs=0.01)
