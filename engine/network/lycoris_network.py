"""LyCORIS' own network types, trained with the LyCORIS library's modules: iA3, Diag-OFT,
DyLoRA, GLoRA, and DoRA with its magnitude per input column (LoCon with `dora_wd`,
`wd_on_output=False`).

Why LyCORIS (`lycoris-lora`) and not peft for these: peft has an IA3 and an OFT, but
neither is the math or the file layout of the Kohya GUI's files (LyCORIS' `weight` +
`on_input`, `oft_blocks` + `alpha`), and peft has no DyLoRA, no GLoRA and no per-input
DoRA. LyCORIS is what the GUI trains these types with (`--network_module lycoris.kohya`),
and each module's state dict is the file's tensors, which LyCORIS' own loader, ComfyUI and
AUTOMATIC1111 read. peft keeps LoRA, LoCon, LoHa, LoKr and per-output DoRA
(engine.network.lora).

Layers: those of LyCORIS' `full` preset, which the GUI passes: every Linear and conv
inside the U-Net's Transformer2DModel, ResnetBlock2D, Downsample2D and Upsample2D blocks,
plus conv_in, conv_out and the time embedding's two Linears; every Linear of CLIP's
attention and MLP. Linears and 1x1 convs get the rank, wider kernels the conv rank (none
at conv rank 0), as LyCORIS' kohya network builds them. Key names are sd-scripts'
(the family's LoRA components: `component.key`).

Each LyCORIS module hooks the forward of the layer it adapts (its `apply_to`) and is added
to that layer as a child, so the U-Net's (or text encoder's) own parameters, train/eval
mode and DDP wrapping include it, as they include peft's layers.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from engine.config.network_types import NetworkSpec
from engine.errors import LoradeckError
from engine.model.family import FamilyDescriptor
from engine.network.lora import LoraNetwork, _parts_of

CHILD_NAME = "lycoris_adapter"


def _module_class(spec: NetworkSpec):
    from lycoris.modules import DiagOFTModule, GLoRAModule, IA3Module, LoConModule

    return {"ia3": IA3Module, "diag-oft": DiagOFTModule, "dylora": _dylora_class(), "glora": GLoRAModule,
            "dora": LoConModule}[spec.type]


@functools.lru_cache(maxsize=1)
def _dylora_class():
    from lycoris.modules import DyLoraModule

    class DyLoraRenderedAsSaved(DyLoraModule):
        """LyCORIS' DyLoRA: in training a random leading block of ranks each step (its own
        forward); outside training the file as every reader renders it, a plain LoRA of all
        ranks at alpha / rank (LyCORIS' forward would draw a random block for samples too)."""

        def forward(self, x, *args, **kwargs):
            if self.training:
                return super().forward(x, *args, **kwargs)
            base = self.org_forward(x, *args, **kwargs)
            up, down = torch.cat(list(self.up_list), dim=1), torch.cat(list(self.down_list))
            delta = (up @ down).view(self.shape) * (self.alpha / self.lora_dim * self.multiplier)
            return base + self.op(x, delta.to(x.dtype), None, **self.kw_dict)

    return DyLoraRenderedAsSaved


def _type_arguments(spec: NetworkSpec) -> dict[str, Any]:
    """The keyword arguments lycoris.kohya's create_network passes each type's module."""
    if spec.type == "ia3":
        return {"train_on_input": spec.train_on_input}
    if spec.type == "diag-oft":
        return {"constraint": spec.constraint, "rescaled": spec.rescaled}
    if spec.type == "dylora":
        return {"block_size": spec.block_size}
    if spec.type == "dora":
        return {"weight_decompose": True, "wd_on_out": spec.dora_layout == "output"}
    return {}


def full_preset_layers(model: torch.nn.Module, denoiser: bool) -> Iterator[tuple[str, torch.nn.Module]]:
    """(name, layer) of every Linear and Conv2d LyCORIS' `full` preset adapts in `model` (a
    denoiser, or a text encoder), in module order, each once."""
    from lycoris.config import PRESET

    preset = PRESET["full"]
    blocks = set(preset["unet_target_module" if denoiser else "text_encoder_target_module"])
    names = set(preset["unet_target_name" if denoiser else "text_encoder_target_name"])
    seen: set[str] = set()
    for parent_name, parent in model.named_modules():
        if CHILD_NAME in parent_name.split("."):
            continue
        if type(parent).__name__ in blocks:
            children = ((f"{parent_name}.{child_name}", child) for child_name, child in parent.named_modules()
                        if child_name and CHILD_NAME not in child_name.split("."))
        elif parent_name in names:
            children = iter([(parent_name, parent)])
        else:
            continue
        for name, child in children:
            if isinstance(child, (torch.nn.Linear, torch.nn.Conv2d)) and name not in seen:
                seen.add(name)
                yield name, child


@dataclass
class LycorisNetwork(LoraNetwork):
    """LyCORIS modules on the family's parts; the interface of LoraNetwork, which it shares
    (the trainer, sampling, the grid and resume use either)."""

    adapters: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)  # part -> (key, module)
    enabled: bool = True

    @classmethod
    def build(cls, family: FamilyDescriptor, holder, spec: NetworkSpec) -> "LycorisNetwork":
        """Fresh modules of the spec's type; every type starts at the base model's output."""
        logging.getLogger("LyCORIS").setLevel(logging.WARNING)  # its info is one line per layer
        network = cls(family, _parts_of(holder, family), spec)
        for module in network.modules.values():
            module.requires_grad_(False)
        module_class, arguments = _module_class(spec), _type_arguments(spec)
        for component, model in network.adapted():
            adapters = network.adapters.setdefault(component.part, [])
            for name, layer in full_preset_layers(model, component.is_denoiser):
                kernel = layer.kernel_size[0] if isinstance(layer, torch.nn.Conv2d) else 1
                chosen = spec.rank_of(kernel)
                if chosen is None:
                    continue
                rank, alpha = chosen
                key = component.key(name)
                try:
                    module = module_class(key, layer, 1.0, rank, alpha, 0.0, spec.rank_dropout, spec.module_dropout,
                                          False, **arguments)
                except (ValueError, AssertionError) as error:
                    raise LoradeckError(f"network: LyCORIS' {spec.type} refused {name} ({error or 'its shape'})") from None
                module.to(device=layer.weight.device)
                module.apply_to()
                layer.add_module(CHILD_NAME, module)
                adapters.append((key, module))
        # the adapters train in fp32 even when the frozen base is fp16/bf16 (as peft's layers here)
        for parameter in network.parameters():
            parameter.data = parameter.data.float()
            parameter.requires_grad_(True)
        return network

    # ---- parameters (LoraNetwork groups them by part through _component_parameters)

    def _all(self) -> Iterator[tuple[str, Any]]:
        for component, _ in self.adapted():
            yield from self.adapters.get(component.part, [])

    def layers(self) -> Iterator[torch.nn.Module]:
        for _, module in self._all():
            yield module

    def _component_parameters(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        part = next(name for name, module in self.modules.items() if module is model)
        return [parameter for _, module in self.adapters.get(part, []) for parameter in module.parameters()]

    def set_multiplier(self, multiplier: float) -> None:
        for module in self.layers():
            module.multiplier = multiplier

    def enable(self, enabled: bool) -> None:
        """Switch every module on or off (off: the base model's own output)."""
        if enabled == self.enabled:
            return
        for module in self.layers():
            if enabled:
                module.apply_to()
            else:
                module.restore()
        self.enabled = enabled

    def cast(self, device: torch.device, dtype: torch.dtype) -> None:
        for module in self.layers():
            module.to(device=device, dtype=dtype)

    # ---- the file's layout: each module's own state dict, through the family's file layout

    def _module_tensors(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        for key, module in self._all():
            for suffix, tensor in _file_tensors(module).items():
                tensor = tensor.detach().to("cpu")
                tensors[f"{key}.{suffix}"] = (tensor.to(dtype) if tensor.is_floating_point()
                                              else tensor).contiguous()
        return tensors

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Set every module from a file's tensors; the file must fit this network exactly."""
        tensors = self.family.runtime().lora_network_tensors(tensors)
        expected: set[str] = set()
        with torch.no_grad():
            for key, module in self._all():
                own = _file_tensors(module)
                for suffix, tensor in own.items():
                    name = f"{key}.{suffix}"
                    expected.add(name)
                    if name not in tensors:
                        raise LoradeckError(f"the file has no {name}; it is another network type, or was trained on "
                                            "another model")
                    if tensors[name].shape != tensor.shape:
                        raise LoradeckError(f"the file's {name} is {tuple(tensors[name].shape)}, this network's "
                                            f"{tuple(tensor.shape)}: another rank, layout or network type")
                _load_module(module, {suffix: tensors[f"{key}.{suffix}"] for suffix in own})
        extra = sorted(set(tensors) - expected)
        if extra:
            raise LoradeckError(f"the file has {len(extra)} keys this network lacks, e.g. {extra[0]}")


def _file_tensors(module: Any) -> dict[str, torch.Tensor]:
    """A module's tensors as the file holds them: its LyCORIS state dict, except that DyLoRA's
    lora_up of a conv is stored (out, rank, 1, 1) as every LoCon's is (LyCORIS keeps it 2-D,
    which its own loader and AUTOMATIC1111 cannot put into a conv)."""
    tensors = dict(module.state_dict())
    if isinstance(module, _dylora_class()) and module.module_type.startswith("conv"):
        up = tensors["lora_up.weight"]
        tensors["lora_up.weight"] = up.reshape(*up.shape, *[1] * (len(module.shape) - 2))
    return tensors


def _load_module(module: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Copy a module's file tensors into its own parameters and buffers, in place (an optimizer
    holding them keeps working). DyLoRA stores its rank blocks as one lora_up / lora_down."""
    if isinstance(module, _dylora_class()):
        block = module.block_size
        up, down = tensors["lora_up.weight"].flatten(1), tensors["lora_down.weight"].reshape(module.lora_dim, -1)
        for index, (up_block, down_block) in enumerate(zip(module.up_list, module.down_list)):
            up_block.copy_(up[:, index * block:(index + 1) * block])
            down_block.copy_(down[index * block:(index + 1) * block])
        module.alpha.copy_(tensors["alpha"])
        return
    own = dict(module.named_parameters()) | dict(module.named_buffers())
    for suffix, tensor in tensors.items():
        own[suffix].copy_(tensor)
