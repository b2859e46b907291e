"""DDPM training (Ho et al. 2020) as sd-scripts does it for SD 1.x/2.x and SDXL: integer
timesteps of the model's noise schedule, an epsilon or v target, and sd-scripts' loss
settings (train_util / custom_train_functions): the timestep range [min_timestep,
max_timestep), the l2 / l1 / huber / smooth_l1 loss with its scheduled threshold, Min-SNR
and debiased-estimation weighting.

    schedule = ddpm_schedule(model_scheduler_config, v_prediction)   the training schedule
    objective = DdpmObjective(schedule, config.training)

Per batch: sd-scripts' noise (engine.model.objectives.noise), then the timesteps uniform
over their range, then the input perturbation (its random strength first), drawn in that
order from the step's generator (a resumed run draws the same). Heavy module.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from engine.model.objectives import NoiseDraw, Objective, apply_loss_mask
from engine.model.objectives.noise import training_noise


def huber_threshold(training, timesteps: torch.Tensor, scheduler: Any) -> torch.Tensor | None:
    """sd-scripts' get_huber_threshold_if_needed: the Huber / smooth-L1 threshold of each
    example's timestep (None for l2 and l1)."""
    if training.loss_type not in ("huber", "smooth_l1"):
        return None
    c = training.huber_c
    if training.huber_schedule == "exponential":
        rate = -math.log(c) / scheduler.config.num_train_timesteps
        return torch.exp(-rate * timesteps) * training.huber_scale
    if training.huber_schedule == "snr":  # close to l2 where the image is clear, to l1 in noise
        alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
        sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5
        return (1 - c) / (1 + sigmas) ** 2 + c
    return torch.full(timesteps.shape, c * training.huber_scale, device=timesteps.device)


def elementwise_loss(prediction: torch.Tensor, target: torch.Tensor, loss_type: str,
                     threshold: torch.Tensor | None) -> torch.Tensor:
    """sd-scripts' conditional_loss without reduction: l2, l1, huber or smooth_l1."""
    if loss_type == "l2":
        return F.mse_loss(prediction, target, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(prediction, target, reduction="none")
    c = threshold.view(-1, *[1] * (prediction.dim() - 1))
    smooth = torch.sqrt((prediction - target) ** 2 + c ** 2) - c
    return 2 * c * smooth if loss_type == "huber" else 2 * smooth


def ddpm_schedule(scheduler_config: Any, v_prediction: bool) -> Any:
    """A DDPM scheduler with the model's noise schedule (what sd-scripts trains with)."""
    from diffusers import DDPMScheduler

    overrides: dict[str, Any] = {"clip_sample": False}
    if v_prediction:
        overrides["prediction_type"] = "v_prediction"
    return DDPMScheduler.from_config(scheduler_config, **overrides)


class DdpmObjective(Objective):
    """Epsilon or v-prediction (the schedule's `prediction_type`) with sd-scripts' loss settings."""

    def __init__(self, scheduler: Any, training):
        self.scheduler = scheduler
        self.training = training  # engine.config.schema.TrainingSettings: noise, ip_noise_gamma, min_snr_gamma
        self.v_prediction = scheduler.config.prediction_type == "v_prediction"

    def to(self, device) -> None:
        # diffusers moves the schedule to the batch's device lazily; once here, before the loop
        self.scheduler.alphas_cumprod = self.scheduler.alphas_cumprod.to(device)

    def draw(self, latents: torch.Tensor, generator: torch.Generator) -> NoiseDraw:
        device = generator.device
        noise = training_noise(latents, generator, self.training)
        timesteps = self._timesteps(latents.shape[0], generator)
        input_noise = noise
        if self.training.ip_noise_gamma:
            # Input perturbation (Ning et al. 2023), as sd-scripts: the model sees extra noise,
            # the target stays the noise without it
            strength: float | torch.Tensor = self.training.ip_noise_gamma
            if self.training.ip_noise_gamma_random_strength:  # rand(1) × gamma, before the noise
                strength = torch.rand(1, generator=generator, device=device) * self.training.ip_noise_gamma
            input_noise = noise + strength * torch.randn(latents.shape, generator=generator, device=device)
        return NoiseDraw(noise, timesteps, input_noise)

    def _timesteps(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """sd-scripts' get_timesteps: uniform in [min_timestep, max_timestep), or all at the max
        when the range is empty."""
        high = min(self.training.max_timestep, self.scheduler.config.num_train_timesteps)
        low = self.training.min_timestep
        if low < high:
            return torch.randint(low, high, (batch,), generator=generator, device=generator.device)
        return torch.full((batch,), high, dtype=torch.long, device=generator.device)

    def noisy(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.scheduler.add_noise(latents, noise, timesteps)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.scheduler.get_velocity(latents, noise, timesteps) if self.v_prediction else noise

    def loss(self, prediction: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor,
             batch: Mapping[str, Any]) -> torch.Tensor:
        training = self.training
        threshold = huber_threshold(training, timesteps, self.scheduler)
        per_pixel = apply_loss_mask(elementwise_loss(prediction.float(), target.float(), training.loss_type, threshold),
                                    batch)
        loss = per_pixel.mean(dim=tuple(range(1, per_pixel.dim())))
        if training.min_snr_gamma or training.debiased_estimation_loss:
            from diffusers.training_utils import compute_snr

            snr = compute_snr(self.scheduler, timesteps)
            if training.min_snr_gamma:
                # Min-SNR weighting (Hang et al. 2023, eq. 8): cap each timestep's weight at gamma / SNR
                divisor = snr + 1 if self.v_prediction else snr
                loss = loss * torch.clamp(snr, max=training.min_snr_gamma) / divisor
            if training.debiased_estimation_loss:
                # sd-scripts' debiased estimation (Yu et al. 2024): 1/√SNR (v: 1/(SNR+1)), SNR capped at 1000
                snr = torch.clamp(snr, max=1000)
                loss = loss * (1 / (snr + 1) if self.v_prediction else 1 / torch.sqrt(snr))
        return loss.mean()

    def validation_timesteps(self, count: int) -> Sequence[int]:
        """The middle of `count` equal slices of the schedule: 4 of 1000 are 125, 375, 625,
        875 (fine detail to overall layout)."""
        total = self.scheduler.config.num_train_timesteps
        return [int((index + 0.5) * total / count) for index in range(count)]

    def timesteps_tensor(self, point: float, size: int, device: Any) -> torch.Tensor:
        return torch.full((size,), point, dtype=torch.long, device=device)
