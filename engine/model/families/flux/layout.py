"""Where each weight of Flux.1's transformer lives in BFL's layout and in diffusers'.

Black Forest Labs' release (`flux1-dev.safetensors`, what ComfyUI and sd-scripts load) fuses
projections that diffusers' `FluxTransformer2DModel` keeps apart: a double block's
`img_attn.qkv` is diffusers' `attn.to_q` / `to_k` / `to_v` stacked on the output rows, a
single block's `linear1` is `attn.to_q`, `to_k`, `to_v` and `proj_mlp`. sd-scripts' Flux LoRA
names its modules after BFL's (`lora_unet_double_blocks_0_img_attn_qkv`), so the same table
serves loading a BFL file into diffusers' model and naming a LoRA trained on it.

    FUSED_MODULES[bfl block module]   -> (diffusers modules in row order)   per block
    bfl_to_diffusers(keys, shapes)    -> the split of every BFL tensor
    diffusers_lora_groups(transformer modules) -> (Kohya name, [diffusers module names])

Written from BFL's `flux/model.py` and diffusers' `convert_flux_transformer_checkpoint_to_diffusers`
(which only converts the full-size model: its widths are constants); tests check this table
against that converter at full width. Light module: no torch.
"""
from __future__ import annotations

import re

# the network types whose adapters fuse exactly into sd-scripts' fused Linears (engine.model.families.flux.network)
FLUX_NETWORK_TYPES = ("lora", "dora", "loha", "lokr")
PREFIX = "model.diffusion_model."  # ComfyUI's full checkpoints put the transformer under it

# BFL module of a double block -> diffusers modules, in the order of the fused output rows
DOUBLE_BLOCK = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn.proj": ("attn.to_out.0",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "img_mod.lin": ("norm1.linear",),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn.proj": ("attn.to_add_out",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
    "txt_mod.lin": ("norm1_context.linear",),
}
DOUBLE_BLOCK_NORMS = {
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
SINGLE_BLOCK = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.lin": ("norm.linear",),
}
SINGLE_BLOCK_NORMS = {
    "norm.query_norm.scale": "attn.norm_q.weight",
    "norm.key_norm.scale": "attn.norm_k.weight",
}
# Outside the blocks: BFL module -> diffusers module
EMBEDDERS = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
# BFL's final modulation gives (shift, scale); diffusers' AdaLayerNormContinuous reads (scale, shift)
SWAPPED_HALVES = {"final_layer.adaLN_modulation.1": "norm_out.linear"}

DOUBLE_PREFIX, SINGLE_PREFIX = "double_blocks", "single_blocks"
DIFFUSERS_DOUBLE, DIFFUSERS_SINGLE = "transformer_blocks", "single_transformer_blocks"
_BLOCK_KEY = re.compile(r"(double_blocks|single_blocks)\.(\d+)\.(.+)\.(weight|bias|scale)")


class LayoutError(ValueError):
    """A BFL key or shape this table has no place for (the caller names the file)."""


def strip_prefix(keys) -> dict[str, str]:
    """BFL key without ComfyUI's `model.diffusion_model.` -> the key as stored."""
    return {key.removeprefix(PREFIX): key for key in keys}


def is_bfl_transformer(keys) -> bool:
    stripped = strip_prefix(keys)
    return "double_blocks.0.img_attn.qkv.weight" in stripped and "img_in.weight" in stripped


def has_guidance(keys) -> bool:
    """Flux.1 [dev] embeds the guidance scale; [schnell] has no guidance_in."""
    stripped = strip_prefix(keys)
    return "guidance_in.in_layer.weight" in stripped or "time_text_embed.guidance_embedder.linear_1.weight" in stripped


def block_counts(keys) -> tuple[int, int]:
    """(double blocks, single blocks) of a BFL file, from its keys."""
    doubles, singles = set(), set()
    for key in strip_prefix(keys):
        match = _BLOCK_KEY.fullmatch(key)
        if match:
            (doubles if match.group(1) == DOUBLE_PREFIX else singles).add(int(match.group(2)))
    return len(doubles), len(singles)


def split_sizes(bfl_module: str, inner_dim: int, mlp_dim: int) -> tuple[int, ...]:
    """Output rows of each diffusers module inside a fused BFL module."""
    if bfl_module == "linear1":
        return (inner_dim, inner_dim, inner_dim, mlp_dim)
    if bfl_module.endswith("attn.qkv"):
        return (inner_dim,) * 3
    return ()


