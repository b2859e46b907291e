"""Network types beyond standard LoRA: each trains on every family's tiny model end to end,
resumes bit-exactly, is planned to the parameter, and its file is read back by an
independent reader: diffusers' `load_lora_weights` for LoCon, and for LoHa, LoKr and DoRA
(which diffusers' SD1.5 Kohya converter does not take: it drops `dora_scale`, refuses
`hada_*`) the published formulas applied to the base weights, compared with the
in-training network."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.config.network_types import NetworkSpec
from engine.config.schema import TrainConfig, config_from_dict, load_config
from engine.model.families import family_named
from engine.network.lora import LoraNetwork, read_lora_file, save_lora_file
from engine.plan.network_size import factorization, network_size
from engine.run.events import EventWriter, read_events
from engine.train.loop import train
from tests.conftest import TINY_FAMILIES, write_tiny_dataset

SPECS = {
    "locon": NetworkSpec(type="locon", rank=4, alpha=2.0, conv_dim=4, conv_alpha=2.0),
    "loha": NetworkSpec(type="loha", rank=4, alpha=2.0, conv_dim=2, conv_alpha=1.0),
    "loha-tucker": NetworkSpec(type="loha", rank=2, alpha=2.0, conv_dim=2, conv_alpha=1.0, use_tucker=True),
    "lokr": NetworkSpec(type="lokr", rank=2, alpha=2.0, conv_dim=2, conv_alpha=1.0, factor=4),
    "lokr-full": NetworkSpec(type="lokr", rank=100000, alpha=1.0, conv_dim=100000, conv_alpha=1.0, factor=8),
    "dora": NetworkSpec(type="dora", rank=4, alpha=2.0, conv_dim=4, conv_alpha=2.0),  # per input: LyCORIS' module
    "dora-output": NetworkSpec(type="dora", rank=4, alpha=2.0, conv_dim=4, conv_alpha=2.0, dora_layout="output"),
}


def model_output(pipeline, family) -> torch.Tensor:
    """The denoiser's prediction for a fixed latent and caption, conditioned by the family's
    own code (through its text encoders, with its size numbers where it has them)."""
    from engine.train.data import collate_examples

    runtime = family.runtime()
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, pipeline.vae.config.latent_channels, 8, 8, generator=generator)
    tokenizers = [getattr(pipeline, name) for name in family.tokenizers]
    example = dict(runtime.caption_tokens(tokenizers, max_token_length=75, weighted=False).example("sks dog, red"))
    if family.size_conditioning:
        example.update({"original_size": torch.tensor([64.0, 64.0]), "crop_top_left": torch.zeros(2),
                        "target_size": torch.tensor([64.0, 64.0])})
    batch = collate_examples([{**example, "caption": "", "path": ""}])
    encoders = [getattr(pipeline, name) for name in family.text_encoders]
    denoiser = getattr(pipeline, family.denoiser)
    for module in (denoiser, *encoders):
        module.eval()
    with torch.no_grad():
        conditioning = runtime.condition(encoders, batch, config=TrainConfig(), train_text_encoder=False, device="cpu")
        return runtime.predict(denoiser, latents, torch.tensor([10]), conditioning)


def randomized(pipeline, spec: NetworkSpec, family=None) -> LoraNetwork:
    network = LoraNetwork.build(family or family_named(TINY_FAMILIES[0]), pipeline, spec)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return network


# --------------------------------------------------------------------------- the independent reader


def delta_weight(tensors: dict[str, torch.Tensor], key: str, weight: torch.Tensor) -> torch.Tensor:
    """ΔW of one module by the published formulas (LyCORIS' README and modules, kohya's
    networks.lora), from the file's tensors alone."""
    t = {name.removeprefix(key + "."): value.float() for name, value in tensors.items() if name.startswith(key + ".")}
    alpha = t["alpha"].item()
    if "lora_down.weight" in t:  # LoRA / LoCon / DoRA: up @ down · alpha / rank
        down, up = t["lora_down.weight"], t["lora_up.weight"]
        return (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * alpha / down.shape[0]
    if "hada_w1_a" in t:  # LoHa: (w1a @ w1b) ⊙ (w2a @ w2b) · alpha / rank
        if "hada_t1" in t:  # Tucker: each factor rebuilt from its core
            first = torch.einsum("i j k l, j r, i p -> p r k l", t["hada_t1"], t["hada_w1_b"], t["hada_w1_a"])
            second = torch.einsum("i j k l, j r, i p -> p r k l", t["hada_t2"], t["hada_w2_b"], t["hada_w2_a"])
            return first * second * alpha / t["hada_w1_b"].shape[0]
        product = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
        return product.reshape(weight.shape) * alpha / t["hada_w1_b"].shape[0]
    # LoKr: kron(w1, w2) · scale, scale = alpha / rank when a factor is low-rank, else 1
    w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
    if "lokr_w2" in t:
        w2 = t["lokr_w2"]
    elif "lokr_t2" in t:
        w2 = torch.einsum("i j k l, i p, j r -> p r k l", t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
    else:
        w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
    ranked = [t[name].shape[0] for name in ("lokr_w1_b", "lokr_w2_b") if name in t]
    scale = alpha / ranked[-1] if ranked else 1.0
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2).reshape(weight.shape) * scale


def apply_file(pipeline, tensors: dict[str, torch.Tensor], family=None) -> int:
    """Merge the file into the pipeline's plain weights; returns the modules merged."""
    family = family or family_named(TINY_FAMILIES[0])
    merged_fused = 0
    components = family.lora_components
    if family.denoiser == "transformer":  # Flux: sd-scripts' fused modules, merged into BFL's fused weights
        from tests.test_flux_lora import merge_fused

        merged_fused = merge_fused(pipeline.transformer, tensors)
        tensors = {key: value for key, value in tensors.items() if not key.startswith("lora_unet_")}
        components = [component for component in components if not component.is_denoiser]
    modules = {}
    for component in components:
        for name, module in getattr(pipeline, component.part).named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                modules[component.key(name)] = module
    keys = {name.rsplit(".", 1)[0] for name in tensors if name.endswith(".alpha")}
    with torch.no_grad():
        for key in keys:
            weight = modules[key].weight
            merged = weight.float() + delta_weight(tensors, key, weight)
            if f"{key}.dora_scale" in tensors:  # DoRA: W' = m · (W + ΔW) / ‖row (or column) of W + ΔW‖
                scale = tensors[f"{key}.dora_scale"].float()
                if scale.shape[0] == merged.shape[0]:  # per output row (wd_on_output)
                    norm = merged.reshape(merged.shape[0], -1).norm(dim=1).reshape(scale.shape)
                else:  # per input column
                    norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1)
                    norm = norm.reshape(merged.shape[1], *[1] * (merged.dim() - 1)).transpose(0, 1)
                merged = scale * merged / norm
            weight.copy_(merged)
    return len(keys) + merged_fused


