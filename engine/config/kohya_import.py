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
    BUCKET_STEPS,
    CONFIG_VERSION,
    OPTIMIZERS,
    SCHEDULERS,
    RANDOM_SEED,
    NetworkSettings,
    TrainConfig,
    field_spec,
    schema,
    config_from_dict,
    config_to_dict,
    parse_resolution,
    replace_setting,
)
from engine.errors import ConfigError, LoradeckError
from engine.config.prompts import normalize_sampler
from engine.model.families import FAMILIES

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
    "v_parameterization": ("model.v_parameterization", _flag),
    "clip_skip": ("model.clip_skip", _integer),
    "train_data_dir": ("dataset.image_dir", _text),
    "reg_data_dir": ("dataset.reg_dir", _text),
    "dataset_config": ("dataset.dataset_config", _text),
    "enable_bucket": ("dataset.enable_buckets", _flag),
    "min_bucket_reso": ("dataset.min_bucket_resolution", _integer),
    "max_bucket_reso": ("dataset.max_bucket_resolution", _integer),
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
    "adaptive_noise_scale": ("training.adaptive_noise_scale", _number),
    "multires_noise_iterations": ("training.multires_noise_iterations", _integer),
    "multires_noise_discount": ("training.multires_noise_discount", _number),
    "ip_noise_gamma": ("training.ip_noise_gamma", _number),
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


# the GUI keeps the settings of both noise types and passes sd-scripts those of the chosen one
NOISE_TYPE_KEYS = {
    "original": ("noise_offset", "adaptive_noise_scale"),
    "multires": ("multires_noise_iterations", "multires_noise_discount"),
}

# the GUI's LoRA_type -> our network.type (a LyCORIS/LoCon with dora_wd is DoRA)
NETWORK_TYPES = {"standard": "lora", "": "lora", "kohya locon": "locon", "lycoris/locon": "locon",
                 "lycoris/loha": "loha", "lycoris/lokr": "lokr", "flux1": "lora"}
GUI_NETWORK_TYPES = "Standard, Flux1, Kohya LoCon, LyCORIS/LoCon, LyCORIS/LoHa and LyCORIS/LoKr (dora_wd: DoRA)"

# network settings the GUI keeps for every type and passes sd-scripts only for the ones
# that use them: mapped where our type uses them, noted when set for one that does not
NETWORK_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "conv_dim": ("network.conv_dim", _integer),
    "conv_alpha": ("network.conv_alpha", _number),
    "factor": ("network.factor", _integer),
    "use_cp": ("network.use_tucker", _flag),
    "use_tucker": ("network.use_tucker", _flag),
    "network_dropout": ("network.network_dropout", _number),
    "rank_dropout": ("network.rank_dropout", _number),
    "module_dropout": ("network.module_dropout", _number),
    "lora_network_weights": ("network.network_weights", _text),
}
# LyCORIS options loradeck does not build: noted when set to something but their default
LYCORIS_OPTIONS = {"decompose_both": False, "use_scalar": False, "rank_dropout_scale": False, "constrain": 0,
                   "rescaled": False, "train_norm": False, "bypass_mode": False}

# keys handled by hand below
# each family's GUI keys (engine.model.family: kohya_flags, kohya_settings, kohya_notes)
FAMILY_KEYS = {key for family in FAMILIES
               for key in (*family.kohya_flags, *family.kohya_settings, *family.kohya_notes, *family.kohya_values)}
SPECIAL_KEYS = {
    "LoRA_type", "max_resolution", "xformers", "cache_latents", "cache_latents_to_disk",
    "optimizer", "lr_scheduler", "lr_warmup", "stop_text_encoder_training",
    "stop_text_encoder_training_pct", "max_train_epochs", "sample_sampler",
    "network_train_unet_only", "network_train_text_encoder_only", "sdpa", "mem_eff_attn", "noise_offset_type",
    *FAMILY_KEYS, "dora_wd", "LyCORIS_preset", "bucket_reso_steps", *NETWORK_KEYS, *LYCORIS_OPTIONS,
}


VALUE_CONVERTERS = {str: _text, int: _integer, float: _number, bool: _flag}

# the keys only the GUI's LoRA tab writes; a config without any came from another tab
LORA_KEYS = ("LoRA_type", "network_dim", "network_alpha")


