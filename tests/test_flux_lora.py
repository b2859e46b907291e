"""Flux.1's LoRA files: sd-scripts' fused layout, proven by readers we did not write.

* Every network type: ΔW of each fused module from the file by the published formulas
  (tests.test_network_types.delta_weight), merged into BFL's fused base weights, gives the
  transformer output of the network that was trained on diffusers' split modules.
* diffusers' Flux LoRA loader (its Kohya converter) takes a LoRA file on the tiny model and
  gives the same output; its converter assumes Flux.1's full width for a single block's
  linear1, so that module is checked on a rank-1 file of the full-size architecture built
  on the meta device: every key lands on a module of the real transformer, in its shape.
"""
from __future__ import annotations

import pytest
import torch

from engine.config.network_types import NetworkSpec
from engine.errors import LoradeckError
from engine.model.families.flux import latents as flux_latents
from engine.model.families.flux import network as flux_network
from engine.model.families.flux import single_files
from tests.test_network_types import delta_weight

SPECS = {
    "lora": NetworkSpec(type="lora", rank=4, alpha=2.0),
    "lora-rank-3": NetworkSpec(type="lora", rank=3, alpha=3.0),  # rank divisible by q, k, v
    "dora": NetworkSpec(type="dora", rank=4, alpha=2.0, dora_layout="output"),  # Flux: per output only
    "loha": NetworkSpec(type="loha", rank=4, alpha=2.0),
    "lokr": NetworkSpec(type="lokr", rank=4, alpha=2.0),
    "lokr-full": NetworkSpec(type="lokr", rank=100000, alpha=1.0, factor=8),
}


@pytest.fixture(scope="module")
def base(tiny_flux_dir):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(tiny_flux_dir, subfolder="transformer", local_files_only=True)


def fresh(base):
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel.from_config(base.config)
    model.load_state_dict(base.state_dict())
    return model.eval()


def output(transformer) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    packed = flux_latents.pack(torch.randn(1, 16, 8, 8, generator=generator))
    with torch.no_grad():
        return transformer(hidden_states=packed, encoder_hidden_states=torch.randn(1, 8, 32, generator=generator),
                           pooled_projections=torch.randn(1, 32, generator=generator), timestep=torch.tensor([0.6]),
                           img_ids=flux_latents.image_ids(8, 8), txt_ids=flux_latents.text_ids(8),
                           guidance=torch.tensor([1.0])).sample


def trained(base, spec: NetworkSpec):
    """A network with every factor moved off its start (shared factors once)."""
    model = fresh(base)
    groups = flux_network.inject(model, spec)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in flux_network.parameters(groups):
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model, groups


def merge_fused(transformer, tensors) -> int:
    """Merge a file's sd-scripts Flux modules into `transformer` by the published formulas,
    applied to BFL's fused weights (then split back); returns the modules merged."""
    bfl = single_files.transformer_to_bfl(transformer.state_dict())
    modules = {"lora_unet_" + key.removesuffix(".weight").replace(".", "_"): key for key in bfl if key.endswith(".weight")}
    keys = {name.rsplit(".", 1)[0] for name in tensors if name.endswith(".alpha") and name.startswith("lora_unet_")}
    for key in keys:
        weight = bfl[modules[key]].float()
        merged = weight + delta_weight(tensors, key, weight)
        if f"{key}.dora_scale" in tensors:  # DoRA, wd_on_output: W' = m · (W + ΔW) / ‖row of W + ΔW‖
            scale = tensors[f"{key}.dora_scale"].float()
            merged = scale * merged / merged.norm(dim=1, keepdim=True)
        bfl[modules[key]] = merged
    with torch.no_grad():
        transformer.load_state_dict(single_files.bfl_to_diffusers(bfl))
    return len(keys)


def merged_by_formula(base, tensors) -> torch.nn.Module:
    """The file applied to BFL's fused weights by the published formulas, then split back."""
    model = fresh(base)
    merge_fused(model, tensors)
    return model


