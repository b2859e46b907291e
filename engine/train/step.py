"""One training step, shared by the trainer's loop and `bench/train_speed.py`.

    apply_speed_settings(model, config, device, train_text_encoder)   before the optimizer exists
    step = TrainStep.prepare(accelerator, model, network, optimizer, lr_scheduler, config, ...)
    loss = step(batch, generator)        forward, loss, backward, optimizer step; loss stays on the device
    diffusion_loss / loss_at             the loss itself (validation and tests score fixed noise with loss_at)

The step asks the model's family (engine.model.family) and its objective
(engine.model.objectives) for everything that differs between models: the noise and
timesteps, the model input and target, the text conditioning, the denoiser call and the
loss weighting. It reads top to bottom the same for every family.

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

from engine.errors import LoradeckError
from engine.train.data import encode_pixels


# --------------------------------------------------------------------------- settings


def apply_speed_settings(model, config, device: torch.device, train_text_encoder: bool) -> None:
    """Gradient checkpointing, the attention kernel and the memory format, from `[precision]`,
    on the family's modules."""
    if config.precision.attention == "xformers" and importlib.util.find_spec("xformers") is None:
        raise LoradeckError("precision.attention: xformers is not installed (pip install xformers); "
                            "use sdpa, PyTorch's own flash / memory-efficient attention")
    model.runtime.apply_speed_settings(model, config.precision, train_text_encoder=train_text_encoder,
                                       network_type=config.network.type)


# --------------------------------------------------------------------------- the step


@dataclass
class TrainStep:
    """Forward, loss, backward and (at the end of an accumulation) clip + optimizer step."""

    accelerator: Any
    model: Any  # engine.model.family.BaseModel
    denoiser: Any  # what the forward pass calls: the prepared U-Net or transformer, compiled when asked
    text_encoders: list  # the family's text encoders, prepared when they train
    network: Any  # engine.network.lora.LoraNetwork
    optimizer: Any
    lr_scheduler: Any
    config: Any
    text_encoder_active: bool
    trained_modules: list
    lora_parameters: list  # listed once: walking the models' modules every step costs milliseconds

    @classmethod
    def prepare(cls, accelerator, model, network, optimizer, lr_scheduler, config, *, train_text_encoder: bool,
                text_encoder_active: bool) -> "TrainStep":
        denoiser = accelerator.prepare(model.denoiser) if network.has_unet else model.denoiser
        # an encoder without adapters (Flux's T5 unless train_t5xxl) stays as it is: DDP
        # refuses a module with nothing to train
        adapted = [train_text_encoder and any(p.requires_grad for p in encoder.parameters())
                   for encoder in model.text_encoders]
        text_encoders = [accelerator.prepare(encoder) if trains else encoder
                         for encoder, trains in zip(model.text_encoders, adapted)]
        optimizer = accelerator.prepare(optimizer)
        trained = ([denoiser] if network.has_unet else []) + [
            encoder for encoder, trains in zip(text_encoders, adapted) if trains]
        denoiser.train()
        for encoder in text_encoders:
            encoder.train(text_encoder_active)
        model.vae.eval()
        model.objective.to(accelerator.device)
        forward = torch.compile(denoiser) if config.precision.compile_unet else denoiser
        return cls(accelerator, model, forward, text_encoders, network, optimizer, lr_scheduler, config,
                   text_encoder_active, trained, network.parameters())

    def __call__(self, batch: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
        """One micro-batch; returns its loss, detached and still on the device."""
        accelerator, config = self.accelerator, self.config
        with accelerator.accumulate(*self.trained_modules):
            loss = diffusion_loss(
                self.model, self.denoiser, self.text_encoders, batch_to_device(batch, generator.device, config),
                config=config, generator=generator, train_text_encoder=self.text_encoder_active,
                autocast=accelerator.autocast,
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
        for encoder in self.text_encoders:
            encoder.train(False)
        self.text_encoder_active = False


def batch_to_device(batch: dict[str, Any], device: torch.device, config) -> dict[str, Any]:
    """The batch's tensors on `device`, copied without waiting (the loader pins them).

    Caption weights travel only when some differ from 1; that is decided here, on the CPU,
    because asking the GPU would make the host wait for it.
    """
    moved = {key: value.to(device, non_blocking=True) for key, value in batch.items()
             if isinstance(value, torch.Tensor) and key != "token_weights"}
    weights = batch.get("token_weights")
    weighted = config.captions.weighted_captions and weights is not None and not bool(torch.all(weights == 1))
    moved["token_weights"] = weights.to(device, non_blocking=True) if weighted else None
    return moved


def diffusion_loss(model, denoiser, text_encoders, batch: dict[str, Any], *, config, generator: torch.Generator,
                   train_text_encoder: bool, autocast=None) -> torch.Tensor:
    """Draw the batch's noise and timesteps (the objective's) and score the denoiser."""
    if "latents" in batch:
        latents = batch["latents"].to(generator.device, non_blocking=True)
    else:
        latents = encode_pixels(model.vae, batch["pixels"])
    latents = latents.float()
    draw = model.objective.draw(latents, generator)
    return loss_at(model, denoiser, text_encoders, latents, batch, draw.noise, draw.timesteps, config=config,
                   train_text_encoder=train_text_encoder, autocast=autocast, input_noise=draw.input_noise)


def loss_at(model, denoiser, text_encoders, latents: torch.Tensor, batch: dict[str, Any], noise: torch.Tensor,
            timesteps: torch.Tensor, *, config, train_text_encoder: bool, autocast=None,
            input_noise: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss for given noise and timesteps (validation scores fixed noise with it).

    `batch` holds what the family's conditioning reads (token ids or cached outputs, sizes);
    `autocast` is the accelerator's mixed-precision context (cached text outputs were
    computed under the same one); `input_noise` noises the model input in place of `noise`
    (the objective's input perturbation), the target is always made from `noise`.
    """
    objective, runtime = model.objective, model.runtime
    noisy = objective.noisy(latents, noise if input_noise is None else input_noise, timesteps)
    with autocast() if autocast is not None else contextlib.nullcontext():
        conditioning = runtime.condition(text_encoders, batch, config=config, train_text_encoder=train_text_encoder,
                                         device=latents.device)
        prediction = runtime.predict(denoiser, noisy, timesteps, conditioning)
    return objective.loss(prediction, objective.target(latents, noise, timesteps), timesteps, batch)
