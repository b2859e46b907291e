"""SDXL (base 1.0 and its fine-tunes): two text encoders and size/crop conditioning.

* Text: CLIP-L (`text_encoder`) and OpenCLIP-bigG (`text_encoder_2`) each give their
  penultimate hidden states (no final layer norm), concatenated on the width (768 + 1280
  = 2048 on the real model); the second encoder's pooled, projected output is the U-Net's
  `text_embeds`. As in sd-scripts' SDXL training, clip skip is not used, a long caption's
  windows are joined as SD1.x's are, and the pooled output is the first window's.
* Size: six numbers per image, `time_ids` = original (height, width), crop top-left
  (top, left) and target (height, width): the image's own size, the crop the bucket fit
  actually applied, and the bucket (engine.train.data carries them per example).
* Files: LoRA keys `lora_unet_*`, `lora_te1_*`, `lora_te2_*`; `ss_base_model_version`
  `sdxl_base_v1-0`. 1024² by default. The VAE overflows in fp16, so under fp16 it runs in
  fp32 (engine.model.loading).

Light at import (see engine.model.families).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

NAME = "sdxl"
LABEL = "SDXL"
PIPELINE_CLASS = "StableDiffusionXLPipeline"
DEFAULT_RESOLUTION = 1024
TEXT_ENCODERS = (("text_encoder", "lora_te1"), ("text_encoder_2", "lora_te2"))
SIZE_CONDITIONING = True

# Parameters of SDXL base 1.0's frozen parts (counted from the released safetensors headers)
PARAMETERS = {
    "sdxl": {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840, "vae": 83_653_863},
}
# GiB per 512×512 worth of pixels at bf16/fp16, keyed by gradient checkpointing; measured on
# the meta device with SDXL base's configs (engine/model/assets/sdxl) by
# `python bench/train_speed.py --memory-model --family sdxl`, as engine.plan.vram explains:
# 1024² batch 2, rank 16: 16.67 GiB without checkpointing, 1.50 GiB with it
ACTIVATIONS_PER_IMAGE = {False: 2.08, True: 0.19}
VAE_ENCODE_PER_IMAGE = 0.44  # SDXL's VAE has SD's architecture (only its weights differ)

FP16_VAE_NOTE = ("SDXL's VAE overflows in fp16 (black or NaN images): it runs in fp32 under fp16 training, "
                 "about 0.3 GB more; give a VAE fixed for fp16 (e.g. madebyollin/sdxl-vae-fp16-fix) as model.vae "
                 "to run it in fp16")

# What a 24 GB card needs for SDXL (engine.plan.vram): the plan names each one a config departs from
RECOMMENDED = {
    "dataset.resolution": ("1024,1024", "SDXL was trained at 1024²; smaller buckets lose detail"),
    "precision.gradient_checkpointing": (True, "without it 1024² activations take about 8 GiB per image"),
    "precision.cache_text_encoder_outputs": (True, "captions are encoded once instead of by both text "
                                             "encoders (0.8 G parameters) every step"),
}


def vae_safe_in_fp16(config) -> bool:
    """Only a VAE the user gives (model.vae) is taken to be fixed for fp16; SDXL's own overflows."""
    return bool(config.model.vae.strip())


def plan_notes(config) -> list[str]:
    """One line per setting that departs from what SDXL wants on a 24 GB card, and the VAE's."""
    from engine.config.schema import parse_resolution

    notes = []
    for key, (wanted, why) in RECOMMENDED.items():
        group, name = key.split(".")
        value = getattr(getattr(config, group), name)
        if key == "dataset.resolution":
            width, height = parse_resolution(value)
            if width * height >= DEFAULT_RESOLUTION**2:
                continue
        elif value == wanted or (key == "precision.cache_text_encoder_outputs" and config.network.train_text_encoder):
            continue  # a text encoder that trains cannot have its outputs cached
        shown = str(wanted).lower() if isinstance(wanted, bool) else wanted
        notes.append(f"SDXL: {key} is {value!r}; {shown} is recommended ({why})")
    if config.precision.mixed_precision == "fp16" and not vae_safe_in_fp16(config):
        notes.append(FP16_VAE_NOTE)
    return notes


def base_model_version(config) -> str:
    return "sdxl_base_v1-0"


def modelspec_architecture(config) -> str:
    return "stable-diffusion-xl-v1-base/lora"


# --------------------------------------------------------------------------- heavy parts


def load_diffusers(source: str, *, local_only: bool, dtype, vae_dtype) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from engine.model.loading import load_parts

    def pretrained(model_class, subfolder: str, **kwargs):
        return lambda: model_class.from_pretrained(source, subfolder=subfolder, local_files_only=local_only, **kwargs)

    return load_parts(source, local_only, {
        "unet": pretrained(UNet2DConditionModel, "unet", torch_dtype=dtype),
        "vae": pretrained(AutoencoderKL, "vae", torch_dtype=vae_dtype),
        "text_encoder": pretrained(CLIPTextModel, "text_encoder", dtype=dtype),
        "text_encoder_2": pretrained(CLIPTextModelWithProjection, "text_encoder_2", dtype=dtype),
        "tokenizer": pretrained(CLIPTokenizer, "tokenizer"),
        "tokenizer_2": pretrained(CLIPTokenizer, "tokenizer_2"),
        "scheduler": pretrained(DDPMScheduler, "scheduler"),
    })


