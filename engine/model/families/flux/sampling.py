"""Flux.1 samples: diffusers' FluxPipeline (flow-matching Euler), with sd-scripts' prompt flags.

    build_pipeline(parts, scheduler) -> FluxPipeline around the (LoRA-carrying) parts
    prompt_embeddings(pipeline, prompt, negative, t5_max_tokens) -> the pipeline's keyword arguments
    render(pipeline, prompt, ...) -> PIL image

As sd-scripts' `flux_train_utils.sample_image_inference`: `--g` is the guidance [dev]
embeds (3.5 when not given; [schnell] has none), `--l` is true classifier-free guidance
with `--n` and is off unless given (sd-scripts' default 1.0: no negative pass), sizes are
rounded down to multiples of 16 (2x2 patches of 8x latents). The schedule is the model's
own (FLUX.1 [dev]: Euler on 1 → 0 shifted by the image's token count, the same
time_shift sd-scripts' get_schedule applies); `--ss` has no other Flux sampler. Prompt
emphasis `(word:1.2)` is not Flux's (sd-scripts passes it as text): the text goes to CLIP
and T5 as written. Heavy module.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from engine.model.families.flux import DEFAULT_GUIDANCE
from engine.model.families.flux import latents as flux_latents
from engine.model.families.flux import text as flux_text

SIDE_MULTIPLE = 16


def build_pipeline(parts: dict[str, Any], scheduler):
    from diffusers import FluxPipeline

    return FluxPipeline(scheduler=scheduler, vae=parts["vae"], text_encoder=parts["text_encoder"],
                        tokenizer=parts["tokenizer"], text_encoder_2=parts["text_encoder_2"],
                        tokenizer_2=parts["tokenizer_2"], transformer=parts["transformer"])


def prompt_embeddings(pipeline, prompt: str, negative_prompt: str, t5_max_tokens: int,
                      with_negative: bool = True) -> dict[str, Any]:
    tokenizers = (pipeline.tokenizer, pipeline.tokenizer_2)
    encoders = (pipeline.text_encoder, pipeline.text_encoder_2)
    texts = [prompt, negative_prompt] if with_negative else [prompt]
    pooled, states = flux_text.encode(encoders, flux_text.tokenize(tokenizers, texts, t5_max_tokens))
    embeddings = {"prompt_embeds": states[:1], "pooled_prompt_embeds": pooled[:1]}
    if with_negative:
        embeddings.update(negative_prompt_embeds=states[1:], negative_pooled_prompt_embeds=pooled[1:])
    return embeddings


def sample_size(prompt) -> tuple[int, int]:
    """(width, height) rounded down to multiples of 16, at least 64 (sd-scripts' rule)."""
    return (max(64, prompt.width - prompt.width % SIDE_MULTIPLE), max(64, prompt.height - prompt.height % SIDE_MULTIPLE))


def render(pipeline, prompt, *, t5_max_tokens: int, device="cpu", dtype=torch.float32, embeddings=None):
    """One image for one SamplePrompt: its seed (CPU noise, the same on any device), size,
    steps, `--g` guidance and, when `--l` is given, true CFG with its negative prompt.
    `embeddings`: prompt_embeddings computed earlier (the text encoders may be gone)."""
    guidance_embeds = pipeline.transformer.config.guidance_embeds
    guidance = prompt.guidance if prompt.guidance is not None else DEFAULT_GUIDANCE["dev" if guidance_embeds else "schnell"]
    true_cfg = prompt.cfg if prompt.cfg_given else 1.0
    width, height = sample_size(prompt)
    device = torch.device(device)
    use_autocast = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    autocast = torch.autocast("cuda", dtype=dtype) if use_autocast else contextlib.nullcontext()
    with torch.no_grad():
        with autocast:
            if embeddings is None:
                embeddings = prompt_embeddings(pipeline, prompt.prompt, prompt.negative_prompt, t5_max_tokens,
                                               with_negative=true_cfg > 1)
            if true_cfg <= 1:
                embeddings = {key: value for key, value in embeddings.items() if not key.startswith("negative_")}
            packed = pipeline(**{key: value.to(device) for key, value in embeddings.items()}, width=width,
                              height=height, num_inference_steps=prompt.steps, guidance_scale=guidance,
                              true_cfg_scale=true_cfg, max_sequence_length=t5_max_tokens,
                              generator=torch.Generator(device="cpu").manual_seed(prompt.seed),
                              output_type="latent").images
        # decoded outside autocast, in the VAE's own dtype
        latents = flux_latents.unpack(packed, height // 8, width // 8)
        pixels = flux_latents.decode_latents(pipeline.vae, latents)
    return pipeline.image_processor.postprocess(pixels, output_type="pil", do_denormalize=[True])[0]
