"""Load the base model a LoRA trains on: a diffusers folder, a single file, or a hub id.

    load_base_model(config, base_dir, device=..., dtype=...) -> BaseModel

The frozen weights are cast to `dtype` (the mixed-precision type on a GPU, fp32 on the
CPU); the VAE stays in fp32 under fp16, where SD's VAE overflows. A local folder or file
never touches the network (`local_files_only`); a hub id does, the first time. Anything a
user can get wrong (a missing path, a `.ckpt` not allowed, an unreadable file) becomes one
`LoradeckError` line.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.config.schema import SINGLE_FILE_SUFFIXES, TrainConfig, looks_like_hub_id, resolve_path
from engine.errors import LoradeckError, first_line
from engine.model.families import check_family, family_named, file_family, folder_family

log = logging.getLogger(__name__)


@dataclass
class BaseModel:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any  # DDPMScheduler with the model's betas, for training
    name: str  # what metadata and sample files call it: file stem, folder name or hub id
    source: str  # resolved path or hub id
    family: str = "sd15"  # engine.model.families: "sd15", "sd2" or "sdxl"
    text_encoder_2: Any = None  # SDXL's OpenCLIP-bigG
    tokenizer_2: Any = None

    @property
    def family_module(self):
        return family_named(self.family)

    @property
    def text_encoders(self) -> list:
        return [self.text_encoder] + ([self.text_encoder_2] if self.text_encoder_2 is not None else [])

    @property
    def tokenizers(self) -> list:
        return [self.tokenizer] + ([self.tokenizer_2] if self.tokenizer_2 is not None else [])

    def parts(self) -> dict[str, Any]:
        """The modules by their diffusers pipeline names (what a pipeline is built from)."""
        names = ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


def model_display_name(value: str) -> str:
    text = value.rstrip("/\\")
    name = Path(text).name or text
    for suffix in SINGLE_FILE_SUFFIXES:
        name = name.removesuffix(suffix)
    return name if not looks_like_hub_id(value) else value


def load_base_model(config: TrainConfig, base_dir: str | Path, *, device: Any, dtype: torch.dtype) -> BaseModel:
    value = config.model.pretrained_model.strip()
    if not value:
        raise LoradeckError("model.pretrained_model: no base model given (a folder, .safetensors file or hub id)")
    path = resolve_path(base_dir, value)
    vae_dtype = torch.float32 if dtype == torch.float16 else dtype
    if path is not None and path.is_dir():
        parts = _load_diffusers(str(path), local_only=True, dtype=dtype, vae_dtype=vae_dtype)
        source = str(path)
    elif path is not None and path.is_file():
        parts = _load_single_file(path, config, dtype)
        source = str(path)
    elif looks_like_hub_id(value) and not Path(value).expanduser().is_absolute():
        parts = _load_diffusers(value, local_only=False, dtype=dtype, vae_dtype=vae_dtype)
        source = value
    else:
        raise LoradeckError(f"model.pretrained_model: {path} does not exist")
    family = parts.pop("family")
    check_family(config, family, source)

    if config.model.vae.strip():
        # a file's VAE takes its config from the base folder, else from the family's shipped
        # configs (SDXL's VAE scales latents by 0.13025, SD's by 0.18215)
        base_folder = (path if path is not None and path.is_dir()
                       else getattr(family_named(family), "SINGLE_FILE_CONFIG", None))
        parts["vae"] = load_vae_override(
            resolve_path(base_dir, config.model.vae.strip()), base_folder, allow_ckpt=config.model.allow_ckpt
        )

    if family_named(family).vae_safe_in_fp16(config):
        vae_dtype = dtype
    modules = [("unet", dtype), ("text_encoder", dtype), ("text_encoder_2", dtype), ("vae", vae_dtype)]
    for part, wanted in modules:
        module = parts.get(part)
        if module is None:
            continue
        if module.dtype != wanted:
            module.to(dtype=wanted)
        module.to(device)
        module.requires_grad_(False)
    return BaseModel(
        unet=parts["unet"],
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        noise_scheduler=training_scheduler(parts["scheduler"].config, config.model.v_parameterization),
        name=model_display_name(value),
        source=source,
        family=family,
        text_encoder_2=parts.get("text_encoder_2"),
        tokenizer_2=parts.get("tokenizer_2"),
    )


def training_scheduler(scheduler_config: Any, v_parameterization: bool) -> Any:
    """A DDPM scheduler with the model's noise schedule (what sd-scripts trains with)."""
    from diffusers import DDPMScheduler

    overrides: dict[str, Any] = {"clip_sample": False}
    if v_parameterization:
        overrides["prediction_type"] = "v_prediction"
    return DDPMScheduler.from_config(scheduler_config, **overrides)


