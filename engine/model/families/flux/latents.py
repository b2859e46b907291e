"""Flux.1's latents as its transformer sees them: 2x2 patches packed into tokens.

    encode_latents(vae, pixels) -> (b, 16, h, w)    (mode - shift_factor) · scaling_factor
    decode_latents(vae, latents) -> pixels           the inverse, through the decoder
    pack(latents) -> (b, h/2 · w/2, 64)              b c (h 2) (w 2) -> b (h w) (c 2 2)
    unpack(tokens, h, w) -> (b, 16, h, w)
    image_ids(h, w) -> (h/2 · w/2, 3)               (0, row, column) of each token: RoPE positions
    text_ids(length) -> (length, 3)                  zeros: text tokens share one position
    guidance_vector(scale, batch) -> (batch,)        the embedded guidance of [dev]; None for [schnell]

Positions are per bucket: a 1024x768 image has 64x48 tokens and their ids say so, which is
how one model trains on every aspect ratio. Same arithmetic as sd-scripts' `flux_utils`
(pack_latents, prepare_img_ids) and diffusers' FluxPipeline (_pack_latents, ...), which the
tests compare with. Heavy module (torch).
"""
from __future__ import annotations

import torch

PATCH = 2


def encode_latents(vae, pixels: torch.Tensor, *, sample: bool = False, generator=None) -> torch.Tensor:
    """Latents of pixels in [-1, 1]: the posterior's mode (or a sample), shifted and scaled."""
    posterior = vae.encode(pixels.to(vae.dtype)).latent_dist
    latents = posterior.sample(generator) if sample else posterior.mode()
    return (latents - vae.config.shift_factor) * vae.config.scaling_factor


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    latents = latents / vae.config.scaling_factor + vae.config.shift_factor
    return vae.decode(latents.to(vae.dtype)).sample


def pack(latents: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = latents.shape
    patches = latents.reshape(batch, channels, height // PATCH, PATCH, width // PATCH, PATCH)
    return patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, (height // PATCH) * (width // PATCH),
                                                      channels * PATCH * PATCH)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Tokens back into (b, channels, height, width) latents (height, width: the latent's)."""
    batch, _, features = tokens.shape
    channels = features // (PATCH * PATCH)
    patches = tokens.reshape(batch, height // PATCH, width // PATCH, channels, PATCH, PATCH)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, height, width)


def image_ids(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(0, row, column) per packed token of a (height, width) latent, row-major as `pack`."""
    rows, columns = height // PATCH, width // PATCH
    ids = torch.zeros(rows, columns, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(rows, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(columns, device=device, dtype=dtype)[None, :]
    return ids.reshape(rows * columns, 3)


def text_ids(length: int, device=None, dtype=torch.float32) -> torch.Tensor:
    return torch.zeros(length, 3, device=device, dtype=dtype)


def guidance_vector(scale: float, batch: int, guidance_embeds: bool, device=None) -> torch.Tensor | None:
    """The guidance value [dev] embeds (sd-scripts' --guidance_scale; 1.0 trains best), or
    None for a model without the embedding ([schnell])."""
    if not guidance_embeds:
        return None
    return torch.full((batch,), float(scale), device=device, dtype=torch.float32)