def encode_tokens(text_encoder, text_encoder_2, input_ids, input_ids_2, weights=None):
    """(states (batch, tokens, width 1 + width 2), pooled (batch, projection)) for
    (batch, windows, 77) token ids of each tokenizer."""
    import torch

    from engine.model.text_conditioning import apply_token_weights, join_windows

    batch, windows, length = input_ids.shape
    first = text_encoder(input_ids.reshape(batch * windows, length), output_hidden_states=True)
    second = text_encoder_2(input_ids_2.reshape(batch * windows, length), output_hidden_states=True)
    states = torch.cat([first.hidden_states[-2], second.hidden_states[-2].to(first.hidden_states[-2])], dim=-1)
    states = states.reshape(batch, windows * length, states.shape[-1])
    if weights is not None:
        states = apply_token_weights(states, weights)
    pooled = second.text_embeds.reshape(batch, windows, -1)[:, 0]
    return join_windows(states, windows, length), pooled


def time_ids(text: dict, device, dtype):
    """(batch, 6): original (h, w), crop top-left (top, left), target (h, w) per image."""
    import torch

    parts = [text["original_size"], text["crop_top_left"], text["target_size"]]
    return torch.cat(parts, dim=1).to(device=device, dtype=dtype)


def condition(text_encoders, text: dict, *, config, train_text_encoder: bool, device) -> tuple[Any, dict]:
    """(encoder hidden states, {"added_cond_kwargs": text_embeds and time_ids}) for a batch."""
    import torch

    if text.get("text_states") is not None:
        states, pooled = text["text_states"].to(device), text["pooled_states"].to(device)
    else:
        weights = text.get("token_weights") if config.captions.weighted_captions else None
        if weights is not None and weights.device.type == "cpu":
            weights = None if bool(torch.all(weights == 1)) else weights.to(device)
        with torch.set_grad_enabled(train_text_encoder and torch.is_grad_enabled()):
            states, pooled = encode_tokens(text_encoders[0], text_encoders[1], text["input_ids"].to(device),
                                           text["input_ids_2"].to(device), weights)
    added = {"text_embeds": pooled, "time_ids": time_ids(text, device, pooled.dtype)}
    return states, {"added_cond_kwargs": added}


class TextStateCache:
    """Hidden states and pooled output of both encoders for every distinct caption, computed
    once (while the encoders are frozen and captions fixed; see engine.model.text_conditioning)."""

    def __init__(self):
        self.states: dict[str, tuple[Any, Any]] = {}

    def __len__(self) -> int:
        return len(self.states)

    def example(self, caption: str) -> dict[str, Any]:
        states, pooled = self.states[caption]
        return {"text_states": states, "pooled_states": pooled}

    def fill(self, captions, tokenizers, text_encoders, *, max_token_length: int, weighted: bool,
             batch_size: int = 64, autocast=None) -> None:
        import contextlib

        import torch

        from engine.model.text_conditioning import tokenize_caption

        todo = sorted(set(captions) - set(self.states))
        device = text_encoders[0].device
        with torch.no_grad():
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                for caption in chunk:
                    ids, weights = tokenize_caption(tokenizers[0], caption, max_token_length, weighted)
                    ids_2, _ = tokenize_caption(tokenizers[1], caption, max_token_length, weighted)
                    use_weights = weighted and not bool(torch.all(weights == 1))
                    with autocast() if autocast is not None else contextlib.nullcontext():
                        states, pooled = encode_tokens(
                            text_encoders[0], text_encoders[1], ids[None].to(device), ids_2[None].to(device),
                            weights[None].to(device) if use_weights else None,
                        )
                    self.states[caption] = (states[0].cpu().clone(), pooled[0].cpu().clone())


def text_state_cache(model, captions, config, *, autocast=None) -> TextStateCache:
    cache = TextStateCache()
    cache.fill(captions, model.tokenizers, model.text_encoders, max_token_length=config.captions.max_token_length,
               weighted=config.captions.weighted_captions, autocast=autocast)
    return cache


# --------------------------------------------------------------------------- single files
# The original (SGM) layout SDXL's own release and every fine-tune share: the U-Net and VAE
# as SD's, CLIP-L in transformers' layout and OpenCLIP-bigG in OpenCLIP's under
# `conditioner.embedders.0.` / `.1.`. Offline: configs from engine/model/assets/sdxl (or a
# given diffusers folder), CLIP's vocabulary from the shipped tokenizer (engine.model.single_file).