def _load_diffusers(source: str, *, local_only: bool, dtype: torch.dtype, vae_dtype: torch.dtype) -> dict[str, Any]:
    """The parts of a diffusers folder (or hub id), as its family has them, plus "family"."""
    if local_only and not (Path(source) / "unet").is_dir():
        raise LoradeckError(f"model.pretrained_model: {source} is not a diffusers model folder (no unet/ inside)")
    family = folder_family(Path(source)) if local_only else _hub_family(source)
    parts = family_named(family or "sd15").load_diffusers(source, local_only=local_only, dtype=dtype, vae_dtype=vae_dtype)
    return {**parts, "family": family or "sd15"}


def _hub_family(source: str) -> str | None:
    """A hub model's family from its model_index.json (fetched, or from the local cache)."""
    from huggingface_hub import hf_hub_download

    try:
        return folder_family(Path(hf_hub_download(source, "model_index.json")).parent)
    except Exception as error:  # the hub raises many types; loading the parts says what is wrong
        log.info("cannot read %s/model_index.json (%s); loading it as SD 1.x", source, first_line(error))
        return None


def load_parts(source: str, local_only: bool, loaders: dict[str, Any]) -> dict[str, Any]:
    """Run each part's loader; a failure is one line naming the part (used by the families)."""
    parts = {}
    for part, load in loaders.items():
        try:
            parts[part] = load()
        except (OSError, ValueError) as error:
            hint = "" if local_only else " (is the server online and the id right? a local folder or file needs no network)"
            raise LoradeckError(f"model.pretrained_model: cannot load the {part} of {source}: {first_line(error)}{hint}") from None
    return parts


def _load_single_file(path: Path, config: TrainConfig, dtype: torch.dtype) -> dict[str, Any]:
    allow_ckpt = config.model.allow_ckpt
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise LoradeckError(f"model.pretrained_model: {path} is neither a folder, a .safetensors nor a .ckpt file")
    if path.suffix.lower() == ".ckpt" and not allow_ckpt:
        raise LoradeckError(
            f"model.pretrained_model: {path} is a .ckpt (pickle) file; convert it to .safetensors or set "
            "model.allow_ckpt = true to load it with torch's weights-only loader"
        )
    prediction = "v_prediction" if config.model.v_parameterization else None
    # fp16 comes later, for the U-Net and CLIP only: the VAE stays fp32 (see load_base_model)
    load_dtype = torch.float32 if dtype == torch.float16 else dtype
    # the family from the file's tensor names (a .ckpt: the SD loader reads its keys and refuses SDXL)
    family = file_family(path) or "sd15"
    parts = family_named(family).load_single_file(path, allow_ckpt=allow_ckpt, config_dir=None,
                                                  prediction_type=prediction, dtype=load_dtype)
    return {**parts, "family": family}


def load_vae_override(path: Path | None, base_folder: Path | None, *, allow_ckpt: bool) -> Any:
    """A VAE from a diffusers folder or a single file (engine.model.single_file reads its layouts).

    A file's VAE is built with the base model's VAE config when the base is a diffusers
    folder, else with SD1.5's (every SD1.x/2.x VAE has that shape).
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
    from engine.model.single_file import load_single_file_vae

    config_dir = base_folder if base_folder is not None and (base_folder / "vae" / "config.json").is_file() else None
    return load_single_file_vae(path, allow_ckpt=allow_ckpt, config_dir=config_dir)


