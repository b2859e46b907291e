"""The registry of model families: one line per family folder.

    FAMILIES                              every FamilyDescriptor, in detection order
    family_named("sdxl")                  the descriptor of a `model.family` name
    folder_family(folder) / file_family(path) / checkpoint_family(shapes)
    config_family(config, base_dir)       what a config trains (detected, never from a file name)

A family is a folder here (`sd/` for SD 1.x and 2.x, `sdxl/`) whose `__init__.py` holds its
light descriptors (`DESCRIPTORS`) and whose `runtime.py` holds its heavy half; both
implement engine.model.family's contract. Adding a family is adding its folder and its
line below; nothing else in loradeck names a family (the config's choices, the plan, the
tests' `family` fixture all read this tuple).

Detection reads what the model is, never its name: a folder's `model_index.json` and part
configs, or the tensor names in a `.safetensors` file's header (no tensor is read). The
first family that recognises a model is its family; the first family registered is the
fallback when nothing can be read (a hub id offline, a .ckpt).

Light module.
"""
from __future__ import annotations

import json
import struct
from importlib import import_module
from pathlib import Path

from engine.errors import LoradeckError
from engine.model.family import FamilyDescriptor
from engine.paths import resolve_path

FAMILIES: tuple[FamilyDescriptor, ...] = (
    *import_module("engine.model.families.sd").DESCRIPTORS,  # SD 1.x, SD 2.x
    *import_module("engine.model.families.sdxl").DESCRIPTORS,  # SDXL
    *import_module("engine.model.families.flux").DESCRIPTORS,  # Flux.1 [dev] and [schnell]
)
FAMILY_NAMES = tuple(family.name for family in FAMILIES)


def one_per_runtime() -> tuple[FamilyDescriptor, ...]:
    """The first descriptor of each runtime (SD 1.x for the `sd` folder, SDXL): the families
    a tiny model is made of, and that every trainer feature test runs on (tests/conftest.py).
    A variant sharing a runtime (SD 2.x) differs only in data its own tests check."""
    return tuple({family.runtime_path: family for family in reversed(FAMILIES)}.values())[::-1]


def family_named(name: str) -> FamilyDescriptor:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise LoradeckError(f"model.family: {name!r} is not one of auto, {', '.join(FAMILY_NAMES)}")


def default_family() -> FamilyDescriptor:
    """What a model nothing can be read of is loaded as (its own loader then says if it is not)."""
    return FAMILIES[0]


def lora_prefixes(*, denoiser: bool) -> tuple[str, ...]:
    """Every Kohya key prefix any family's networks use for denoisers (lora_unet) or for
    text encoders (lora_te, lora_te1, lora_te2, ...)."""
    return tuple(dict.fromkeys(component.prefix for family in FAMILIES for component in family.lora_components
                               if component.is_denoiser == denoiser))


def folder_family(folder: Path) -> FamilyDescriptor | None:
    """The family of a diffusers folder from its configs; None when they say nothing."""
    return next((family for family in FAMILIES if family.recognizes_folder(Path(folder))), None)


def checkpoint_family(shapes) -> FamilyDescriptor | None:
    """The family of an original-layout checkpoint from its tensor names and shapes."""
    return next((family for family in FAMILIES if family.recognizes_checkpoint(shapes)), None)


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


def file_family(path: Path) -> FamilyDescriptor | None:
    """The family of a single-file checkpoint; None for a pickle (read only when loading)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return None
    return checkpoint_family({key: entry.get("shape", ()) for key, entry in safetensors_keys(path).items()})


def detected_family(config, base_dir) -> FamilyDescriptor | None:
    """The family of the config's local base model, or None (a hub id, a .ckpt, nothing there)."""
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


def config_family(config, base_dir) -> FamilyDescriptor:
    """What the config trains: the base model's own family when it is local, else
    `model.family`, else the fallback family."""
    found = detected_family(config, base_dir)
    if found is not None:
        return found
    setting = config.model.family
    return default_family() if setting == "auto" else family_named(setting)


def check_family(config, found: FamilyDescriptor, source) -> None:
    """Refuse a base model whose family contradicts an explicit `model.family`; a variant the
    same runtime loads (SD 1.x named, SD 2.x found) is not a contradiction."""
    setting = config.model.family
    if setting == "auto" or setting == found.name:
        return
    if family_named(setting).runtime_path != found.runtime_path:
        raise LoradeckError(f"model.family: is {setting} but {source} is an {found.label} model")