def refused_by_the_family(family: str, spec: NetworkSpec, pipelines=None) -> bool:
    """Whether the family does not train this network (Flux.1 trains lora, dora per output,
    loha and lokr: the types whose adapters fuse exactly into sd-scripts' fused qkv, and
    refuses the others); the refusal is one line naming the setting, and with `pipelines`
    building the network raises it."""
    from engine.errors import LoradeckError

    descriptor = family_named(family)
    problem = descriptor.network_problem(spec)
    if problem is None:
        return False
    assert "\n" not in problem and problem.startswith("network.")
    if pipelines is not None:
        with pytest.raises(LoradeckError) as refused:
            LoraNetwork.build(descriptor, pipelines(), spec)
        assert str(refused.value) == problem
    return True


@pytest.mark.parametrize("name", sorted(SPECS))
def test_file_read_by_the_published_formula_matches_the_network(tmp_path, family, family_pipelines, name):
    spec, descriptor = SPECS[name], family_named(family)
    if refused_by_the_family(family, spec, family_pipelines):
        return
    ours = family_pipelines()
    network = randomized(ours, spec, descriptor)
    expected = model_output(ours, descriptor)
    path = tmp_path / "net.safetensors"
    save_lora_file(path, network.state_dict(), spec.metadata())
    tensors, metadata = read_lora_file(path)
    assert metadata["ss_network_module"] == ("networks.lora" if spec.type == "locon" else "lycoris.kohya")
    args = json.loads(metadata["ss_network_args"])
    assert args["conv_dim"] == str(spec.conv_dim)

    plain = family_pipelines()
    base = model_output(plain, descriptor)
    assert apply_file(plain, tensors, descriptor) == sum(key.endswith(".alpha") for key in tensors)
    merged = model_output(plain, descriptor)
    assert (expected - base).abs().max() > 1e-2  # the network does change the output
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-4)


