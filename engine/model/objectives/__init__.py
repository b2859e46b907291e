"""Training objectives: how a diffusion model is taught, shared by the families that train that way.

    objective = model.objective                     a family picks it when the model loads
    draw = objective.draw(latents, generator)       noise, timesteps (and the input's extra noise)
    noisy = objective.noisy(latents, draw.input_noise, draw.timesteps)
    prediction = <the family's denoiser call on noisy>
    loss = objective.loss(prediction, objective.target(latents, draw.noise, draw.timesteps), draw.timesteps, batch)

Why the objective is its own object and not part of a family: the objective is shared by
families (DDPM epsilon / v-prediction: SD 1.x/2.x and SDXL; flow matching: Flux.1, SD3.5,
Chroma, Qwen-Image, Z-Image), while the denoiser call differs per family (a U-Net on
latents; a transformer on packed latents with position ids and a guidance embedding). So
the objective works on plain latents (batch, channels, height, width) and speaks in its
own timestep units (DDPM: integer steps of the training schedule; flow matching: sigmas
in [0, 1]); the family's `predict` turns those into its denoiser's call. A timestep
sampler that depends on the resolution (Flux's shift) reads it from the latents' shape.

Every random number an objective draws comes from the generator it is given, in a fixed
order, so a resumed run draws the same noise (engine.train.loop seeds it per batch).

Where the loss settings live: everything between "a batch of latents" and "one number"
(noise recipes, the timestep range, input perturbation, the loss function and its
per-timestep weighting, a per-pixel mask) belongs to the objective, never to the loop.
`loss` receives the batch so a masked loss can read its mask (`apply_loss_mask`, which
every objective calls on its per-element loss).

    engine.model.objectives.ddpm    DdpmObjective: epsilon / v-prediction, min-SNR, sd-scripts' noise
    engine.model.objectives.noise   sd-scripts' noise recipes (offset, adaptive scale, multires)

Light module: torch is imported by the objectives themselves, not here.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    import torch


@dataclass
class NoiseDraw:
    """One batch's random draw."""

    noise: "torch.Tensor"  # the noise the target is made from, shaped like the latents
    timesteps: "torch.Tensor"  # (batch,) in the objective's own units
    input_noise: "torch.Tensor"  # the noise the model input is made from: `noise`, or noise + input perturbation


class Objective(ABC):
    """What a step optimises, for latents shaped (batch, channels, height, width).

    The trainer (engine.train.step) calls, per micro-batch: `draw`, then `noisy` for the
    model input, the family's denoiser, `target` and `loss`. Validation
    (engine.train.validation) skips `draw`: it scores fixed noise at
    `validation_timesteps`, made into tensors by `timesteps_tensor`.
    """

    def to(self, device: Any) -> None:
        """Move what the objective keeps (a schedule's tables) to the training device; called
        once before the first step, so no step copies them."""

    @abstractmethod
    def draw(self, latents: "torch.Tensor", generator: "torch.Generator") -> NoiseDraw:
        """Noise and timesteps for one batch, every number from `generator` (on its device)."""

    @abstractmethod
    def noisy(self, latents: "torch.Tensor", noise: "torch.Tensor", timesteps: "torch.Tensor") -> "torch.Tensor":
        """The denoiser's input: `latents` noised by `noise` to `timesteps`."""

    @abstractmethod
    def target(self, latents: "torch.Tensor", noise: "torch.Tensor", timesteps: "torch.Tensor") -> "torch.Tensor":
        """What the denoiser should predict (the noise, the velocity, noise - latents, ...)."""

    @abstractmethod
    def loss(self, prediction: "torch.Tensor", target: "torch.Tensor", timesteps: "torch.Tensor",
             batch: Mapping[str, Any]) -> "torch.Tensor":
        """The batch's loss, one number on the device: each example's loss (its per-element
        loss times the batch's `loss_mask` when it has one: `apply_loss_mask`), weighted by
        its timestep as the objective says, averaged over the batch."""

    @abstractmethod
    def validation_timesteps(self, count: int) -> Sequence[float]:
        """`count` fixed points of the schedule, evenly spread, in the objective's units (the
        validation loss is scored at each; its bands are named `t<point>`)."""

    @abstractmethod
    def timesteps_tensor(self, point: float, size: int, device: Any) -> "torch.Tensor":
        """`size` copies of one validation point as the `timesteps` this objective takes."""


def apply_loss_mask(per_element: "torch.Tensor", batch: Mapping[str, Any]) -> "torch.Tensor":
    """The per-element loss (batch, channels, height, width) times the batch's pixel masks
    (`loss_mask`, (batch, H, W) in [0, 1], engine.train.masks), each area-averaged to the
    latent grid, as sd-scripts' apply_masked_loss; unchanged without masks. Every channel
    of a position gets its mask, and the mean over the elements that follows counts the
    masked ones as zeros (sd-scripts divides by every element too)."""
    mask = batch.get("loss_mask")
    if mask is None:
        return per_element
    import torch.nn.functional as F

    mask = F.interpolate(mask.to(per_element.device, per_element.dtype).unsqueeze(1), size=per_element.shape[2:],
                         mode="area")
    return per_element * mask

