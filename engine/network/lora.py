"""The network: peft adapters on a model's parts, saved in the Kohya / LyCORIS key layout.

The adapters are peft's own layers (LoRA and DoRA from `peft.tuners.lora`, LoHa and LoKr
from `peft.tuners.loha` / `lokr`), injected with the libraries' entry points (diffusers'
`add_adapter` for a LoRA on the U-Net, peft's `inject_adapter_in_model` otherwise), so the
modules stay ordinary diffusers/transformers models that a pipeline can run as they are.
Which parts and layers get one is the family's (engine.model.family.LoraComponent: its
part, Kohya prefix, target names and blocks); for SD and SDXL it follows sd-scripts'
`networks.lora`: every Linear and 1x1 conv inside the U-Net's transformer blocks
(`Transformer2DModel`) and inside CLIP's attention and MLP; the conv types
(engine.config.network_types) add every Linear and conv of the ResNet blocks, downsamplers
and upsamplers, the 3x3 ones at `conv_dim`/`conv_alpha`. A family whose file layout is not
one key per module converts in its runtime (`lora_file_tensors` / `lora_network_tensors`).

On disk a network is a `.safetensors` file in the layout diffusers' `load_lora_weights`,
AUTOMATIC1111, ComfyUI and sd-scripts read; one key prefix per adapted module:

    lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight   (rank, in, 1, 1)   lora, locon, dora
    lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight     (out, rank, 1, 1)
    lora_unet_down_blocks_0_attentions_0_proj_in.alpha              () = alpha          every type
    lora_unet_..._proj_in.dora_scale          (out, 1, 1, 1)  dora: LyCORIS' wd_on_output layout
    lora_unet_..._to_q.hada_w1_a / hada_w1_b / hada_w2_a / hada_w2_b  (+ hada_t1, hada_t2)  loha
    lora_unet_..._to_q.lokr_w1 (or lokr_w1_a, lokr_w1_b), lokr_w2 (or lokr_w2_a, lokr_w2_b, lokr_t2)  lokr
    lora_te_text_model_encoder_layers_0_self_attn_q_proj....

The key is the component's name for the module (`LoraComponent.key`): by default its dotted
path with dots turned into underscores (that is why the mapping back goes through the
model's own module names, not by parsing the key), after the component's prefix: SD's
`lora_unet_*` and `lora_te_*`; SDXL's two text encoders are `lora_te1_*` (CLIP-L) and
`lora_te2_*` (OpenCLIP-bigG), and its U-Net's keys take the original (SGM) layout's module
names (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`), as sd-scripts' SDXL
networks.lora names them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from engine.atomic import atomic_path
from engine.config.network_types import NetworkSpec
from engine.errors import LoradeckError
from engine.model.adapters import ADAPTER_NAME, TENSORS, peft_config
from engine.model.families import lora_prefixes
from engine.model.family import FamilyDescriptor, LoraComponent
from engine.network.dropout import add_lora_dropouts
from engine.plan.network_size import LayerShape, lokr_layout

SAVE_DTYPES = {"float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def lora_layers(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """(module name, peft adapter layer) for every layer carrying our adapter, of any type."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer) and ADAPTER_NAME in getattr(module, "r", {}):
            yield name, module


def _kernel(module: torch.nn.Module) -> int:
    return module.kernel_size[0] if isinstance(module, torch.nn.Conv2d) else 1


def _block_layers(model: torch.nn.Module, blocks: tuple[str, ...]) -> Iterator[tuple[str, torch.nn.Module]]:
    """(name, module) of every Linear and Conv2d inside a module whose class is in `blocks`."""
    for parent_name, parent in model.named_modules():
        if type(parent).__name__ in blocks:
            for child_name, child in parent.named_modules():
                if child_name and isinstance(child, (torch.nn.Linear, torch.nn.Conv2d)):
                    yield f"{parent_name}.{child_name}", child


def _targets(model: torch.nn.Module, spec: NetworkSpec, component: LoraComponent):
    """(target modules, rank pattern, alpha pattern) of one model part for peft.

    Standard LoRA targets by name suffix, as it always has; the other types list every
    layer by its full name, with the layers whose rank or alpha differ from the spec's
    (the 3x3 convolutions, LoKr's full-matrix layers) in the patterns."""
    if not spec.adapts_resnets and spec.type == "lora" and component.target_names:
        return list(component.target_names), {}, {}
    blocks = component.blocks + (component.conv_blocks if spec.adapts_resnets else ())
    names, ranks, alphas = [], {}, {}
    for name, module in _block_layers(model, blocks):
        chosen = spec.rank_of(_kernel(module))
        if chosen is None:
            continue
        rank, alpha = chosen
        names.append(name)
        if spec.type == "lokr":
            weight = module.weight
            _, full = lokr_layout(LayerShape(weight.shape[1], weight.shape[0], _kernel(module)), rank, spec.factor)
            if full:
                alpha = rank  # both factors full matrices: LyCORIS scales by 1, whatever the alpha
        if (rank, alpha) != (spec.rank, spec.alpha):
            ranks[re.escape(name)] = rank
            alphas[re.escape(name)] = alpha
    return names, ranks, alphas


