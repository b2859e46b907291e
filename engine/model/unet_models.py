"""What the families built on diffusers' UNet2DConditionModel, CLIP and DDPM share (SD
1.x/2.x, SDXL): the speed settings, the sampling schedulers, and the runtime methods that
are the same for all of them (`UNetClipRuntime`, a mixin before
engine.model.family.FamilyRuntime in their bases). Shared machinery: imports no family.
Heavy module."""
from __future__ import annotations

from typing import Any

import torch

from engine.errors import LoradeckError

# network types whose conv layers view their weights as contiguous NCHW, which channels_last
# breaks: peft's DoRA, LyCORIS' GLoRA (its make_weight `.view`s each conv weight)
CONTIGUOUS_CONV_TYPES = ("dora", "glora")


def keeps_nchw(precision, network_type: str) -> bool:
    """Whether channels_last is asked for but the network type needs the U-Net in NCHW."""
    return precision.channels_last and network_type in CONTIGUOUS_CONV_TYPES


def apply_unet_speed_settings(unet, vae, text_encoders, precision, *, train_text_encoder: bool,
                              network_type: str) -> None:
    """Gradient checkpointing, the attention kernel and the memory format, from `[precision]`."""
    if precision.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        for encoder in text_encoders if train_text_encoder else []:
            if hasattr(encoder, "activation_checkpointing_enable"):  # transformers 5
                encoder.activation_checkpointing_enable({"use_reentrant": False})
            else:
                encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if precision.attention == "xformers":
        try:
            unet.enable_xformers_memory_efficient_attention()
        except Exception as error:  # an xformers build that does not fit this GPU or torch
            raise LoradeckError(f"precision.attention: xformers cannot be used here ({error}); use sdpa") from None
    else:
        from diffusers.models.attention_processor import AttnProcessor2_0

        # PyTorch's scaled_dot_product_attention picks flash or memory-efficient kernels
        # on the GPU: attention memory grows with the tokens, not with their square
        unet.set_attn_processor(AttnProcessor2_0())
        vae.set_attn_processor(AttnProcessor2_0())
    if precision.channels_last and not keeps_nchw(precision, network_type):
        # tensor-core convolutions (cuDNN) and oneDNN's run NHWC natively; NCHW costs a
        # transpose around each one. The numbers are the same either way.
        unet.to(memory_format=torch.channels_last)


def make_scheduler(sampler: str, base_config: Any, *, v_prediction: bool = False) -> Any:
    """A fresh diffusers scheduler for one of engine.config.schema.SAMPLERS, from the model's config.

    `from_config` keeps the model's betas, timestep count and spacing, so the sampler
    walks the same noise schedule the model was trained on.
    """
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
    )

    overrides: dict[str, Any] = {}
    if v_prediction:
        overrides["prediction_type"] = "v_prediction"
    if sampler == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(base_config, **overrides)
    if sampler == "euler":
        return EulerDiscreteScheduler.from_config(base_config, **overrides)
    if sampler == "ddim":
        # a DDPM training config says clip_sample=True, which SD's latents must not get
        return DDIMScheduler.from_config(base_config, clip_sample=False, set_alpha_to_one=False, **overrides)
    if sampler in ("dpm++_2m", "dpm++_2m_karras"):
        return DPMSolverMultistepScheduler.from_config(
            base_config,
            algorithm_type="dpmsolver++",
            solver_order=2,
            use_karras_sigmas=sampler == "dpm++_2m_karras",
            **overrides,
        )
    if sampler == "pndm":
        return PNDMScheduler.from_config(base_config, skip_prk_steps=True, **overrides)
    raise LoradeckError(f"unknown sampler {sampler!r}")


class UNetClipRuntime:
    """The FamilyRuntime methods a U-Net + CLIP + DDPM family shares; its own runtime adds
    loading, conditioning, the pipeline and the tiny model."""

    def training_scheduler(self, scheduler, config) -> Any:
        from engine.model.objectives.ddpm import ddpm_schedule

        return ddpm_schedule(scheduler.config, config.model.v_parameterization)

    def objective(self, scheduler, config):
        from engine.model.objectives.ddpm import DdpmObjective

        return DdpmObjective(scheduler, config.training)

    def apply_speed_settings(self, model, precision, *, train_text_encoder: bool, network_type: str) -> None:
        apply_unet_speed_settings(model.denoiser, model.vae, model.text_encoders, precision,
                                  train_text_encoder=train_text_encoder, network_type=network_type)

    def caption_tokens(self, tokenizers, *, max_token_length: int, weighted: bool, config=None):
        from engine.model.text_conditioning import CaptionTokens

        return CaptionTokens(tokenizers, max_token_length=max_token_length, weighted=weighted)

    def predict(self, denoiser, noisy_latents, timesteps, conditioning: dict[str, Any]):
        """The U-Net called as diffusers' pipelines call it: context and extras by keyword."""
        return denoiser(noisy_latents, timesteps, **conditioning).sample

    def sampling_scheduler(self, sampler: str, base_config, *, v_prediction: bool = False) -> Any:
        return make_scheduler(sampler, base_config, v_prediction=v_prediction)
