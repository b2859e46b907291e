"""Scoring a LoRA on a fixed batch (fixed noise and timesteps), for the trainer's tests."""
from __future__ import annotations

from pathlib import Path

import torch

from engine.config.schema import load_config
from engine.dataset.folders import scan_dataset
from engine.network.lora import attach_lora_file
from engine.model.loading import load_base_model
from engine.train.data import ExampleRules, LatentCache, TrainingImages, collate_examples
from engine.train.step import batch_to_device, loss_at


def fixed_batch_loss(run_path: Path, lora_file: Path | None, seed: int = 1234) -> float:
    """Mean loss over every training image, with noise and timesteps drawn from `seed`."""
    config = load_config(run_path / "config.toml")
    model = load_base_model(config, run_path, device="cpu", dtype=torch.float32)
    if lora_file is not None:
        attach_lora_file(model.family, model, lora_file)
    dataset = scan_dataset(config, run_path)
    latents = LatentCache("eval")
    latents.fill(dataset.items, model.vae, batch_size=8, with_flipped=False, on_failure=lambda *a: None)
    captions = model.runtime.caption_tokens(model.tokenizers, max_token_length=config.captions.max_token_length,
                                            weighted=config.captions.weighted_captions)
    rules = ExampleRules.fixed(config, size_conditioning=model.family.size_conditioning)
    images = TrainingImages(dataset.items, rules, captions, latents)
    batch = batch_to_device(collate_examples([images[index] for index in range(len(images))]), "cpu", config)
    generator = torch.Generator().manual_seed(seed)
    count = batch["latents"].shape[0]
    noise = torch.randn(batch["latents"].shape, generator=generator)
    points = model.objective.validation_timesteps(count)  # spread over the schedule, one per image
    timesteps = torch.cat([model.objective.timesteps_tensor(point, 1, "cpu") for point in points])
    with torch.no_grad():
        loss = loss_at(model, model.denoiser, model.text_encoders, batch["latents"], batch, noise, timesteps,
                       config=config, train_text_encoder=False)
    return float(loss)