def test_locon_loads_in_diffusers_with_its_conv_keys(tmp_path, pipeline_factory):
    spec = SPECS["locon"]
    ours = pipeline_factory()
    network = randomized(ours, spec)
    path = tmp_path / "locon.safetensors"
    save_lora_file(path, network.state_dict(), spec.metadata())
    tensors, _ = read_lora_file(path)
    assert any("resnets_0_conv1.lora_down.weight" in key and tensors[key].shape[-1] == 3 for key in tensors)
    theirs = pipeline_factory()
    theirs.load_lora_weights(str(path))
    sd = family_named(TINY_FAMILIES[0])
    torch.testing.assert_close(model_output(theirs, sd), model_output(ours, sd), rtol=1e-4, atol=1e-4)


def test_lokr_full_matrices_are_stored_whole_at_scale_one(tmp_path, pipeline_factory):
    network = randomized(pipeline_factory(), SPECS["lokr-full"])
    tensors = network.state_dict()
    assert not any(key.endswith(("_a", "_b")) for key in tensors)
    assert {float(value) for key, value in tensors.items() if key.endswith(".alpha")} == {100000.0}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_plan_counts_the_real_network(family, family_pipelines, family_model_dir, name):
    spec, descriptor = SPECS[name], family_named(family)
    if refused_by_the_family(family, spec):
        return
    network = LoraNetwork.build(descriptor, family_pipelines(), spec)
    config = config_from_dict({"model": {"pretrained_model": str(family_model_dir)}})
    layers = descriptor.adapted_layers(spec, descriptor.shapes(config, "."))
    parameters, tensors, count = network_size(spec, layers)
    assert parameters == sum(p.numel() for p in network.parameters())
    file = network.state_dict()  # one alpha per module of the file (Flux's fused ones count once)
    assert tensors == len(file) and count == sum(key.endswith(".alpha") for key in file)


def test_factorization_is_peft_s():
    from peft.tuners.lokr.layer import factorization as peft_factorization

    for dimension in (1, 7, 32, 64, 96, 320, 768, 1280, 2560, 5120):
        for factor in (-1, 1, 2, 4, 6, 8, 16):
            assert factorization(dimension, factor) == peft_factorization(dimension, factor)


# --------------------------------------------------------------------------- through the trainer

TYPE_SETTINGS = {
    "locon": {"type": "locon", "conv_dim": 4, "conv_alpha": 2.0},
    "loha": {"type": "loha", "conv_dim": 2, "conv_alpha": 1.0, "rank_dropout": 0.1, "module_dropout": 0.1},
    # with sd-scripts' max norm after every step (tests/test_max_norm.py), which resume must repeat
    "lokr": {"type": "lokr", "conv_dim": 2, "conv_alpha": 1.0, "factor": 4, "scale_weight_norms": 0.05},
    "dora": {"type": "dora", "conv_dim": 2, "conv_alpha": 2.0},  # per input: LyCORIS' module
    # LyCORIS' DyLoRA draws a block of ranks from Python's RNG every step: resume restores it too
    "dylora": {"type": "dylora", "conv_dim": 2, "conv_alpha": 1.0, "block_size": 2, "module_dropout": 0.1},
    "lora-dropouts": {"type": "lora", "network_dropout": 0.2, "rank_dropout": 0.2, "module_dropout": 0.2},
}


SAMPLING = {"prompts": "sks dog --w 64 --h 64 --s 1 --d 5", "every_n_epochs": 1}


@pytest.fixture
def one_repeat_dataset(tmp_path):
    """The tiny dataset at one repeat: two steps an epoch, the fewest a mid-run stop needs."""
    root = write_tiny_dataset(tmp_path)
    (root / "img" / "2_sks dog").rename(root / "img" / "1_sks dog")
    return root


