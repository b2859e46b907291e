"""Captions to CLIP token ids, and token ids to the U-Net's conditioning, as sd-scripts does.

* Long captions (`max_token_length` 150 or 225) are cut into 75-token windows, each
  wrapped in <BOS> ... <EOS> and encoded separately; the windows' states are joined with
  one <BOS> state in front and one <EOS> state at the end (sd-scripts' SD1.x rule).
* Clip skip N (1 = last layer) takes CLIP's Nth-from-last hidden state through the final
  layer norm, as sd-scripts and AUTOMATIC1111 do.
* Weighted captions read A1111's emphasis, `(tag:1.3)`, `(tag)` = 1.1, `[tag]` = 1/1.1,
  scale each token's state by its weight and restore the mean (sd-scripts' rule).

Shared CLIP machinery for the families built on CLIP text encoders (SD 1.x/2.x, SDXL; a
family's runtime picks what it uses): imports no family.
"""
from __future__ import annotations

import re

import torch

WINDOW = 75  # caption tokens per CLIP pass (77 with <BOS> and <EOS>)
MAX_PROMPT_WINDOWS = 3  # 225 tokens, sd-scripts' limit for long sample prompts

_ATTENTION = re.compile(
    r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:([+-]?[.\d]+)\)|\)|]|[^\\()\[\]:]+|:",
)


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """A1111's prompt-attention parser: `a (b:1.5) [c]` -> [("a ", 1), ("b", 1.5), (" ", 1), ("c", 0.909)]."""
    result: list[list] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for item in result[start:]:
            item[1] *= factor

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            result.append([token[1:], 1.0])
        elif token == "(":
            round_brackets.append(len(result))
        elif token == "[":
            square_brackets.append(len(result))
        elif weight is not None and round_brackets:
            multiply(round_brackets.pop(), float(weight))
        elif token == ")" and round_brackets:
            multiply(round_brackets.pop(), 1.1)
        elif token == "]" and square_brackets:
            multiply(square_brackets.pop(), 1 / 1.1)
        else:
            result.append([token, 1.0])
    for start in round_brackets:
        multiply(start, 1.1)
    for start in square_brackets:
        multiply(start, 1 / 1.1)
    merged: list[list] = []
    for text_part, weight in result:
        if merged and merged[-1][1] == weight:
            merged[-1][0] += text_part
        else:
            merged.append([text_part, weight])
    return [(part, weight) for part, weight in merged if part] or [("", 1.0)]


