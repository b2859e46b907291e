"""Flux.1's LoRA: peft adapters on diffusers' transformer, written as sd-scripts' fused modules.

sd-scripts (`networks.lora_flux`) adapts every Linear of BFL's double and single blocks,
where q, k and v (and a single block's MLP input) are one fused Linear: `img_attn.qkv`,
`txt_attn.qkv`, `linear1`. diffusers keeps them apart (`attn.to_q`, `to_k`, `to_v`,
`proj_mlp`), so an adapter per diffusers module would not fit sd-scripts' layout. Instead
each fused group trains exactly the adapter sd-scripts would train on the fused Linear:

* its input-side factors are one shared parameter in every module of the group
  (LoRA/DoRA `lora_down`, LoHa `hada_w1_b` / `hada_w2_b`, LoKr `lokr_w2*`), and
* its output-side factors are the group's rows, one slice per module (`lora_up`,
  DoRA's magnitude, `hada_w1_a` / `hada_w2_a`, LoKr's `lokr_w1`).

Because every module of a group reads the same input, the fused adapter's output is the
modules' outputs stacked: the file is sd-scripts' fused tensors (input side once, output
sides concatenated) with the group's own rank and alpha, nothing lost and nothing padded.
LoKr's Kronecker rows only split at multiples of `lokr_w2`'s rows, so a group's LoKr takes
the (w1, w2) side order in which w2's rows divide every module's rows (LyCORIS' readers
take any shapes the file has). LoCon adds nothing on Flux (its transformer has no
convolutions) and is refused with that reason.

    FLUX_NETWORK_TYPES
    inject(transformer, spec) -> [(Kohya name, [peft layers])]     the groups, in file order
    groups_of(transformer) -> the same, for a transformer that has them
    group_tensors(groups, spec, dtype) -> {file key: tensor}
    load_group_tensors(groups, spec, tensors) -> set of keys consumed

Heavy module (torch, peft).
"""
from __future__ import annotations

import math
import re

import torch

from engine.errors import LoradeckError
from engine.model.adapters import ADAPTER_NAME, TENSORS, peft_config
from engine.model.families.flux import layout
from engine.model.shapes import LayerShape, lokr_layout

FLUX_NETWORK_TYPES = layout.FLUX_NETWORK_TYPES
# Which side of ΔW = (out x in) each file tensor holds: "in" tensors are shared by a fused
# group's modules, "out" tensors are the group's rows, one slice per module
SIDES = {
    "lora_down.weight": "in", "lora_up.weight": "out", "dora_scale": "out",
    "hada_w1_a": "out", "hada_w1_b": "in", "hada_w2_a": "out", "hada_w2_b": "in",
    "lokr_w1": "out", "lokr_w2": "in", "lokr_w2_a": "in", "lokr_w2_b": "in",
}
_SHARED_ATTRIBUTES = {"lora": ("lora_A",), "dora": ("lora_A",), "loha": ("hada_w1_b", "hada_w2_b")}


def check_type(spec) -> None:
    from engine.model.families.flux import FLUX

    problem = FLUX.network_problem(spec)
    if problem:
        raise LoradeckError(problem)


def module_groups(transformer) -> list[tuple[str, tuple[str, ...]]]:
    return layout.lora_groups(len(transformer.transformer_blocks), len(transformer.single_transformer_blocks))


def inject(transformer: torch.nn.Module, spec) -> list[tuple[str, list[torch.nn.Module]]]:
    """Adapters of the spec's type on every Linear of every block, fused groups tied (what
    engine.network does through the family contract; kept for the family's own tests)."""
    from peft import LoraConfig, inject_adapter_in_model

    check_type(spec)
    targets = [name for _, names in module_groups(transformer) for name in names]
    config = peft_config(spec, targets, {}, {})
    if isinstance(config, LoraConfig):
        transformer.add_adapter(config, adapter_name=ADAPTER_NAME)  # diffusers' entry point: set_adapters works
    else:
        inject_adapter_in_model(config, transformer, ADAPTER_NAME)
    return tie(transformer, spec)


