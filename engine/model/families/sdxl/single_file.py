"""SDXL single files: the original (SGM) layout SDXL's own release and every fine-tune share.

The U-Net and VAE as SD's (plus `label_emb`, the size and pooled-text embedding), CLIP-L in
transformers' layout under `conditioner.embedders.0.transformer.` and OpenCLIP-bigG in
OpenCLIP's under `conditioner.embedders.1.model.` (its projection as `text_projection`,
x @ P). Offline: configs from engine/model/assets/sdxl (or a given diffusers folder), CLIP's
vocabulary from the shipped tokenizer (engine.model.ldm_checkpoints). Heavy module.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import LoradeckError, first_line
from engine.model.families.sdxl import SDXL
from engine.model import ldm_checkpoints as ldm

TEXT_ENCODER_PREFIXES = {"text_encoder": "conditioner.embedders.0.transformer.",
                         "text_encoder_2": "conditioner.embedders.1.model."}


def load_single_file(path, *, allow_ckpt: bool = False, config_dir=None, prediction_type=None,
                     dtype=None) -> dict[str, Any]:
    """Diffusers components of a single-file SDXL checkpoint, with no network: each by
    diffusers' own `from_single_file` (the text encoders by the function its pipelines use)
    with `config_dir`'s configs (SDXL base's shipped ones by default)."""
    import torch
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    path = Path(path)
    dtype = dtype or torch.float32
    state = ldm.read_checkpoint(path, allow_ckpt=allow_ckpt)
    if not SDXL.recognizes_checkpoint(state):
        raise LoradeckError(f"{path}: not an SDXL checkpoint (no conditioner.embedders.* text encoders)")
    folder = ldm.config_folder(config_dir, SDXL.config_folder)
    parts: dict[str, Any] = {"unet": ldm.build_unet(state, folder, path, dtype),
                             "vae": ldm.build_vae(state, folder, path, dtype)}
    for name, model_class in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
        prefix = TEXT_ENCODER_PREFIXES[name]
        text_state = {key: value for key, value in state.items() if key.startswith(prefix)}
        if not text_state:
            raise LoradeckError(f"{path}: has no {name} weights ({prefix}*); it is not a complete SDXL checkpoint")
        parts[name] = ldm.load_component(
            lambda: create_diffusers_clip_model_from_ldm(model_class, text_state, subfolder=name, config=str(folder),
                                                         torch_dtype=dtype, local_files_only=True),
            lambda: None, name.replace("_", " "), path, folder / name,
        )
    parts["tokenizer"] = ldm.load_tokenizer(folder)
    parts["tokenizer_2"] = ldm.load_tokenizer(folder, "tokenizer_2")
    parts["scheduler"] = ldm.load_scheduler(folder, prediction_type)
    return parts


def export_single_file(diffusers_dir, out_path, *, dtype=None) -> Path:
    """Write an SDXL diffusers folder as one original-layout `.safetensors` (A1111, ComfyUI,
    sd-scripts read it); every weight is checked to come back under its own name through
    diffusers' converters before anything is written."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    source, out_path = Path(diffusers_dir), Path(out_path)
    if not SDXL.recognizes_folder(source):
        raise LoradeckError(f"{source}: not an SDXL diffusers model; its family writes its own single files")
    try:
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", local_files_only=True)
        first = CLIPTextModel.from_pretrained(source / "text_encoder", local_files_only=True)
        second = CLIPTextModelWithProjection.from_pretrained(source / "text_encoder_2", local_files_only=True)
    except (OSError, ValueError) as error:
        raise LoradeckError(f"{source}: cannot load the SDXL diffusers model ({first_line(error)})") from error
    state = {
        **ldm.unet_to_ldm(unet.state_dict(), unet.config),
        **ldm.vae_to_ldm(vae.state_dict(), vae.config),
        **ldm.text_encoder_to_ldm(first.state_dict(), "quick_gelu", clip_prefix=TEXT_ENCODER_PREFIXES["text_encoder"]),
        **ldm.text_encoder_to_ldm(second.state_dict(), "gelu",
                                  open_clip_prefix=TEXT_ENCODER_PREFIXES["text_encoder_2"]),
    }
    ldm.check_round_trip(source, (
        ("U-Net", unet, ldm.unet_to_diffusers(state, unet.config)),
        ("VAE", vae, ldm.vae_to_diffusers(state, vae.config)),
        ("text encoder", first, ldm.match_text_model_level(convert_ldm_clip_checkpoint(state), first)),
        ("text encoder 2", second, convert_open_clip_checkpoint(second, state, TEXT_ENCODER_PREFIXES["text_encoder_2"])),
    ))
    return ldm.save_ldm_file(state, out_path, dtype)
