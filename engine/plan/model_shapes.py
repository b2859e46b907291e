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

from engine.config.schema import TrainConfig, resolve_path
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
    """(LoRA parameters, LoRA modules) for the config's base model and rank."""
    rank = config.network.rank
    unet, text = model_configs(config, base_dir)
    shapes: list[tuple[int, int]] = []  # (in_features, out_features) of every adapted layer
    if config.network.train_unet:
        context = unet.get("cross_attention_dim", 768)
        if isinstance(context, list):
            context = context[0]
        depths = unet.get("transformer_layers_per_block", 1)
        channels = unet["block_out_channels"]
        depths = depths if isinstance(depths, list) else [depths] * len(channels)
        per_block = unet.get("layers_per_block", 2)
        per_block = per_block[0] if isinstance(per_block, list) else per_block
        widths: list[tuple[int, int]] = []  # (channels, transformer depth) of every Transformer2DModel
        for index, kind in enumerate(unet["down_block_types"]):
            if "CrossAttn" in kind:
                widths += [(channels[index], depths[index])] * per_block
        if "CrossAttn" in (unet.get("mid_block_type") or "UNetMidBlock2DCrossAttn"):
            widths.append((channels[-1], depths[-1]))
        for index, kind in enumerate(unet["up_block_types"]):
            if "CrossAttn" in kind:
                up = len(channels) - 1 - index
                widths += [(channels[up], depths[up])] * (per_block + 1)
        for width, depth in widths:
            shapes += [(width, width), (width, width)]  # proj_in, proj_out
            for _ in range(depth):
                shapes += [(width, width)] * 4  # self-attention q, k, v, out
                shapes += [(width, width), (context, width), (context, width), (width, width)]  # cross-attention
                shapes += [(width, width * 8), (width * 4, width)]  # GEGLU feed-forward
    if config.network.train_text_encoder:
        for text in text_encoder_configs(config, base_dir):
            hidden, inner = text["hidden_size"], text["intermediate_size"]
            for _ in range(text["num_hidden_layers"]):
                shapes += [(hidden, hidden)] * 4 + [(hidden, inner), (inner, hidden)]
    parameters = sum(rank * (fan_in + fan_out) for fan_in, fan_out in shapes)
    return parameters, len(shapes)


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
