"""The `ss_*` training metadata sd-scripts writes into a LoRA file, and a model spec header.

A1111's and ComfyUI's LoRA browsers, civitai and `sd-scripts/networks/check_lora_weights`
read these keys: network dim/alpha, image and repeat counts per folder, tag frequency,
resolution and buckets, optimizer, learning rates, steps, epoch, seed, base model, start
and end times. Every value is a string (safetensors metadata is str -> str); structured
values are JSON, as in sd-scripts.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any

from engine.config.network_types import NetworkSpec
from engine.config.schema import TrainConfig
from engine.model.families import family_named


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
    family = family_named(plan.family)
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
    # sd-scripts: "module.Class(key=value,key=value)", the keyword arguments as it passed them
    optimizer_args = ",".join(f"{k}={v}" for k, v in sd_scripts_optimizer_arguments(config).items())
    # sd-scripts: each image's bucket aspect ratio minus its own, averaged as absolute values
    errors = [abs(item.bucket[0] / item.bucket[1] - item.width / item.height) for item in dataset.items
              if item.bucket[1] and item.height]
    mean_ar_error = sum(errors) / len(errors) if errors else 0.0
    metadata: dict[str, Any] = {
        "ss_session_id": session_id,
        "ss_training_started_at": started_at,
        "ss_training_finished_at": finished_at if finished_at is not None else time.time(),
        "ss_output_name": config.saving.output_name,
        "ss_sd_model_name": _file_name(config.model.pretrained_model) or model_name,
        "ss_v_parameterization": config.model.v_parameterization,
        # None where sd-scripts' argument is unset: clip skip 1 is the last layer, 75 tokens one window
        "ss_clip_skip": config.model.clip_skip if config.model.clip_skip != 1 else None,
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
        "ss_lr_scheduler": _scheduler_written(config, scheduler_name),
        "ss_lr_warmup_steps": opt.lr_warmup_steps,
        "ss_max_grad_norm": opt.max_grad_norm,
        "ss_seed": train.seed,
        "ss_noise_offset": train.noise_offset or None,
        "ss_adaptive_noise_scale": train.adaptive_noise_scale or None,
        "ss_multires_noise_iterations": train.multires_noise_iterations or None,
        "ss_multires_noise_discount": train.multires_noise_discount,
        "ss_ip_noise_gamma": train.ip_noise_gamma or None,
        "ss_noise_offset_random_strength": train.noise_offset_random_strength,
        "ss_ip_noise_gamma_random_strength": train.ip_noise_gamma_random_strength,
        "ss_training_comment": config.metadata.training_comment or None,
        "ss_loss_type": train.loss_type,
        "ss_huber_schedule": train.huber_schedule,
        "ss_huber_scale": train.huber_scale,
        "ss_huber_c": train.huber_c,
        "ss_debiased_estimation": train.debiased_estimation_loss,
        # written by sd-scripts whatever the run; loradeck trains these at sd-scripts' defaults
        "ss_prior_loss_weight": 1.0,
        "ss_fp8_base": False,
        "ss_fp8_base_unet": False,
        "ss_resize_interpolation": None,
        "ss_zero_terminal_snr": False,
        "ss_scale_weight_norms": net.scale_weight_norms or None,
        "ss_caption_dropout_every_n_epochs": caps.caption_dropout_every_n_epochs,
        "ss_caption_tag_dropout_rate": caps.caption_tag_dropout_rate,
        "ss_face_crop_aug_range": None,
        "ss_full_fp16": False,
        "ss_lowram": False,
        "ss_masked_loss": train.masked_loss,
        "ss_min_snr_gamma": train.min_snr_gamma or None,
        "ss_mixed_precision": config.precision.mixed_precision,
        "ss_gradient_checkpointing": config.precision.gradient_checkpointing,
        "ss_cache_latents": config.latents_cacheable,
        "ss_resolution": f"({width}, {height})",
        "ss_enable_bucket": data.enable_buckets,
        "ss_min_bucket_reso": data.min_bucket_resolution,
        "ss_max_bucket_reso": data.max_bucket_resolution,
        "ss_bucket_no_upscale": data.bucket_no_upscale,
        "ss_bucket_info": _json({"buckets": buckets, "mean_img_ar_error": mean_ar_error}),
        "ss_dataset_dirs": _json(dataset_dirs),
        "ss_reg_dataset_dirs": _json(reg_dataset_dirs),
        "ss_tag_frequency": _json(dataset.tag_frequency()),
        "ss_shuffle_caption": caps.shuffle_caption,
        "ss_keep_tokens": caps.keep_tokens,
        "ss_caption_dropout_rate": caps.caption_dropout_rate,
        "ss_max_token_length": caps.max_token_length if caps.max_token_length != 75 else None,
        "ss_flip_aug": aug.flip,
        "ss_color_aug": aug.color,
        "ss_random_crop": aug.random_crop,
        **_validation_keys(config, plan),
        **model_spec(config, width, height, started_at),
        "training_tool": "loradeck",
    }
    # the family's keys last: ss_base_model_version, ss_v2, modelspec.architecture, and any
    # general key it says otherwise (a flow-matching family's modelspec.prediction_type)
    metadata.update(family.lora_metadata(config))
    metadata.update(base_model_hashes(config.model.pretrained_model))
    if config.model.vae:  # sd-scripts writes the VAE's keys only when one is given
        metadata["ss_vae_name"] = _file_name(config.model.vae) or config.model.vae
        metadata.update({key.replace("_sd_model_", "_vae_"): value
                         for key, value in base_model_hashes(config.model.vae).items()})
    if data.dataset_config:
        metadata["ss_datasets"] = _json([_dataset_record(config, plan, dataset, buckets, mean_ar_error)])
    return {key: str(value) for key, value in metadata.items()}


def model_spec(config: TrainConfig, width: int, height: int, started_at: float) -> dict[str, str]:
    """The Stability AI model spec (1.0.1, as sd-scripts writes it), which A1111, ComfyUI and
    Civitai show: the [metadata] settings fill its title, author, description, licence, tags,
    trigger phrase and usage hint; unset ones are left out, as sd-scripts leaves them."""
    meta = config.metadata
    spec = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.implementation": "diffusers",
        "modelspec.implementation_version": _diffusers_version(),
        "modelspec.title": meta.title or config.saving.output_name,
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(int(started_at))),
        "modelspec.prediction_type": "v" if config.model.v_parameterization else "epsilon",
    }
    if config.model.clip_skip != 1:
        spec["modelspec.encoder_layer"] = str(config.model.clip_skip)
    training = config.training
    if training.min_timestep or training.max_timestep != 1000:
        spec["modelspec.timestep_range"] = f"{training.min_timestep},{training.max_timestep}"
    for name in ("author", "description", "license", "tags", "trigger_phrase", "usage_hint"):
        if getattr(meta, name).strip():
            spec[f"modelspec.{name}"] = getattr(meta, name)
    return spec


def _validation_keys(config: TrainConfig, plan) -> dict[str, Any]:
    """sd-scripts' validation keys (written whatever the run; None where unset)."""
    validation = config.validation
    on = validation.enabled
    return {
        "ss_num_validation_images": getattr(plan, "validation_images", 0),
        "ss_validation_seed": validation.seed if on else None,
        "ss_validation_split": validation.split_fraction,
        "ss_max_validation_steps": None,
        "ss_validate_every_n_epochs": (validation.every_n_epochs or None) if on else None,
        "ss_validate_every_n_steps": (validation.every_n_steps or None) if on else None,
    }