def tie(transformer: torch.nn.Module, spec) -> list[tuple[str, list[torch.nn.Module]]]:
    """Make each fused group's adapters one adapter: its input-side factors one shared
    parameter, LoKr's factors reshaped to the fused module's; all in fp32. Returns the groups."""
    check_type(spec)
    groups = groups_of(transformer)
    for kohya, layers in groups:
        if spec.type == "lokr":
            _fuse_lokr(kohya, layers, spec)
        elif len(layers) > 1:
            for attribute in _SHARED_ATTRIBUTES[spec.type]:
                shared = getattr(layers[0], attribute)[ADAPTER_NAME]
                for layer in layers[1:]:
                    holder = getattr(layer, attribute)
                    if isinstance(shared, torch.nn.Module):  # LoRA's lora_A is a Linear: share its weight
                        holder[ADAPTER_NAME].weight = shared.weight
                    else:
                        holder[ADAPTER_NAME] = shared
    # adapters train in fp32 whatever the base's dtype (peft made them in it: bf16, or fp8 with fp8_base)
    for parameter in parameters(groups):
        parameter.data = parameter.data.float()
    return groups


def groups_of(transformer: torch.nn.Module) -> list[tuple[str, list[torch.nn.Module]]]:
    modules = dict(transformer.named_modules())
    groups = []
    for kohya, names in module_groups(transformer):
        layers = [modules.get(name) for name in names]
        if all(layer is not None and hasattr(layer, "get_base_layer") for layer in layers):
            for layer, name in zip(layers, names):
                layer.loradeck_module_name = name
            groups.append((kohya, layers))
    return groups


def lokr_sides(out_sizes: list[int], fan_in: int, rank: int, factor: int) -> tuple[tuple[int, int, int, int], bool]:
    """((a, b, c, d), w2 full) of a fused group's LoKr (engine.model.shapes.lokr_layout: w2's
    b rows divide each module's rows)."""
    (a, b, c, d), full = lokr_layout(LayerShape(fan_in, sum(out_sizes), 1, tuple(out_sizes)), rank, factor)
    if b == 0:
        raise LoradeckError(f"network.factor: {factor} does not split the fused projection's {sum(out_sizes)} rows "
                            f"at its parts {out_sizes}; try another factor (or -1)")
    return (a, b, c, d), full