@dataclass
class KohyaImport:
    """The imported config and the report `loradeck import-kohya` prints: `mapped` as
    (Kohya key, loradeck setting) pairs, `notes` what was changed and why, `ignored` the
    Kohya keys loradeck has no use for."""

    config: TrainConfig
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    mapped: list[tuple[str, str]] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)  # Kohya keys left empty: loradeck's default kept

    def report(self) -> list[str]:
        """What was mapped (with the value it got), changed and why, and ignored; one line each."""
        values = config_to_dict(self.config)
        lines = [f"mapped {len(self.mapped)} keys:"]
        for kohya_key, setting in self.mapped:
            group, name = setting.split(".")
            lines.append(f"  {kohya_key} -> {setting} = {values.get(group, {}).get(name, '(unset)')!r}")
        if self.empty:
            lines.append(f"kept loradeck's default for {len(self.empty)} empty keys: {', '.join(self.empty)}")
        lines.append(f"changed {len(self.notes)}:" if self.notes else "changed nothing")
        lines += [f"  {note}" for note in self.notes]
        lines.append(f"ignored {len(self.ignored)} keys: {', '.join(self.ignored)}" if self.ignored
                     else "ignored nothing")
        return lines


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
    if network_type.lower() not in NETWORK_TYPES:
        raise LoradeckError(
            f"{where}LoRA_type {network_type!r} cannot be trained by loradeck (it trains {GUI_NETWORK_TYPES}); "
            "choose one of those in the Kohya GUI or train it there"
        )
    settings: dict[str, dict[str, Any]] = {}
    ignored: list[str] = []
    notes: list[str] = []
    mapped: dict[str, str] = {}  # our setting -> the Kohya key it came from (the last one wins)

    empty: list[str] = []

    def put(key: str, value: Any, kohya_key: str) -> None:
        if value is _UNSET:
            empty.append(kohya_key)
            return
        group, name = key.split(".")
        settings.setdefault(group, {})[name] = value
        mapped.pop(key, None)
        mapped[key] = kohya_key

    def convert(kohya_key: str, converter: Callable[[Any], Any]) -> Any:
        try:
            return converter(data[kohya_key])
        except ValueError as error:
            raise LoradeckError(f"{where}{kohya_key}: {error}") from None

    noise_type = str(data.get("noise_offset_type", "Original") or "Original").strip().lower()
    if noise_type not in NOISE_TYPE_KEYS:
        raise LoradeckError(f"{where}noise_offset_type {data['noise_offset_type']!r} is not Original or Multires")
    unused_noise = {key for kind, keys in NOISE_TYPE_KEYS.items() if kind != noise_type for key in keys}
    for key in data:
        if key in unused_noise:
            if convert(key, _number) not in (_UNSET, 0):
                notes.append(f"{key} not used: noise_offset_type is {noise_type.title()}, as in the GUI")
            continue
        if key in SIMPLE_KEYS:
            target, converter = SIMPLE_KEYS[key]
            put(target, convert(key, converter), key)
        elif key not in SPECIAL_KEYS:
            ignored.append(key)

    if "bucket_reso_steps" in data:
        step = convert("bucket_reso_steps", _integer)
        if step is not _UNSET and step not in BUCKET_STEPS:
            notes.append(f"bucket_reso_steps {step} -> 64: loradeck's bucket step is one of "
                         f"{', '.join(map(str, BUCKET_STEPS))} (64 is sd-scripts' default)")
            step = 64
        put("dataset.bucket_step", step, "bucket_reso_steps")
    chosen: set[str] = set()  # GUI keys of the families the config selects
    for family in FAMILIES:  # the GUI's model checkboxes ("v2", "sdxl", "flux1_checkbox"), each family's own
        flag = next((key for key in family.kohya_flags if _flag(data.get(key, False)) is True), None)
        if flag is None:
            continue
        put("model.family", family.name, flag)
        for key, setting in family.kohya_settings.items():
            if _flag(data.get(key, False)) is True:
                put(setting, True, key)
        for key, setting in family.kohya_values.items():
            if key in data:
                put(setting, convert(key, VALUE_CONVERTERS[field_spec(setting).type]), key)
        chosen |= {*family.kohya_settings, *family.kohya_values, *family.kohya_notes}
        notes.extend(note for key, note in family.kohya_notes.items() if _flag(data.get(key, False)) is True)
    # another family's settings (the GUI writes every tab's): not this config's
    ignored += [key for key in data if key in FAMILY_KEYS and key not in chosen
                and not any(key in family.kohya_flags for family in FAMILIES)]
    if "max_resolution" in data:
        value = _text(data["max_resolution"])
        if value is not _UNSET:
            put("dataset.resolution", _resolution(value.replace(" ", ""), data, notes), "max_resolution")
    if "max_train_epochs" in data:
        epochs = convert("max_train_epochs", _integer)
        if epochs is not _UNSET and epochs > 0:
            put("training.epochs", epochs, "max_train_epochs")  # max_train_epochs overrides epoch, as in sd-scripts
    attention = data.get("xformers", data.get("sdpa"))
    if attention is not None:
        text = str(attention).strip().lower()
        put("precision.attention", "xformers" if text in ("xformers", "true") else "sdpa",
            "xformers" if "xformers" in data else "sdpa")
    if "cache_latents" in data:
        cache = convert("cache_latents", _flag)
        to_disk = _flag(data.get("cache_latents_to_disk", False))
        if cache is not _UNSET:
            put("precision.cache_latents", ("disk" if to_disk is True else "memory") if cache else "none",
                "cache_latents")
    if "optimizer" in data:
        optimizer = _text(data["optimizer"])
        if optimizer is not _UNSET:
            match = {name.lower(): name for name in OPTIMIZERS}.get(optimizer.lower())
            if match is None:
                raise LoradeckError(
                    f"{where}optimizer {optimizer!r} is not supported; loradeck trains with {', '.join(OPTIMIZERS)}"
                )
            put("optimizer.optimizer", match, "optimizer")
    if "lr_scheduler" in data:
        scheduler = _text(data["lr_scheduler"])
        if scheduler is not _UNSET:
            if scheduler not in SCHEDULERS:
                raise LoradeckError(f"{where}lr_scheduler {scheduler!r} is not supported; use one of {', '.join(SCHEDULERS)}")
            put("optimizer.lr_scheduler", scheduler, "lr_scheduler")
    if "lr_warmup" in data:
        percent = convert("lr_warmup", _number)
        if percent is not _UNSET and percent > 0 and not settings.get("optimizer", {}).get("lr_warmup_steps"):
            put("optimizer.lr_warmup_percent", percent, "lr_warmup")
    if "sample_sampler" in data:
        sampler = _text(data["sample_sampler"])
        if sampler is not _UNSET:
            ours = normalize_sampler(sampler)
            if ours is None:
                notes.append(f"sample_sampler {sampler!r} has no equivalent; using euler_a")
            else:
                put("sampling.sampler", ours, "sample_sampler")
    # the GUI (and sd-scripts) read a zero rate for one model, beside a rate for the other, as
    # "do not train this one" rather than "use the learning rate"
    unet_rate = convert("unet_lr", _number) if "unet_lr" in data else _UNSET
    text_rate = convert("text_encoder_lr", _number) if "text_encoder_lr" in data else _UNSET
    if text_rate == 0 and unet_rate is not _UNSET and unet_rate > 0:
        put("network.train_text_encoder", False, "text_encoder_lr")
        notes.append("text_encoder_lr is 0 with unet_lr set: training the U-Net only, as the GUI does")
    if unet_rate == 0 and text_rate is not _UNSET and text_rate > 0:
        put("network.train_unet", False, "unet_lr")
        notes.append("unet_lr is 0 with text_encoder_lr set: training the text encoder only, as the GUI does")
    if _flag(data.get("network_train_unet_only", False)) is True:
        put("network.train_text_encoder", False, "network_train_unet_only")
    if _flag(data.get("network_train_text_encoder_only", False)) is True:
        put("network.train_unet", False, "network_train_text_encoder_only")
    _network_settings(data, network_type, put, convert, notes)
    toml_setting = settings.get("dataset", {}).get("dataset_config")
    if toml_setting:
        _settings_from_dataset_toml(Path(dataset_base) / Path(toml_setting).expanduser(), put, notes)
    if settings.get("training", {}).get("seed") == 0:
        put("training.seed", RANDOM_SEED, "seed")
        notes.append("seed 0 means a random seed in the GUI: training.seed = -1, drawn when the run starts "
                     "and written into the run's config.toml and run_start event")
    if not any(key in data for key in LORA_KEYS):
        defaults = NetworkSettings()
        notes.append(
            f"no LoRA settings ({', '.join(LORA_KEYS)}): a DreamBooth or fine-tuning tab config? "
            f"loradeck trains a LoRA of rank {defaults.rank} / alpha {defaults.alpha:g} (its defaults)"
        )

    settings["version"] = CONFIG_VERSION  # type: ignore[assignment]
    try:
        config = config_from_dict(settings, source)
    except ConfigError as error:
        raise LoradeckError(f"{where}after import, {error.field}: {error.reason}") from None

    stop_key = "stop_text_encoder_training_pct" if "stop_text_encoder_training_pct" in data else "stop_text_encoder_training"
    if stop_key in data:
        percent = convert(stop_key, _number)
        if percent is not _UNSET and percent > 0:
            converted = _stop_text_encoder_from_percent(config, percent, dataset_base, notes)
            if converted != config:
                mapped["training.stop_text_encoder_training"] = stop_key
            config = converted
    return KohyaImport(config=config, ignored=sorted(ignored), notes=notes,
                       mapped=[(kohya_key, setting) for setting, kohya_key in mapped.items()],
                       empty=sorted(set(empty)))


