"""How big a network is before it is built: its layers' parameters and file tensors.

The layers are the ones engine.network builds, as the model's family lists them
(`FamilyDescriptor.adapted_layers`: for SD and SDXL, engine.model.shapes.unet_clip_layers).
The parameter count of each layer follows its type's tensors (the layout engine.network
writes); tests compare it with the real network on every family's tiny model.

Light module: the standard library only.
"""
from __future__ import annotations

from engine.config.network_types import NetworkSpec
from engine.model.shapes import LayerShape, factorization, lokr_layout  # noqa: F401 (callers import them from here)


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


def network_size(spec: NetworkSpec, layers: list[LayerShape]) -> tuple[int, int, int]:
    """(parameters, file tensors, adapted layers) of the network a spec builds on `layers`."""
    parameters = tensors = 0
    for layer in layers:
        layer_parameters, layer_tensors = layer_size(spec, layer)
        parameters += layer_parameters
        tensors += layer_tensors
    return parameters, tensors, len(layers)


def rebuilt_weight_elements(spec: NetworkSpec, layers: list[LayerShape]) -> int:
    """Elements of the full weight updates LoHa and LoKr layers hold while a step runs.

    peft's LoHa and LoKr layers rebuild each layer's whole ΔW in the forward and run the
    input through it, so autograd keeps one ΔW per layer until the backward; LoRA, LoCon
    and DoRA run the input through the rank and keep only `x · down` (DoRA's weight norm
    is detached, as its paper's section 4.3 does). LyCORIS' modules (its types, DoRA per
    input) merge each layer's whole weight in the forward: counted as LoHa's."""
    if spec.type not in ("loha", "lokr") and not spec.built_by_lycoris:
        return 0
    return sum(layer.fan_in * layer.fan_out * layer.kernel * layer.kernel for layer in layers)