def _fuse_lokr(kohya: str, layers: list[torch.nn.Module], spec) -> None:
    """Replace peft's per-module LoKr factors by one fused LoKr's: w1's rows split, w2 shared."""
    out_sizes = [layer.get_base_layer().out_features for layer in layers]
    fan_in = layers[0].get_base_layer().in_features
    (a, b, c, d), full = lokr_sides(out_sizes, fan_in, spec.rank, spec.factor)
    device = layers[0].get_base_layer().weight.device
    rank = spec.rank

    def parameter(*shape, zero: bool = False):
        tensor = torch.empty(*shape, device=device)
        torch.nn.init.zeros_(tensor) if zero else torch.nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))
        return torch.nn.Parameter(tensor)

    # LyCORIS' initialisation: w1 random, w2 (or its second factor) zero, so ΔW starts at 0
    shared = {"lokr_w2": parameter(b, d, zero=True)} if full else {
        "lokr_w2_a": parameter(b, rank), "lokr_w2_b": parameter(rank, d, zero=True)}
    alpha = float(rank) if full else spec.alpha  # two full factors: LyCORIS scales by 1
    for layer, size in zip(layers, out_sizes):
        for name in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"):
            holder = getattr(layer, name)
            if ADAPTER_NAME in holder:
                del holder[ADAPTER_NAME]
        layer.lokr_w1[ADAPTER_NAME] = parameter(size // b, c)
        for name, value in shared.items():
            getattr(layer, name)[ADAPTER_NAME] = value
        layer.alpha[ADAPTER_NAME] = alpha
        layer.scaling[ADAPTER_NAME] = alpha / rank


def _tensors(layer: torch.nn.Module, network_type: str):
    """(file suffix, parameter) of one peft layer, in the type's order."""
    for suffix, attribute in TENSORS[network_type]:
        holder = getattr(layer, attribute)
        if ADAPTER_NAME in holder:
            item = holder[ADAPTER_NAME]
            yield suffix, item if isinstance(item, torch.nn.Parameter) else item.weight


def _alpha(layer: torch.nn.Module) -> float:
    alphas = layer.lora_alpha if hasattr(layer, "lora_alpha") else layer.alpha
    return float(alphas[ADAPTER_NAME])


def parameters(groups) -> list[torch.nn.Parameter]:
    """Every trainable tensor once (a shared factor is one parameter)."""
    seen, found = set(), []
    for _, layers in groups:
        for layer in layers:
            for _, parameter in _tensors(layer, _type_of(layer)):
                if id(parameter) not in seen:
                    seen.add(id(parameter))
                    found.append(parameter)
    return found


def _type_of(layer: torch.nn.Module) -> str:
    if hasattr(layer, "hada_w1_a"):
        return "loha"
    if hasattr(layer, "lokr_w1"):
        return "lokr"
    return "dora" if ADAPTER_NAME in getattr(layer, "lora_magnitude_vector", {}) else "lora"


# --------------------------------------------------------------------------- the file layout
# One key per diffusers module (what engine.network writes for any family) <-> sd-scripts'
# fused keys. Row sizes come from the tensors themselves: a qkv group is three equal parts,
# a single block's linear1 is (width, width, width, the rest), width = its input size.

DIFFUSERS_PREFIX = "lora_unet"
_DIFFUSERS_BLOCK = re.compile(rf"{DIFFUSERS_PREFIX}_(transformer_blocks|single_transformer_blocks)_(\d+)_")
_FUSED_BLOCK = re.compile(rf"{DIFFUSERS_PREFIX}_(double_blocks|single_blocks)_(\d+)_")


def module_key(module_name: str) -> str:
    """The one-module Kohya key of a diffusers module (`lora_unet_transformer_blocks_0_attn_to_q`)."""
    return f"{DIFFUSERS_PREFIX}_{module_name.replace('.', '_')}"


def _block_counts(keys, pattern: re.Pattern, double: str) -> tuple[int, int]:
    found = {(match.group(1), int(match.group(2))) for key in keys if (match := pattern.match(key))}
    doubles = [index for kind, index in found if kind == double]
    singles = [index for kind, index in found if kind != double]
    return (max(doubles) + 1 if doubles else 0), (max(singles) + 1 if singles else 0)


def _suffixes(tensors: dict, key: str) -> list[str]:
    return [name[len(key) + 1:] for name in tensors if name.startswith(key + ".")]


def fuse_file_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One key per diffusers module -> sd-scripts' fused Flux keys (other keys as they are)."""
    fused = dict(tensors)
    for kohya, names in layout.lora_groups(*_block_counts(tensors, _DIFFUSERS_BLOCK, "transformer_blocks")):
        keys = [module_key(name) for name in names]
        for suffix in _suffixes(tensors, keys[0]):
            parts = [fused.pop(f"{key}.{suffix}") for key in keys]
            if suffix == "alpha" or SIDES[suffix] == "in":
                if any(not torch.equal(part, parts[0]) for part in parts[1:]):
                    raise LoradeckError(f"{kohya}: the modules it fuses do not share {suffix}")
                fused[f"{kohya}.{suffix}"] = parts[0]
            else:
                fused[f"{kohya}.{suffix}"] = torch.cat(parts, dim=0)
    return fused


def _fan_in_out(tensors: dict, kohya: str) -> tuple[int, int]:
    """(input features, output rows) of a fused module, from its tensors of any type."""
    get = lambda suffix: tensors.get(f"{kohya}.{suffix}")  # noqa: E731
    if get("lora_down.weight") is not None:
        return get("lora_down.weight").shape[1], get("lora_up.weight").shape[0]
    if get("hada_w1_b") is not None:
        return get("hada_w1_b").shape[1], get("hada_w1_a").shape[0]
    w1 = get("lokr_w1") if get("lokr_w1") is not None else get("lokr_w1_a")
    w2_rows = get("lokr_w2") if get("lokr_w2") is not None else get("lokr_w2_a")
    w2_cols = get("lokr_w2") if get("lokr_w2") is not None else get("lokr_w2_b")
    columns = w1.shape[1] if get("lokr_w1") is not None else get("lokr_w1_b").shape[1]
    return columns * w2_cols.shape[1], w1.shape[0] * w2_rows.shape[0]


def split_file_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """sd-scripts' fused Flux keys -> one key per diffusers module (the input side copied
    to each, the output side's rows split); other keys as they are."""
    split = dict(tensors)
    for kohya, names in layout.lora_groups(*_block_counts(tensors, _FUSED_BLOCK, "double_blocks")):
        suffixes = _suffixes(tensors, kohya)
        if not suffixes:
            continue
        keys = [module_key(name) for name in names]
        if len(keys) > 1:
            fan_in, fan_out = _fan_in_out(tensors, kohya)
            sizes = [fan_in] * 3 + [fan_out - 3 * fan_in] if len(keys) == 4 else [fan_out // 3] * 3
        for suffix in suffixes:
            value = split.pop(f"{kohya}.{suffix}")
            if len(keys) == 1 or suffix == "alpha" or SIDES[suffix] == "in":
                split.update({f"{key}.{suffix}": value for key in keys})
                continue
            unit = fan_out // value.shape[0]  # LoKr's w1 rows stand for w2's rows each
            if any(size % unit for size in sizes):
                raise LoradeckError(f"{kohya}.{suffix}: its {value.shape[0]} rows do not split into {names}")
            split.update(zip((f"{key}.{suffix}" for key in keys), torch.split(value, [s // unit for s in sizes])))
    return split


def group_tensors(groups, spec, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """sd-scripts' / LyCORIS' tensors of every fused module, on the CPU in `dtype`."""
    tensors: dict[str, torch.Tensor] = {}
    for _, layers in groups:
        for layer, name in zip(layers, _layer_names(layers)):
            for suffix, parameter in _tensors(layer, spec.type):
                value = parameter.detach()
                if suffix == "dora_scale":  # LyCORIS' wd_on_output layout: (out, 1) beside (out, in)
                    value = value.reshape(-1, 1)
                tensors[f"{module_key(name)}.{suffix}"] = value.to("cpu", dtype).contiguous()
            tensors[f"{module_key(name)}.alpha"] = torch.tensor(_alpha(layer), dtype=dtype)
    return fuse_file_tensors(tensors)


def _layer_names(layers) -> list[str]:
    return [layer.loradeck_module_name for layer in layers]


def load_group_tensors(groups, spec, tensors: dict[str, torch.Tensor]) -> set[str]:
    """Set every group's factors from a file's fused tensors; returns the fused keys it used."""
    split = split_file_tensors(tensors)
    used = set()
    with torch.no_grad():
        for kohya, layers in groups:
            for layer, name in zip(layers, _layer_names(layers)):
                for suffix, parameter in _tensors(layer, spec.type):
                    key = f"{module_key(name)}.{suffix}"
                    if key not in split:
                        raise LoradeckError(f"the file has no {kohya}.{suffix}; it is another network type, or was "
                                            "trained on another model")
                    value = split[key]
                    if value.numel() != parameter.numel():
                        raise LoradeckError(f"the file's {kohya}.{suffix} does not fit this network: another rank, "
                                            "factor or network type")
                    parameter.copy_(value.reshape(parameter.shape))
                alpha = split.get(f"{module_key(name)}.alpha")
                if alpha is not None and not math.isclose(float(alpha), _alpha(layer), rel_tol=1e-3):
                    raise LoradeckError(f"the file's {kohya}.alpha is {float(alpha):g}, this network's {_alpha(layer):g}")
            used |= {f"{kohya}.{suffix}" for suffix in _suffixes(tensors, kohya)}
    return used
