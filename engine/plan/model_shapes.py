"""The shapes of the models a config trains: U-Net and text-encoder configs, the frozen
parameter counts and the LoRA's parameter count. Read from a local diffusers folder when
there is one (configs and safetensors headers only, no tensor), else the family's own
(SD1.5's, SD2's, or SDXL base's shipped configs in engine/model/assets/sdxl).
Below both the plan and the VRAM estimate. Light module: no torch import.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from engine.config.network_types import NetworkSpec
from engine.config.schema import TrainConfig, resolve_path
from engine.plan.network_size import network_size, rebuilt_weight_elements
from engine.model.families import config_family_name
from engine.model.families.sd15 import PARAMETERS as SD_PARAMETERS
from engine.model.families.sdxl import PARAMETERS as SDXL_PARAMETERS

# Parameters of the frozen parts (the LoRA comes from engine.plan.training_plan)
PARAMETERS = {**SD_PARAMETERS, **SDXL_PARAMETERS}
ASSETS = Path(__file__).resolve().parents[1] / "model" / "assets"
SD15_UNET = {
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "transformer_layers_per_block": 1,
}
SD15_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12}
SD2_OVERRIDES = ({"cross_attention_dim": 1024}, {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23})


def _read_json(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def text_encoder_configs(config: TrainConfig, base_dir) -> list[dict]:
    """Every text encoder's config (SDXL has two): the local folder's, else the family's."""
    unet, text = model_configs(config, base_dir)
    if config_family_name(config, base_dir) != "sdxl":
        return [text]
    folder = resolve_path(base_dir, config.model.pretrained_model)
    second = _read_json(folder / "text_encoder_2" / "config.json") if folder and folder.is_dir() else None
    return [text, second or _read_json(ASSETS / "sdxl" / "text_encoder_2" / "config.json")]


def model_configs(config: TrainConfig, base_dir) -> tuple[dict, dict]:
    """U-Net and text-encoder configs of a local diffusers folder, else SD1.5's (or SD2's, SDXL's)."""
    folder = resolve_path(base_dir, config.model.pretrained_model)
    unet = _read_json(folder / "unet" / "config.json") if folder and folder.is_dir() else None
    text = _read_json(folder / "text_encoder" / "config.json") if folder and folder.is_dir() else None
    if (unet is None or text is None) and config_family_name(config, base_dir) == "sdxl":
        unet = _read_json(ASSETS / "sdxl" / "unet" / "config.json")
        text = _read_json(ASSETS / "sdxl" / "text_encoder" / "config.json")
    if unet is None or text is None:
        unet, text = dict(SD15_UNET), dict(SD15_TEXT)
        if config.model.v2:
            unet.update(SD2_OVERRIDES[0])
            text.update(SD2_OVERRIDES[1])
    return unet, text


def lora_parameter_count(config: TrainConfig, base_dir) -> tuple[int, int]:
    """(network parameters, adapted layers) for the config's base model and network."""
    parameters, _, layers = network_size_of(config, base_dir)
    return parameters, layers


def network_size_of(config: TrainConfig, base_dir) -> tuple[int, int, int]:
    """(parameters, file tensors, adapted layers) of the network the config trains
    (engine.plan.network_size, on this base model's shapes)."""
    unet, _ = model_configs(config, base_dir)
    return network_size(NetworkSpec.of(config), unet, text_encoder_configs(config, base_dir))


def rebuilt_weights_of(config: TrainConfig, base_dir) -> int:
    """Elements of the weight updates the config's network rebuilds per step (LoHa, LoKr)."""
    unet, _ = model_configs(config, base_dir)
    return rebuilt_weight_elements(NetworkSpec.of(config), unet, text_encoder_configs(config, base_dir))


def frozen_parameters(config, base_dir: str | Path | None) -> dict[str, int]:
    """Parameters of the U-Net, text encoder and VAE: read from the safetensors headers of a
    local diffusers folder (no tensor is loaded), else the family's (SD1.5's, SD2's, SDXL's)."""
    family = config_family_name(config, base_dir or ".")
    counts = dict(PARAMETERS[family if family in PARAMETERS else "sd2" if config.model.v2 else "sd15"])
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
