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

import torch

from engine.config.network_types import NetworkSpec
from engine.errors import LoradeckError
from engine.model.families.flux import layout
from engine.network.lora import ADAPTER_NAME, TENSORS, _peft_config
from engine.plan.network_size import factorization

FLUX_NETWORK_TYPES = ("lora", "dora", "loha", "lokr")
# Which side of ΔW = (out x in) each file tensor holds: "in" tensors are shared by a fused
# group's modules, "out" tensors are the group's rows, one slice per module
SIDES = {
    "lora_down.weight": "in", "lora_up.weight": "out", "dora_scale": "out",
    "hada_w1_a": "out", "hada_w1_b": "in", "hada_w2_a": "out", "hada_w2_b": "in",
    "lokr_w1": "out", "lokr_w2": "in", "lokr_w2_a": "in", "lokr_w2_b": "in",
}
_SHARED_ATTRIBUTES = {"lora": ("lora_A",), "dora": ("lora_A",), "loha": ("hada_w1_b", "hada_w2_b")}


def check_type(spec: NetworkSpec) -> None:
    if spec.type == "locon":
        raise LoradeckError("network.type: locon adds LoRA to convolutions, and Flux.1's transformer has none; "
                            "use lora")
    if spec.type not in FLUX_NETWORK_TYPES:
        raise LoradeckError(f"network.type: {spec.type!r} is not one of {', '.join(FLUX_NETWORK_TYPES)} for Flux.1")


def module_groups(transformer) -> list[tuple[str, tuple[str, ...]]]:
    return layout.lora_groups(len(transformer.transformer_blocks), len(transformer.single_transformer_blocks))


def inject(transformer: torch.nn.Module, spec: NetworkSpec) -> list[tuple[str, list[torch.nn.Module]]]:
    """Adapters of the spec's type on every Linear of every block, fused groups tied."""
    from peft import LoraConfig, inject_adapter_in_model

    check_type(spec)
    named = module_groups(transformer)
    targets = [name for _, names in named for name in names]
    config = _peft_config(spec, targets, {}, {})
    if isinstance(config, LoraConfig):
        transformer.add_adapter(config, adapter_name=ADAPTER_NAME)  # diffusers' entry point: set_adapters works
    else:
        inject_adapter_in_model(config, transformer, ADAPTER_NAME)
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
            groups.append((kohya, layers))
    return groups


def lokr_sides(out_sizes: list[int], fan_in: int, rank: int, factor: int) -> tuple[tuple[int, int, int, int], bool]:
    """((a, b, c, d), w2 full) of a fused group's LoKr: out = a·b, in = c·d, w1 (a x c),
    w2 (b x d); LyCORIS' factorization, its sides swapped when only then do w2's b rows
    divide each module's rows."""
    fan_out = sum(out_sizes)
    a, b = factorization(fan_out, factor)
    if any(size % b for size in out_sizes):
        a, b = b, a
        if any(size % b for size in out_sizes):
            raise LoradeckError(f"network.factor: {factor} splits {fan_out} rows into {a} x {b}, which does not fit "
                                f"the fused projection's parts {out_sizes}; try another factor (or -1)")
    c, d = factorization(fan_in, factor)
    return (a, b, c, d), rank >= max(b, d) / 2


def _fuse_lokr(kohya: str, layers: list[torch.nn.Module], spec: NetworkSpec) -> None:
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


def group_tensors(groups, spec: NetworkSpec, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """sd-scripts' / LyCORIS' tensors of every fused module, on the CPU in `dtype`."""
    tensors: dict[str, torch.Tensor] = {}
    for kohya, layers in groups:
        per_layer = [dict(_tensors(layer, spec.type)) for layer in layers]
        for suffix in per_layer[0]:
            parts = [found[suffix] for found in per_layer]
            if SIDES[suffix] == "in":
                if any(part is not parts[0] for part in parts[1:]):
                    raise LoradeckError(f"{kohya}: its modules do not share {suffix}")
                value = parts[0].detach()
            else:
                value = torch.cat([part.detach().reshape(part.shape[0], -1) for part in parts], dim=0)
                if suffix == "lora_up.weight" or suffix.startswith(("hada_", "lokr_")):
                    value = value.reshape(-1, *parts[0].shape[1:])
            if suffix == "dora_scale":  # LyCORIS' wd_on_output layout: (out, 1) beside (out, in)
                value = value.reshape(-1, 1)
            tensors[f"{kohya}.{suffix}"] = value.to("cpu", dtype).contiguous()
        tensors[f"{kohya}.alpha"] = torch.tensor(_alpha(layers[0]), dtype=dtype)
    return tensors


def load_group_tensors(groups, spec: NetworkSpec, tensors: dict[str, torch.Tensor]) -> set[str]:
    """Set every group's factors from a file's fused tensors; returns the keys it used."""
    used = set()
    with torch.no_grad():
        for kohya, layers in groups:
            per_layer = [dict(_tensors(layer, spec.type)) for layer in layers]
            for suffix in per_layer[0]:
                key = f"{kohya}.{suffix}"
                if key not in tensors:
                    raise LoradeckError(f"the file has no {key}; it is another network type, or was trained on "
                                        "another model")
                parts = [found[suffix] for found in per_layer]
                value = tensors[key]
                if SIDES[suffix] == "in":
                    if value.shape != parts[0].shape:
                        raise LoradeckError(f"the file's {key} is {tuple(value.shape)}, this network's "
                                            f"{tuple(parts[0].shape)}: another rank, factor or network type")
                    parts[0].copy_(value)
                else:
                    rows = [part.shape[0] for part in parts]
                    if value.shape[0] != sum(rows) or value[0].numel() != parts[0][0].numel():
                        raise LoradeckError(f"the file's {key} is {tuple(value.shape)}, which does not fit this "
                                            "network: another rank, factor or network type")
                    for part, piece in zip(parts, torch.split(value, rows, dim=0)):
                        part.copy_(piece.reshape(part.shape))
                used.add(key)
            alpha_key = f"{kohya}.alpha"
            if alpha_key in tensors and not math.isclose(float(tensors[alpha_key]), _alpha(layers[0]), rel_tol=1e-3):
                raise LoradeckError(f"the file's {alpha_key} is {float(tensors[alpha_key]):g}, this network's "
                                    f"{_alpha(layers[0]):g}")
            used.add(alpha_key)
    return used
