"""sd-scripts' noise recipes: Gaussian noise, the offset (with the adaptive noise scale) and
multires (pyramid) noise, every draw from the generator given. Used by the objectives."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def training_noise(latents: torch.Tensor, generator: torch.Generator, training) -> torch.Tensor:
    """The noise of one batch as sd-scripts makes it: Gaussian, plus the offset (scaled per
    channel by the adaptive noise scale), then multires noise; every draw from `generator`."""
    device = generator.device
    noise = torch.randn(latents.shape, generator=generator, device=device)
    if training.noise_offset:
        # Offset noise (Guttenberg 2023): a per-channel shift teaches the model to change
        # an image's mean brightness, which plain noise almost never asks of it
        offset: float | torch.Tensor = training.noise_offset
        if training.noise_offset_random_strength:  # sd-scripts: rand(1) × noise_offset, drawn first
            offset = torch.rand(1, generator=generator, device=device) * training.noise_offset
        if training.adaptive_noise_scale:
            # brighter or darker latents get a larger offset (sd-scripts' adaptive noise scale)
            channel_mean = latents.mean(dim=(2, 3), keepdim=True).abs()
            offset = torch.clamp(offset + training.adaptive_noise_scale * channel_mean, min=0.0)
        noise = noise + offset * torch.randn(
            (latents.shape[0], latents.shape[1], 1, 1), generator=generator, device=device
        )
    if training.multires_noise_iterations:
        noise = multires_noise(noise, generator, training.multires_noise_iterations, training.multires_noise_discount)
    return noise


def multires_noise(noise: torch.Tensor, generator: torch.Generator, iterations: int, discount: float) -> torch.Tensor:
    """Pyramid noise (Whitaker 2023, sd-scripts' multires noise): layer i is Gaussian noise at
    1/r^i of the size (r drawn in [2, 4)), upsampled bilinearly and weighted discount^i; the
    sum is scaled back to unit standard deviation."""
    batch, channels, height, width = noise.shape
    # the layer sizes are host numbers: one read-back per step, and only with multires noise on
    ratios = (torch.rand((iterations,), generator=generator, device=generator.device) * 2 + 2).tolist()
    for i, r in enumerate(ratios):
        small_height, small_width = max(1, int(height / r**i)), max(1, int(width / r**i))
        layer = torch.randn((batch, channels, small_height, small_width), generator=generator, device=generator.device)
        noise = noise + F.interpolate(layer, size=(height, width), mode="bilinear") * discount**i
        if small_height == 1 or small_width == 1:
            break  # down to one pixel
    return noise / noise.std()
