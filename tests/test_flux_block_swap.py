"""Block swap: the swapped blocks' frozen weights are on the CPU between calls, the step's
output and LoRA gradients are those of the unswapped model, the LoRA never moves (on the
CPU the "device" is the CPU too, so this checks the bookkeeping, not the memory)."""
from __future__ import annotations

import pytest
import torch

from engine.config.network_types import NetworkSpec
from engine.errors import LoradeckError
from engine.model.families.flux import block_swap, fp8
from engine.model.families.flux import network as flux_network
from tests.test_flux_fp8 import _inputs
from tests.test_flux_lora import fresh


@pytest.fixture(scope="module")
def base(tiny_flux_dir):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(tiny_flux_dir, subfolder="transformer", local_files_only=True)


def step(model):
    model.train()
    model.enable_gradient_checkpointing()
    out = model(**_inputs()).sample
    out.square().mean().backward()
    return out.detach()


@pytest.mark.parametrize("with_fp8", [False, True])
def test_swapped_step_is_the_same_step(base, with_fp8):
    spec = NetworkSpec(type="lora", rank=4, alpha=2.0)
    models = []
    for _ in range(2):
        model = fresh(base)
        if with_fp8:
            fp8.store_transformer_in_fp8(model, torch.float32)
        groups = flux_network.inject(model, spec)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(5)
            for parameter in flux_network.parameters(groups):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
        models.append((model, groups))
    (plain, plain_groups), (swapped, swapped_groups) = models
    swap = block_swap.BlockSwap(swapped, 3, "cpu")
    last = swapped.single_transformer_blocks[-1]
    base_weight = last.proj_out.base_layer.weight
    cpu_copy = swap.weights[id(last)][0][1]
    assert any(base_weight.data.data_ptr() == copy.data_ptr() for _, copy in swap.weights[id(last)])
    torch.testing.assert_close(step(swapped), step(plain), rtol=0, atol=0)
    for mine, theirs in zip(flux_network.parameters(swapped_groups), flux_network.parameters(plain_groups)):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=0, atol=0)
    # after the backward at most one swapped block (the last one recomputed) is resident
    resident = [block for block in swap.blocks if any(parameter.data.data_ptr() != copy.data_ptr()
                                                      for parameter, copy in swap.weights[id(block)])]
    assert len(resident) <= 1 and len(swap.resident) <= 1
    assert cpu_copy is swap.weights[id(last)][0][1]
    swap.remove()
    torch.testing.assert_close(step(swapped), step(plain), rtol=0, atol=0)


def test_block_swap_settings_are_one_line(base):
    with pytest.raises(LoradeckError, match="between 1 and 3"):
        block_swap.BlockSwap(fresh(base), 4, "cpu")
    with pytest.raises(LoradeckError, match="needs precision.gradient_checkpointing"):
        block_swap.BlockSwap(fresh(base), 1, "cpu", gradient_checkpointing=False)
