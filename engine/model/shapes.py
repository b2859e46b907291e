"""Layer shapes of the model architectures, read from configs alone (no torch, nothing loaded).

    LayerShape                                  one Linear or conv a network adapts
    ModelShapes                                 a model's part configs (the plan's view of it)
    folder_shapes(folder, denoiser, text_encoders)   those of a diffusers folder, or None
    unet_clip_layers(spec, unet, text_configs)  what engine.network adapts on a U-Net + CLIP model
    UNetClipShapes                              those as descriptor methods, for such families
    UNET_TARGET_MODULES, CLIP_TARGET_MODULES, ...    the same layers, as peft targets
    read_json(path)                             a config file, or None
    factorization(side, factor), lokr_layout(layer, rank, factor)   LoKr's split of a layer

The layers are sd-scripts' choice for SD 1.x/2.x and SDXL: every Linear and 1x1 conv of the
U-Net's transformer blocks (`Transformer2DModel`) and of CLIP's attention and MLP, and for
the conv types every Linear and conv of the ResNet blocks, downsamplers and upsamplers.
The families built on a U-Net and CLIP describe their networks with these
(engine.model.families.<name>: `adapted_layers`); a transformer family writes its own walk.
Shared machinery below the families: imports no family. Light module.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


# The layers sd-scripts' networks.lora adapts on a U-Net and CLIP (peft target_modules for a
# standard LoRA; the other types take every Linear/Conv2d inside the blocks, the conv types
# the conv blocks' too)
UNET_TARGET_MODULES = ("proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
UNET_BLOCKS = ("Transformer2DModel",)
UNET_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
CLIP_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
CLIP_BLOCKS = ("CLIPAttention", "CLIPMLP")


@dataclass(frozen=True)
class LayerShape:
    fan_in: int  # input features or channels
    fan_out: int
    kernel: int = 1  # side of a square conv kernel; 1 for Linear and 1x1 convs
    parts: tuple[int, ...] = ()  # a fused layer's modules' output rows (Flux's qkv, linear1); () for one module


@dataclass(frozen=True)
class ModelShapes:
    """The configs of a model's parts, as the plan needs them before anything is loaded:
    from a local diffusers folder when there is one, else the family's shipped configs."""

    denoiser: dict[str, Any]  # the U-Net's or transformer's config.json
    text_encoders: list[dict[str, Any]]  # each text encoder's config.json, in the family's order
    local_folder: Path | None = None  # the diffusers folder they were read from, if any


def folder_shapes(folder: Path | None, denoiser: str, text_encoders: tuple[str, ...]) -> ModelShapes | None:
    """The part configs of a diffusers folder; None when it is not one or lacks one of them."""
    if folder is None or not folder.is_dir():
        return None
    denoiser_config = read_json(folder / denoiser / "config.json")
    text_configs = [read_json(folder / name / "config.json") for name in text_encoders]
    if denoiser_config is None or any(config is None for config in text_configs):
        return None
    return ModelShapes(denoiser_config, text_configs, folder)


def read_json(path: Path | None) -> dict[str, Any] | None:
    """A JSON config, or None when it is missing or unreadable."""
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _first(value):
    return value[0] if isinstance(value, list) else value


def transformer_widths(unet: dict) -> list[tuple[int, int]]:
    """(channels, transformer depth) of every Transformer2DModel of a U-Net config, in
    module order (SDXL's depth differs per block)."""
    channels = unet["block_out_channels"]
    depths = unet.get("transformer_layers_per_block") or 1
    depths = depths if isinstance(depths, list) else [depths] * len(channels)
    per_block = _first(unet.get("layers_per_block", 2))
    widths: list[tuple[int, int]] = []
    for index, kind in enumerate(unet["down_block_types"]):
        if "CrossAttn" in kind:
            widths += [(channels[index], depths[index])] * per_block
    if "CrossAttn" in (unet.get("mid_block_type") or "UNetMidBlock2DCrossAttn"):
        widths.append((channels[-1], depths[-1]))
    for index, kind in enumerate(unet["up_block_types"]):
        if "CrossAttn" in kind:
            up = len(channels) - 1 - index
            widths += [(channels[up], depths[up])] * (per_block + 1)
    return widths


def transformer_layers(unet: dict) -> list[LayerShape]:
    context = _first(unet.get("cross_attention_dim", 768))
    layers: list[LayerShape] = []
    for width, depth in transformer_widths(unet):
        layers += [LayerShape(width, width)] * 2  # proj_in, proj_out
        for _ in range(depth):
            layers += [LayerShape(width, width)] * 4  # self-attention q, k, v, out
            layers += [LayerShape(width, width), LayerShape(context, width), LayerShape(context, width),
                       LayerShape(width, width)]  # cross-attention q, k, v, out
            layers += [LayerShape(width, width * 8), LayerShape(width * 4, width)]  # GEGLU feed-forward
    return layers


