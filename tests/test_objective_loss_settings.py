"""sd-scripts' loss settings in each family's objective: the timestep range, the random
strengths of the noise offset and the input perturbation, the l1 / huber / smooth_l1 loss
with its scheduled threshold, debiased estimation with min-SNR; each checked against
sd-scripts' own code (train_util.get_noise_noisy_latents_and_timesteps, get_timesteps,
get_huber_threshold_if_needed, conditional_loss; custom_train_functions.apply_snr_weight,
apply_debiased_estimation, prepare_scheduler_for_custom_training), rewritten below; Flux's
flow matching against flux_train_network / flux_train_utils, which use the input
perturbation and the loss types but no noise offset, timestep range or SNR weighting."""
from __future__ import annotations

import math

import pytest
import torch

from engine.config.schema import config_from_dict
from engine.model.families import family_named


def objective_of(family: str, model_dir, **training):
    from diffusers import DDPMScheduler

    config = config_from_dict({"model": {"pretrained_model": str(model_dir),
                                         "v_parameterization": training.pop("v_prediction", False)},
                               "training": training})
    runtime = family_named(family).runtime()
    base = DDPMScheduler.from_pretrained(model_dir, subfolder="scheduler")
    return runtime.objective(runtime.training_scheduler(base, config), config), config


# ------------------------------------------------------------------ sd-scripts, rewritten


def sd_scripts_draw(args, scheduler, latents, generator):
    """get_noise_noisy_latents_and_timesteps with every draw from `generator` (no multires)."""
    noise = torch.randn(latents.shape, generator=generator)
    if args.noise_offset:
        if args.noise_offset_random_strength:
            noise_offset = torch.rand(1, generator=generator) * args.noise_offset
        else:
            noise_offset = args.noise_offset
        # apply_noise_offset (adaptive_noise_scale None)
        noise = noise + noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)
    b_size = latents.shape[0]
    min_timestep = 0 if args.min_timestep is None else args.min_timestep
    max_timestep = scheduler.config.num_train_timesteps if args.max_timestep is None else args.max_timestep
    if min_timestep < max_timestep:  # get_timesteps
        timesteps = torch.randint(min_timestep, max_timestep, (b_size,), generator=generator)
    else:
        timesteps = torch.full((b_size,), max_timestep)
    input_noise = noise
    if args.ip_noise_gamma:
        if args.ip_noise_gamma_random_strength:
            strength = torch.rand(1, generator=generator) * args.ip_noise_gamma
        else:
            strength = args.ip_noise_gamma
        input_noise = noise + strength * torch.randn(latents.shape, generator=generator)
    return noise, timesteps.long(), input_noise


def sd_scripts_all_snr(scheduler):
    """prepare_scheduler_for_custom_training's all_snr."""
    alphas_cumprod = scheduler.alphas_cumprod
    alpha = torch.sqrt(alphas_cumprod)
    sigma = torch.sqrt(1.0 - alphas_cumprod)
    return (alpha / sigma) ** 2


def sd_scripts_loss(args, scheduler, prediction, target, timesteps, v_prediction):
    """process_batch's loss after the forward, and post_process_loss."""
    huber_c = None  # get_huber_threshold_if_needed
    if args.loss_type in ("huber", "smooth_l1"):
        if args.huber_schedule == "exponential":
            alpha = -math.log(args.huber_c) / scheduler.config.num_train_timesteps
            huber_c = torch.exp(-alpha * timesteps) * args.huber_scale
        elif args.huber_schedule == "snr":
            alphas_cumprod = torch.index_select(scheduler.alphas_cumprod, 0, timesteps)
            sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5
            huber_c = (1 - args.huber_c) / (1 + sigmas) ** 2 + args.huber_c
        else:
            huber_c = torch.full((timesteps.shape[0],), args.huber_c * args.huber_scale)
    if args.loss_type == "l2":  # conditional_loss, reduction "none"
        loss = torch.nn.functional.mse_loss(prediction, target, reduction="none")
    elif args.loss_type == "l1":
        loss = torch.nn.functional.l1_loss(prediction, target, reduction="none")
    elif args.loss_type == "huber":
        c = huber_c.view(-1, 1, 1, 1)
        loss = 2 * c * (torch.sqrt((prediction - target) ** 2 + c ** 2) - c)
    else:
        c = huber_c.view(-1, 1, 1, 1)
        loss = 2 * (torch.sqrt((prediction - target) ** 2 + c ** 2) - c)
    loss = loss.mean([1, 2, 3])
    all_snr = sd_scripts_all_snr(scheduler)
    if args.min_snr_gamma:  # apply_snr_weight
        snr = torch.stack([all_snr[t] for t in timesteps])
        min_snr_gamma = torch.minimum(snr, torch.full_like(snr, args.min_snr_gamma))
        loss = loss * (min_snr_gamma / (snr + 1) if v_prediction else min_snr_gamma / snr)
    if args.debiased_estimation_loss:  # apply_debiased_estimation
        snr_t = torch.stack([all_snr[t] for t in timesteps])
        snr_t = torch.minimum(snr_t, torch.ones_like(snr_t) * 1000)
        loss = loss * (1 / (snr_t + 1) if v_prediction else 1 / torch.sqrt(snr_t))
    return loss.mean()