def sd_scripts_optimizer_arguments(config: TrainConfig) -> dict[str, Any]:
    """The keyword arguments sd-scripts' get_optimizer passes (and logs): the optimizer
    args, with Adafactor's relative_step filled in as it fills it."""
    arguments = dict(config.optimizer_kwargs)
    if config.optimizer.optimizer == "Adafactor":
        arguments.setdefault("relative_step", True)
        if not arguments["relative_step"] and arguments.get("warmup_init", False):
            arguments["relative_step"] = True
    return arguments


def _scheduler_written(config: TrainConfig, scheduler: str) -> str:
    """ss_lr_scheduler as sd-scripts writes it: "adafactor:<lr>" for relative-step Adafactor,
    the named schedule beside a scheduler class (sd-scripts writes its --lr_scheduler)."""
    if scheduler == "adafactor":
        return f"adafactor:{config.unet_learning_rate}"
    return config.optimizer.lr_scheduler if config.optimizer.lr_scheduler_type else scheduler


def _file_name(value: str) -> str:
    """sd-scripts' name of a model or VAE: the file or folder name when it exists, else ""."""
    path = Path(value).expanduser()
    try:
        return path.name if value and path.exists() else ""
    except (OSError, ValueError):
        return ""


def optimizer_class_path(optimizer) -> str:
    """sd-scripts' ss_optimizer name: the optimizer's module and class (torch.optim.adamw.AdamW),
    through accelerate's wrapper."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return f"{type(inner).__module__}.{type(inner).__name__}"


def _dataset_record(config, plan, dataset, buckets, mean_ar_error: float) -> dict[str, Any]:
    """sd-scripts' ss_datasets entry of a dataset given by a dataset TOML (one per run here)."""
    caps, aug = config.captions, config.augmentation
    subsets = [
        {"img_count": folder.images, "num_repeats": folder.repeats, "color_aug": aug.color, "flip_aug": aug.flip,
         "random_crop": aug.random_crop, "shuffle_caption": caps.shuffle_caption, "keep_tokens": caps.keep_tokens,
         "keep_tokens_separator": caps.keep_tokens_separator,
         "image_dir": folder.path.name, "class_tokens": folder.class_tokens or None, "is_reg": folder.is_reg}
        for folder in dataset.folders
    ]
    width, height = config.resolution_size
    return {
        "is_dreambooth": True, "batch_size_per_device": config.training.batch_size,
        "num_train_images": plan.image_repeats, "num_reg_images": plan.reg_images,
        "resolution": [width, height], "enable_bucket": config.dataset.enable_buckets,
        "min_bucket_reso": config.dataset.min_bucket_resolution, "max_bucket_reso": config.dataset.max_bucket_resolution,
        "tag_frequency": dataset.tag_frequency(),
        "bucket_info": {"buckets": buckets, "mean_img_ar_error": mean_ar_error}, "subsets": subsets,
    }


