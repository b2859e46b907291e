"""Rectified flow matching (Flux.1, SD3, and the families after them), as pure functions.

A clean latent x and Gaussian noise n are mixed on a straight line by sigma in (0, 1):

    noisy  = (1 - sigma) · x + sigma · n
    target = n - x                      (the velocity the model predicts)
    model timestep = sigma · 1000       (diffusers' Flux divides it back by 1000)

Where sigma falls is what the timestep samplers decide, as sd-scripts'
`library/flux_train_utils.get_noisy_model_input_and_timesteps` draws it:

    uniform     sigma ~ U(0, 1)
    sigmoid     sigma = sigmoid(sigmoid_scale · z), z ~ N(0, 1)         (x-flux; the default)
    shift       s = sigmoid(sigmoid_scale · z);  sigma = shift·s / (1 + (shift - 1)·s)
                (discrete_flow_shift; sd-scripts recommends 3.1582 for Flux.1 dev)
    flux_shift  s as above;  sigma = e^mu / (e^mu + 1/s - 1), mu linear in the packed
                token count: 0.5 at 256 tokens, 1.15 at 4096 (Flux's own sampling schedule,
                so larger images train at noisier sigmas)
    sigma       u ~ U(0, 1) picks one of the 1000 steps of the shifted training schedule:
                s = (1000 - floor(1000·u)) / 1000, sigma = shift·s / (1 + (shift - 1)·s)
                (sd-scripts' own default, and the Kohya GUI's)

`model_prediction_type` says how the model's output is read before the loss (sd-scripts'
`apply_model_prediction_type`): `raw` as it is (what loradeck and the Kohya GUI's Flux
preset use), `additive` plus the noisy input, `sigma_scaled` as noisy - sigma · output.

    FlowMatchingObjective(settings, training)   the objective a family trains with (engine.model.objectives)

Light module: torch is imported by the functions that need it.
"""
from __future__ import annotations

import math

from engine.model.objectives import NoiseDraw, Objective

TIMESTEP_SAMPLERS = ("sigmoid", "shift", "flux_shift", "uniform", "sigma")
PREDICTION_TYPES = ("raw", "additive", "sigma_scaled")
NUM_TRAIN_TIMESTEPS = 1000
RECOMMENDED_FLOW_SHIFT = 3.1582  # sd-scripts' docs/flux_train_network.md for Flux.1 dev

# Flux's resolution-dependent shift: mu grows linearly from BASE_SHIFT at BASE_TOKENS packed
# tokens (256² pixels) to MAX_SHIFT at MAX_TOKENS (1024²)
BASE_TOKENS, MAX_TOKENS = 256, 4096
BASE_SHIFT, MAX_SHIFT = 0.5, 1.15


def flux_mu(tokens: int, base_shift: float = BASE_SHIFT, max_shift: float = MAX_SHIFT) -> float:
    """The shift exponent for an image of `tokens` packed latent tokens (2x2 latent patches)."""
    slope = (max_shift - base_shift) / (MAX_TOKENS - BASE_TOKENS)
    return slope * tokens + base_shift - slope * BASE_TOKENS


def time_shift(mu: float, sigmas):
    """Flux's exponential time shift: e^mu / (e^mu + 1/sigma - 1)."""
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))


def discrete_shift(sigmas, shift: float):
    """SD3's shift of the schedule towards noise: shift·sigma / (1 + (shift - 1)·sigma)."""
    return sigmas * shift / (1 + (shift - 1) * sigmas)