def sd_scripts_flux_draw(args, latents, generator):
    """flux_train_network.get_noise_pred_and_target's noise, then flux_train_utils.
    get_noisy_model_input_and_timesteps (timestep_sampling sigmoid) with every draw from
    `generator`: the extra input noise first, then its random strength. No noise offset and
    no timestep range: sd-scripts' Flux training has neither."""
    noise = torch.randn(latents.shape, generator=generator)
    sigmas = torch.sigmoid(args.sigmoid_scale * torch.randn((latents.shape[0],), generator=generator))
    input_noise = noise
    if args.ip_noise_gamma:
        xi = torch.randn(latents.shape, generator=generator)
        if args.ip_noise_gamma_random_strength:
            ip_noise_gamma = torch.rand(1, generator=generator) * args.ip_noise_gamma
        else:
            ip_noise_gamma = args.ip_noise_gamma
        input_noise = noise + ip_noise_gamma * xi  # (1 - sigma) x + sigma (noise + gamma xi)
    return noise, sigmas, input_noise


def sd_scripts_flux_loss(args, prediction, target, sigmas):
    """train_network.process_batch for Flux: get_huber_threshold_if_needed on timesteps =
    sigma * 1000 of 1000 (snr raises there), conditional_loss, the mean per example, and
    FluxNetworkTrainer.post_process_loss, which returns the loss as it is (no min-SNR, no
    debiased estimation)."""
    timesteps = sigmas * 1000
    huber_c = None
    if args.loss_type in ("huber", "smooth_l1"):
        if args.huber_schedule == "exponential":
            alpha = -math.log(args.huber_c) / 1000
            huber_c = torch.exp(-alpha * timesteps) * args.huber_scale
        else:
            huber_c = torch.full((timesteps.shape[0],), args.huber_c * args.huber_scale)
    if args.loss_type == "l2":
        loss = torch.nn.functional.mse_loss(prediction, target, reduction="none")
    elif args.loss_type == "l1":
        loss = torch.nn.functional.l1_loss(prediction, target, reduction="none")
    else:
        c = huber_c.view(-1, 1, 1, 1)
        loss = 2 * (torch.sqrt((prediction - target) ** 2 + c ** 2) - c)
        loss = c * loss if args.loss_type == "huber" else loss
    return loss.mean([1, 2, 3]).mean()


def flow_matching(objective) -> bool:
    from engine.model.objectives.flow_matching import FlowMatchingObjective

    return isinstance(objective, FlowMatchingObjective)


class Args:
    """sd-scripts' argument names, from our training settings (0 / 1000 stand for its None)."""

    def __init__(self, training):
        for name in ("noise_offset", "noise_offset_random_strength", "ip_noise_gamma", "ip_noise_gamma_random_strength",
                     "loss_type", "huber_c", "huber_schedule", "huber_scale", "min_snr_gamma",
                     "debiased_estimation_loss"):
            setattr(self, name, getattr(training, name))
        self.sigmoid_scale = 1.0  # [flux]'s default
        self.min_timestep = training.min_timestep or None
        self.max_timestep = training.max_timestep if training.max_timestep != 1000 else None


# ------------------------------------------------------------------ the tests

DRAWS = [
    {},
    {"noise_offset": 0.1, "noise_offset_random_strength": True},
    {"ip_noise_gamma": 0.1, "ip_noise_gamma_random_strength": True},
    {"noise_offset": 0.05, "noise_offset_random_strength": True, "ip_noise_gamma": 0.2,
     "ip_noise_gamma_random_strength": True, "min_timestep": 100, "max_timestep": 900},
    {"min_timestep": 500, "max_timestep": 500},  # an empty range: every step at the max
]


