"""Stable Diffusion 1.x and 2.x: one CLIP text encoder, conditioning by its hidden states.

The reference family: everything here is what loradeck did before families existed, so
SD 1.x/2.x training is unchanged. Light at import (see engine.model.families).
"""
from __future__ import annotations

from typing import Any

NAME = "sd15"
LABEL = "SD 1.x / 2.x"
PIPELINE_CLASS = "StableDiffusionPipeline"
DEFAULT_RESOLUTION = 512
TEXT_ENCODERS = (("text_encoder", "lora_te"),)
SIZE_CONDITIONING = False  # the U-Net is told nothing about the image's size or crop

# Parameters of the frozen parts (the LoRA's come from engine.plan.model_shapes)
PARAMETERS = {
    "sd15": {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863},
    "sd2": {"unet": 865_910_724, "text_encoder": 340_387_840, "vae": 83_653_863},
}
# GiB per 512×512 image at bf16/fp16, keyed by gradient checkpointing (engine.plan.vram)
ACTIVATIONS_PER_IMAGE = {False: 1.26, True: 0.32}
VAE_ENCODE_PER_IMAGE = 0.44


def vae_safe_in_fp16(config) -> bool:
    return False  # SD's VAE runs in fp32 under fp16, as it always has


def plan_notes(config) -> list[str]:
    return []


def base_model_version(config) -> str:
    return "sd_v2" if config.model.v2 else "sd_v1"


def modelspec_architecture(config) -> str:
    return "stable-diffusion-v2-768-v/lora" if config.model.v2 else "stable-diffusion-v1/lora"


# --------------------------------------------------------------------------- heavy parts


def load_diffusers(source: str, *, local_only: bool, dtype, vae_dtype) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from engine.model.loading import load_parts

    return load_parts(source, local_only, {
        "unet": lambda: UNet2DConditionModel.from_pretrained(
            source, subfolder="unet", local_files_only=local_only, torch_dtype=dtype
        ),
        "vae": lambda: AutoencoderKL.from_pretrained(
            source, subfolder="vae", local_files_only=local_only, torch_dtype=vae_dtype
        ),
        "text_encoder": lambda: CLIPTextModel.from_pretrained(
            source, subfolder="text_encoder", local_files_only=local_only, dtype=dtype
        ),
        "tokenizer": lambda: CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", local_files_only=local_only),
        "scheduler": lambda: DDPMScheduler.from_pretrained(source, subfolder="scheduler", local_files_only=local_only),
    })


def condition(text_encoders, text: dict, *, config, train_text_encoder: bool, device) -> tuple[Any, dict]:
    """(encoder hidden states, extra U-Net arguments) for a batch's captions."""
    from engine.train.step import encode_captions

    if text.get("text_states") is not None:
        return text["text_states"].to(device), {}
    states = encode_captions(text_encoders[0], text["input_ids"].to(device), text.get("token_weights"), config=config,
                             train_text_encoder=train_text_encoder)
    return states, {}


def text_state_cache(model, captions, config, *, autocast=None):
    """Every caption's U-Net conditioning, computed once (engine.model.text_conditioning)."""
    from engine.model.text_conditioning import TextStateCache

    cache = TextStateCache()
    cache.fill(captions, model.tokenizer, model.text_encoder, max_token_length=config.captions.max_token_length,
               weighted=config.captions.weighted_captions, clip_skip=config.model.clip_skip, autocast=autocast)
    return cache


def load_single_file(path, *, allow_ckpt: bool = False, config_dir=None, prediction_type=None,
                     dtype=None) -> dict[str, Any]:
    """An SD 1.x/2.x single-file checkpoint's components (engine.model.single_file)."""
    from engine.model.single_file import load_single_file as load

    return load(path, allow_ckpt=allow_ckpt, config_dir=config_dir, prediction_type=prediction_type, dtype=dtype)


def build_pipeline(parts: dict[str, Any], scheduler):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], unet=parts["unet"],
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def prompt_embeddings(pipeline, prompt: str, negative_prompt: str, clip_skip: int) -> dict[str, Any]:
    from engine.sampling.sampler import encode_prompts

    positive, negative = encode_prompts(pipeline, prompt, negative_prompt, clip_skip)
    return {"prompt_embeds": positive, "negative_prompt_embeds": negative}