@pytest.mark.parametrize("name", sorted(SPECS))
def test_fused_file_is_the_trained_network(base, name):
    spec = SPECS[name]
    model, groups = trained(base, spec)
    tensors = flux_network.group_tensors(groups, spec)
    # sd-scripts' names: every Linear of every block, fused where BFL fuses, each with its alpha
    modules = {key.split(".")[0] for key in tensors}
    expected = {f"lora_unet_double_blocks_{i}_{stream}_{part}" for i in range(2) for stream in ("img", "txt")
                for part in ("attn_qkv", "attn_proj", "mlp_0", "mlp_2", "mod_lin")}
    expected |= {f"lora_unet_single_blocks_{i}_{part}" for i in range(2) for part in ("linear1", "linear2", "modulation_lin")}
    assert modules == expected and all(f"{module}.alpha" in tensors for module in modules)
    expected_output = output(model)
    assert (expected_output - output(base)).abs().max() > 1e-2
    torch.testing.assert_close(output(merged_by_formula(base, tensors)), expected_output, rtol=1e-4, atol=1e-4)
    # and read back into a fresh network: the same output, the shared factors still shared
    again = fresh(base)
    again_groups = flux_network.inject(again, spec)
    assert flux_network.load_group_tensors(again_groups, spec, tensors) == set(tensors)
    torch.testing.assert_close(output(again), expected_output, rtol=1e-5, atol=1e-5)
    assert len(flux_network.parameters(again_groups)) == len(flux_network.parameters(groups))


def test_shared_factor_learns_from_every_module(base):
    spec = SPECS["lora"]
    model, groups = trained(base, spec)
    model.train()
    generator = torch.Generator().manual_seed(0)
    packed = flux_latents.pack(torch.randn(1, 16, 8, 8, generator=generator))
    prediction = model(hidden_states=packed, encoder_hidden_states=torch.randn(1, 8, 32), pooled_projections=torch.randn(1, 32),
                       timestep=torch.tensor([0.5]), img_ids=flux_latents.image_ids(8, 8),
                       txt_ids=flux_latents.text_ids(8), guidance=torch.tensor([1.0])).sample
    prediction.square().mean().backward()
    qkv = dict(groups)["lora_unet_double_blocks_0_img_attn_qkv"]
    shared = qkv[0].lora_A["loradeck"].weight
    assert all(layer.lora_A["loradeck"].weight is shared for layer in qkv)
    assert shared.grad is not None and shared.grad.abs().sum() > 0
    parameters = flux_network.parameters(groups)
    assert len({id(p) for p in parameters}) == len(parameters)


def test_wrong_types_and_files_are_one_line(base):
    with pytest.raises(LoradeckError, match="transformer has none"):
        flux_network.inject(fresh(base), NetworkSpec(type="locon", rank=4, alpha=4, conv_dim=4))
    _, groups = trained(base, SPECS["lora"])
    tensors = flux_network.group_tensors(groups, SPECS["lora"])
    _, other = trained(base, NetworkSpec(type="lora", rank=8, alpha=8.0))
    with pytest.raises(LoradeckError, match="another rank"):
        flux_network.load_group_tensors(other, NetworkSpec(type="lora", rank=8, alpha=8.0), tensors)
    _, loha = trained(base, SPECS["loha"])
    with pytest.raises(LoradeckError, match="another network type"):
        flux_network.load_group_tensors(loha, SPECS["loha"], tensors)


def test_diffusers_flux_loader_reads_the_file_on_the_tiny_model(tiny_flux_dir, base):
    """diffusers' Kohya Flux converter splits qkv by the file's shapes but a single block's
    linear1 by Flux.1's full widths, so the tiny model's file goes without linear1 here
    (the full-size test below covers it)."""
    from diffusers import FluxPipeline

    spec = SPECS["lora"]
    model, groups = trained(base, spec)
    groups = [(kohya, layers) for kohya, layers in groups if not kohya.endswith("_linear1")]
    tensors = flux_network.group_tensors(groups, spec)
    with torch.no_grad():  # the same network without linear1's adapter
        for layer in (layer for kohya, layers in flux_network.groups_of(model) if kohya.endswith("_linear1")
                      for layer in layers):
            layer.lora_B["loradeck"].weight.zero_()
    pipeline = FluxPipeline.from_pretrained(tiny_flux_dir, local_files_only=True)
    pipeline.load_lora_weights(tensors)
    torch.testing.assert_close(output(pipeline.transformer.eval()), output(model), rtol=1e-4, atol=1e-4)


