"""fp8_base on Flux.1: block weights stored in fp8 e4m3fn by diffusers' layerwise casting,
computing as the same model with fp8-rounded weights, with every LoRA type but DoRA
training over it; an fp8 file is taken as it is."""
from __future__ import annotations

import pytest
import torch

from engine.config.network_types import NetworkSpec
from engine.errors import LoradeckError
from engine.model.families.flux import fp8
from engine.model.families.flux import network as flux_network
from engine.model.families.flux import single_files
from tests.test_flux_lora import fresh, output


@pytest.fixture(scope="module")
def base(tiny_flux_dir):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(tiny_flux_dir, subfolder="transformer", local_files_only=True)


@pytest.mark.parametrize("network_type", ["lora", "loha", "lokr"])
def test_fp8_storage_computes_as_fp8_rounded_weights(base, network_type):
    spec = NetworkSpec(type=network_type, rank=4, alpha=2.0)
    stored = fresh(base)
    fp8.store_transformer_in_fp8(stored, torch.float32)
    kept = {key for key, value in stored.state_dict().items() if value.dtype == fp8.STORAGE_DTYPE}
    assert "transformer_blocks.0.attn.to_q.weight" in kept and "single_transformer_blocks.1.norm.linear.weight" in kept
    assert "x_embedder.weight" not in kept and "proj_out.weight" not in kept
    rounded = fresh(base)
    rounded.load_state_dict({key: value.to(fp8.STORAGE_DTYPE).float() if key in kept else value
                             for key, value in base.state_dict().items()})
    ours, theirs = flux_network.inject(stored, spec), flux_network.inject(rounded, spec)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for mine, reference in zip(flux_network.parameters(ours), flux_network.parameters(theirs)):
            value = torch.randn(mine.shape, generator=generator) * 0.1
            mine.copy_(value)
            reference.copy_(value)
    assert all(p.dtype == torch.float32 for p in flux_network.parameters(ours))
    torch.testing.assert_close(output(stored), output(rounded), rtol=0, atol=0)
    assert stored.transformer_blocks[0].attn.to_q.base_layer.weight.dtype == fp8.STORAGE_DTYPE  # back after the call
    stored.train()
    output_with_grad = stored(**_inputs()).sample
    output_with_grad.square().mean().backward()
    assert all(p.grad is not None for p in flux_network.parameters(ours))


def _inputs():
    from engine.model.families.flux import latents

    generator = torch.Generator().manual_seed(0)
    return dict(hidden_states=latents.pack(torch.randn(1, 16, 8, 8, generator=generator)),
                encoder_hidden_states=torch.randn(1, 8, 32, generator=generator),
                pooled_projections=torch.randn(1, 32, generator=generator), timestep=torch.tensor([0.5]),
                img_ids=latents.image_ids(8, 8), txt_ids=latents.text_ids(8), guidance=torch.tensor([1.0]))


def test_fp8_file_and_t5_stay_fp8(tiny_flux_dir, tiny_flux_files, tmp_path):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "flux1-dev-fp8.safetensors"
    save_file({k: v.to(fp8.STORAGE_DTYPE) for k, v in load_file(str(tiny_flux_files["transformer"])).items()}, str(path))
    transformer = single_files.load_transformer(path, config_dir=tiny_flux_dir)
    fp8.store_transformer_in_fp8(transformer, torch.float32)
    assert transformer.x_embedder.weight.dtype == torch.float32  # an all-fp8 file's ends come back to compute
    blocks = sum(p.numel() for name, p in transformer.named_parameters()
                 if name.startswith(("transformer_blocks.", "single_transformer_blocks.")) and ".norm_" not in name)
    assert fp8.fp8_bytes(transformer) == blocks  # every block Linear, modulation included
    with torch.no_grad():
        assert torch.isfinite(transformer(**_inputs()).sample).all()
    t5 = single_files.load_t5xxl(tiny_flux_files["t5xxl"], config_dir=tiny_flux_dir, dtype=torch.float32)
    rounded = single_files.load_t5xxl(tiny_flux_files["t5xxl"], config_dir=tiny_flux_dir, dtype=torch.float32)
    fp8.store_t5_in_fp8(t5, torch.float32)
    kept = {key for key, value in t5.state_dict().items() if value.dtype == fp8.STORAGE_DTYPE}
    assert "encoder.block.0.layer.0.SelfAttention.q.weight" in kept and "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in kept
    assert not any(key.endswith(".wo.weight") or "shared" in key for key in kept)
    with torch.no_grad():
        for key, value in rounded.state_dict().items():
            if key in kept:
                value.copy_(value.to(fp8.STORAGE_DTYPE).float())
        ids = torch.tensor([[5, 6, 7, 1]])
        torch.testing.assert_close(t5(ids).last_hidden_state, rounded(ids).last_hidden_state, rtol=0, atol=0)


def test_dora_is_refused_on_fp8():
    with pytest.raises(LoradeckError, match="DoRA reads the frozen weights"):
        fp8.check_network("dora")
    fp8.check_network("lokr")


def test_bf16_file_loads_straight_into_fp8(tiny_flux_dir, tiny_flux_files):
    """fp8_base with a bf16 file: each tensor is cast as it is read (no full bf16 copy)."""
    streamed = single_files.load_transformer(tiny_flux_files["transformer"], config_dir=tiny_flux_dir,
                                             dtype=fp8.bfl_dtypes(torch.float32))
    fp8.store_transformer_in_fp8(streamed, torch.float32)
    late = single_files.load_transformer(tiny_flux_files["transformer"], config_dir=tiny_flux_dir, dtype=torch.float32)
    fp8.store_transformer_in_fp8(late, torch.float32)
    for (key, value), other in zip(streamed.state_dict().items(), late.state_dict().values()):
        assert value.dtype == other.dtype and torch.equal(value.float(), other.float()), key