def bfl_to_diffusers_plan(shapes: dict[str, tuple]) -> list[tuple[str, tuple[str, ...], tuple[int, ...], bool]]:
    """For every BFL tensor: (stored key, diffusers keys, row split sizes or (), halves swapped).

    Widths come from the shapes (img_in's output is the model width, a single block's
    linear2 input is width + MLP width), so any Flux-architecture model converts."""
    stripped = strip_prefix(shapes)
    try:
        inner_dim = int(shapes[stripped["img_in.weight"]][0])
    except KeyError:
        raise LayoutError("no img_in.weight: not a Flux.1 transformer in BFL's layout") from None
    linear2 = stripped.get("single_blocks.0.linear2.weight")
    mlp_dim = int(shapes[linear2][1]) - inner_dim if linear2 else 4 * inner_dim
    plan = []
    for key, stored in stripped.items():
        match = _BLOCK_KEY.fullmatch(key)
        if match:
            kind, index, module, leaf = match.groups()
            table, norms, target = ((DOUBLE_BLOCK, DOUBLE_BLOCK_NORMS, DIFFUSERS_DOUBLE) if kind == DOUBLE_PREFIX
                                    else (SINGLE_BLOCK, SINGLE_BLOCK_NORMS, DIFFUSERS_SINGLE))
            if f"{module}.{leaf}" in norms:
                plan.append((stored, (f"{target}.{index}.{norms[f'{module}.{leaf}']}",), (), False))
                continue
            if module not in table:
                raise LayoutError(f"{stored} has no place in diffusers' Flux transformer")
            names = tuple(f"{target}.{index}.{name}.{leaf}" for name in table[module])
            plan.append((stored, names, split_sizes(module, inner_dim, mlp_dim) if len(names) > 1 else (), False))
            continue
        module, _, leaf = key.rpartition(".")
        if module in EMBEDDERS:
            plan.append((stored, (f"{EMBEDDERS[module]}.{leaf}",), (), False))
        elif module in SWAPPED_HALVES:
            plan.append((stored, (f"{SWAPPED_HALVES[module]}.{leaf}",), (), True))
        else:
            raise LayoutError(f"{stored} has no place in diffusers' Flux transformer")
    return plan


def bfl_plan_from_diffusers(keys) -> list[tuple[str, tuple[str, ...], tuple[int, ...], bool]]:
    """For every BFL tensor of a diffusers Flux transformer's weights: (BFL key, the
    diffusers keys stacked into it in row order, (), halves swapped)."""
    keys = set(keys)
    plan = []
    for kind, table, norms, target in ((DOUBLE_PREFIX, DOUBLE_BLOCK, DOUBLE_BLOCK_NORMS, DIFFUSERS_DOUBLE),
                                       (SINGLE_PREFIX, SINGLE_BLOCK, SINGLE_BLOCK_NORMS, DIFFUSERS_SINGLE)):
        indices = sorted({int(key.split(".")[1]) for key in keys if key.startswith(target + ".")})
        for index in indices:
            for module, names in table.items():
                for leaf in ("weight", "bias"):
                    plan.append((f"{kind}.{index}.{module}.{leaf}",
                                 tuple(f"{target}.{index}.{name}.{leaf}" for name in names), (), False))
            for bfl_name, diffusers_name in norms.items():
                plan.append((f"{kind}.{index}.{bfl_name}", (f"{target}.{index}.{diffusers_name}",), (), False))
    for modules, swapped in ((EMBEDDERS, False), (SWAPPED_HALVES, True)):
        for bfl_module, diffusers_module in modules.items():
            for leaf in ("weight", "bias"):
                if f"{diffusers_module}.{leaf}" in keys:
                    plan.append((f"{bfl_module}.{leaf}", (f"{diffusers_module}.{leaf}",), (), swapped))
    covered = {name for _, names, _, _ in plan for name in names}
    missing = sorted(keys - covered)
    if missing:
        raise LayoutError(f"{missing[0]} has no place in BFL's Flux layout")
    return plan


def lora_groups(double_blocks: int, single_blocks: int) -> list[tuple[str, tuple[str, ...]]]:
    """(sd-scripts' Kohya module name, diffusers modules it fuses, in row order) for every
    module sd-scripts' `networks.lora_flux` adapts: every Linear of every double and single
    block."""
    groups = []
    for index in range(double_blocks):
        for module, names in DOUBLE_BLOCK.items():
            groups.append((f"lora_unet_{DOUBLE_PREFIX}_{index}_{module.replace('.', '_')}",
                           tuple(f"{DIFFUSERS_DOUBLE}.{index}.{name}" for name in names)))
    for index in range(single_blocks):
        for module, names in SINGLE_BLOCK.items():
            groups.append((f"lora_unet_{SINGLE_PREFIX}_{index}_{module.replace('.', '_')}",
                           tuple(f"{DIFFUSERS_SINGLE}.{index}.{name}" for name in names)))
    return groups
