"""Flux.1's text conditioning: CLIP-L's pooled output and T5-XXL's hidden states.

    tokenize(tokenizers, captions, t5_max_tokens) -> {"input_ids", "input_ids_2", "attention_mask_2"}
    encode(text_encoders, tokens, apply_t5_mask=False) -> (pooled (b, 768), states (b, tokens, 4096))

As sd-scripts' `strategy_flux` and diffusers' FluxPipeline.encode_prompt: CLIP-L reads 77
tokens (padded, truncated) and gives its pooled output, which modulates every block with
the timestep; T5 reads `t5xxl_max_token_length` tokens (512 for [dev], 256 for [schnell];
longer captions are cut there) and its last hidden states are the text tokens the
transformer attends to. With `apply_t5_attn_mask` (sd-scripts' option; the Kohya GUI's
Flux preset sets it) the padding is masked in T5 and, by `joint_attention_mask`, in the
transformer's attention. Heavy module (torch).
"""
from __future__ import annotations

import torch

CLIP_TOKENS = 77


def tokenize(tokenizers, captions: list[str], t5_max_tokens: int) -> dict[str, torch.Tensor]:
    clip_tokenizer, t5_tokenizer = tokenizers
    clip = clip_tokenizer(captions, padding="max_length", max_length=CLIP_TOKENS, truncation=True,
                          return_tensors="pt")
    t5 = t5_tokenizer(captions, padding="max_length", max_length=t5_max_tokens, truncation=True,
                      return_tensors="pt")
    return {"input_ids": clip.input_ids, "input_ids_2": t5.input_ids, "attention_mask_2": t5.attention_mask}


def encode(text_encoders, tokens: dict[str, torch.Tensor], *, apply_t5_mask: bool = False):
    """(CLIP-L pooled output, T5 last hidden states) for tokenized captions."""
    clip, t5 = text_encoders
    pooled = clip(tokens["input_ids"].to(clip.device), output_hidden_states=False).pooler_output
    mask = tokens["attention_mask_2"].to(t5.device) if apply_t5_mask else None
    states = t5(tokens["input_ids_2"].to(t5.device), attention_mask=mask).last_hidden_state
    return pooled, states


def joint_attention_mask(t5_mask: torch.Tensor, image_tokens: int) -> torch.Tensor:
    """(b, 1, 1, text + image tokens) boolean mask that hides T5's padding from every block's
    attention (sd-scripts' apply_t5_attn_mask); image tokens are always seen."""
    image = torch.ones(t5_mask.shape[0], image_tokens, dtype=torch.bool, device=t5_mask.device)
    return torch.cat([t5_mask.bool(), image], dim=1)[:, None, None, :]