def sample_sigmas(sampler: str, batch: int, *, generator=None, device="cpu", sigmoid_scale: float = 1.0,
                  discrete_flow_shift: float = 3.0, latent_size: tuple[int, int] | None = None):
    """(batch,) float32 sigmas drawn by `sampler` from `generator` (on its device), moved to
    `device`. `latent_size` (height, width of the unpacked latent) is what `flux_shift` shifts by."""
    import torch

    draw_on = generator.device if generator is not None else "cpu"
    if sampler == "uniform":
        sigmas = torch.rand(batch, generator=generator, device=draw_on)
    elif sampler == "sigma":
        steps = (torch.rand(batch, generator=generator, device=draw_on) * NUM_TRAIN_TIMESTEPS).long()
        sigmas = discrete_shift((NUM_TRAIN_TIMESTEPS - steps).float() / NUM_TRAIN_TIMESTEPS, discrete_flow_shift)
    elif sampler in ("sigmoid", "shift", "flux_shift"):
        sigmas = torch.sigmoid(sigmoid_scale * torch.randn(batch, generator=generator, device=draw_on))
        if sampler == "shift":
            sigmas = discrete_shift(sigmas, discrete_flow_shift)
        elif sampler == "flux_shift":
            if latent_size is None:
                raise ValueError("flux_shift needs the latent size")
            height, width = latent_size
            sigmas = time_shift(flux_mu((height // 2) * (width // 2)), sigmas)
    else:
        raise ValueError(f"timestep sampler {sampler!r} is not one of {', '.join(TIMESTEP_SAMPLERS)}")
    return sigmas.to(device)


def fixed_sigmas(count: int):
    """`count` sigmas at the middles of equal steps of (0, 1): validation's fixed noise levels."""
    import torch

    return (torch.arange(count, dtype=torch.float32) + 0.5) / count


def _per_sample(sigmas, like):
    return sigmas.to(like.device, like.dtype).reshape(-1, *[1] * (like.dim() - 1))


def noisy_latents(latents, noise, sigmas):
    """(1 - sigma) · latents + sigma · noise, sigma per sample."""
    sigma = _per_sample(sigmas, latents)
    return (1 - sigma) * latents + sigma * noise


def velocity_target(latents, noise):
    """What the model learns to predict: noise - latents."""
    return noise - latents


def model_timesteps(sigmas):
    """The timestep a flow model is given: sigma on sd-scripts' 0..1000 scale."""
    return sigmas * NUM_TRAIN_TIMESTEPS


def read_prediction(prediction, noisy, sigmas, prediction_type: str = "raw"):
    """The model output as the loss compares it with `velocity_target` (see the module doc)."""
    if prediction_type == "raw":
        return prediction
    if prediction_type == "additive":
        return prediction + noisy
    if prediction_type == "sigma_scaled":
        return noisy - prediction * _per_sample(sigmas, prediction)
    raise ValueError(f"model prediction type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")


def huber_threshold(training, sigmas):
    """sd-scripts' get_huber_threshold_if_needed for a flow model, whose timesteps are
    sigma · 1000 of 1000: exponential exp(-ln(huber_c) / 1000 · t) · huber_scale, or the
    constant huber_c · huber_scale (None for l2 and l1)."""
    import torch

    if training.loss_type not in ("huber", "smooth_l1"):
        return None
    timesteps = model_timesteps(sigmas)
    if training.huber_schedule == "exponential":
        rate = -math.log(training.huber_c) / NUM_TRAIN_TIMESTEPS
        return torch.exp(-rate * timesteps) * training.huber_scale
    return torch.full(timesteps.shape, training.huber_c * training.huber_scale, device=timesteps.device)


def flow_matching_unused(training) -> list[str]:
    """The `[training]` settings a flow-matching run does not use, as sd-scripts' Flux
    training does not (set to something else than their default), by key."""
    unused = [f"training.{name}" for name in ("min_snr_gamma", "debiased_estimation_loss", "noise_offset",
                                              "noise_offset_random_strength", "adaptive_noise_scale",
                                              "multires_noise_iterations") if getattr(training, name)]
    if training.min_timestep or training.max_timestep < NUM_TRAIN_TIMESTEPS:
        unused.append("training.min_timestep / max_timestep")
    return unused


def euler_step(sample, velocity, sigma: float, sigma_next: float):
    """One Euler step of the flow ODE from sigma to sigma_next (sampling)."""
    return sample + (sigma_next - sigma) * velocity


class FlowMatchingObjective(Objective):
    """engine.model.objectives.Objective for flow matching, as sd-scripts' flux_train_network
    trains: `[flux]`'s sampler settings (timestep_sampling, sigmoid_scale, discrete_flow_shift)
    and `[training]`'s input perturbation (ip_noise_gamma, its random strength drawn after
    the extra noise, as flux_train_utils draws it), loss type (l2, l1, huber, smooth_l1, the
    threshold on the exponential or constant schedule of sigma · 1000) and masked loss.
    Timesteps are sigmas in (0, 1); the family reads the model output by
    `model_prediction_type` in its `predict`.

    What sd-scripts' Flux training does not do, neither does this: noise offset and multires
    noise, min-SNR and debiased weighting (flow matching has no SNR schedule; its
    post_process_loss returns the loss as it is), the DDPM timestep range, and the huber
    `snr` schedule (sd-scripts raises on it). The family's plan says so in one line each
    (`flow_matching_unused`), and the snr schedule is refused."""

    def __init__(self, settings, training):
        if training.loss_type in ("huber", "smooth_l1") and training.huber_schedule == "snr":
            from engine.errors import LoradeckError

            raise LoradeckError("training.huber_schedule: snr needs a DDPM noise schedule; flow matching trains "
                                "with exponential or constant (sd-scripts refuses snr for Flux too)")
        self.settings, self.training = settings, training

    def to(self, device) -> None:
        pass  # no tables to move

    def draw(self, latents, generator):
        import torch

        noise = torch.randn(latents.shape, generator=generator, device=generator.device)
        sigmas = sample_sigmas(self.settings.timestep_sampling, latents.shape[0], generator=generator,
                               device=latents.device, sigmoid_scale=self.settings.sigmoid_scale,
                               discrete_flow_shift=self.settings.discrete_flow_shift,
                               latent_size=tuple(latents.shape[-2:]))
        input_noise = noise
        gamma = self.training.ip_noise_gamma
        if gamma:
            extra = torch.randn(latents.shape, generator=generator, device=generator.device)
            strength = gamma
            if self.training.ip_noise_gamma_random_strength:  # rand(1) × gamma, after the extra noise
                strength = torch.rand(1, generator=generator, device=generator.device) * gamma
            input_noise = noise + strength * extra
        return NoiseDraw(noise.to(latents.device), sigmas, input_noise.to(latents.device))

    def noisy(self, latents, noise, timesteps):
        return noisy_latents(latents, noise, timesteps)

    def target(self, latents, noise, timesteps):
        return velocity_target(latents, noise)

    def loss(self, prediction, target, timesteps, batch):
        from engine.model.objectives import apply_loss_mask
        from engine.model.objectives.ddpm import elementwise_loss

        threshold = huber_threshold(self.training, timesteps)
        per_element = apply_loss_mask(
            elementwise_loss(prediction.float(), target.float(), self.training.loss_type, threshold), batch)
        return per_element.mean(dim=tuple(range(1, per_element.dim()))).mean()

    def validation_timesteps(self, count: int):
        """The middles of `count` equal slices of (0, 1), to 3 places: 4 are 0.125, 0.375, 0.625, 0.875."""
        return [round(float(sigma), 3) for sigma in fixed_sigmas(count)]

    def timesteps_tensor(self, point: float, size: int, device):
        import torch

        return torch.full((size,), float(point), dtype=torch.float32, device=device)
