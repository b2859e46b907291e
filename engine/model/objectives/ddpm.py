"""DDPM training (Ho et al. 2020) as sd-scripts does it for SD 1.x/2.x and SDXL: integer
timesteps of the model's noise schedule, an epsilon or v target, Min-SNR weighting.

    schedule = ddpm_schedule(model_scheduler_config, v_prediction)   the training schedule
    objective = DdpmObjective(schedule, config.training)

Per batch: sd-scripts' noise (engine.model.objectives.noise), then the timesteps uniform
over the schedule, then the input perturbation, drawn in that order from the step's
generator (a resumed run draws the same). Heavy module.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from engine.model.objectives import NoiseDraw, Objective
from engine.model.objectives.noise import training_noise


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
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator, device=device)
        input_noise = noise
        if self.training.ip_noise_gamma:
            # Input perturbation (Ning et al. 2023), as sd-scripts: the model sees extra noise,
            # the target stays the noise without it
            input_noise = noise + self.training.ip_noise_gamma * torch.randn(latents.shape, generator=generator,
                                                                             device=device)
        return NoiseDraw(noise, timesteps, input_noise)

    def noisy(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.scheduler.add_noise(latents, noise, timesteps)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.scheduler.get_velocity(latents, noise, timesteps) if self.v_prediction else noise

    def loss(self, prediction: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor,
             batch: Mapping[str, Any]) -> torch.Tensor:
        per_example = F.mse_loss(prediction.float(), target.float(), reduction="none")
        loss = per_example.mean(dim=tuple(range(1, per_example.dim())))
        gamma = self.training.min_snr_gamma
        if gamma:
            # Min-SNR weighting (Hang et al. 2023, eq. 8): cap each timestep's weight at gamma / SNR
            from diffusers.training_utils import compute_snr

            snr = compute_snr(self.scheduler, timesteps)
            divisor = snr + 1 if self.v_prediction else snr
            loss = loss * torch.clamp(snr, max=gamma) / divisor
        return loss.mean()

    def validation_timesteps(self, count: int) -> Sequence[int]:
        """The middle of `count` equal slices of the schedule: 4 of 1000 are 125, 375, 625,
        875 (fine detail to overall layout)."""
        total = self.scheduler.config.num_train_timesteps
        return [int((index + 0.5) * total / count) for index in range(count)]

    def timesteps_tensor(self, point: float, size: int, device: Any) -> torch.Tensor:
        return torch.full((size,), point, dtype=torch.long, device=device)
