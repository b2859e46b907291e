"""sd-scripts' three dropouts of a LoRA layer, on peft's LoRA layers.

sd-scripts' `networks.lora` drops, while training, inside each LoRA module:

    module_dropout   the whole module, with this probability per forward (the base output only)
    network_dropout  elements of the down projection's output (`lx`), as torch's dropout
    rank_dropout     whole ranks of `lx`, per example, rescaling the rest by 1 / (1 - p)

peft's own `lora_dropout` is something else (dropout on the layer's *input*, before the
down projection), so it stays 0 and these act as a forward hook on the down projection:
dropping `lx` drops exactly what sd-scripts drops, and a zero `lx` is a skipped module
(the up projection of zeros adds nothing). In eval mode (sampling) the hook does nothing.
LoHa and LoKr use peft's rank and module dropout instead (LyCORIS' semantics).
"""
from __future__ import annotations

from typing import Iterable

import torch

from engine.config.network_types import NetworkSpec


class LoraDropouts:
    """The forward hook on one LoRA layer's down projection."""

    def __init__(self, network_dropout: float, rank_dropout: float, module_dropout: float):
        self.network_dropout = network_dropout
        self.rank_dropout = rank_dropout
        self.module_dropout = module_dropout

    def __call__(self, module: torch.nn.Module, inputs, down: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return down
        if self.module_dropout and torch.rand(1).item() < self.module_dropout:
            return torch.zeros_like(down)
        if self.network_dropout:
            down = torch.nn.functional.dropout(down, p=self.network_dropout)
        if self.rank_dropout:
            rank_dim = 1 if isinstance(module, torch.nn.Conv2d) else down.dim() - 1
            shape = [1] * down.dim()
            shape[0], shape[rank_dim] = down.shape[0], down.shape[rank_dim]
            keep = torch.rand(shape, device=down.device) > self.rank_dropout
            down = down * keep.to(down.dtype) / (1.0 - self.rank_dropout)
        return down


def add_lora_dropouts(layers: Iterable[torch.nn.Module], spec: NetworkSpec, adapter: str) -> int:
    """Hook the spec's dropouts onto every peft LoRA layer's `adapter`; returns how many were hooked."""
    if not (spec.network_dropout or spec.rank_dropout or spec.module_dropout):
        return 0
    hook = LoraDropouts(spec.network_dropout, spec.rank_dropout, spec.module_dropout)
    count = 0
    for layer in layers:
        layer.lora_A[adapter].register_forward_hook(hook)
        count += 1
    return count