SINGLE_FILE_CONFIG = Path(__file__).resolve().parents[1] / "assets" / "sdxl"
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

    from engine.errors import LoradeckError
    from engine.model import single_file
    from engine.model.families import keys_family

    path = Path(path)
    dtype = dtype or torch.float32
    state = single_file.read_checkpoint(path, allow_ckpt=allow_ckpt)
    if keys_family(state) != "sdxl":
        raise LoradeckError(f"{path}: not an SDXL checkpoint (no conditioner.embedders.* text encoders)")
    folder = single_file._config_dir(config_dir or SINGLE_FILE_CONFIG, "sdxl")
    parts: dict[str, Any] = {"unet": single_file._build_unet(state, folder, path, dtype),
                             "vae": single_file._build_vae(state, folder, path, dtype)}
    for name, model_class in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
        prefix = TEXT_ENCODER_PREFIXES[name]
        text_state = {key: value for key, value in state.items() if key.startswith(prefix)}
        if not text_state:
            raise LoradeckError(f"{path}: has no {name} weights ({prefix}*); it is not a complete SDXL checkpoint")
        parts[name] = single_file._load_component(
            lambda: create_diffusers_clip_model_from_ldm(model_class, text_state, subfolder=name, config=str(folder),
                                                         torch_dtype=dtype, local_files_only=True),
            lambda: None, name.replace("_", " "), path, folder / name,
        )
    parts["tokenizer"] = single_file.load_tokenizer(folder)
    parts["tokenizer_2"] = single_file.load_tokenizer(folder, "tokenizer_2")
    parts["scheduler"] = single_file._load_scheduler(folder, prediction_type)
    return parts


def export_single_file(diffusers_dir, out_path, *, dtype=None) -> Path:
    """Write an SDXL diffusers folder as one original-layout `.safetensors` (A1111, ComfyUI,
    sd-scripts read it); every weight is checked to come back under its own name through
    diffusers' converters before anything is written."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from engine.errors import LoradeckError, first_line
    from engine.model import single_file

    source, out_path = Path(diffusers_dir), Path(out_path)
    try:
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", local_files_only=True)
        first = CLIPTextModel.from_pretrained(source / "text_encoder", local_files_only=True)
        second = CLIPTextModelWithProjection.from_pretrained(source / "text_encoder_2", local_files_only=True)
    except (OSError, ValueError) as error:
        raise LoradeckError(f"{source}: cannot load the SDXL diffusers model ({first_line(error)})") from error
    state = {
        **single_file._unet_to_ldm(unet.state_dict(), unet.config),
        **single_file._vae_to_ldm(vae.state_dict(), vae.config),
        **single_file._text_encoder_to_ldm(first.state_dict(), "quick_gelu",
                                           clip_prefix=TEXT_ENCODER_PREFIXES["text_encoder"]),
        **single_file._text_encoder_to_ldm(second.state_dict(), "gelu",
                                           open_clip_prefix=TEXT_ENCODER_PREFIXES["text_encoder_2"]),
    }
    single_file.check_round_trip(source, (
        ("U-Net", unet, single_file._unet_to_diffusers(state, unet.config)),
        ("VAE", vae, single_file._vae_to_diffusers(state, vae.config)),
        ("text encoder", first, single_file.match_text_model_level(convert_ldm_clip_checkpoint(state), first)),
        ("text encoder 2", second, convert_open_clip_checkpoint(second, state, TEXT_ENCODER_PREFIXES["text_encoder_2"])),
    ))
    return single_file.save_ldm_file(state, out_path, dtype)


def build_pipeline(parts: dict[str, Any], scheduler):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], text_encoder_2=parts["text_encoder_2"],
        tokenizer=parts["tokenizer"], tokenizer_2=parts["tokenizer_2"], unet=parts["unet"], scheduler=scheduler,
    )


def prompt_embeddings(pipeline, prompt: str, negative_prompt: str, clip_skip: int) -> dict[str, Any]:
    """Both prompts' states and pooled outputs, with A1111 emphasis and 75-token windows."""
    import math

    from engine.model.text_conditioning import WINDOW, parse_emphasis, tokenize_caption
    from engine.sampling.sampler import MAX_PROMPT_WINDOWS

    tokenizer = pipeline.tokenizer

    def token_count(text: str) -> int:
        return sum(len(tokenizer(part, add_special_tokens=False).input_ids) for part, _ in parse_emphasis(text))

    windows = min(MAX_PROMPT_WINDOWS, max(1, math.ceil(max(token_count(prompt), token_count(negative_prompt)) / WINDOW)))
    encoded = []
    for text in (prompt, negative_prompt):
        ids, weights = tokenize_caption(tokenizer, text, windows * WINDOW, weighted=True)
        ids_2, _ = tokenize_caption(pipeline.tokenizer_2, text, windows * WINDOW, weighted=True)
        device = pipeline.device
        emphasis = None if bool(weights.eq(1).all()) else weights[None].to(device)
        encoded.append(encode_tokens(pipeline.text_encoder, pipeline.text_encoder_2, ids[None].to(device),
                                     ids_2[None].to(device), emphasis))
    (positive, pooled), (negative, negative_pooled) = encoded
    return {"prompt_embeds": positive, "negative_prompt_embeds": negative, "pooled_prompt_embeds": pooled,
            "negative_pooled_prompt_embeds": negative_pooled}
