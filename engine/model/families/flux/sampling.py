"""Flux.1 samples: diffusers' FluxPipeline (flow-matching Euler), with sd-scripts' prompt flags.

    build_pipeline(parts, scheduler) -> FluxPipeline around the (LoRA-carrying) parts
    prompt_embeddings(pipeline, prompt, negative, t5_max_tokens) -> the pipeline's keyword arguments
    sample_size(prompt) -> (width, height) in multiples of 16

engine.sampling.sampler.render draws an image with them through the runtime
(`FluxRuntime.sample_arguments`, `decode`).

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

from typing import Any

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
