"""Block swap for small cards (sd-scripts' `--blocks_to_swap`): the frozen weights of the
last N transformer blocks live in (pinned) CPU memory and visit the GPU for their own
forward only.

    swap = BlockSwap(transformer, count, device)      after fp8 storage and the LoRA are set up
    swap.remove()                                     everything back on `device`

How it stays correct and small: a forward pre-hook on a swapped block copies its frozen
weights to the device (non-blocking from pinned memory) after pointing every other swapped
block back at its CPU copies, and a forward hook points the block back too when its forward
ends (a checkpointed recomputation may stop early, before that hook, hence the first rule:
one swapped block at most is ever resident). Autograd keeps the device copies a backward needs alive until that
block's backward has run, and frees them after, so with gradient checkpointing (required:
without it every block's saved tensors would keep every copy) at most the block being
recomputed holds device weights. The LoRA's own parameters never move: they train on the
device, their gradients and optimizer state with them. Each step copies the swapped blocks
twice over PCIe (forward and recomputation): about 0.33 GB per double block, 0.14 GB per
single block in fp8.

Heavy module (torch).
"""
from __future__ import annotations

import torch

from engine.errors import LoradeckError


def swappable_blocks(transformer) -> list[torch.nn.Module]:
    """The blocks in the order they run: double blocks, then single blocks."""
    return [*transformer.transformer_blocks, *transformer.single_transformer_blocks]


class BlockSwap:
    def __init__(self, transformer, count: int, device, *, gradient_checkpointing: bool = True):
        blocks = swappable_blocks(transformer)
        if not 0 < count < len(blocks):
            raise LoradeckError(f"precision.blocks_to_swap: {count} is not between 1 and {len(blocks) - 1} "
                                f"(the transformer has {len(blocks)} blocks)")
        if not gradient_checkpointing:
            raise LoradeckError("precision.blocks_to_swap needs precision.gradient_checkpointing: without it the "
                                "backward pass keeps every block's weights on the GPU")
        self.device = torch.device(device)
        self.blocks = blocks[-count:]
        self.handles = []
        self.resident: set[int] = set()
        pin = self.device.type == "cuda"
        self.weights: dict[int, list[tuple[torch.nn.Parameter, torch.Tensor]]] = {}
        for block in self.blocks:
            frozen = [(parameter, parameter.data.to("cpu").pin_memory() if pin else parameter.data.to("cpu"))
                      for parameter in block.parameters() if not parameter.requires_grad]
            for parameter, copy in frozen:
                parameter.data = copy
            self.weights[id(block)] = frozen
            self.handles.append(block.register_forward_pre_hook(self._arrive))
            self.handles.append(block.register_forward_hook(self._leave))

    def _arrive(self, block, args) -> None:
        for other in list(self.resident):
            self._evict(other)
        for parameter, copy in self.weights[id(block)]:
            parameter.data = copy.to(self.device, non_blocking=True)
        self.resident.add(id(block))

    def _leave(self, block, args, output) -> None:
        self._evict(id(block))

    def _evict(self, key: int) -> None:
        for parameter, copy in self.weights[key]:
            parameter.data = copy
        self.resident.discard(key)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        for frozen in self.weights.values():
            for parameter, copy in frozen:
                parameter.data = copy.to(self.device)
        self.handles, self.weights = [], {}