def _windows(body: list[int], weights: list[float], tokenizer, max_token_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Body tokens (no specials) padded to `max_token_length`, cut into <BOS> w <EOS> windows."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    body, weights = body[:max_token_length], weights[:max_token_length]
    # SD1.x's tokenizer pads with <EOS>; the first padding position is the real <EOS>
    full = body + [eos] + [pad] * (max_token_length - len(body))
    weights = weights + [1.0] * (max_token_length + 1 - len(weights))
    id_windows, weight_windows = [], []
    for start in range(0, max_token_length, WINDOW):
        # every window ends like the whole padded sequence does (sd-scripts' rule)
        ids = [bos] + full[start : start + WINDOW] + [full[-1]]
        if pad != eos:  # SD2's tokenizer pads with "!": each window must still end in <EOS>
            if ids[-2] not in (eos, pad):
                ids[-1] = eos
            if ids[1] == pad:
                ids[1] = eos
        id_windows.append(ids)
        weight_windows.append([1.0] + weights[start : start + WINDOW] + [1.0])
    return torch.tensor(id_windows, dtype=torch.long), torch.tensor(weight_windows, dtype=torch.float32)


def tokenize_caption(tokenizer, caption: str, max_token_length: int = WINDOW, weighted: bool = False):
    """(input_ids, weights), each (windows, 77); weights are all 1 unless `weighted`."""
    parts = parse_emphasis(caption) if weighted else [(caption, 1.0)]
    body: list[int] = []
    weights: list[float] = []
    for text, weight in parts:
        ids = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
        body += ids
        weights += [weight] * len(ids)
    return _windows(body, weights, tokenizer, max_token_length)


class CaptionTokens:
    """Each example's token ids for its caption, by every tokenizer of a CLIP family:
    `input_ids` and `token_weights` (emphasis, all 1 unless weighted) of the first,
    `input_ids_2`, ... of the others (SDXL's second tokenizer pads differently)."""

    def __init__(self, tokenizers, *, max_token_length: int, weighted: bool):
        self.tokenizers = list(tokenizers)
        self.max_token_length = max_token_length
        self.weighted = weighted

    def example(self, caption: str) -> dict[str, torch.Tensor]:
        input_ids, weights = tokenize_caption(self.tokenizers[0], caption, self.max_token_length, self.weighted)
        tensors = {"input_ids": input_ids, "token_weights": weights}
        for number, tokenizer in enumerate(self.tokenizers[1:], start=2):
            tensors[f"input_ids_{number}"] = tokenize_caption(tokenizer, caption, self.max_token_length, self.weighted)[0]
        return tensors


def prompt_windows(tokenizer, prompt: str, negative_prompt: str) -> int:
    """How many 75-token windows a sample prompt and its negative get: as many as the longer
    needs (emphasis marks left out), at most MAX_PROMPT_WINDOWS."""
    import math

    def token_count(text: str) -> int:
        return sum(len(tokenizer(part, add_special_tokens=False).input_ids) for part, _ in parse_emphasis(text))

    longest = max(token_count(prompt), token_count(negative_prompt))
    return min(MAX_PROMPT_WINDOWS, max(1, math.ceil(longest / WINDOW)))


def encode_prompts(pipeline, prompt: str, negative_prompt: str, clip_skip: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """One CLIP encoder's conditioning of a prompt and its negative, as sd-scripts' samples
    and A1111 make it.

    A1111 emphasis, `(tag:1.3)`, `(tag)`, `[tag]`, is applied; a prompt over 75 tokens is
    encoded in 75-token windows (both prompts get as many windows as the longer needs);
    clip skip counts from 1 = last layer. A plain prompt of up to 75 tokens gives exactly
    what diffusers' pipeline computes. (The pipeline's own `clip_skip` cannot be used: it
    reaches for `text_encoder.text_model`, which transformers 5 removed.)
    """
    tokenizer, text_encoder = pipeline.tokenizer, pipeline.text_encoder
    windows = prompt_windows(tokenizer, prompt, negative_prompt)
    encoded = []
    for text in (prompt, negative_prompt):
        ids, weights = tokenize_caption(tokenizer, text, windows * WINDOW, weighted=True)
        encoded.append(
            encode_tokens(
                text_encoder,
                ids.unsqueeze(0).to(pipeline.device),
                clip_skip=clip_skip,
                weights=weights.unsqueeze(0).to(pipeline.device),
            )
        )
    return encoded[0], encoded[1]


def _final_layer_norm(text_encoder):
    norm = getattr(text_encoder, "final_layer_norm", None)
    if norm is None:  # transformers 4.x keeps it one level down
        norm = text_encoder.text_model.final_layer_norm
    return norm


def encode_tokens(
    text_encoder, input_ids: torch.Tensor, *, clip_skip: int = 1, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """U-Net conditioning for (batch, windows, 77) token ids: (batch, 77 or 2 + 75 × windows, width)."""
    if weights is not None and bool(torch.all(weights == 1)):
        weights = None
    return condition_on_tokens(text_encoder, input_ids, clip_skip=clip_skip, weights=weights)


def condition_on_tokens(
    text_encoder, input_ids: torch.Tensor, *, clip_skip: int = 1, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """`encode_tokens` for a caller that already knows whether the weights matter: given
    weights are applied without asking the device whether they are all 1 (the training
    step decides that on the CPU, so the GPU never waits for the host)."""
    batch, windows, length = input_ids.shape
    flat = input_ids.reshape(batch * windows, length)
    if clip_skip <= 1:
        states = text_encoder(flat)[0]
    else:
        hidden = text_encoder(flat, output_hidden_states=True).hidden_states[-clip_skip]
        states = _final_layer_norm(text_encoder)(hidden)
    states = states.reshape(batch, windows * length, states.shape[-1])
    if weights is not None:
        states = apply_token_weights(states, weights)
    return join_windows(states, windows, length)


def applied_weights(token_weights: torch.Tensor | None, weighted: bool, device) -> torch.Tensor | None:
    """The emphasis weights a conditioning applies: None unless captions are weighted and
    some weight differs from 1. Asked on the CPU only (the trainer decided before copying the
    batch: weights that reach the device already matter), so the GPU never waits for the host."""
    weights = token_weights if weighted else None
    if weights is not None and weights.device.type == "cpu":
        weights = None if bool(torch.all(weights == 1)) else weights.to(device)
    return weights


def apply_token_weights(states: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scale each token's state by its emphasis weight and restore each caption's mean
    (sd-scripts' rule); `states` (batch, windows × 77, width), `weights` (batch, windows, 77)."""
    batch, tokens, _ = states.shape
    weights = weights.reshape(batch, tokens, 1).to(states)
    previous_mean = states.float().mean(dim=(1, 2), keepdim=True)
    states = states * weights
    mean = states.float().mean(dim=(1, 2), keepdim=True)
    # sd-scripts restores each caption's mean. A mean that is ~0 next to the values
    # themselves (random-weight test models; never trained CLIP) would divide noise by
    # noise, and its gradient overflow, so such a caption keeps its weighted states as
    # they are. Decided on the device, without asking the host; the denominator is made
    # safe before dividing, as torch.where passes NaN gradients from the unused branch
    size = states.float().abs().mean(dim=(1, 2), keepdim=True)
    usable = mean.abs() > 1e-3 * size
    ratio = torch.where(usable, previous_mean / torch.where(usable, mean, torch.ones_like(mean)), 1.0)
    return states * ratio.to(states)


def join_windows(states: torch.Tensor, windows: int, length: int) -> torch.Tensor:
    """The windows' states as one sequence: one <BOS> state, each window's 75 tokens, one <EOS>."""
    if windows == 1:
        return states
    pieces = [states[:, :1]]  # <BOS>
    for window in range(windows):
        start = window * length + 1
        pieces.append(states[:, start : start + WINDOW])
    pieces.append(states[:, -1:])  # <EOS>
    return torch.cat(pieces, dim=1)


# --------------------------------------------------------------------------- cached outputs


def text_cache_refusal(config, train_text_encoder: bool) -> str | None:
    """Why the text encoder's outputs cannot be cached for this config; None when they can."""
    if not config.precision.cache_text_encoder_outputs:
        return "precision.cache_text_encoder_outputs is off"
    if train_text_encoder:
        return "the text encoder is trained"
    if config.captions.shuffle_caption:
        return "captions are shuffled (captions.shuffle_caption)"
    if config.captions.caption_dropout_rate:
        return "captions are dropped at random (captions.caption_dropout_rate)"
    if config.captions.caption_tag_dropout_rate:
        return "tags are dropped at random (captions.caption_tag_dropout_rate)"
    if config.captions.caption_dropout_every_n_epochs:
        return "captions are dropped every few epochs (captions.caption_dropout_every_n_epochs)"
    return None


class TextStateCache:
    """The U-Net's conditioning for every distinct caption, computed once.

    Valid only while the text encoder is frozen and every epoch sees the same caption text
    (`text_cache_refusal` says when): the states then never change, and a step skips CLIP
    altogether. Kept on the CPU in the dtype the text encoder gives (bf16 under bf16, about
    120 KB a caption) and copied to the GPU with each batch.
    """

    def __init__(self):
        self.states: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.states)

    def get(self, caption: str) -> torch.Tensor:
        return self.states[caption]

    def example(self, caption: str) -> dict[str, torch.Tensor]:
        """What a training example carries instead of the caption's token ids."""
        return {"text_states": self.states[caption]}

    @torch.no_grad()
    def fill(self, captions, tokenizer, text_encoder, *, max_token_length: int, weighted: bool, clip_skip: int,
             batch_size: int = 64, autocast=None) -> None:
        """Encode every caption not cached yet, `batch_size` at a time, under `autocast` (the
        training step's mixed-precision context, so cached and live states agree)."""
        import contextlib

        todo = sorted(set(captions) - set(self.states))
        device = text_encoder.device
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            tokens = [tokenize_caption(tokenizer, caption, max_token_length, weighted) for caption in chunk]
            ids = torch.stack([ids for ids, _ in tokens]).to(device)
            with autocast() if autocast is not None else contextlib.nullcontext():
                for index, (caption, (_, weights)) in enumerate(zip(chunk, tokens)):
                    if weighted and not bool(torch.all(weights == 1)):
                        # weighting renormalises each caption on its own: encode it alone
                        states = condition_on_tokens(text_encoder, ids[index : index + 1], clip_skip=clip_skip,
                                                     weights=weights[None].to(device))
                        self.states[caption] = states[0].cpu()
                plain = [index for index, caption in enumerate(chunk) if caption not in self.states]
                if plain:
                    states = condition_on_tokens(text_encoder, ids[plain], clip_skip=clip_skip)
                    for index, row in zip(plain, states.cpu()):
                        self.states[chunk[index]] = row.clone()
