"""The flow-matching objective against sd-scripts' formulas (library/flux_train_utils.py,
rewritten here from its source) and diffusers' own Flux schedule helpers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.model.objectives import flow_matching as fm


# sd-scripts' formulas, as written in library/flux_train_utils.py (branch sd3)
def sd_scripts_time_shift(mu: float, sigma: float, t: torch.Tensor):
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


def sd_scripts_lin_function(x1: float = 256, y1: float = 0.5, x2: float = 4096, y2: float = 1.15):
    m = (y2 - y1) / (x2 - x1)
    b = y1 - m * x1
    return lambda x: m * x + b


def sd_scripts_sigmas(sampling: str, bsz: int, h: int, w: int, seed: int, sigmoid_scale: float, shift: float):
    """get_noisy_model_input_and_timesteps' sigma draw, with the same random numbers."""
    generator = torch.Generator().manual_seed(seed)
    if sampling == "uniform":
        return torch.rand((bsz,), generator=generator)
    if sampling == "sigma":  # the scheduler's shifted sigmas, picked by compute_density_for_timestep_sampling's u
        u = torch.rand(size=(bsz,), generator=generator)
        indices = (u * 1000).long()
        timesteps = np.linspace(1, 1000, 1000, dtype=np.float32)[::-1].copy()
        sigmas = torch.from_numpy(timesteps) / 1000
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        return sigmas[indices]
    sigmas = torch.randn(bsz, generator=generator) * sigmoid_scale
    sigmas = sigmas.sigmoid()
    if sampling == "shift":
        sigmas = (sigmas * shift) / (1 + (shift - 1) * sigmas)
    elif sampling == "flux_shift":
        mu = sd_scripts_lin_function(y1=0.5, y2=1.15)((h // 2) * (w // 2))
        sigmas = sd_scripts_time_shift(mu, 1.0, sigmas)
    return sigmas


@pytest.mark.parametrize("sampling", fm.TIMESTEP_SAMPLERS)
@pytest.mark.parametrize("latent_size", [(128, 128), (64, 96), (32, 32)])
def test_sigmas_follow_sd_scripts(sampling, latent_size):
    for scale, shift in ((1.0, 3.1582), (2.5, 1.0), (0.5, 5.0)):
        expected = sd_scripts_sigmas(sampling, 64, *latent_size, seed=3, sigmoid_scale=scale, shift=shift)
        got = fm.sample_sigmas(sampling, 64, generator=torch.Generator().manual_seed(3), sigmoid_scale=scale,
                               discrete_flow_shift=shift, latent_size=latent_size)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
        assert got.dtype == torch.float32 and bool(((got > 0) & (got <= 1)).all())
        assert torch.allclose(fm.model_timesteps(got), expected * 1000)


def test_samplers_differ_where_they_should():
    draws = {name: fm.sample_sigmas(name, 4000, generator=torch.Generator().manual_seed(0), discrete_flow_shift=3.1582,
                                    latent_size=(128, 128)).mean().item() for name in fm.TIMESTEP_SAMPLERS}
    assert abs(draws["sigmoid"] - 0.5) < 0.02 and abs(draws["uniform"] - 0.5) < 0.02
    assert draws["shift"] > 0.65  # shifted towards noise
    assert 0.6 < draws["flux_shift"] < draws["shift"]  # mu = 1.15 at 1024²: e^1.15 ≈ 3.16, about shift's
    small = fm.sample_sigmas("flux_shift", 4000, generator=torch.Generator().manual_seed(0), latent_size=(32, 32))
    assert small.mean().item() < draws["flux_shift"]  # a 256² image (64 tokens) is shifted less


def test_flux_mu_matches_diffusers_schedule():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, time_shift_type="exponential")
    sigmas = torch.linspace(0.05, 0.95, 19)
    for tokens in (64, 256, 1024, 4096, 6000):
        mu = fm.flux_mu(tokens)
        assert mu == pytest.approx(calculate_shift(tokens), rel=1e-9)
        torch.testing.assert_close(fm.time_shift(mu, sigmas), scheduler.time_shift(mu, 1.0, sigmas))
        torch.testing.assert_close(fm.time_shift(mu, sigmas), sd_scripts_time_shift(mu, 1.0, sigmas))


def test_noisy_input_target_and_prediction_types():
    generator = torch.Generator().manual_seed(1)
    latents, noise = torch.randn(3, 16, 4, 6, generator=generator), torch.randn(3, 16, 4, 6, generator=generator)
    prediction = torch.randn(3, 16, 4, 6, generator=generator)
    sigmas = torch.tensor([0.1, 0.5, 0.9])
    view = sigmas.view(-1, 1, 1, 1)
    noisy = fm.noisy_latents(latents, noise, sigmas)
    torch.testing.assert_close(noisy, (1.0 - view) * latents + view * noise)  # sd-scripts, as written
    torch.testing.assert_close(fm.velocity_target(latents, noise), noise - latents)
    torch.testing.assert_close(fm.read_prediction(prediction, noisy, sigmas, "raw"), prediction)
    torch.testing.assert_close(fm.read_prediction(prediction, noisy, sigmas, "additive"), prediction + noisy)
    torch.testing.assert_close(fm.read_prediction(prediction, noisy, sigmas, "sigma_scaled"),
                               prediction * (-view) + noisy)
    # the exact velocity carries the noisy sample to the clean latent in one Euler step to sigma 0
    exact = fm.velocity_target(latents, noise)
    for index, sigma in enumerate(sigmas.tolist()):
        torch.testing.assert_close(fm.euler_step(noisy[index], exact[index], sigma, 0.0), latents[index])
    with pytest.raises(ValueError, match="not one of"):
        fm.read_prediction(prediction, noisy, sigmas, "epsilon")
    with pytest.raises(ValueError, match="not one of"):
        fm.sample_sigmas("logit_normal", 2)


def test_fixed_sigmas_are_evenly_spread():
    torch.testing.assert_close(fm.fixed_sigmas(4), torch.tensor([0.125, 0.375, 0.625, 0.875]))
