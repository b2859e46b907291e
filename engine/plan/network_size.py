"""How big a network is before it is built: its layers' shapes, parameters and file tensors.

The layers are the ones engine.network builds (sd-scripts' choice for SD1.x/2.x): every
Linear and 1x1 conv of the U-Net's transformer blocks and of CLIP's attention and MLP, and,
for the conv types, every Linear and conv of the ResNet blocks, downsamplers and
upsamplers. The parameter count of each layer follows its type's tensors (the layout
engine.network writes); tests compare it with the real network on the tiny model.

Light module: the standard library only.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.config.network_types import NetworkSpec


@dataclass(frozen=True)
class LayerShape:
    fan_in: int  # input features or channels
    fan_out: int
    kernel: int = 1  # side of a square conv kernel; 1 for Linear and 1x1 convs


def _first(value):
    return value[0] if isinstance(value, list) else value


def transformer_widths(unet: dict) -> list[tuple[int, int]]:
    """(channels, transformer depth) of every Transformer2DModel of a U-Net config, in
    module order (SDXL's depth differs per block)."""
    channels = unet["block_out_channels"]
    depths = unet.get("transformer_layers_per_block", 1)
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


def full_preset_extra_layers(unet: dict) -> list[LayerShape]:
    """The layers LyCORIS' `full` preset adapts by name: conv_in, conv_out and the time
    embedding's two Linears (engine.network.lycoris_network)."""
    first = unet["block_out_channels"][0]
    return [LayerShape(unet.get("in_channels", 4), first, 3), LayerShape(first, unet.get("out_channels", 4), 3),
            LayerShape(first, first * 4), LayerShape(first * 4, first * 4)]


def text_encoder_layers(text: dict) -> list[LayerShape]:
    hidden, inner = text["hidden_size"], text["intermediate_size"]
    return ([LayerShape(hidden, hidden)] * 4 + [LayerShape(hidden, inner), LayerShape(inner, hidden)]) * text[
        "num_hidden_layers"]


def network_layers(spec: NetworkSpec, unet: dict, text: dict | list[dict]) -> list[LayerShape]:
    """Every layer the network adapts (3x3 convolutions only where the spec gives them a rank);
    `text`: the text encoder's config, or a list of them (SDXL's two)."""
    layers: list[LayerShape] = []
    if spec.train_unet:
        layers += transformer_layers(unet)
        if spec.adapts_resnets:
            layers += resnet_layers(unet)
        if spec.built_by_lycoris:
            layers += full_preset_extra_layers(unet)
    if spec.train_text_encoder:
        for encoder in text if isinstance(text, list) else [text]:
            layers += text_encoder_layers(encoder)
    return [layer for layer in layers if spec.rank_of(layer.kernel) is not None]


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


def lycoris_factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """LyCORIS' own split (lycoris.functional.general.factorization), which Diag-OFT uses for
    its blocks: (smaller, larger), the search bounded by 1 + dimension, not by the pair found."""
    if factor > 0 and dimension % factor == 0:
        return tuple(sorted((factor, dimension // factor)))  # type: ignore[return-value]
    if factor < 0:
        factor = dimension
    m, n, bound = 1, dimension, 1 + dimension
    while m < n:
        candidate = m + 1
        while dimension % candidate:
            candidate += 1
        if candidate + dimension // candidate > bound or candidate > factor:
            break
        m, n = candidate, dimension // candidate
    return (n, m) if m > n else (m, n)


def lokr_layout(layer: LayerShape, rank: int, factor: int) -> tuple[tuple[int, int, int, int], bool]:
    """((a, b, c, d), w2 stored full): out = a*b, in = c*d; w1 is a x c, w2 is b x d (x kernel)."""
    a, b = factorization(layer.fan_out, factor)
    c, d = factorization(layer.fan_in, factor)
    return (a, b, c, d), rank >= max(b, d) / 2


def layer_size(spec: NetworkSpec, layer: LayerShape) -> tuple[int, int]:
    """(parameters, tensors in the file, alpha included) of one adapted layer."""
    rank, _ = spec.rank_of(layer.kernel)
    area = layer.kernel * layer.kernel
    fan_in, fan_out = layer.fan_in, layer.fan_out
    tucker = spec.use_tucker and layer.kernel > 1
    if spec.type in ("lora", "locon"):
        return rank * (fan_in * area + fan_out), 3
    if spec.type == "dora":  # the magnitude: one per output row, or one per input column
        return rank * (fan_in * area + fan_out) + (fan_out if spec.dora_layout == "output" else fan_in), 4
    if spec.type == "dylora":
        return rank * (fan_in * area + fan_out), 3
    if spec.type == "ia3":  # one scale per output (or input) feature, and the on_input flag
        return (fan_in if spec.train_on_input else fan_out), 2
    if spec.type == "diag-oft":  # block-diagonal rotation blocks of the outputs (+ a scale per output)
        block, _ = lycoris_factorization(fan_out, rank)
        return fan_out * block + (fan_out if spec.rescaled else 0), 3 if spec.rescaled else 2
    if spec.type == "glora":  # a1, a2 (a low-rank map of the input), b1, b2 (a low-rank shift), alpha
        return rank * (2 * fan_in + fan_in * area + fan_out), 5
    if spec.type == "loha":
        if tucker:
            return 2 * (rank * rank * area + rank * (fan_out + fan_in)), 7
        return 2 * rank * (fan_out + fan_in * area), 5
    if spec.type == "lokr":
        (a, b, c, d), full = lokr_layout(layer, rank, spec.factor)
        if full:
            return a * c + b * d * area, 3
        if tucker:
            return a * c + rank * rank * area + rank * (b + d), 5
        return a * c + rank * (b + d * area), 4
    raise ValueError(f"unknown network type {spec.type!r}")


def network_size(spec: NetworkSpec, unet: dict, text: dict | list[dict]) -> tuple[int, int, int]:
    """(parameters, file tensors, adapted layers) of the network a spec builds."""
    parameters = tensors = 0
    layers = network_layers(spec, unet, text)
    for layer in layers:
        layer_parameters, layer_tensors = layer_size(spec, layer)
        parameters += layer_parameters
        tensors += layer_tensors
    return parameters, tensors, len(layers)


def rebuilt_weight_elements(spec: NetworkSpec, unet: dict, text: dict | list[dict]) -> int:
    """Elements of the full weight updates LoHa and LoKr layers hold while a step runs.

    peft's LoHa and LoKr layers rebuild each layer's whole ΔW in the forward and run the
    input through it, so autograd keeps one ΔW per layer until the backward; LoRA, LoCon
    and DoRA run the input through the rank and keep only `x · down` (DoRA's weight norm
    is detached, as its paper's section 4.3 does)."""
    if spec.type not in ("loha", "lokr") and not spec.built_by_lycoris:
        return 0
    return sum(layer.fan_in * layer.fan_out * layer.kernel * layer.kernel
               for layer in network_layers(spec, unet, text))
