"""`network.scale_weight_norms`: sd-scripts' max-norm regularisation, after every optimizer step.

For each adapted layer, with ΔW its weight update (scale included):

    norm    = max(‖ΔW‖, max_norm / 2)
    ratio   = min(norm, max_norm) / norm          (1 unless ‖ΔW‖ is above max_norm)
    ΔW     := ratio · ΔW

and the step logs how many layers were scaled and the mean and largest ‖ΔW‖ after it
(sd-scripts' `max_norm/keys_scaled`, `norm/avg_key_norm`, `max_norm/max_key_norm`). How the
ratio reaches the tensors is each implementation's: sd-scripts' networks.lora (LoRA, LoCon)
multiplies up and down by √ratio; LyCORIS scales LoHa's and LoCon's (DoRA's) update by the
ratio and LoKr's factors by ratio^(1/n) each, and Diag-OFT's blocks by the ratio; its iA3,
DyLoRA and GLoRA have no max norm (LyCORIS' base `apply_max_norm` returns None), so nothing
is scaled for them there, nor here.

Everything stays on the device: no value is read back to the host (the step log reads the
three numbers when it flushes).

Heavy module (torch).
"""
from __future__ import annotations

from typing import Iterator

import torch

SCALED_TYPES = ("lora", "locon", "loha", "lokr", "dora", "diag-oft")


def _ratio(norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    clamped = norm.clamp(min=max_norm / 2)
    return clamped.clamp(max=max_norm) / clamped


def _lora_update(down: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor:
    """up · down of a LoRA layer (a conv's kernel composed as sd-scripts composes it)."""
    if down.dim() == 4 and down.shape[2:] != (1, 1):
        return torch.einsum("or,rikl->oikl", up.flatten(1), down) * scale
    return (up.flatten(1) @ down.flatten(1)) * scale


def apply_max_norm(network, max_norm: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Scale every layer's update to at most `max_norm`; (layers scaled, mean norm, largest
    norm) as device tensors, or None for a type without a max norm."""
    spec = network.spec
    if spec.type not in SCALED_TYPES or not max_norm:
        return None
    norms, scaled = [], []
    with torch.no_grad():
        for norm, ratio in _scale_layers(network, spec, max_norm):
            norms.append(norm * ratio)
            scaled.append(ratio != 1)
    if not norms:
        return None
    stacked = torch.stack(norms)
    return torch.stack(scaled).sum(), stacked.mean(), stacked.max()


def _scale_layers(network, spec, max_norm: float) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if spec.built_by_lycoris:
        for module in network.layers():
            yield _scale_lycoris(module, spec, max_norm)
        return
    from engine.network.lora import ADAPTER_NAME

    for layer in network.layers():
        yield _scale_peft(layer, ADAPTER_NAME, spec, max_norm)


def _scale_peft(layer, adapter: str, spec, max_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(‖ΔW‖ before, ratio) of one peft layer, its tensors scaled in place."""
    if spec.type in ("lora", "locon", "dora"):
        down, up = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        update = _lora_update(down, up, layer.scaling[adapter])
        ratio = _ratio(update.norm(), max_norm)
        if spec.type == "dora":  # LyCORIS' LoCon rule: the update (the lora_up side) by the ratio
            up.mul_(ratio)
        else:  # sd-scripts' networks.lora: √ratio on each side
            up.mul_(ratio.sqrt())
            down.mul_(ratio.sqrt())
        return update.norm(), ratio
    update = layer.get_delta_weight(adapter)
    norm = update.norm()
    ratio = _ratio(norm, max_norm)
    if spec.type == "loha":  # LyCORIS scales the whole product: one factor by the ratio
        layer.hada_w1_a[adapter].mul_(ratio)
        return norm, ratio
    # LoKr: each of LyCORIS' n factor tensors by ratio^(1/n)
    names = [name for name in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
             if adapter in getattr(layer, name)]
    for name in names:
        getattr(layer, name)[adapter].mul_(ratio ** (1 / len(names)))
    return norm, ratio


def _scale_lycoris(module, spec, max_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    if spec.type == "diag-oft":  # LyCORIS: the blocks' own norm, the blocks scaled
        norm = module.oft_blocks.norm()
        ratio = _ratio(norm, max_norm)
        module.oft_blocks.mul_(ratio)
        return norm, ratio
    # DoRA per input (LyCORIS' LoConModule): ‖up · down‖ · scale, the up side by the ratio
    # (LyCORIS keeps the ratio in a buffer; in the weight a resumed run continues exactly)
    update = _lora_update(module.lora_down.weight, module.lora_up.weight, module.scale)
    ratio = _ratio(update.norm(), max_norm)
    module.lora_up.weight.mul_(ratio)
    return update.norm(), ratio