@dataclass
class LoraNetwork:
    """The adapters attached to a base model's parts, as its family's LoRA components say."""

    family: FamilyDescriptor
    modules: dict[str, torch.nn.Module]  # part name -> the module its adapters live in
    spec: NetworkSpec

    @property
    def rank(self) -> int:
        return self.spec.rank

    @property
    def alpha(self) -> float:
        return self.spec.alpha

    @property
    def has_unet(self) -> bool:
        """Whether the denoiser (U-Net or transformer) is adapted (`network.train_unet`)."""
        return self.spec.train_unet

    @property
    def has_text_encoder(self) -> bool:
        return self.spec.train_text_encoder

    def adapted(self) -> list[tuple[LoraComponent, torch.nn.Module]]:
        """(component, module) of every part this network adapts, denoiser first."""
        return [(component, self.modules[component.part]) for component in self.family.lora_components
                if (self.has_unet if component.is_denoiser else self.has_text_encoder)
                and (not component.switch or getattr(self.spec, component.switch, False))]

    @classmethod
    def attach(cls, family: FamilyDescriptor, holder, *, rank: int, alpha: float, train_unet: bool = True,
               train_text_encoder: bool = True) -> "LoraNetwork":
        """A fresh standard LoRA (down: Kaiming uniform, up: zeros, so training starts at the base)."""
        spec = NetworkSpec(rank=rank, alpha=alpha, train_unet=train_unet, train_text_encoder=train_text_encoder)
        return cls.build(family, holder, spec)

    @classmethod
    def from_config(cls, model, config, *, base_dir, train_text_encoder: bool) -> "LoraNetwork":
        """The network a config trains on a loaded model (engine.model.family.BaseModel),
        started from `network.network_weights` when it names a file."""
        from engine.config.schema import resolve_path

        network = cls.build(model.family, model, NetworkSpec.of(config, train_text_encoder=train_text_encoder))
        start = resolve_path(base_dir, config.network.network_weights)
        if start is not None:
            if not start.is_file():
                raise LoradeckError(f"network.network_weights: {start}: no such LoRA file")
            tensors, _ = read_lora_file(start)
            try:
                network.load_state_dict(tensors)
            except LoradeckError as error:
                raise LoradeckError(f"network.network_weights: {start.name}: {error}") from None
        return network

    @classmethod
    def build(cls, family: FamilyDescriptor, holder, spec: NetworkSpec) -> "LoraNetwork":
        """Inject fresh adapters of the spec's type into the family's parts of `holder` (a
        loaded model, a diffusers pipeline, or a dict of parts by name); every type starts at
        the base model's output. LyCORIS' own types (and DoRA per input) are LyCORIS modules:
        engine.network.lycoris_network."""
        problem = family.network_problem(spec)
        if problem:
            raise LoradeckError(problem)
        if spec.built_by_lycoris:
            from engine.network.lycoris_network import LycorisNetwork

            return LycorisNetwork.build(family, holder, spec)  # type: ignore[return-value]
        from peft import LoraConfig, inject_adapter_in_model

        network = cls(family, _parts_of(holder, family), spec)
        for module in network.modules.values():
            module.requires_grad_(False)
        for component, module in network.adapted():
            config = peft_config(spec, *_targets(module, spec, component))
            if component.is_denoiser and isinstance(config, LoraConfig) and hasattr(module, "add_adapter"):
                # diffusers' own entry point, so set_adapters()/disable_adapters() work on it later
                module.add_adapter(config, adapter_name=ADAPTER_NAME)
            else:
                # peft directly: transformers' add_adapter insists on a newer peft than diffusers
                inject_adapter_in_model(config, module, ADAPTER_NAME)
            family.runtime().adapters_attached(component, module, spec)
        # adapter weights train in fp32 even when the frozen base is fp16/bf16: small updates
        # to low-precision weights round away (diffusers' cast_training_params does the same).
        for parameter in network.parameters():
            parameter.data = parameter.data.float()
        if spec.type in ("lora", "locon"):
            add_lora_dropouts(network.layers(), spec, ADAPTER_NAME)  # loha/lokr: peft's own rank and module dropout
        return network

    # ---- parameters

    def layers(self) -> Iterator[torch.nn.Module]:
        for _, layer in self._modules():
            yield layer

    def _component_parameters(self, module: torch.nn.Module) -> list[torch.nn.Parameter]:
        """Every adapter parameter once (a family may share one between modules it fuses)."""
        unique = {id(p): p for _, layer in lora_layers(module) for p in self._layer_parameters(layer)}
        return list(unique.values())

    def unet_parameters(self) -> list[torch.nn.Parameter]:
        return [p for component, module in self.adapted() if component.is_denoiser
                for p in self._component_parameters(module)]

    def text_encoder_parameters(self) -> list[torch.nn.Parameter]:
        return [p for component, module in self.adapted() if not component.is_denoiser
                for p in self._component_parameters(module)]

    def parameters(self) -> list[torch.nn.Parameter]:
        return self.unet_parameters() + self.text_encoder_parameters()

    def param_groups(self, rates: dict[str, float]) -> list[dict[str, Any]]:
        """Optimizer groups, the denoiser first, then one per text encoder, each at the rate
        its component names ("unet", "text_encoder", "text_encoder_2": `learning_rates`) and
        carrying that name for logging."""
        return [{"params": self._component_parameters(module), "lr": rates[component.learning_rate],
                 "name": component.learning_rate} for component, module in self.adapted()]

    def freeze_text_encoder(self) -> None:
        """Stop training the text-encoder adapters (their weights stay in the file as they are)."""
        for parameter in self.text_encoder_parameters():
            parameter.requires_grad_(False)
            parameter.grad = None

    def set_multiplier(self, multiplier: float) -> None:
        """Scale every adapter's update (the LoRA weight of a prompt, `<lora:name:0.8>`)."""
        for layer in self.layers():
            layer.set_scale(ADAPTER_NAME, multiplier)

    def enable(self, enabled: bool) -> None:
        """Switch every adapter on or off (off: the base model's own output)."""
        for layer in self.layers():
            layer.enable_adapters(enabled)

    def cast(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move the adapter weights to the base model's device and dtype (for inference)."""
        for parameter in self.parameters():
            parameter.data = parameter.data.to(device, dtype)

    def _tensors_of(self, layer: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """(file suffix, parameter) of one layer, in the type's tensor order."""
        for suffix, attribute in TENSORS[self.spec.type]:
            holder = getattr(layer, attribute)
            if ADAPTER_NAME in holder:
                item = holder[ADAPTER_NAME]
                yield suffix, item if isinstance(item, torch.nn.Parameter) else item.weight

    def _layer_parameters(self, layer: torch.nn.Module) -> list[torch.nn.Parameter]:
        return [parameter for _, parameter in self._tensors_of(layer)]

    # ---- Kohya / LyCORIS layout

    def _modules(self) -> Iterator[tuple[str, torch.nn.Module]]:
        for component, module in self.adapted():
            for name, layer in lora_layers(module):
                yield component.key(name), layer

    @staticmethod
    def _alpha(layer: torch.nn.Module) -> float:
        alphas = layer.lora_alpha if hasattr(layer, "lora_alpha") else layer.alpha
        return float(alphas[ADAPTER_NAME])

    @staticmethod
    def _file_shape(suffix: str, parameter: torch.Tensor, layer: torch.nn.Module) -> torch.Size:
        """The tensor's shape in the file: peft's, except DoRA's magnitude, which LyCORIS
        stores as (out, 1, ...) beside a weight of (out, in, ...) (its wd_on_output layout)."""
        if suffix != "dora_scale":
            return parameter.shape
        weight = layer.get_base_layer().weight
        return torch.Size((weight.shape[0], *[1] * (weight.dim() - 1)))

    def state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The file's tensors on the CPU in `dtype`, with each layer's `.alpha`, in the
        family's file layout."""
        return self.family.runtime().lora_file_tensors(self._module_tensors(dtype))

    def _module_tensors(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """One Kohya key per adapted module."""
        tensors: dict[str, torch.Tensor] = {}
        for key, layer in self._modules():
            for suffix, parameter in self._tensors_of(layer):
                shape = self._file_shape(suffix, parameter, layer)
                tensors[f"{key}.{suffix}"] = parameter.detach().reshape(shape).to("cpu", dtype).contiguous()
            tensors[f"{key}.alpha"] = torch.tensor(self._alpha(layer), dtype=dtype)
        return tensors

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Set every adapter from a file's tensors; the file must fit this network exactly
        (type, layers, ranks and alphas)."""
        tensors = self.family.runtime().lora_network_tensors(tensors)
        expected = set()
        with torch.no_grad():
            for key, layer in self._modules():
                for suffix, parameter in self._tensors_of(layer):
                    name = f"{key}.{suffix}"
                    expected.add(name)
                    if name not in tensors:
                        raise LoradeckError(f"the file has no {name}; it is another network type, or was trained on "
                                            "another model")
                    shape = self._file_shape(suffix, parameter, layer)
                    if tensors[name].shape != shape:
                        raise LoradeckError(f"the file's {name} is {tuple(tensors[name].shape)}, this network's "
                                            f"{tuple(shape)}: another rank, factor or network type")
                    parameter.copy_(tensors[name].reshape(parameter.shape))
                alpha_key = f"{key}.alpha"
                expected.add(alpha_key)
                if alpha_key in tensors and not torch.isclose(tensors[alpha_key].float(),
                                                              torch.tensor(self._alpha(layer)), rtol=1e-3):
                    raise LoradeckError(f"the file's {alpha_key} is {float(tensors[alpha_key]):g}, this network's "
                                        f"{self._alpha(layer):g}")
        extra = sorted(set(tensors) - expected)
        if extra:
            raise LoradeckError(f"the file has {len(extra)} keys this network lacks, e.g. {extra[0]}")


def save_lora_file(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """Write a LoRA `.safetensors` atomically; returns its size in bytes."""
    from safetensors.torch import save_file

    with atomic_path(path) as temp:
        save_file(tensors, str(temp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    return Path(path).stat().st_size


def read_lora_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a LoRA `.safetensors` file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise LoradeckError(f"{path}: no such LoRA file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise LoradeckError(f"{path}: not a readable .safetensors file ({error})") from None
    return tensors, metadata


def network_shape(tensors: dict[str, torch.Tensor]) -> tuple[int, float, bool, bool]:
    """(rank, alpha, has U-Net, has text encoder) of a standard LoRA in the Kohya layout."""
    downs = [key for key in tensors if key.endswith(".lora_down.weight")]
    if not downs:
        raise LoradeckError("not a LoRA in the Kohya layout (no .lora_down.weight keys)")
    first = downs[0].removesuffix(".lora_down.weight")
    rank = tensors[downs[0]].shape[0]
    alpha_tensor = tensors.get(f"{first}.alpha")
    alpha = float(alpha_tensor.item()) if alpha_tensor is not None else float(rank)
    has_unet, has_text_encoder = _parts(tensors)
    return rank, alpha, has_unet, has_text_encoder


def _parts(tensors: dict[str, torch.Tensor]) -> tuple[bool, bool]:
    """(has denoiser adapters, has text-encoder adapters), by any family's Kohya prefixes."""
    def has(prefixes: tuple[str, ...]) -> bool:
        return any(key.startswith(tuple(prefix + "_" for prefix in prefixes)) for key in tensors)

    return has(lora_prefixes(denoiser=True)), has(lora_prefixes(denoiser=False))


def file_spec(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> NetworkSpec:
    """The spec a file of ours was saved with: from its ss_network_* metadata, or, for a
    standard LoRA without it, from its tensors."""
    has_unet, has_text_encoder = _parts(tensors)
    if "ss_network_module" in metadata and "ss_network_dim" in metadata:
        try:
            return NetworkSpec.from_metadata(metadata, train_unet=has_unet, train_text_encoder=has_text_encoder)
        except ValueError as error:
            raise LoradeckError(f"not a network loradeck can load: {error}") from None
    rank, alpha, has_unet, has_text_encoder = network_shape(tensors)
    return NetworkSpec(rank=rank, alpha=alpha, train_unet=has_unet, train_text_encoder=has_text_encoder)


def attach_lora_file(family: FamilyDescriptor, holder, path: str | Path) -> LoraNetwork:
    """Attach the adapters of a file we wrote (any type) to the family's fresh parts of
    `holder` (a loaded model, a pipeline, or a dict of parts)."""
    tensors, metadata = read_lora_file(path)
    try:
        network = LoraNetwork.build(family, holder, file_spec(tensors, metadata))
        network.load_state_dict(tensors)
    except LoradeckError as error:
        raise LoradeckError(f"{path}: {error}") from None
    return network


def _parts_of(holder, family: FamilyDescriptor) -> dict[str, torch.nn.Module]:
    """The family's adaptable parts of a loaded model, a pipeline or a dict of parts (a part
    the holder lacks is left out: a network that does not train it never needs it)."""
    parts = {}
    for component in family.lora_components:
        module = holder.get(component.part) if isinstance(holder, dict) else getattr(holder, component.part, None)
        if module is not None:
            parts[component.part] = module
    return parts


def learning_rates(config) -> dict[str, float]:
    """The config's learning rate for each rate a LoRA component names."""
    return {"unet": config.unet_learning_rate, "text_encoder": config.text_encoder_learning_rate,
            "text_encoder_2": config.text_encoder_2_learning_rate}
