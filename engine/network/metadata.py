"""The `ss_*` training metadata sd-scripts writes into a LoRA file, and a model spec header.

A1111's and ComfyUI's LoRA browsers, civitai and `sd-scripts/networks/check_lora_weights`
read these keys: network dim/alpha, image and repeat counts per folder, tag frequency,
resolution and buckets, optimizer, learning rates, steps, epoch, seed, base model, start
and end times. Every value is a string (safetensors metadata is str -> str); structured
values are JSON, as in sd-scripts.
"""
from __future__ import annotations

import json
import time
from typing import Any

from engine.config.network_types import NetworkSpec
from engine.config.schema import TrainConfig


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def training_metadata(
    config: TrainConfig,
    plan,
    dataset,
    *,
    model_name: str,
    session_id: str,
    started_at: float,
    epoch: int,
    step: int,
    optimizer_name: str,
    scheduler_name: str,
    num_processes: int = 1,
    finished_at: float | None = None,
) -> dict[str, str]:
    width, height = config.resolution_size
    net, opt, train, data, caps, aug = (
        config.network, config.optimizer, config.training, config.dataset, config.captions, config.augmentation,
    )
    dataset_dirs = {
        folder.name: {"n_repeats": folder.repeats, "img_count": folder.images}
        for folder in dataset.folders
        if not folder.is_reg
    }
    reg_dataset_dirs = {
        folder.name: {"n_repeats": folder.repeats, "img_count": folder.images}
        for folder in dataset.folders
        if folder.is_reg
    }
    buckets = {
        str(index): {"resolution": [bucket.width, bucket.height], "count": bucket.count}
        for index, bucket in enumerate(plan.buckets)
    }
    optimizer_args = " ".join(f"{k}={v}" for k, v in config.optimizer_kwargs.items())
    metadata: dict[str, Any] = {
        "ss_session_id": session_id,
        "ss_training_started_at": started_at,
        "ss_training_finished_at": finished_at if finished_at is not None else time.time(),
        "ss_output_name": config.saving.output_name,
        "ss_sd_model_name": model_name,
        "ss_vae_name": config.model.vae or "",
        "ss_base_model_version": "sd_v2" if config.model.v2 else "sd_v1",
        "ss_v2": config.model.v2,
        "ss_v_parameterization": config.model.v_parameterization,
        "ss_clip_skip": config.model.clip_skip,
        **NetworkSpec.of(config).metadata(),  # module, dim, alpha, dropout and args of the network type
        "ss_network_train_unet_only": not net.train_text_encoder,
        "ss_network_train_text_encoder_only": not net.train_unet,
        "ss_num_train_images": plan.image_repeats,
        "ss_num_reg_images": plan.reg_images,
        "ss_num_batches_per_epoch": plan.batches_per_epoch,
        "ss_num_epochs": plan.epochs,
        "ss_epoch": epoch,
        "ss_steps": step,
        "ss_max_train_steps": plan.total_steps,
        "ss_batch_size_per_device": train.batch_size,
        "ss_total_batch_size": train.batch_size * train.gradient_accumulation_steps * num_processes,
        "ss_gradient_accumulation_steps": train.gradient_accumulation_steps,
        "ss_learning_rate": opt.learning_rate,
        "ss_unet_lr": config.unet_learning_rate,
        "ss_text_encoder_lr": config.text_encoder_learning_rate,
        "ss_optimizer": f"{optimizer_name}({optimizer_args})" if optimizer_args else optimizer_name,
        "ss_lr_scheduler": scheduler_name,
        "ss_lr_warmup_steps": opt.lr_warmup_steps,
        "ss_max_grad_norm": opt.max_grad_norm,
        "ss_seed": train.seed,
        "ss_noise_offset": train.noise_offset,
        "ss_min_snr_gamma": train.min_snr_gamma,
        "ss_mixed_precision": config.precision.mixed_precision,
        "ss_gradient_checkpointing": config.precision.gradient_checkpointing,
        "ss_cache_latents": config.latents_cacheable,
        "ss_resolution": f"({width}, {height})",
        "ss_enable_bucket": data.enable_buckets,
        "ss_min_bucket_reso": data.min_bucket_resolution,
        "ss_max_bucket_reso": data.max_bucket_resolution,
        "ss_bucket_no_upscale": data.bucket_no_upscale,
        "ss_bucket_info": _json({"buckets": buckets, "mean_img_ar_error": 0.0}),
        "ss_dataset_dirs": _json(dataset_dirs),
        "ss_reg_dataset_dirs": _json(reg_dataset_dirs),
        "ss_tag_frequency": _json(dataset.tag_frequency()),
        "ss_shuffle_caption": caps.shuffle_caption,
        "ss_keep_tokens": caps.keep_tokens,
        "ss_caption_dropout_rate": caps.caption_dropout_rate,
        "ss_max_token_length": caps.max_token_length,
        "ss_flip_aug": aug.flip,
        "ss_color_aug": aug.color,
        "ss_random_crop": aug.random_crop,
        # the Stability AI model spec, which newer A1111/ComfyUI builds show
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v2-768-v/lora" if config.model.v2 else "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": f"{config.saving.output_name}",
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started_at)),
        "training_tool": "loradeck",
    }
    return {key: str(value) for key, value in metadata.items()}
