"""The shapes of the model a config trains, asked of its family (engine.model.families):
the part configs, the frozen parameter counts and the LoRA's size. Read from a local
diffusers folder when there is one (configs and safetensors headers only, no tensor), else
the family's own shipped configs and released counts. Below both the plan and the VRAM
estimate. Light module: no torch import.
"""
from __future__ import annotations

import math
from pathlib import Path

from engine.config.network_types import NetworkSpec
from engine.config.schema import TrainConfig, resolve_path
from engine.model.families import config_family
from engine.model.family import ModelShapes
from engine.plan.network_size import network_size, rebuilt_weight_elements


def model_shapes(config: TrainConfig, base_dir) -> ModelShapes:
    """The part configs of the config's base model (its family's, when it is not local)."""
    return config_family(config, base_dir).shapes(config, base_dir)


def lora_parameter_count(config: TrainConfig, base_dir) -> tuple[int, int]:
    """(network parameters, adapted layers) for the config's base model and network."""
    parameters, _, layers = network_size_of(config, base_dir)
    return parameters, layers


def _adapted_layers(config: TrainConfig, base_dir):
    family = config_family(config, base_dir)
    spec = NetworkSpec.of(config)
    return spec, family.adapted_layers(spec, family.shapes(config, base_dir))


def network_size_of(config: TrainConfig, base_dir) -> tuple[int, int, int]:
    """(parameters, file tensors, adapted layers) of the network the config trains
    (engine.plan.network_size, on the layers its family adapts on this base model)."""
    return network_size(*_adapted_layers(config, base_dir))


def rebuilt_weights_of(config: TrainConfig, base_dir) -> int:
    """Elements of the weight updates the config's network rebuilds per step (LoHa, LoKr)."""
    return rebuilt_weight_elements(*_adapted_layers(config, base_dir))


def frozen_parameters(config, base_dir: str | Path | None) -> dict[str, int]:
    """Parameters of each frozen part (denoiser, text encoders, VAE): read from the
    safetensors headers of a local diffusers folder (no tensor is loaded), else the
    released model's counts the family gives."""
    counts = dict(config_family(config, base_dir or ".").frozen_parameters)
    folder = resolve_path(base_dir or ".", config.model.pretrained_model.strip())
    if folder is None or not folder.is_dir():
        return counts
    for part in counts:
        files = sorted((folder / part).glob("*.safetensors"))
        plain = [file for file in files if file.name.count(".") == 1]  # not the .fp16 variants
        try:
            found = sum(_safetensors_parameters(file) for file in (plain or files))
        except (OSError, ValueError):
            continue
        if found:
            counts[part] = found
    return counts


def _safetensors_parameters(path: Path) -> int:
    """Elements in a .safetensors file, from its header alone (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())
    except SafetensorError as error:
        raise ValueError(f"{path}: not a safetensors file ({error})") from error