def _network_settings(data: dict[str, Any], gui_type: str, put, convert, notes: list[str]) -> None:
    """network.type from LoRA_type (and dora_wd), and the type's own settings."""
    kind = NETWORK_TYPES[gui_type.lower()]
    dora = _flag(data.get("dora_wd", False)) is True
    if dora and kind == "locon" and gui_type.lower().startswith("lycoris"):
        kind = "dora"
    elif dora:
        notes.append(f"dora_wd not used: loradeck builds DoRA on LyCORIS/LoCon only, not {gui_type or 'Standard'}")
    if kind != "lora":
        put("network.type", kind, "LoRA_type" if kind != "dora" else "LoRA_type + dora_wd")
    fields = {field.key: field for field in schema()}
    tucker_on = False  # use_cp and use_tucker both mean it; either one on turns it on
    for key, (setting, converter) in NETWORK_KEYS.items():
        if key not in data:
            continue
        value = convert(key, converter)
        if fields[setting].applies_to(kind):
            if setting == "network.use_tucker":
                if tucker_on:
                    continue
                tucker_on = value is True
            put(setting, value, key)
        elif value not in (_UNSET, 0, False, -1, ""):
            notes.append(f"{key} {data[key]!r} not used: {kind} has no {setting}")
    preset = _text(data.get("LyCORIS_preset", ""))
    if kind in ("loha", "lokr", "dora") and preset not in (_UNSET, "full"):
        notes.append(f"LyCORIS_preset {preset!r} not built: loradeck adapts attention, feed-forward and ResNet "
                     "layers (LyCORIS' full preset)")
    for key, default in LYCORIS_OPTIONS.items():
        if key in data and data[key] not in (default, "", None, str(default)):
            notes.append(f"{key} {data[key]!r} not used: loradeck builds {kind} without it")