@pytest.mark.parametrize("name", sorted(TYPE_SETTINGS))
def test_each_type_trains_stops_and_resumes_bit_exactly(one_repeat_dataset, family, family_run, monkeypatch, name):
    network = TYPE_SETTINGS[name]
    reference = family_run(one_repeat_dataset, "reference", network=network, sampling=SAMPLING)
    config = load_config(reference.config)
    if refused_by_the_family(family, NetworkSpec.of(config)):
        assert train(reference.path) == 1  # refused before the first step
        return
    if any(note.startswith("Flux.1: network.scale_weight_norms") for note in family_named(family).plan_notes(config)):
        assert train(reference.path) == 1  # Flux refuses the max norm (tests/test_flux_plan.py): train without it
        network = {key: value for key, value in network.items() if key != "scale_weight_norms"}
        reference = family_run(one_repeat_dataset, "reference-unscaled", network=network, sampling=SAMPLING)
    assert train(reference.path) == 0
    expected, metadata = read_lora_file(reference.checkpoints / f"{reference.path.name}.safetensors")
    spec = NetworkSpec.of(load_config(reference.config))
    assert metadata["ss_network_module"] == spec.metadata()["ss_network_module"]
    assert any(value.abs().sum() > 0 for key, value in expected.items() if not key.endswith(".alpha"))

    samples = sorted(path.name for path in reference.samples.glob("*.png"))
    assert samples  # the in-training network renders samples every epoch

    run = family_run(one_repeat_dataset, "stopped", network=network, sampling=SAMPLING)
    real_emit = EventWriter.emit

    def emit(self, type, **fields):  # stop as epoch 1 ends
        event = real_emit(self, type, **fields)
        if type == "epoch_end" and fields["epoch"] == 1:
            run.request("stop")
        return event

    monkeypatch.setattr(EventWriter, "emit", emit)
    assert train(run.path) == 0
    monkeypatch.undo()
    assert train(run.path, resume=True) == 0
    assert [e["status"] for e in read_events(run.events) if e["type"] == "run_end"] == ["stopped", "finished"]
    tensors, _ = read_lora_file(run.checkpoints / "stopped.safetensors")
    assert tensors.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(tensors[key], value), key
    assert sorted(path.name for path in run.samples.glob("*.png")) == samples


def test_glora_trains_on_a_channels_last_unet(one_repeat_dataset, family, family_run, capsys):
    """LyCORIS' GLoRA views its conv weights as NCHW: the U-Net stays NCHW for it (as for
    DoRA) while channels_last, the default, is on for every other type."""
    run = family_run(one_repeat_dataset, "glora", network={"type": "glora", "conv_dim": 2, "conv_alpha": 1.0},
                     training={"epochs": 1})
    config = load_config(run.config)
    assert config.precision.channels_last
    if refused_by_the_family(family, NetworkSpec.of(config)):
        assert train(run.path) == 1  # a family without convolutions refuses it before the first step
        return
    assert train(run.path) == 0
    tensors, _ = read_lora_file(run.checkpoints / "glora.safetensors")
    assert any(key.endswith("b2.weight") and value.dim() == 4 for key, value in tensors.items())  # the convs too
    assert "channels_last off (glora needs NCHW weights)" in "".join(capsys.readouterr())  # the speed line


@pytest.mark.parametrize("kind", ["lora", "loha"])
def test_training_starts_from_network_weights(tmp_path, tiny_dataset, make_run, kind):
    loha = {**TYPE_SETTINGS[kind if kind != "lora" else "lora-dropouts"], "train_text_encoder": False}
    first = make_run(tiny_dataset, "first", network=loha, training={"epochs": 1})
    assert train(first.path) == 0
    start = first.checkpoints / "first.safetensors"
    again = make_run(tiny_dataset, "again", network={**loha, "network_weights": str(start)},
                     training={"epochs": 1}, optimizer={"learning_rate": 0.0})
    assert train(again.path) == 0
    started, _ = read_lora_file(start)
    ended, _ = read_lora_file(again.checkpoints / "again.safetensors")
    for key, value in started.items():  # a learning rate of 0 keeps the start weights
        assert torch.equal(ended[key], value), key

    wrong = make_run(tiny_dataset, "wrong", network={"type": "lokr", "network_weights": str(start)})
    assert train(wrong.path) != 0
    errors = [e["message"] for e in read_events(wrong.events) if e["type"] == "error"]
    assert "network.network_weights" in errors[-1] and "first.safetensors" in errors[-1]


