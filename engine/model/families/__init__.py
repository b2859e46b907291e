"""Model families: everything that differs between SD 1.x/2.x and SDXL, one module per family.

    family_named("sdxl") -> the family module
    folder_family(folder) / file_family(path) -> "sd15" | "sd2" | "sdxl" | None
    config_family(config, base_dir) -> the family a config trains (detected, never from a name)

A family module (`sd15.py` for SD 1.x and 2.x, `sdxl.py`) holds, at module level and
without importing torch (the plan and the TUI read them): `NAME`, `LABEL`,
`PIPELINE_CLASS`, `DEFAULT_RESOLUTION`, `TEXT_ENCODERS` ((model attribute, Kohya key
prefix) per text encoder), `PARAMETERS` and the VRAM constants, `base_model_version(config)`
and `modelspec_architecture(config)` for the LoRA's metadata. Its heavy functions import
torch and the HF stack when called: `load_diffusers(...)` (the parts of a diffusers
folder), `condition(...)` (the U-Net's conditioning for a batch), `text_state_cache()`,
`build_pipeline(...)` and `prompt_embeddings(...)` for samples. A new family (Flux) is a
new module registered here.

Detection reads what the model is, never its name: a folder's `model_index.json` and
U-Net config, or the tensor names in a `.safetensors` file's header (no tensor is read).
Light module.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from types import ModuleType

from engine.errors import LoradeckError
from engine.model.families import sd15, sdxl

FAMILIES: dict[str, ModuleType] = {"sd15": sd15, "sd2": sd15, "sdxl": sdxl}
FAMILY_CHOICES = ("auto", "sd15", "sd2", "sdxl")
LABELS = {"sd15": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}


def family_named(name: str) -> ModuleType:
    try:
        return FAMILIES[name]
    except KeyError:
        raise LoradeckError(f"model.family: {name!r} is not one of {', '.join(FAMILY_CHOICES)}") from None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def folder_family(folder: Path) -> str | None:
    """The family of a diffusers folder from its configs; None when they say nothing."""
    index = _read_json(folder / "model_index.json") or {}
    unet = _read_json(folder / "unet" / "config.json") or {}
    if index.get("_class_name", "").startswith("StableDiffusionXL") or unet.get("addition_embed_type") == "text_time":
        return "sdxl"
    text = _read_json(folder / "text_encoder" / "config.json") or {}
    if unet or text:
        return "sd2" if text.get("hidden_size") == 1024 or unet.get("cross_attention_dim") == 1024 else "sd15"
    return None


def safetensors_keys(path: Path) -> dict[str, dict]:
    """Tensor name -> {dtype, shape} from a .safetensors header (8-byte length, then JSON)."""
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error) as error:
        raise LoradeckError(f"{path}: not a readable .safetensors file ({error})") from None
    header.pop("__metadata__", None)
    return header


def keys_family(shapes: dict[str, tuple]) -> str | None:
    """The family of an original-layout checkpoint from its tensor names (and CLIP width)."""
    if any(key.startswith("conditioner.embedders.") for key in shapes):
        return "sdxl"
    if not any(key.startswith("model.diffusion_model.") for key in shapes):
        return None
    for key in ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
                "cond_stage_model.transformer.embeddings.token_embedding.weight"):
        if key in shapes:
            return "sd2" if tuple(shapes[key])[-1] == 1024 else "sd15"
    return "sd2" if "cond_stage_model.model.token_embedding.weight" in shapes else "sd15"


def file_family(path: Path) -> str | None:
    """The family of a single-file checkpoint; None for a pickle (read only when loading)."""
    if path.suffix.lower() != ".safetensors":
        return None
    return keys_family({key: entry.get("shape", ()) for key, entry in safetensors_keys(path).items()})


def detected_family(config, base_dir) -> str | None:
    """The family of the config's local base model, or None (a hub id, a .ckpt, nothing there)."""
    from engine.config.schema import resolve_path

    value = config.model.pretrained_model.strip()
    path = resolve_path(base_dir, value) if value else None
    if path is None:
        return None
    try:
        if path.is_dir():
            return folder_family(path)
        if path.is_file():
            return file_family(path)
    except LoradeckError:
        return None
    return None


def config_family_name(config, base_dir) -> str:
    """What the config trains: the base model's own family when it is local, else
    `model.family`, else SD 1.x (SD 2.x with `model.v2`)."""
    setting = getattr(config.model, "family", "auto")
    found = detected_family(config, base_dir)
    if found is not None:
        return found
    if setting != "auto":
        return setting
    return "sd2" if config.model.v2 else "sd15"


def config_family(config, base_dir) -> ModuleType:
    return family_named(config_family_name(config, base_dir))


def check_family(config, found: str, source) -> None:
    """Refuse a base model whose family contradicts an explicit `model.family`."""
    setting = getattr(config.model, "family", "auto")
    if setting not in ("auto", found) and not {setting, found} <= {"sd15", "sd2"}:
        raise LoradeckError(f"model.family: is {setting} but {source} is an {LABELS[found]} model")
