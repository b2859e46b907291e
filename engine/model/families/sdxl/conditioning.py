"""SDXL's text conditioning: both CLIP encoders' penultimate states side by side, the second's
pooled projection, and the six size/crop numbers (`time_ids`). Heavy module."""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from engine.model.text_conditioning import WINDOW, apply_token_weights, join_windows, prompt_windows, tokenize_caption


def encode_tokens(text_encoder, text_encoder_2, input_ids, input_ids_2, weights=None):
    """(states (batch, tokens, width 1 + width 2), pooled (batch, projection)) for
    (batch, windows, 77) token ids of each tokenizer."""
    batch, windows, length = input_ids.shape
    first = text_encoder(input_ids.reshape(batch * windows, length), output_hidden_states=True)
    second = text_encoder_2(input_ids_2.reshape(batch * windows, length), output_hidden_states=True)
    states = torch.cat([first.hidden_states[-2], second.hidden_states[-2].to(first.hidden_states[-2])], dim=-1)
    states = states.reshape(batch, windows * length, states.shape[-1])
    if weights is not None:
        states = apply_token_weights(states, weights)
    pooled = second.text_embeds.reshape(batch, windows, -1)[:, 0]
    return join_windows(states, windows, length), pooled


def time_ids(batch, device, dtype):
    """(batch, 6): original (h, w), crop top-left (top, left), target (h, w) per image."""
    parts = [batch["original_size"], batch["crop_top_left"], batch["target_size"]]
    return torch.cat(parts, dim=1).to(device=device, dtype=dtype)


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


def prompt_embeddings(pipeline, prompt: str, negative_prompt: str) -> dict[str, Any]:
    """Both prompts' states and pooled outputs, with A1111 emphasis and 75-token windows."""
    windows = prompt_windows(pipeline.tokenizer, prompt, negative_prompt)
    encoded = []
    for text in (prompt, negative_prompt):
        ids, weights = tokenize_caption(pipeline.tokenizer, text, windows * WINDOW, weighted=True)
        ids_2, _ = tokenize_caption(pipeline.tokenizer_2, text, windows * WINDOW, weighted=True)
        device = pipeline.device
        emphasis = None if bool(weights.eq(1).all()) else weights[None].to(device)
        encoded.append(encode_tokens(pipeline.text_encoder, pipeline.text_encoder_2, ids[None].to(device),
                                     ids_2[None].to(device), emphasis))
    (positive, pooled), (negative, negative_pooled) = encoded
    return {"prompt_embeds": positive, "negative_prompt_embeds": negative, "pooled_prompt_embeds": pooled,
            "negative_pooled_prompt_embeds": negative_pooled}