@pytest.mark.parametrize("settings", DRAWS, ids=range(len(DRAWS)))
def test_draw_is_sd_scripts(family, family_model_dir, settings):
    objective, config = objective_of(family, family_model_dir, **settings)
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    draw = objective.draw(latents, torch.Generator().manual_seed(7))
    if flow_matching(objective):
        noise, sigmas, input_noise = sd_scripts_flux_draw(Args(config.training), latents,
                                                          torch.Generator().manual_seed(7))
        torch.testing.assert_close(draw.timesteps, sigmas)
    else:
        noise, timesteps, input_noise = sd_scripts_draw(Args(config.training), objective.scheduler, latents,
                                                        torch.Generator().manual_seed(7))
        assert torch.equal(draw.timesteps, timesteps)
    torch.testing.assert_close(draw.noise, noise)
    torch.testing.assert_close(draw.input_noise, input_noise)
    if settings.get("min_timestep") and not flow_matching(objective):
        assert int(draw.timesteps.min()) >= settings["min_timestep"]


LOSSES = [
    {"loss_type": "l1"},
    {"loss_type": "huber", "huber_schedule": "snr", "huber_c": 0.1},
    {"loss_type": "huber", "huber_schedule": "exponential", "huber_c": 0.2, "huber_scale": 1.5},
    {"loss_type": "smooth_l1", "huber_schedule": "constant", "huber_c": 0.3, "huber_scale": 2.0},
    {"debiased_estimation_loss": True},
    {"debiased_estimation_loss": True, "min_snr_gamma": 5.0, "loss_type": "huber"},
    {"debiased_estimation_loss": True, "v_prediction": True, "min_snr_gamma": 5.0},
]


@pytest.mark.parametrize("settings", LOSSES, ids=range(len(LOSSES)))
def test_loss_is_sd_scripts(family, family_model_dir, settings):
    from engine.errors import LoradeckError

    v_prediction = settings.get("v_prediction", False)
    try:
        objective, config = objective_of(family, family_model_dir, **settings)
    except LoradeckError as error:  # flow matching refuses the snr schedule, as sd-scripts' Flux training
        assert settings.get("huber_schedule", "snr") == "snr" and "snr needs a DDPM noise schedule" in str(error)
        return
    generator = torch.Generator().manual_seed(1)
    prediction, target = torch.randn(4, 4, 8, 8, generator=generator), torch.randn(4, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([0, 17, 480, 999])  # the ends too: SNR's cap at 1000 and the snr schedule
    if flow_matching(objective):  # sigmas in (0, 1)
        sigmas = torch.tensor([0.001, 0.017, 0.48, 0.999])
        ours = objective.loss(prediction, target, sigmas, {})
        theirs = sd_scripts_flux_loss(Args(config.training), prediction, target, sigmas)
    else:
        ours = objective.loss(prediction, target, timesteps, {})
        theirs = sd_scripts_loss(Args(config.training), objective.scheduler, prediction, target, timesteps,
                                 v_prediction)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


def test_a_run_with_the_settings_trains_and_records_them(tmp_path, tiny_dataset, family_run):
    from engine.network.lora import read_lora_file
    from engine.run.events import read_events
    from engine.train.loop import train

    run = family_run(tiny_dataset, "losses", training={
        "epochs": 1, "loss_type": "smooth_l1", "huber_schedule": "exponential", "huber_c": 0.2,
        "min_timestep": 100, "max_timestep": 900, "debiased_estimation_loss": True, "noise_offset": 0.05,
        "noise_offset_random_strength": True, "ip_noise_gamma": 0.1, "ip_noise_gamma_random_strength": True})
    assert train(run.path) == 0
    steps = [event for event in read_events(run.events) if event["type"] == "step"]
    assert steps and all(math.isfinite(event["loss"]) for event in steps)
    _, metadata = read_lora_file(run.checkpoints / "losses.safetensors")
    assert (metadata["ss_loss_type"], metadata["ss_huber_schedule"], metadata["ss_huber_c"]) == ("smooth_l1",
                                                                                                 "exponential", "0.2")
    assert metadata["ss_debiased_estimation"] == "True" and metadata["ss_noise_offset_random_strength"] == "True"
    assert metadata["ss_ip_noise_gamma_random_strength"] == "True"
    assert metadata["modelspec.timestep_range"] == "100,900"
