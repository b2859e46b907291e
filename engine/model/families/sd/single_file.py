"""SD 1.x/2.x single files: the original LDM layout, loaded offline and written back.

The U-Net under `model.diffusion_model.`, the VAE under `first_stage_model.`, the text
encoder under `cond_stage_model.`: OpenAI CLIP in transformers' layout for SD 1.x
(`cond_stage_model.transformer.`), OpenCLIP's own for SD 2.x (`cond_stage_model.model.`).
The machinery (key maps, component builders, the .ckpt gate) is engine.model.ldm_checkpoints.
Heavy module.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from engine.errors import LoradeckError, first_line
from engine.model.families.sd import DESCRIPTORS, SD2, SD15, checkpoint_is_v2
from engine.model.ldm_checkpoints import (CLIP_PREFIX, OPEN_CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, build_text_encoder,
                                          build_unet, build_vae, check_round_trip, config_folder, load_scheduler,
                                          load_tokenizer, read_checkpoint, save_ldm_file, text_encoder_to_diffusers,
                                          text_encoder_to_ldm, unet_to_diffusers, unet_to_ldm, vae_to_diffusers,
                                          vae_to_ldm)

log = logging.getLogger(__name__)


def checkpoint_variant(state: dict[str, Any], path: Path):
    """SD15 or SD2 from the keys (and text-encoder width); anything else is refused in one line."""
    if any(key.startswith("conditioner.embedders.") for key in state):
        raise LoradeckError(f"{path}: not an SD 1.x/2.x checkpoint: its text encoders are conditioner.embedders.*, "
                            "not cond_stage_model.*")
    conv_in = state.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None or conv_in.ndim != 4:
        raise LoradeckError(
            f"{path}: not a Stable Diffusion checkpoint (no {UNET_PREFIX}* U-Net weights in the original layout)"
        )
    if conv_in.shape[1] != 4:
        raise LoradeckError(
            f"{path}: its U-Net takes {conv_in.shape[1]} input channels (an inpainting or other special "
            "model); loradeck trains text-to-image SD 1.x/2.x with 4"
        )
    if not any(key.startswith(VAE_PREFIX) for key in state):
        raise LoradeckError(f"{path}: has no VAE weights ({VAE_PREFIX}*); it is not a complete SD checkpoint")
    text_keys = (CLIP_PREFIX + "text_model.embeddings.token_embedding.weight",
                 CLIP_PREFIX + "embeddings.token_embedding.weight", OPEN_CLIP_PREFIX + "token_embedding.weight")
    if not any(key in state for key in text_keys):
        raise LoradeckError(f"{path}: has no text-encoder weights (cond_stage_model.*); it is not a complete SD "
                            "checkpoint")
    return SD2 if checkpoint_is_v2({key: tuple(value.shape) for key, value in state.items()}) else SD15


def load_single_file(path: str | Path, *, allow_ckpt: bool = False, config_dir: str | Path | None = None,
                     prediction_type: str | None = None, dtype=None) -> dict[str, Any]:
    """Diffusers components from a single-file SD 1.x / 2.x checkpoint, with no network.

    `config_dir` is a diffusers folder whose configs (and tokenizer) describe the model;
    by default the shipped SD 1.5 or SD 2.x configs, picked from the checkpoint's keys.
    `prediction_type` ("epsilon" / "v_prediction") overrides the scheduler's: the weights
    cannot tell SD 2.x 512-base from 768-v, so the shipped SD 2.x config says epsilon and a
    768-v model needs "v_prediction" (what `model.v_parameterization` means). Weights are
    cast to `dtype` (default float32, as `from_pretrained` gives).
    """
    import torch

    path = Path(path)
    dtype = dtype or torch.float32
    state = read_checkpoint(path, allow_ckpt=allow_ckpt)
    variant = checkpoint_variant(state, path)
    folder = config_folder(config_dir, variant.config_folder)
    components = {}
    for name, build, source_prefixes in (
        ("unet", build_unet, (UNET_PREFIX, "model_ema.")),
        ("vae", build_vae, (VAE_PREFIX,)),
        ("text_encoder", build_text_encoder, ("cond_stage_model.",)),
    ):
        components[name] = build(state, folder, path, dtype)
        # Drop what this model was built from: when the file's precision differs from
        # `dtype` the model holds copies, and a .ckpt's originals can go now (a
        # .safetensors file is memory-mapped copy-on-write, so its pages cost little).
        for key in [key for key in state if key.startswith(source_prefixes)]:
            del state[key]
    components["tokenizer"] = load_tokenizer(folder)
    components["scheduler"] = load_scheduler(folder, prediction_type)
    log.info("loaded %s checkpoint %s with configs from %s", variant.label, path, folder)
    return components


def export_single_file(diffusers_dir: str | Path, out_path: str | Path, *, dtype=None) -> Path:
    """Write a diffusers SD folder as one original-layout `.safetensors` (A1111 / ComfyUI /
    sd-scripts read it), optionally cast to `dtype` (e.g. torch.float16 halves the size).

    The keys are checked by converting them back with diffusers' own functions before
    anything is written, so a file we write is a file `load_single_file` reads.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    source, out_path = Path(diffusers_dir), Path(out_path)
    if not (source / "model_index.json").is_file():
        raise LoradeckError(f"{source}: not a diffusers model folder (no model_index.json)")
    if not any(variant.recognizes_folder(source) for variant in DESCRIPTORS):
        raise LoradeckError(f"{source}: not an SD 1.x/2.x diffusers model; its family writes its own single files")
    try:
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(source / "text_encoder", local_files_only=True)
    except (OSError, ValueError) as error:
        raise LoradeckError(f"{source}: cannot load the diffusers model ({first_line(error)})") from error

    state = {
        **unet_to_ldm(unet.state_dict(), unet.config),
        **vae_to_ldm(vae.state_dict(), vae.config),
        **text_encoder_to_ldm(text_encoder.state_dict(), text_encoder.config.hidden_act),
    }
    check_round_trip(source, (
        ("U-Net", unet, unet_to_diffusers(state, unet.config)),
        ("VAE", vae, vae_to_diffusers(state, vae.config)),
        ("text-encoder", text_encoder, text_encoder_to_diffusers(state, text_encoder)),
    ))
    return save_ldm_file(state, out_path, dtype)