def test_config_rules_for_the_types():
    base = {"model": {"pretrained_model": "x"}}
    with pytest.raises(Exception, match="network.conv_dim"):
        config_from_dict({**base, "network": {"type": "locon", "conv_dim": 0}})
    with pytest.raises(Exception, match="network.rank"):
        config_from_dict({**base, "network": {"type": "lora", "rank": 5000, "alpha": 1}})
    lokr = config_from_dict({**base, "network": {"type": "lokr", "rank": 100000, "alpha": 1, "factor": 8}})
    assert NetworkSpec.of(lokr).rank == 100000
    dora = config_from_dict({**base, "network": {"type": "dora", "rank_dropout": 0.3}})
    assert NetworkSpec.of(dora).rank_dropout == 0.0  # not used by dora: left out, not refused
    with pytest.raises(ValueError, match="boft"):
        NetworkSpec.from_metadata({"ss_network_module": "lycoris.kohya", "ss_network_dim": "4",
                                   "ss_network_alpha": "1", "ss_network_args": '{"algo": "boft"}'},
                                  train_unet=True, train_text_encoder=True)
    with pytest.raises(Exception, match="network.block_size"):
        config_from_dict({**base, "network": {"type": "dylora", "rank": 6, "alpha": 1, "block_size": 4}})


# --------------------------------------------------------------------------- the grid


# LoHa on every family; DoRA (the same path through the trainer's network) on the first
@pytest.mark.parametrize("family, name", [(family, "loha") for family in TINY_FAMILIES] + [(TINY_FAMILIES[0], "dora")],
                         indirect=["family"])
def test_grid_renders_lycoris_files_as_the_formula_reads_them(tmp_path, family, family_model_dir, family_pipelines,
                                                               name):
    """`loradeck grid` on a run of LoHa / DoRA files: weight 0 is the base model, weight 1 the
    image of the base weights merged with the file by the published formula."""
    from PIL import Image

    from engine.config.prompts import SamplePrompt
    from engine.config.schema import replace_setting, save_config, with_absolute_paths
    from engine.run.folder import RunDir
    from engine.sampling.grid import GRID_TEXT_KEY, render_grid
    from engine.sampling.sampler import render

    spec, descriptor = SPECS[name], family_named(family)
    config = replace_setting(TrainConfig(), "model.pretrained_model", str(family_model_dir))
    config = replace_setting(config, "sampling.prompts", "a red house --w 64 --h 64 --s 2 --d 3")
    config = replace_setting(config, "saving.output_name", "net")
    run = RunDir(tmp_path / "runs" / "net")
    run.create()
    save_config(with_absolute_paths(config, tmp_path), run.config)
    network = randomized(family_pipelines(), spec, descriptor)
    files = []
    for epoch in (1, 2):
        with torch.no_grad():
            for parameter in network.parameters():
                parameter.mul_(1.5)
        files.append(run.checkpoints / f"net-00000{epoch}.safetensors")
        save_lora_file(files[-1], network.state_dict(), {**spec.metadata(), "ss_epoch": epoch, "ss_steps": epoch * 4})

    out = render_grid(run.path, weights=[0.0, 1.0], device="cpu")
    grid = Image.open(out)
    layout = json.loads(grid.text[GRID_TEXT_KEY])
    pixels = torch.from_numpy(np.asarray(grid.convert("RGB"), dtype=np.float32))

    def cell(row: int, column: int) -> torch.Tensor:
        x, y, w, h = layout["cells"][row][column]
        return pixels[y: y + h, x: x + w]

    def reference(tensors=None) -> torch.Tensor:
        pipeline = family_pipelines()
        if tensors is not None:
            apply_file(pipeline, tensors, descriptor)
        image = render(pipeline, SamplePrompt(prompt="a red house", width=64, height=64, steps=2, seed=3),
                       runtime=descriptor.runtime(), base_scheduler_config=pipeline.scheduler.config)
        return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32))

    base = reference()
    assert torch.equal(cell(0, 0), base) and torch.equal(cell(0, 1), base)
    for column, path in enumerate(files):
        merged = reference(read_lora_file(path)[0])
        assert not torch.equal(merged, base)
        torch.testing.assert_close(cell(1, column), merged, rtol=0, atol=2.0)  # 8-bit pixels, float paths


# --------------------------------------------------------------------------- the VRAM estimate