def test_full_size_file_lands_on_the_real_transformer():
    from accelerate import init_empty_weights
    from diffusers import FluxPipeline, FluxTransformer2DModel

    config = single_files.read_config(single_files.ASSETS, "transformer")
    with init_empty_weights():
        real = FluxTransformer2DModel.from_config(config)
    spec = NetworkSpec(type="lora", rank=1, alpha=1.0)
    groups = flux_network.inject(real, spec)
    shapes = {}
    for kohya, layers in groups:
        shapes[f"{kohya}.lora_down.weight"] = (1, layers[0].get_base_layer().in_features)
        shapes[f"{kohya}.lora_up.weight"] = (sum(layer.get_base_layer().out_features for layer in layers), 1)
    assert len(groups) == 19 * 10 + 38 * 3
    assert shapes["lora_unet_single_blocks_37_linear1.lora_up.weight"] == (21504, 1)
    generator = torch.Generator().manual_seed(0)
    tensors = {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}
    tensors.update({f"{kohya}.alpha": torch.tensor(1.0) for kohya, _ in groups})
    converted = FluxPipeline.lora_state_dict(dict(tensors))
    converted = converted[0] if isinstance(converted, tuple) else converted
    with init_empty_weights():
        modules = dict(FluxTransformer2DModel.from_config(config).named_modules())
    targets = set()
    for key, value in converted.items():
        assert key.startswith("transformer.") and key.endswith((".lora_A.weight", ".lora_B.weight")), key
        name = key.removeprefix("transformer.").rsplit(".", 2)[0]
        module = modules[name]
        expected = (1, module.in_features) if ".lora_A." in key else (module.out_features, 1)
        assert tuple(value.shape) == expected, key
        targets.add(name)
    assert targets == {name for _, layers in flux_network.module_groups(real) for name in layers}
    # the split factors are ours: to_k's up rows are the file's second third, its down the shared one
    torch.testing.assert_close(converted["transformer.transformer_blocks.3.attn.to_k.lora_B.weight"],
                               tensors["lora_unet_double_blocks_3_img_attn_qkv.lora_up.weight"][3072:6144])
    torch.testing.assert_close(converted["transformer.single_transformer_blocks.5.proj_mlp.lora_A.weight"],
                               tensors["lora_unet_single_blocks_5_linear1.lora_down.weight"])


def test_metadata_names_flux_as_sd_scripts_does():
    from engine.model.families import flux

    settings = flux.training_settings_metadata(timestep_sampling="shift", sigmoid_scale=1.0, discrete_flow_shift=3.1582,
                                               model_prediction_type="raw", guidance_scale=1.0, apply_t5_attn_mask=True)
    assert settings["ss_timestep_sampling"] == "shift" and settings["ss_discrete_flow_shift"] == "3.1582"
    assert settings["ss_apply_t5_attn_mask"] == "True" and settings["ss_model_type"] == "flux"
    assert flux.base_model_version() == "flux1"
    assert flux.modelspec_architecture("schnell") == "flux-1-schnell/lora"


def test_text_encoders_get_sd_scripts_prefixes_and_their_own_rates(tiny_flux_dir):
    """CLIP-L as lora_te1_, T5 (network.train_t5xxl) as lora_te3_ with sd-scripts' module names;
    one optimizer group per part at its rate: transformer, CLIP-L, T5."""
    from diffusers import FluxPipeline

    from engine.model.families import family_named
    from engine.network.lora import LoraNetwork

    pipeline = FluxPipeline.from_pretrained(tiny_flux_dir, local_files_only=True)
    spec = NetworkSpec(type="lora", rank=2, alpha=2.0, train_t5xxl=True)
    network = LoraNetwork.build(family_named("flux"), pipeline, spec)
    tensors = network.state_dict()
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in tensors
    assert "lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight" in tensors
    assert "lora_te3_encoder_block_1_layer_1_DenseReluDense_wi_0.lora_up.weight" in tensors
    groups = network.param_groups({"unet": 1e-4, "text_encoder": 2e-5, "text_encoder_2": 1e-5})
    assert [(group["name"], group["lr"]) for group in groups] == [
        ("unet", 1e-4), ("text_encoder", 2e-5), ("text_encoder_2", 1e-5)]
    assert spec.metadata()["ss_network_args"] == '{"train_t5xxl": "True"}'
    without = LoraNetwork.build(family_named("flux"), FluxPipeline.from_pretrained(tiny_flux_dir),
                                NetworkSpec(type="lora", rank=2, alpha=2.0))
    assert not any(key.startswith("lora_te3_") for key in without.state_dict())  # T5 off by default
