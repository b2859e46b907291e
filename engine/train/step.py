"""One training step, shared by the trainer's loop and `bench/train_speed.py`.

    apply_speed_settings(model, config, device, train_text_encoder)   before the optimizer exists
    step = TrainStep.prepare(accelerator, model, network, optimizer, lr_scheduler, config, ...)
    loss = step(batch, generator)        forward, loss, backward, optimizer step; loss stays on the device
    diffusion_loss / loss_from_noise     the loss itself (tests score fixed batches with the latter)

Nothing in a step waits for the GPU: the batch is copied with `non_blocking` from the
loader's pinned memory, every decision that needs a value is taken on the CPU before the
copy (are the caption weights all 1?), and the loss is returned as a device tensor that
`engine.train.log` copies to the CPU every `logging.log_every_n_steps` steps.
"""
from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from engine.errors import LoradeckError
from engine.model.text_conditioning import condition_on_tokens
from engine.train.data import SDXL_TENSORS, encode_pixels

BATCH_TENSORS = ("latents", "pixels", "input_ids", "text_states", *SDXL_TENSORS)


# --------------------------------------------------------------------------- settings


def apply_speed_settings(model, config, device: torch.device, train_text_encoder: bool) -> None:
    """Gradient checkpointing, the attention kernel and the memory format, from `[precision]`."""
    precision = config.precision
    if precision.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
        for encoder in model.text_encoders if train_text_encoder else []:
            if hasattr(encoder, "activation_checkpointing_enable"):  # transformers 5
                encoder.activation_checkpointing_enable({"use_reentrant": False})
            else:
                encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if precision.attention == "xformers":
        if importlib.util.find_spec("xformers") is None:
            raise LoradeckError("precision.attention: xformers is not installed (pip install xformers); "
                                "use sdpa, PyTorch's own flash / memory-efficient attention")
        try:
            model.unet.enable_xformers_memory_efficient_attention()
        except Exception as error:  # an xformers build that does not fit this GPU or torch
            raise LoradeckError(f"precision.attention: xformers cannot be used here ({error}); use sdpa") from None
    else:
        from diffusers.models.attention_processor import AttnProcessor2_0

        # PyTorch's scaled_dot_product_attention picks flash or memory-efficient kernels
        # on the GPU: attention memory grows with the tokens, not with their square
        model.unet.set_attn_processor(AttnProcessor2_0())
        model.vae.set_attn_processor(AttnProcessor2_0())
    # peft's DoRA on a conv views its weights as contiguous NCHW, which channels_last breaks
    if precision.channels_last and config.network.type != "dora":
        # tensor-core convolutions (cuDNN) and oneDNN's run NHWC natively; NCHW costs a
        # transpose around each one. The numbers are the same either way.
        model.unet.to(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- the step


@dataclass
class TrainStep:
    """Forward, loss, backward and (at the end of an accumulation) clip + optimizer step."""

    accelerator: Any
    model: Any  # engine.model.loading.BaseModel
    unet: Any  # what the forward pass calls: the prepared U-Net, compiled when asked
    text_encoder: Any
    network: Any  # engine.network.lora.LoraNetwork
    optimizer: Any
    lr_scheduler: Any
    config: Any
    text_encoder_active: bool
    trained_modules: list
    lora_parameters: list  # listed once: walking the models' modules every step costs milliseconds
    text_encoder_2: Any = None  # SDXL's second text encoder (prepared when it trains)

    @classmethod
    def prepare(cls, accelerator, model, network, optimizer, lr_scheduler, config, *, train_text_encoder: bool,
                text_encoder_active: bool) -> "TrainStep":
        unet = accelerator.prepare(model.unet) if network.has_unet else model.unet
        text_encoder = accelerator.prepare(model.text_encoder) if train_text_encoder else model.text_encoder
        text_encoder_2 = model.text_encoder_2
        if text_encoder_2 is not None and train_text_encoder:
            text_encoder_2 = accelerator.prepare(text_encoder_2)
        optimizer = accelerator.prepare(optimizer)
        trained = [m for m, on in ((unet, network.has_unet), (text_encoder, train_text_encoder),
                                   (text_encoder_2, train_text_encoder and text_encoder_2 is not None)) if on]
        unet.train()
        for encoder in (text_encoder, text_encoder_2):
            if encoder is not None:
                encoder.train(text_encoder_active)
        model.vae.eval()
        scheduler = model.noise_scheduler
        # diffusers moves the schedule to the batch's device lazily; once here, before the loop
        scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(accelerator.device)
        forward_unet = torch.compile(unet) if config.precision.compile_unet else unet
        return cls(accelerator, model, forward_unet, text_encoder, network, optimizer, lr_scheduler, config,
                   text_encoder_active, trained, network.parameters(), text_encoder_2)

    def __call__(self, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        """One micro-batch; returns its loss, detached and still on the device."""
        accelerator, config = self.accelerator, self.config
        with accelerator.accumulate(*self.trained_modules):
            loss = diffusion_loss(
                self.model, self.unet, self.text_encoder, batch_to_device(batch, generator.device, config),
                config=config, generator=generator, train_text_encoder=self.text_encoder_active,
                autocast=accelerator.autocast, text_encoder_2=self.text_encoder_2,
            )
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.optimizer.max_grad_norm:
                accelerator.clip_grad_norm_(self.lora_parameters, config.optimizer.max_grad_norm)
            self.optimizer.step()
            if accelerator.sync_gradients:
                self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def stop_text_encoder(self) -> None:
        """Freeze the text-encoder LoRA (`training.stop_text_encoder_training`)."""
        self.network.freeze_text_encoder()
        for encoder in (self.text_encoder, self.text_encoder_2):
            if encoder is not None:
                encoder.train(False)
        self.text_encoder_active = False


def batch_to_device(batch: dict[str, Any], device: torch.device, config) -> dict[str, Any]:
    """The batch's tensors on `device`, copied without waiting (the loader pins them).

    Caption weights travel only when some differ from 1; that is decided here, on the CPU,
    because asking the GPU would make the host wait for it.
    """
    moved = {key: batch[key].to(device, non_blocking=True) for key in BATCH_TENSORS if key in batch}
    weights = batch.get("token_weights")
    weighted = config.captions.weighted_captions and weights is not None and not bool(torch.all(weights == 1))
    moved["token_weights"] = weights.to(device, non_blocking=True) if weighted else None
    return moved


def diffusion_loss(model, unet, text_encoder, batch: dict[str, Any], *, config, generator: torch.Generator,
                   train_text_encoder: bool, autocast=None, text_encoder_2=None) -> torch.Tensor:
    """Noise the batch's latents at random timesteps and score the U-Net's prediction."""
    device = generator.device
    if "latents" in batch:
        latents = batch["latents"].to(device, non_blocking=True)
    else:
        latents = encode_pixels(model.vae, batch["pixels"])
    latents = latents.float()
    noise = training_noise(latents, generator, config.training)
    timesteps = torch.randint(
        0, model.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device=device
    )
    perturbation = None
    if config.training.ip_noise_gamma:
        # Input perturbation (Ning et al. 2023), as sd-scripts: the U-Net sees extra noise,
        # the target stays the noise without it
        perturbation = config.training.ip_noise_gamma * torch.randn(latents.shape, generator=generator, device=device)
    return loss_from_noise(
        model, unet, text_encoder, latents, batch.get("input_ids"), batch.get("token_weights"), noise, timesteps,
        config=config, train_text_encoder=train_text_encoder, text_states=batch.get("text_states"),
        autocast=autocast, perturbation=perturbation, text_encoder_2=text_encoder_2,
        extras={key: batch[key] for key in SDXL_TENSORS if key in batch},
    )


def training_noise(latents: torch.Tensor, generator: torch.Generator, training) -> torch.Tensor:
    """The noise of one batch as sd-scripts makes it: Gaussian, plus the offset (scaled per
    channel by the adaptive noise scale), then multires noise; every draw from `generator`."""
    device = generator.device
    noise = torch.randn(latents.shape, generator=generator, device=device)
    if training.noise_offset:
        # Offset noise (Guttenberg 2023): a per-channel shift teaches the model to change
        # an image's mean brightness, which plain noise almost never asks of it
        offset: float | torch.Tensor = training.noise_offset
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


def loss_from_noise(model, unet, text_encoder, latents: torch.Tensor, input_ids: torch.Tensor | None,
                    token_weights: torch.Tensor | None, noise: torch.Tensor, timesteps: torch.Tensor, *,
                    config, train_text_encoder: bool, text_states: torch.Tensor | None = None,
                    autocast=None, perturbation: torch.Tensor | None = None, text_encoder_2=None,
                    extras: dict[str, Any] | None = None) -> torch.Tensor:
    """The training loss for given noise and timesteps (tests score a fixed batch with it).

    `text_states` are cached text-encoder outputs; without them the captions' tokens are
    encoded here. `autocast` is the accelerator's mixed-precision context (the text
    encoder's cached outputs were computed under the same one). `perturbation` is added to
    the noise of the U-Net's input only (`training.ip_noise_gamma`). The model's family
    (engine.model.families) turns the captions into the U-Net's conditioning; `extras`
    holds what else its family needs (SDXL: second token ids, pooled states, sizes).
    """
    scheduler = model.noise_scheduler
    device = latents.device
    # input perturbation noises the U-Net's input only; the target stays `noise`
    noisy_latents = scheduler.add_noise(latents, noise if perturbation is None else noise + perturbation, timesteps)
    text = {"input_ids": input_ids, "token_weights": token_weights, "text_states": text_states, **(extras or {})}
    family = getattr(model, "family_module", None)
    with autocast() if autocast is not None else contextlib.nullcontext():
        if family is None:  # a stand-in model without a family (SD 1.x)
            from engine.model.families import sd15 as family
        states, unet_arguments = family.condition((text_encoder, text_encoder_2), text, config=config,
                                                  train_text_encoder=train_text_encoder, device=device)
        prediction = unet(noisy_latents, timesteps, states, **unet_arguments).sample
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    loss = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    gamma = config.training.min_snr_gamma
    if gamma:
        # Min-SNR weighting (Hang et al. 2023, eq. 8): cap each timestep's weight at gamma / SNR
        from diffusers.training_utils import compute_snr

        snr = compute_snr(scheduler, timesteps)
        divisor = snr + 1 if scheduler.config.prediction_type == "v_prediction" else snr
        loss = loss * torch.clamp(snr, max=gamma) / divisor
    return loss.mean()


def encode_captions(text_encoder, input_ids: torch.Tensor, token_weights: torch.Tensor | None, *, config,
                    train_text_encoder: bool) -> torch.Tensor:
    """The U-Net's conditioning for (batch, windows, 77) token ids, with gradients only when
    the text encoder trains. Weights are applied when given (the caller checked they matter)."""
    weights = token_weights if config.captions.weighted_captions else None
    if weights is not None and weights.device.type == "cpu":
        # asking the CPU costs nothing (the trainer asked before copying the batch)
        weights = None if bool(torch.all(weights == 1)) else weights.to(input_ids.device)
    with torch.set_grad_enabled(train_text_encoder and torch.is_grad_enabled()):
        return condition_on_tokens(text_encoder, input_ids, clip_skip=config.model.clip_skip, weights=weights)