def _saved_elements(spec: NetworkSpec) -> list[int]:
    """Sizes of the tensors autograd keeps for the backward of one adapted Linear(64 -> 48)
    inside a network (its input needs a gradient: the layers before it train too)."""
    from peft import inject_adapter_in_model

    from engine.model.adapters import peft_config as _peft_config

    model = torch.nn.Sequential(torch.nn.Linear(64, 48)).requires_grad_(False)
    model = inject_adapter_in_model(_peft_config(spec, ["0"], {}, {}), model, "net")
    sizes: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        model(torch.randn(2, 64, requires_grad=True)).sum()
    return sizes


def test_vram_estimate_counts_the_rebuilt_weights_of_loha_and_lokr():
    from engine.plan.vram import estimate_vram

    # what the estimate assumes, on peft's own layers: both keep the frozen weight (no new
    # memory), LoHa and LoKr keep a full ΔW beside it, LoRA and DoRA do not
    for kind, weight_sized in (("loha", 2), ("lokr", 2), ("lora", 1), ("dora", 1)):
        assert _saved_elements(NetworkSpec(type=kind, rank=4, alpha=4)).count(64 * 48) == weight_sized, kind

    base = {"model": {"pretrained_model": "runwayml/stable-diffusion-v1-5"}}
    def estimate(**network):
        return estimate_vram(config_from_dict({**base, "network": network}))

    lora = estimate(type="lora", rank=16, alpha=8)
    lokr_full = estimate(type="lokr", rank=100000, alpha=1, conv_dim=100000, conv_alpha=1, factor=8)
    # a huge LoKr rank means full matrices, not 100000 rank activations
    assert lokr_full.activations_gb < lora.activations_gb
    assert lokr_full.total_gb < lora.total_gb + 8
    loha = estimate(type="loha", rank=16, alpha=8, conv_dim=8, conv_alpha=4)
    locon = estimate(type="locon", rank=16, alpha=8, conv_dim=8, conv_alpha=4)
    assert loha.lora_gb > locon.lora_gb + 1  # SD1.5's adapted weights, about 0.8e9 elements in bf16


# --------------------------------------------------------------------------- sd-scripts' dropouts on standard LoRA


def _lora_linear(spec: NetworkSpec):
    """One peft LoRA Linear(16 -> 12) with random down and up, and the spec's dropouts hooked."""
    from peft import LoraConfig, inject_adapter_in_model

    from engine.network.dropout import add_lora_dropouts

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 12)).requires_grad_(False)
    model = inject_adapter_in_model(LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=["0"]), model,
                                    "net")
    layer = model[0]
    with torch.no_grad():
        layer.lora_B["net"].weight.normal_()
    assert add_lora_dropouts([layer], spec, "net") == (1 if spec.network_dropout or spec.rank_dropout
                                                        or spec.module_dropout else 0)
    return layer


def test_dropouts_act_on_the_rank_activations_as_sd_scripts_does():
    x = torch.randn(5, 16)
    plain = _lora_linear(NetworkSpec(rank=4, alpha=4))
    base, down, up = plain.base_layer, plain.lora_A["net"], plain.lora_B["net"]

    def expected(lx):  # sd-scripts: org_forward(x) + lora_up(lx) * multiplier * scale
        return base(x) + up(lx) * 1.0

    # rank dropout: whole ranks per example, the rest scaled by 1 / (1 - p)
    layer = _lora_linear(NetworkSpec(rank=4, alpha=4, rank_dropout=0.5)).train()
    torch.manual_seed(7)
    got = layer(x)
    torch.manual_seed(7)
    keep = (torch.rand(5, 4) > 0.5).float()
    torch.testing.assert_close(got, expected(down(x) * keep / 0.5))
    assert 0 < keep.sum() < keep.numel()
    # network dropout: elements of lx, as torch's dropout
    layer = _lora_linear(NetworkSpec(rank=4, alpha=4, network_dropout=0.3)).train()
    torch.manual_seed(3)
    got = layer(x)
    torch.manual_seed(3)
    torch.testing.assert_close(got, expected(torch.nn.functional.dropout(down(x), p=0.3)))
    # module dropout 1: the base layer only; any dropout is off in eval mode (samples)
    layer = _lora_linear(NetworkSpec(rank=4, alpha=4, module_dropout=1.0)).train()
    torch.testing.assert_close(layer(x), base(x))
    layer.eval()
    torch.testing.assert_close(layer(x), plain(x))
    assert not torch.equal(plain(x), base(x))