def _diffusers_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diffusers")
    except PackageNotFoundError:
        return "unknown"


def legacy_hash(stream) -> str:
    """A1111's old short hash: sha256 of the 64 KiB at offset 1 MiB, first 8 hex digits."""
    stream.seek(0x100000)
    return hashlib.sha256(stream.read(0x10000)).hexdigest()[:8]


def safetensors_data_hash(stream) -> str:
    """A1111's (and sd-scripts') sshs_model_hash: sha256 of a safetensors file after its header."""
    stream.seek(0)
    header_size = int.from_bytes(stream.read(8), "little")
    stream.seek(8 + header_size)
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def with_file_hashes(tensors, metadata: dict[str, str]) -> dict[str, str]:
    """`metadata` plus sshs_model_hash and sshs_legacy_hash, computed as sd-scripts does: over
    the file the tensors make with only the ss_* keys as metadata (the hashes then do not
    change when a tool edits other metadata)."""
    from safetensors.torch import save

    training_only = {key: value for key, value in metadata.items() if key.startswith("ss_")}
    stream = io.BytesIO(save(tensors, training_only))
    return {**metadata, "sshs_model_hash": safetensors_data_hash(stream), "sshs_legacy_hash": legacy_hash(stream)}


def base_model_hashes(model: str) -> dict[str, str]:
    """ss_sd_model_hash (A1111's legacy hash) and ss_new_sd_model_hash (sha256 of the whole
    file) of a single-file base model, as sd-scripts writes them; nothing for a folder or hub id."""
    path = Path(model).expanduser()
    if not path.is_file():
        return {}
    stat = path.stat()
    return dict(_file_hashes(str(path.resolve()), stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=4)
def _file_hashes(path: str, size: int, mtime_ns: int) -> tuple[tuple[str, str], ...]:
    """Hashed once per run (a base model is gigabytes); the size and time key out edits."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
        legacy = legacy_hash(stream)
    return (("ss_sd_model_hash", legacy), ("ss_new_sd_model_hash", digest.hexdigest()))
