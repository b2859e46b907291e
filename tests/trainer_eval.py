"""Scoring a LoRA on a fixed batch (fixed noise and timesteps), for the trainer's tests."""
from __future__ import annotations

from pathlib import Path

import torch

from engine.config.schema import load_config
from engine.dataset.folders import scan_dataset
from engine.network.lora import attach_lora_file
from engine.model.loading import load_base_model
from engine.train.data import ExampleRules, LatentCache, TrainingImages, collate_examples
from engine.train.step import loss_from_noise


def fixed_batch_loss(run_path: Path, lora_file: Path | None, seed: int = 1234) -> float:
    """Mean loss over every training image, with noise and timesteps drawn from `seed`."""
    config = load_config(run_path / "config.toml")
    model = load_base_model(config, run_path, device="cpu", dtype=torch.float32)
    if lora_file is not None:
        attach_lora_file(model.unet, model.text_encoder, lora_file)
    dataset = scan_dataset(config, run_path)
    latents = LatentCache("eval")
    latents.fill(dataset.items, model.vae, batch_size=8, with_flipped=False, on_failure=lambda *a: None)
    images = TrainingImages(dataset.items, ExampleRules.from_config(config), model.tokenizer, latents)
    batch = collate_examples([images[index] for index in range(len(images))])
    generator = torch.Generator().manual_seed(seed)
    count = batch["latents"].shape[0]
    noise = torch.randn(batch["latents"].shape, generator=generator)
    timesteps = torch.linspace(50, 950, count).long()
    with torch.no_grad():
        loss = loss_from_noise(model, model.unet, model.text_encoder, batch["latents"], batch["input_ids"],
                               batch["token_weights"], noise, timesteps, config=config, train_text_encoder=False)
    return float(loss)