def _settings_from_dataset_toml(path: Path, put, notes: list[str]) -> None:
    """sd-scripts takes the images, and the batch size, resolution, bucket, caption and
    augmentation settings, from the dataset TOML when there is one; so does the import."""
    from engine.dataset.kohya_toml import RUN_SETTINGS, read_dataset_toml

    try:
        toml = read_dataset_toml(path)
    except LoradeckError as error:
        notes.append(f"dataset_config not read, its settings not copied: {error}")
        return
    toml_keys = {setting: key for key, setting in RUN_SETTINGS.items()}
    for setting, value in toml.settings.items():
        put(setting, value, f"dataset_config {toml_keys[setting]}")
    images = sum(1 for subset in toml.subsets if not subset.is_reg)
    notes.append(f"dataset_config {path.name}: {len(toml.subsets)} subsets ({images} of training images) define "
                 "the images, not train_data_dir / reg_data_dir"
                 + (f"; copied {', '.join(toml_keys[s] for s in toml.settings)} from it" if toml.settings else ""))


def _resolution(text: str, data: dict[str, Any], notes: list[str]) -> str:
    """Without buckets the resolution is the training size, whose sides the VAE needs in
    multiples of 8: snap to the nearest ones (the GUI's own `512,650` preset) and say so."""
    if _flag(data.get("enable_bucket", True)) is not False:
        return text
    try:
        width, height = parse_resolution(text)
    except ValueError:
        return text  # the schema names the problem
    snapped = tuple(max(8, round(side / 8) * 8) for side in (width, height))
    if snapped == (width, height):
        return text
    result = f"{snapped[0]},{snapped[1]}"
    notes.append(f"max_resolution {text} -> {result}: with buckets off the sides must be multiples of 8 "
                 "(snapped to the nearest)")
    return result


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
