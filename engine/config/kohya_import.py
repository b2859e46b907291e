"""Read Kohya GUI JSON configs as they are saved in the wild.

The GUI stores numbers as strings (`"0.0001"`, `"64.0"`), empty strings for unset values,
`"xformers": "xformers"` or `true`, `max_resolution` as `"512,650"`, and warm-up and
stop-text-encoder as percentages. Every key we support is mapped; the rest are listed
as ignored. A network type or model family we cannot train fails with one line.

Light module.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.config.schema import (
    CONFIG_VERSION,
    OPTIMIZERS,
    SCHEDULERS,
    TrainConfig,
    config_from_dict,
    replace_setting,
)
from engine.errors import ConfigError, LoradeckError
from engine.config.prompts import normalize_sampler

_UNSET = object()


def _text(value: Any) -> Any:
    if value is None:
        return _UNSET
    if isinstance(value, str):
        value = value.strip()
        return value if value else _UNSET
    return str(value)


def _number(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return _UNSET if value is None else float(value)
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    if not text:
        return _UNSET
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None


def _integer(value: Any) -> Any:
    number = _number(value)
    if number is _UNSET:
        return _UNSET
    if number != int(number):
        raise ValueError(f"{value!r} is not a whole number")
    return int(number)


def _flag(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if value is None:
        return _UNSET
    text = str(value).strip().lower()
    if not text:
        return _UNSET
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "none"):
        return False
    raise ValueError(f"{value!r} is not true or false")


def _optional_rate(value: Any) -> Any:
    """Kohya leaves a per-model LR empty or 0 to mean "use the learning rate"."""
    number = _number(value)
    return _UNSET if number is _UNSET or number == 0 else number


# kohya key -> (our setting, converter)
SIMPLE_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "pretrained_model_name_or_path": ("model.pretrained_model", _text),
    "vae": ("model.vae", _text),
    "v2": ("model.v2", _flag),
    "v_parameterization": ("model.v_parameterization", _flag),
    "clip_skip": ("model.clip_skip", _integer),
    "train_data_dir": ("dataset.image_dir", _text),
    "reg_data_dir": ("dataset.reg_dir", _text),
    "enable_bucket": ("dataset.enable_buckets", _flag),
    "min_bucket_reso": ("dataset.min_bucket_resolution", _integer),
    "max_bucket_reso": ("dataset.max_bucket_resolution", _integer),
    "bucket_reso_steps": ("dataset.bucket_step", _integer),
    "bucket_no_upscale": ("dataset.bucket_no_upscale", _flag),
    "caption_extension": ("captions.caption_extension", _text),
    "shuffle_caption": ("captions.shuffle_caption", _flag),
    "keep_tokens": ("captions.keep_tokens", _integer),
    "caption_dropout_rate": ("captions.caption_dropout_rate", _number),
    "weighted_captions": ("captions.weighted_captions", _flag),
    "max_token_length": ("captions.max_token_length", _integer),
    "flip_aug": ("augmentation.flip", _flag),
    "color_aug": ("augmentation.color", _flag),
    "random_crop": ("augmentation.random_crop", _flag),
    "network_dim": ("network.rank", _integer),
    "network_alpha": ("network.alpha", _number),
    "optimizer_args": ("optimizer.optimizer_args", _text),
    "learning_rate": ("optimizer.learning_rate", _number),
    "unet_lr": ("optimizer.unet_lr", _optional_rate),
    "text_encoder_lr": ("optimizer.text_encoder_lr", _optional_rate),
    "lr_scheduler_num_cycles": ("optimizer.lr_scheduler_num_cycles", _integer),
    "lr_scheduler_power": ("optimizer.lr_scheduler_power", _number),
    "lr_warmup_steps": ("optimizer.lr_warmup_steps", _integer),
    "max_grad_norm": ("optimizer.max_grad_norm", _number),
    "train_batch_size": ("training.batch_size", _integer),
    "epoch": ("training.epochs", _integer),
    "max_train_steps": ("training.max_steps", _integer),
    "gradient_accumulation_steps": ("training.gradient_accumulation_steps", _integer),
    "seed": ("training.seed", _integer),
    "noise_offset": ("training.noise_offset", _number),
    "min_snr_gamma": ("training.min_snr_gamma", _number),
    "mixed_precision": ("precision.mixed_precision", _text),
    "save_precision": ("precision.save_precision", _text),
    "gradient_checkpointing": ("precision.gradient_checkpointing", _flag),
    "max_data_loader_n_workers": ("precision.dataloader_workers", _integer),
    "sample_prompts": ("sampling.prompts", _text),
    "sample_every_n_epochs": ("sampling.every_n_epochs", _integer),
    "sample_every_n_steps": ("sampling.every_n_steps", _integer),
    "output_dir": ("saving.output_dir", _text),
    "output_name": ("saving.output_name", _text),
    "save_every_n_epochs": ("saving.save_every_n_epochs", _integer),
    "save_every_n_steps": ("saving.save_every_n_steps", _integer),
    "save_last_n_epochs": ("saving.save_last_n", _integer),
    "save_state": ("saving.save_state", _flag),
}

# keys handled by hand below
SPECIAL_KEYS = {
    "LoRA_type", "sdxl", "max_resolution", "xformers", "cache_latents", "cache_latents_to_disk",
    "optimizer", "lr_scheduler", "lr_warmup", "stop_text_encoder_training",
    "stop_text_encoder_training_pct", "max_train_epochs", "sample_sampler",
    "network_train_unet_only", "network_train_text_encoder_only", "sdpa", "mem_eff_attn",
    "sdxl_cache_text_encoder_outputs", "sdxl_no_half_vae",
}

SUPPORTED_NETWORK_TYPES = ("standard", "")


@dataclass
class KohyaImport:
    config: TrainConfig
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def import_kohya_file(path: str | Path, dataset_base: str | Path | None = None) -> KohyaImport:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LoradeckError(f"{path}: no such file") from None
    except OSError as error:  # a folder, no permission, an I/O error
        raise LoradeckError(f"{path}: cannot read ({error.strerror or error})") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise LoradeckError(f"{path}: not a Kohya JSON config ({error})") from None
    if not isinstance(data, dict):
        raise LoradeckError(f"{path}: not a Kohya JSON config (expected an object)")
    return import_kohya(data, source=str(path), dataset_base=dataset_base or path.parent)


def import_kohya(data: dict[str, Any], source: str = "", dataset_base: str | Path = ".") -> KohyaImport:
    where = f"{source}: " if source else ""
    network_type = str(data.get("LoRA_type", "Standard") or "").strip()
    if network_type.lower() not in SUPPORTED_NETWORK_TYPES:
        raise LoradeckError(
            f"{where}LoRA_type {network_type!r} cannot be trained by loradeck (standard LoRA only); "
            "choose LoRA_type Standard in the Kohya GUI or train it there"
        )
    settings: dict[str, dict[str, Any]] = {}
    ignored: list[str] = []
    notes: list[str] = []

    def put(key: str, value: Any) -> None:
        if value is _UNSET:
            return
        group, name = key.split(".")
        settings.setdefault(group, {})[name] = value

    def convert(kohya_key: str, converter: Callable[[Any], Any]) -> Any:
        try:
            return converter(data[kohya_key])
        except ValueError as error:
            raise LoradeckError(f"{where}{kohya_key}: {error}") from None

    for key in data:
        if key in SIMPLE_KEYS:
            target, converter = SIMPLE_KEYS[key]
            put(target, convert(key, converter))
        elif key not in SPECIAL_KEYS:
            ignored.append(key)

    if _flag(data.get("sdxl", False)) is True:
        put("model.family", "sdxl")
        if _flag(data.get("sdxl_cache_text_encoder_outputs", False)) is True:
            put("precision.cache_text_encoder_outputs", True)
        if _flag(data.get("sdxl_no_half_vae", False)) is True:
            notes.append("sdxl_no_half_vae: loradeck always runs SDXL's VAE in fp32 under fp16 "
                         "(under bf16 it cannot overflow)")
    if "max_resolution" in data:
        value = _text(data["max_resolution"])
        if value is not _UNSET:
            put("dataset.resolution", value.replace(" ", ""))
    if "max_train_epochs" in data:
        epochs = convert("max_train_epochs", _integer)
        if epochs is not _UNSET and epochs > 0:
            put("training.epochs", epochs)  # max_train_epochs overrides epoch, as in sd-scripts
    attention = data.get("xformers", data.get("sdpa"))
    if attention is not None:
        text = str(attention).strip().lower()
        put("precision.attention", "xformers" if text in ("xformers", "true") else "sdpa")
    if "cache_latents" in data:
        cache = convert("cache_latents", _flag)
        to_disk = _flag(data.get("cache_latents_to_disk", False))
        if cache is not _UNSET:
            put("precision.cache_latents", ("disk" if to_disk is True else "memory") if cache else "none")
    if "optimizer" in data:
        optimizer = _text(data["optimizer"])
        if optimizer is not _UNSET:
            match = {name.lower(): name for name in OPTIMIZERS}.get(optimizer.lower())
            if match is None:
                raise LoradeckError(
                    f"{where}optimizer {optimizer!r} is not supported; loradeck trains with {', '.join(OPTIMIZERS)}"
                )
            put("optimizer.optimizer", match)
    if "lr_scheduler" in data:
        scheduler = _text(data["lr_scheduler"])
        if scheduler is not _UNSET:
            if scheduler not in SCHEDULERS:
                raise LoradeckError(f"{where}lr_scheduler {scheduler!r} is not supported; use one of {', '.join(SCHEDULERS)}")
            put("optimizer.lr_scheduler", scheduler)
    if "lr_warmup" in data:
        percent = convert("lr_warmup", _number)
        if percent is not _UNSET and percent > 0 and not settings.get("optimizer", {}).get("lr_warmup_steps"):
            put("optimizer.lr_warmup_percent", percent)
    if "sample_sampler" in data:
        sampler = _text(data["sample_sampler"])
        if sampler is not _UNSET:
            ours = normalize_sampler(sampler)
            if ours is None:
                notes.append(f"sample_sampler {sampler!r} has no equivalent; using euler_a")
            else:
                put("sampling.sampler", ours)
    # the GUI (and sd-scripts) read a zero rate for one model, beside a rate for the other, as
    # "do not train this one" rather than "use the learning rate"
    unet_rate = convert("unet_lr", _number) if "unet_lr" in data else _UNSET
    text_rate = convert("text_encoder_lr", _number) if "text_encoder_lr" in data else _UNSET
    if text_rate == 0 and unet_rate is not _UNSET and unet_rate > 0:
        put("network.train_text_encoder", False)
        notes.append("text_encoder_lr is 0 with unet_lr set: training the U-Net only, as the GUI does")
    if unet_rate == 0 and text_rate is not _UNSET and text_rate > 0:
        put("network.train_unet", False)
        notes.append("unet_lr is 0 with text_encoder_lr set: training the text encoder only, as the GUI does")
    if _flag(data.get("network_train_unet_only", False)) is True:
        put("network.train_text_encoder", False)
    if _flag(data.get("network_train_text_encoder_only", False)) is True:
        put("network.train_unet", False)

    settings["version"] = CONFIG_VERSION  # type: ignore[assignment]
    try:
        config = config_from_dict(settings, source)
    except ConfigError as error:
        raise LoradeckError(f"{where}after import, {error.field}: {error.reason}") from None

    stop_key = "stop_text_encoder_training_pct" if "stop_text_encoder_training_pct" in data else "stop_text_encoder_training"
    if stop_key in data:
        percent = convert(stop_key, _number)
        if percent is not _UNSET and percent > 0:
            config = _stop_text_encoder_from_percent(config, percent, dataset_base, notes)
    return KohyaImport(config=config, ignored=sorted(ignored), notes=notes)


def _stop_text_encoder_from_percent(config: TrainConfig, percent: float, base, notes: list[str]) -> TrainConfig:
    """The GUI stores a percentage of the total steps; we store a step, so plan the run."""
    from engine.plan.training_plan import make_plan

    try:
        total = make_plan(config, base).total_steps
    except LoradeckError as error:
        notes.append(f"stop_text_encoder_training {percent:g}% not converted: {error}")
        return config
    step = math.ceil(total * percent / 100)
    notes.append(f"stop_text_encoder_training {percent:g}% of {total} steps = step {step}")
    return replace_setting(config, "training.stop_text_encoder_training", step)