def _resnet(fan_in: int, fan_out: int, time_channels: int) -> list[LayerShape]:
    layers = [LayerShape(fan_in, fan_out, 3), LayerShape(time_channels, fan_out), LayerShape(fan_out, fan_out, 3)]
    if fan_in != fan_out:
        layers.append(LayerShape(fan_in, fan_out))  # conv_shortcut, 1x1
    return layers


def resnet_layers(unet: dict) -> list[LayerShape]:
    """Linear and conv layers of the ResNet blocks, downsamplers and upsamplers
    (diffusers' UNet2DConditionModel wiring, skip connections included)."""
    channels = unet["block_out_channels"]
    per_block = _first(unet.get("layers_per_block", 2))
    time_channels = channels[0] * 4
    layers: list[LayerShape] = []
    previous = channels[0]
    for index, width in enumerate(channels):
        for number in range(per_block):
            layers += _resnet(previous if number == 0 else width, width, time_channels)
        previous = width
        if index < len(channels) - 1:
            layers.append(LayerShape(width, width, 3))  # downsampler
    layers += _resnet(channels[-1], channels[-1], time_channels) * 2  # mid block
    reversed_channels = list(reversed(channels))
    previous = reversed_channels[0]
    for index, width in enumerate(reversed_channels):
        skip_from = reversed_channels[min(index + 1, len(channels) - 1)]
        for number in range(per_block + 1):
            skip = skip_from if number == per_block else width
            layers += _resnet((previous if number == 0 else width) + skip, width, time_channels)
        previous = width
        if index < len(channels) - 1:
            layers.append(LayerShape(width, width, 3))  # upsampler
    return layers


def text_encoder_layers(text: dict) -> list[LayerShape]:
    hidden, inner = text["hidden_size"], text["intermediate_size"]
    return ([LayerShape(hidden, hidden)] * 4 + [LayerShape(hidden, inner), LayerShape(inner, hidden)]) * text[
        "num_hidden_layers"]


def full_preset_extra_layers(unet: dict) -> list[LayerShape]:
    """The layers LyCORIS' `full` preset adapts by name: conv_in, conv_out and the time
    embedding's two Linears (engine.network.lycoris_network)."""
    first = unet["block_out_channels"][0]
    return [LayerShape(unet.get("in_channels", 4), first, 3), LayerShape(first, unet.get("out_channels", 4), 3),
            LayerShape(first, first * 4), LayerShape(first * 4, first * 4)]


def unet_clip_layers(spec, unet: dict, text_configs: list[dict]) -> list[LayerShape]:
    """Every layer a network of `spec` adapts on a U-Net and CLIP text encoders (3x3
    convolutions only where the spec gives them a rank)."""
    layers: list[LayerShape] = []
    if spec.train_unet:
        layers += transformer_layers(unet)
        if spec.adapts_resnets:
            layers += resnet_layers(unet)
        if spec.built_by_lycoris:
            layers += full_preset_extra_layers(unet)
    if spec.train_text_encoder:
        for encoder in text_configs:
            layers += text_encoder_layers(encoder)
    return [layer for layer in layers if spec.rank_of(layer.kernel) is not None]


class UNetClipShapes:
    """The descriptor methods of the families built on a U-Net and CLIP (SD 1.x/2.x, SDXL):
    a mixin before engine.model.family.FamilyDescriptor in their bases."""

    def adapted_layers(self, spec, shapes: ModelShapes) -> list[LayerShape]:
        return unet_clip_layers(spec, shapes.denoiser, shapes.text_encoders)

    def activation_scale(self, shapes: ModelShapes) -> float:
        # the constants were measured at the released widths; the tiny test models are narrower
        return shapes.denoiser.get("block_out_channels", [320])[0] / 320


# --------------------------------------------------------------------------- LoKr's factors


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """LoKr's split of a side into (m, n), m * n = dimension: m = factor when it divides,
    else the divisor pair nearest the square root with m at most the factor (peft's and
    LyCORIS' rule)."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    while m < n:
        candidate = m + 1
        while dimension % candidate:
            candidate += 1
        other = dimension // candidate
        if candidate + other > m + n or candidate > factor:
            break
        m, n = candidate, other
    return (n, m) if m > n else (m, n)


def lokr_layout(layer: LayerShape, rank: int, factor: int) -> tuple[tuple[int, int, int, int], bool]:
    """((a, b, c, d), w2 stored full): out = a*b, in = c*d; w1 is a x c, w2 is b x d (x kernel).

    A fused layer's Kronecker rows split between its modules only at multiples of w2's b
    rows, so where only the swapped order (a, b) = (b, a) fits that, it is taken (LyCORIS'
    readers take the shapes a file has); where neither fits, b is 0 (the caller refuses)."""
    a, b = factorization(layer.fan_out, factor)
    if layer.parts and any(part % b for part in layer.parts):
        a, b = b, a
        if any(part % b for part in layer.parts):
            b = 0
    c, d = factorization(layer.fan_in, factor)
    return (a, b, c, d), rank >= max(b, d) / 2
