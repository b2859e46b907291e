"""Noise as sd-scripts makes it (library/custom_train_functions.py and train_util's
get_noise_noisy_latents_and_timesteps): offset, adaptive noise scale, multires noise and
input perturbation, checked against the published formulas written out here."""
import pytest
import torch

from engine.config.kohya_import import import_kohya
from engine.config.schema import config_from_dict
from engine.errors import ConfigError
from engine.model.objectives.noise import training_noise


def training(**values):
    return config_from_dict({"model": {"pretrained_model": "x"}, "training": values}).training


def reference_noise(latents, generator, offset=0.0, adaptive=0.0, iterations=0, discount=0.3):
    """sd-scripts' formulas, drawing in the same order from the same generator."""
    noise = torch.randn(latents.shape, generator=generator)
    if offset:
        if adaptive:
            offset = torch.clamp(offset + adaptive * torch.abs(latents.mean(dim=(2, 3), keepdim=True)), 0.0, None)
        noise = noise + offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)
    if iterations:
        b, c, w, h = noise.shape
        upsample = torch.nn.Upsample(size=(w, h), mode="bilinear")
        ratios = torch.rand((iterations,), generator=generator) * 2 + 2
        for i in range(iterations):
            r = float(ratios[i])
            wn, hn = max(1, int(w / (r**i))), max(1, int(h / (r**i)))
            noise = noise + upsample(torch.randn((b, c, wn, hn), generator=generator)) * discount**i
            if wn == 1 or hn == 1:
                break
        noise = noise / noise.std()
    return noise


@pytest.mark.parametrize("settings", [
    {},
    {"noise_offset": 0.1},
    {"noise_offset": 0.1, "adaptive_noise_scale": 0.05},
    {"multires_noise_iterations": 6, "multires_noise_discount": 0.3},
    {"multires_noise_iterations": 10, "multires_noise_discount": 0.8},  # stops at one pixel
])
def test_noise_matches_the_reference_formula(settings):
    latents = torch.randn(2, 4, 24, 16, generator=torch.Generator().manual_seed(0)) * 3 + 1
    ours = training_noise(latents, torch.Generator().manual_seed(5), training(**settings))
    reference = reference_noise(latents, torch.Generator().manual_seed(5),
                                offset=settings.get("noise_offset", 0.0), adaptive=settings.get("adaptive_noise_scale", 0.0),
                                iterations=settings.get("multires_noise_iterations", 0),
                                discount=settings.get("multires_noise_discount", 0.3))
    torch.testing.assert_close(ours, reference)
    if settings.get("multires_noise_iterations"):
        assert abs(float(ours.std()) - 1.0) < 1e-5  # scaled back to unit deviation


def test_defaults_draw_exactly_the_plain_noise():
    latents = torch.zeros(1, 4, 8, 8)
    plain = torch.randn(latents.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(training_noise(latents, torch.Generator().manual_seed(3), training()), plain)


def test_input_perturbation_noises_the_input_not_the_target():
    from diffusers import DDPMScheduler

    from engine.model.objectives.ddpm import DdpmObjective, ddpm_schedule

    config = config_from_dict({"model": {"pretrained_model": "x"}, "training": {"ip_noise_gamma": 0.1}})
    objective = DdpmObjective(ddpm_schedule(DDPMScheduler().config, False), config.training)
    latents = torch.zeros(2, 4, 8, 8)
    draw = objective.draw(latents, torch.Generator().manual_seed(9))
    generator = torch.Generator().manual_seed(9)  # sd-scripts' order: noise, timesteps, perturbation
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, 1000, (2,), generator=generator)
    perturbation = 0.1 * torch.randn(latents.shape, generator=generator)
    torch.testing.assert_close(draw.noise, noise)
    assert torch.equal(draw.timesteps, timesteps)
    torch.testing.assert_close(draw.input_noise, noise + perturbation)
    # the target is made of the noise without the perturbation, the model input of the noise with it
    torch.testing.assert_close(objective.target(latents, draw.noise, draw.timesteps), noise)
    torch.testing.assert_close(objective.noisy(latents, draw.input_noise, draw.timesteps),
                               objective.scheduler.add_noise(latents, noise + perturbation, timesteps))


def test_adaptive_noise_scale_needs_an_offset():
    with pytest.raises(ConfigError, match="training.adaptive_noise_scale: needs a noise offset"):
        training(adaptive_noise_scale=0.01)


def test_gui_noise_types_import_the_chosen_type_only():
    gui = {"LoRA_type": "Standard", "pretrained_model_name_or_path": "x", "noise_offset": "0.05",
           "adaptive_noise_scale": "0.005", "multires_noise_iterations": "8", "multires_noise_discount": "0.2",
           "ip_noise_gamma": "0.1"}
    multires = import_kohya({**gui, "noise_offset_type": "Multires"})
    train = multires.config.training
    assert (train.noise_offset, train.adaptive_noise_scale) == (0.0, 0.0)
    assert (train.multires_noise_iterations, train.multires_noise_discount, train.ip_noise_gamma) == (8, 0.2, 0.1)
    assert any(note.startswith("noise_offset not used: noise_offset_type is Multires") for note in multires.notes)
    original = import_kohya({**gui, "noise_offset_type": "Original"}).config.training
    assert (original.noise_offset, original.adaptive_noise_scale, original.multires_noise_iterations) == (0.05, 0.005, 0)
