"""Load the base model a LoRA trains on: a diffusers folder, a single file, or a hub id.

    load_base_model(config, base_dir, device=..., dtype=...) -> BaseModel

The model's family (engine.model.families: detected from its files, never its name) loads
its parts; they are cast to `dtype` (the mixed-precision type on a GPU, fp32 on the CPU),
frozen and moved to the device. Under fp16 the parts that overflow there stay in fp32 (the
family's `fp32_under_fp16`: SD's VAE). The family's runtime also gives the training schedule and the objective
(engine.model.family.BaseModel holds them). A local folder or file never touches the
network (`local_files_only`); a hub id does, the first time. Anything a user can get wrong
(a missing path, a `.ckpt` not allowed, an unreadable file) becomes one `LoradeckError` line.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from engine.config.schema import SINGLE_FILE_SUFFIXES, TrainConfig, looks_like_hub_id, resolve_path
from engine.errors import LoradeckError, first_line
from engine.model.families import check_family, default_family, family_named, folder_family
from engine.model.family import BaseModel, FamilyDescriptor
from engine.model.single_file import file_family_or_none

log = logging.getLogger(__name__)

__all__ = ["BaseModel", "load_base_model", "load_vae_override", "looks_like_hub_id", "model_display_name"]


def model_display_name(value: str) -> str:
    text = value.rstrip("/\\")
    name = Path(text).name or text
    for suffix in SINGLE_FILE_SUFFIXES:
        name = name.removesuffix(suffix)
    return name if not looks_like_hub_id(value) else value


def _named_family(config: TrainConfig) -> FamilyDescriptor:
    """The family a model whose files say nothing is loaded as: `model.family`, else the fallback."""
    setting = config.model.family
    return default_family() if setting == "auto" else family_named(setting)


def load_base_model(config: TrainConfig, base_dir: str | Path, *, device: Any, dtype: torch.dtype) -> BaseModel:
    value = config.model.pretrained_model.strip()
    if not value:
        raise LoradeckError("model.pretrained_model: no base model given (a folder, .safetensors file or hub id)")
    path = resolve_path(base_dir, value)
    vae_dtype = torch.float32 if dtype == torch.float16 else dtype
    if path is not None and path.is_dir():
        family = folder_family(path) or _named_family(config)
        if not (path / family.denoiser).is_dir():
            raise LoradeckError(f"model.pretrained_model: {path} is not a diffusers model folder "
                                f"(no {family.denoiser}/ inside)")
        parts = family.runtime().load_diffusers(str(path), local_only=True, dtype=dtype, vae_dtype=vae_dtype)
        source = str(path)
    elif path is not None and path.is_file():
        family, parts = _load_single_file(path, config, dtype, base_dir)
        source = str(path)
    elif looks_like_hub_id(value) and not Path(value).expanduser().is_absolute():
        family = _hub_family(value) or _named_family(config)
        parts = family.runtime().load_diffusers(value, local_only=False, dtype=dtype, vae_dtype=vae_dtype)
        source = value
    else:
        raise LoradeckError(f"model.pretrained_model: {path} does not exist")
    check_family(config, family, source)

    if config.model.vae.strip():
        # a file's VAE takes its config from the base folder, else from the family's shipped
        # configs (SDXL's VAE scales latents by 0.13025, SD's by 0.18215)
        base_folder = path if path is not None and path.is_dir() else family.config_folder
        parts["vae"] = load_vae_override(
            resolve_path(base_dir, config.model.vae.strip()), base_folder, allow_ckpt=config.model.allow_ckpt
        )

    in_fp32 = family.fp32_under_fp16(config) if dtype == torch.float16 else ()
    runtime = family.runtime()
    runtime.place_parts(parts, config, device=device, dtype=dtype, in_fp32=in_fp32)
    schedule = runtime.training_scheduler(parts.pop("scheduler"), config)
    return BaseModel(family=family, parts=parts, noise_scheduler=schedule, objective=runtime.objective(schedule, config),
                     name=model_display_name(value), source=source)


def _hub_family(source: str) -> FamilyDescriptor | None:
    """A hub model's family from its model_index.json (fetched, or from the local cache)."""
    from huggingface_hub import hf_hub_download

    try:
        return folder_family(Path(hf_hub_download(source, "model_index.json")).parent)
    except Exception as error:  # the hub raises many types; loading the parts says what is wrong
        log.info("cannot read %s/model_index.json (%s); loading it as model.family says", source, first_line(error))
        return None


def _load_single_file(path: Path, config: TrainConfig, dtype: torch.dtype,
                      base_dir) -> tuple[FamilyDescriptor, dict[str, Any]]:
    allow_ckpt = config.model.allow_ckpt
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise LoradeckError(f"model.pretrained_model: {path} is neither a folder, a .safetensors nor a .ckpt file")
    if path.suffix.lower() == ".ckpt" and not allow_ckpt:
        raise LoradeckError(
            f"model.pretrained_model: {path} is a .ckpt (pickle) file; convert it to .safetensors or set "
            "model.allow_ckpt = true to load it with torch's weights-only loader"
        )
    prediction = "v_prediction" if config.model.v_parameterization else None
    # fp16 comes later, for all but the VAE (see load_base_model)
    load_dtype = torch.float32 if dtype == torch.float16 else dtype
    # the family from the file's tensor names; a .ckpt's keys are read by its family's loader
    family = file_family_or_none(path) or _named_family(config)
    runtime = family.runtime()
    parts = runtime.load_single_file(path, allow_ckpt=allow_ckpt, config_dir=None, prediction_type=prediction,
                                     dtype=load_dtype, **runtime.single_file_companions(config, base_dir))
    return family, parts


def load_vae_override(path: Path | None, base_folder: Path | None, *, allow_ckpt: bool) -> Any:
    """A VAE from a diffusers folder or a single file (engine.model.ldm_checkpoints reads its layouts).

    A file's VAE is built with the base model's VAE config when the base is a diffusers
    folder, else with its family's shipped one.
    """
    from diffusers import AutoencoderKL

    if path is None or not path.exists():
        raise LoradeckError(f"model.vae: {path} does not exist")
    if path.is_dir():
        subfolder = "vae" if (path / "vae").is_dir() else None
        try:
            return AutoencoderKL.from_pretrained(str(path), subfolder=subfolder, local_files_only=True)
        except (OSError, ValueError) as error:
            raise LoradeckError(f"model.vae: cannot load {path}: {first_line(error)}") from None
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise LoradeckError(f"model.vae: {path} must be a diffusers folder, a .safetensors or a .ckpt file")
    from engine.model.ldm_checkpoints import load_single_file_vae

    config_dir = base_folder if base_folder is not None and (base_folder / "vae" / "config.json").is_file() else None
    return load_single_file_vae(path, allow_ckpt=allow_ckpt, config_dir=config_dir)
