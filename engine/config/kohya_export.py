"""A loradeck config as a Kohya GUI JSON config and as the sd-scripts command line it runs,
so a run can be checked or reproduced in Kohya: `loradeck export-kohya CONFIG`.

The JSON is the GUI's LoRA tab as engine.config.kohya_import reads it, so import → export →
import gives the same config. It says what the GUI passes sd-scripts, not only what we
store: a max grad norm of 0 goes into additional_parameters (the GUI drops zeros), the step
count is max_train_epochs (sd-scripts' per-bucket count, as loradeck's), max_train_steps, or
0 for the GUI's own count (training.gui_step_count). What neither can express is listed in
`notes`. The command line is sd-scripts' (`accelerate launch train_network.py`,
`sdxl_train_network.py` or `flux_train_network.py`: the family's `kohya_script`) with the
arguments the GUI would write into its config TOML.

Light module: standard library only.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config.network_types import LYCORIS_ALGOS, NetworkSpec
from engine.config.schema import RANDOM_SEED, TrainConfig, parse_resolution, resolve_path
from engine.model.families import FAMILIES, config_family

# our network.type -> the GUI's LoRA_type
GUI_TYPES = {"lora": "Standard", "locon": "Kohya LoCon", "loha": "LyCORIS/LoHa", "lokr": "LyCORIS/LoKr",
             "dora": "LyCORIS/LoCon", "ia3": "LyCORIS/iA3", "diag-oft": "LyCORIS/Diag-OFT",
             "dylora": "LyCORIS/DyLoRA", "glora": "LyCORIS/GLoRA"}
# our sampler -> sd-scripts' sample_sampler
SD_SCRIPTS_SAMPLERS = {"euler_a": "euler_a", "euler": "euler", "ddim": "ddim", "pndm": "pndm",
                       "dpm++_2m": "dpmsolver++", "dpm++_2m_karras": "dpmsolver++"}
PROMPTS_FILE = "prompt.txt"


@dataclass
class KohyaExport:
    gui: dict[str, Any]  # the GUI's JSON
    command: list[str]  # accelerate launch ... train_network.py --arg=value ...
    notes: list[str] = field(default_factory=list)

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)


def _path(value: str, base_dir: Path) -> str:
    """A path setting as the GUI needs it: absolute when it exists beside the config."""
    resolved = resolve_path(base_dir, value)
    try:
        return str(resolved.resolve()) if resolved is not None and resolved.exists() else value
    except (OSError, ValueError, RuntimeError):
        return value


def export_kohya(config: TrainConfig, base_dir: str | Path, prompts_file: str = PROMPTS_FILE) -> KohyaExport:
    """The GUI JSON and the sd-scripts command line of `config` (paths read from `base_dir`);
    `prompts_file` is where the command line expects the sample prompts."""
    base_dir = Path(base_dir)
    notes: list[str] = []
    model, data, caps, aug = config.model, config.dataset, config.captions, config.augmentation
    net, opt, train, precision = config.network, config.optimizer, config.training, config.precision
    sampling, saving, meta = config.sampling, config.saving, config.metadata
    family = config_family(config, base_dir)
    spec = NetworkSpec.of(config)
    width, height = parse_resolution(data.resolution)

    gui: dict[str, Any] = {
        "LoRA_type": family.kohya_lora_type if net.type == "lora" and family.kohya_lora_type else GUI_TYPES[net.type],
        # the GUI's model checkboxes: the family's own on, every other family's off
        **{flag: flag in family.kohya_flags for other in FAMILIES for flag in other.kohya_flags},
        "pretrained_model_name_or_path": _path(model.pretrained_model, base_dir),
        "vae": _path(model.vae, base_dir),
        "v_parameterization": model.v_parameterization, "clip_skip": model.clip_skip,
        "train_data_dir": "" if data.dataset_config else _path(data.image_dir, base_dir),
        "reg_data_dir": "" if data.dataset_config else _path(data.reg_dir, base_dir),
        "dataset_config": _path(data.dataset_config, base_dir),
        "max_resolution": f"{width},{height}", "enable_bucket": data.enable_buckets,
        "min_bucket_reso": data.min_bucket_resolution, "max_bucket_reso": data.max_bucket_resolution,
        "bucket_reso_steps": data.bucket_step, "bucket_no_upscale": data.bucket_no_upscale,
        "caption_extension": caps.caption_extension, "shuffle_caption": caps.shuffle_caption,
        "keep_tokens": caps.keep_tokens, "caption_dropout_rate": caps.caption_dropout_rate,
        "caption_tag_dropout_rate": caps.caption_tag_dropout_rate,
        "caption_dropout_every_n_epochs": caps.caption_dropout_every_n_epochs,
        "keep_tokens_separator": caps.keep_tokens_separator,
        "weighted_captions": caps.weighted_captions, "max_token_length": caps.max_token_length,
        "flip_aug": aug.flip, "color_aug": aug.color, "random_crop": aug.random_crop,
        "network_dim": net.rank, "network_alpha": net.alpha, "conv_dim": spec.conv_dim, "conv_alpha": spec.conv_alpha,
        "factor": spec.factor, "use_tucker": spec.use_tucker, "use_cp": spec.use_tucker and net.type == "lokr",
        "network_dropout": spec.network_dropout, "rank_dropout": spec.rank_dropout,
        "module_dropout": spec.module_dropout, "dora_wd": net.type == "dora", "train_on_input": spec.train_on_input,
        "scale_weight_norms": net.scale_weight_norms, "unit": spec.block_size, "constrain": spec.constraint, "rescaled": spec.rescaled, "LyCORIS_preset": "full",
        "lora_network_weights": _path(net.network_weights, base_dir),
        "network_train_unet_only": not net.train_text_encoder, "network_train_text_encoder_only": not net.train_unet,
        "optimizer": opt.optimizer, "optimizer_args": opt.optimizer_args, "learning_rate": opt.learning_rate,
        "unet_lr": opt.unet_lr or "", "text_encoder_lr": opt.text_encoder_lr or "",
        "lr_scheduler": opt.lr_scheduler, "lr_scheduler_num_cycles": opt.lr_scheduler_num_cycles,
        "lr_scheduler_power": opt.lr_scheduler_power, "lr_warmup": opt.lr_warmup_percent,
        "lr_warmup_steps": opt.lr_warmup_steps, "lr_scheduler_type": opt.lr_scheduler_type,
        "lr_scheduler_args": opt.lr_scheduler_args, "max_grad_norm": opt.max_grad_norm,
        "train_batch_size": train.batch_size, "epoch": train.epochs,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "num_processes": train.processes, "multi_gpu": train.processes > 1,  # the GUI's accelerate launch
        "seed": 0 if train.seed == RANDOM_SEED else train.seed,
        "noise_offset_type": "Multires" if train.multires_noise_iterations else "Original",
        "noise_offset": train.noise_offset, "adaptive_noise_scale": train.adaptive_noise_scale,
        "multires_noise_iterations": train.multires_noise_iterations,
        "multires_noise_discount": train.multires_noise_discount, "ip_noise_gamma": train.ip_noise_gamma,
        "min_snr_gamma": train.min_snr_gamma, "noise_offset_random_strength": train.noise_offset_random_strength,
        "ip_noise_gamma_random_strength": train.ip_noise_gamma_random_strength,
        "debiased_estimation_loss": train.debiased_estimation_loss, "min_timestep": train.min_timestep,
        "max_timestep": train.max_timestep, "loss_type": train.loss_type, "huber_c": train.huber_c,
        "huber_schedule": train.huber_schedule, "huber_scale": train.huber_scale, "masked_loss": train.masked_loss,
        "mixed_precision": precision.mixed_precision,
        "save_precision": precision.save_precision, "gradient_checkpointing": precision.gradient_checkpointing,
        "xformers": precision.attention, "cache_latents": precision.cache_latents != "none",
        "cache_latents_to_disk": precision.cache_latents == "disk",
        **{key: precision.cache_text_encoder_outputs for key, setting in family.kohya_settings.items()
           if setting == "precision.cache_text_encoder_outputs"},
        "max_data_loader_n_workers": precision.dataloader_workers,
        "sample_prompts": sampling.prompts, "sample_every_n_epochs": sampling.every_n_epochs,
        "sample_every_n_steps": sampling.every_n_steps,
        "sample_sampler": SD_SCRIPTS_SAMPLERS[sampling.sampler],
        "output_dir": _path(saving.output_dir, base_dir), "output_name": saving.output_name,
        "save_every_n_epochs": saving.save_every_n_epochs, "save_every_n_steps": saving.save_every_n_steps,
        "save_last_n_epochs": saving.save_last_n, "save_state": saving.save_state, "save_model_as": "safetensors",
        "training_comment": meta.training_comment, "metadata_title": meta.title, "metadata_author": meta.author,
        "metadata_description": meta.description, "metadata_license": meta.license, "metadata_tags": meta.tags,
        "metadata_trigger_phrase": meta.trigger_phrase, "metadata_usage_hint": meta.usage_hint,
        "stop_text_encoder_training": 0, "additional_parameters": "",
    }
    gui.update(_family_values(config, family, base_dir))
    _steps(config, gui)
    # what the GUI has no field for goes on sd-scripts' command line after its config
    gui["additional_parameters"] = " ".join(
        [*(["--max_grad_norm=0"] if opt.max_grad_norm == 0 else []),  # the GUI drops zeros: sd-scripts clips at 1.0
         *(["--alpha_mask"] if data.alpha_mask else [])])
    _notes(config, notes)
    if net.type == "dora" and net.dora_layout == "input":
        notes.append("network.dora_layout input: the GUI has no setting for it and trains DoRA per output; the "
                     "command line passes wd_on_output=False")
    return KohyaExport(gui, _command(config, gui, spec, family, prompts_file, base_dir), notes)


def _family_values(config: TrainConfig, family, base_dir: Path) -> dict[str, Any]:
    """The family's own GUI keys (engine.model.family: kohya_values), read back from the config."""
    values = {}
    for key, setting in family.kohya_values.items():
        group, name = setting.split(".")
        value = getattr(getattr(config, group), name)
        values[key] = _path(value, base_dir) if group == "model" else value
    return values


def _steps(config: TrainConfig, gui: dict[str, Any]) -> None:
    """How long sd-scripts trains: the GUI's own count, a step count, or a number of epochs."""
    train = config.training
    if train.max_steps:
        gui.update(max_train_steps=train.max_steps, max_train_epochs=0)
    elif train.gui_step_count:
        gui.update(max_train_steps=0, max_train_epochs=0)
    else:  # sd-scripts' max_train_epochs counts per bucket, as loradeck does
        gui.update(max_train_steps=0, max_train_epochs=train.epochs)


def _notes(config: TrainConfig, notes: list[str]) -> None:
    if config.training.stop_text_encoder_training:
        notes.append(f"training.stop_text_encoder_training {config.training.stop_text_encoder_training}: the GUI's "
                     "LoRA tab does not pass it, and sd-scripts' train_network.py has no such option")
    if config.validation.enabled:
        notes.append("validation: not exported (sd-scripts' validation_split holds out differently)")
    if config.sampling.prompts_file:
        notes.append(f"sampling.prompts_file {config.sampling.prompts_file}: give it to the GUI as sample prompts")
    if config.dataset.dataset_config and config.dataset.dataset_config_base:
        notes.append(f"the dataset TOML's relative image_dir paths start from {config.dataset.dataset_config_base}: "
                     "start the GUI (or sd-scripts) there")
    if config.network.type == "ia3":
        notes.append("LyCORIS/iA3: the GUI's pinned LyCORIS (3.2.0.post2) builds no ia3 network (KeyError 'ia3')")
    if config.sampling.sampler == "dpm++_2m_karras":
        notes.append("sampling.sampler dpm++_2m_karras: sd-scripts has no Karras sigmas; its dpmsolver++ is used")


def _network_args(spec: NetworkSpec) -> list[str]:
    """network_args as lora_gui.py builds them (key=value), for sd-scripts' networks.lora or lycoris.kohya."""
    t5 = ["train_t5xxl=True"] if spec.train_t5xxl and spec.train_text_encoder else []  # Flux.1 (networks.lora_flux)
    if spec.type in ("lora", "locon"):
        args = [f"conv_dim={spec.conv_dim}", f"conv_alpha={spec.conv_alpha:g}"] if spec.type == "locon" else []
        return args + t5 + [f"{name}={getattr(spec, name):g}" for name in ("rank_dropout", "module_dropout")
                            if getattr(spec, name)]
    args = ["preset=full", f"algo={LYCORIS_ALGOS[spec.type]}", f"conv_dim={spec.conv_dim}",
            f"conv_alpha={spec.conv_alpha:g}"]
    extra = {"lokr": {"factor": spec.factor}, "dora": {"dora_wd": True, "wd_on_output": spec.dora_layout == "output"},
             "ia3": {"train_on_input": spec.train_on_input}, "dylora": {"block_size": spec.block_size},
             "diag-oft": {"constraint": spec.constraint, "rescaled": spec.rescaled}}.get(spec.type, {})
    if spec.use_tucker:
        extra["use_tucker"] = True
    for name in ("rank_dropout", "module_dropout"):
        if getattr(spec, name):
            extra[name] = getattr(spec, name)
    return args + [f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}" for key, value in extra.items()]


def _command(config: TrainConfig, gui: dict[str, Any], spec: NetworkSpec, family, prompts_file: str,
             base_dir: Path) -> list[str]:
    """accelerate launch ... with the arguments the GUI writes into sd-scripts' config TOML."""
    opt, train = config.optimizer, config.training
    arguments: dict[str, Any] = {
        "pretrained_model_name_or_path": gui["pretrained_model_name_or_path"], "vae": gui["vae"],
        "v2": gui.get("v2", False), "v_parameterization": gui["v_parameterization"],
        "clip_skip": config.model.clip_skip if config.model.clip_skip != 1 else None,
        "train_data_dir": gui["train_data_dir"], "reg_data_dir": gui["reg_data_dir"],
        "dataset_config": gui["dataset_config"], "resolution": gui["max_resolution"],
        "enable_bucket": gui["enable_bucket"], "min_bucket_reso": gui["min_bucket_reso"],
        "max_bucket_reso": gui["max_bucket_reso"], "bucket_reso_steps": gui["bucket_reso_steps"],
        "bucket_no_upscale": gui["bucket_no_upscale"], "caption_extension": gui["caption_extension"],
        "shuffle_caption": gui["shuffle_caption"], "keep_tokens": gui["keep_tokens"],
        "caption_dropout_rate": gui["caption_dropout_rate"], "weighted_captions": gui["weighted_captions"],
        "caption_tag_dropout_rate": gui["caption_tag_dropout_rate"] or None,
        "caption_dropout_every_n_epochs": gui["caption_dropout_every_n_epochs"] or None,
        "keep_tokens_separator": gui["keep_tokens_separator"],
        "max_token_length": gui["max_token_length"] if gui["max_token_length"] != 75 else None,
        "flip_aug": gui["flip_aug"], "color_aug": gui["color_aug"], "random_crop": gui["random_crop"],
        "network_module": (family.kohya_lora_module or "networks.lora") if spec.type == "lora" else
        "networks.lora" if spec.type == "locon" else "lycoris.kohya",
        "network_dim": spec.rank, "network_alpha": spec.alpha, "network_dropout": spec.network_dropout or None,
        "scale_weight_norms": config.network.scale_weight_norms or None,
        "network_args": _network_args(spec), "network_weights": gui["lora_network_weights"],
        "network_train_unet_only": gui["network_train_unet_only"],
        "network_train_text_encoder_only": gui["network_train_text_encoder_only"],
        # as lora_gui.py passes them: quotes dropped, split on spaces
        "optimizer_type": opt.optimizer, "optimizer_args": opt.optimizer_args.replace('"', "").split() or None,
        "learning_rate": opt.learning_rate, "unet_lr": opt.unet_lr, "text_encoder_lr": opt.text_encoder_lr,
        "lr_scheduler": opt.lr_scheduler, "lr_scheduler_num_cycles": opt.lr_scheduler_num_cycles,
        "lr_scheduler_power": opt.lr_scheduler_power, "lr_scheduler_type": opt.lr_scheduler_type or None,
        "lr_scheduler_args": opt.lr_scheduler_args.replace('"', "").split() or None,
        "lr_warmup_steps": opt.lr_warmup_steps or (opt.lr_warmup_percent / 100 if opt.lr_warmup_percent else None),
        "max_grad_norm": opt.max_grad_norm, "train_batch_size": train.batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "seed": None if train.seed == RANDOM_SEED else train.seed,
        "noise_offset": train.noise_offset or None, "adaptive_noise_scale": train.adaptive_noise_scale or None,
        "multires_noise_iterations": train.multires_noise_iterations or None,
        "multires_noise_discount": train.multires_noise_discount if train.multires_noise_iterations else None,
        "ip_noise_gamma": train.ip_noise_gamma or None, "min_snr_gamma": train.min_snr_gamma or None,
        "noise_offset_random_strength": train.noise_offset_random_strength and bool(train.noise_offset),
        "ip_noise_gamma_random_strength": train.ip_noise_gamma_random_strength and bool(train.ip_noise_gamma),
        "debiased_estimation_loss": train.debiased_estimation_loss,
        "min_timestep": train.min_timestep or None,
        "max_timestep": train.max_timestep if train.max_timestep != 1000 else None,
        "loss_type": train.loss_type if train.loss_type != "l2" else None,
        "huber_c": train.huber_c if train.loss_type in ("huber", "smooth_l1") else None,
        "huber_schedule": train.huber_schedule if train.loss_type in ("huber", "smooth_l1") else None,
        "huber_scale": train.huber_scale if train.loss_type in ("huber", "smooth_l1") else None,
        "masked_loss": train.masked_loss, "alpha_mask": config.dataset.alpha_mask,
        "mixed_precision": gui["mixed_precision"], "save_precision": gui["save_precision"],
        "gradient_checkpointing": gui["gradient_checkpointing"], "xformers": gui["xformers"] == "xformers",
        "sdpa": gui["xformers"] == "sdpa", "cache_latents": gui["cache_latents"],
        "cache_latents_to_disk": gui["cache_latents_to_disk"],
        "cache_text_encoder_outputs": any(gui.get(key) for key, setting in family.kohya_settings.items()
                                          if setting == "precision.cache_text_encoder_outputs"),
        "max_data_loader_n_workers": gui["max_data_loader_n_workers"],
        "sample_prompts": prompts_file if gui["sample_prompts"].strip() else None,
        "sample_every_n_epochs": gui["sample_every_n_epochs"] or None,
        "sample_every_n_steps": gui["sample_every_n_steps"] or None, "sample_sampler": gui["sample_sampler"],
        "output_dir": gui["output_dir"], "output_name": gui["output_name"], "save_model_as": "safetensors",
        "save_every_n_epochs": gui["save_every_n_epochs"] or None,
        "save_every_n_steps": gui["save_every_n_steps"] or None,
        "save_last_n_epochs": gui["save_last_n_epochs"] or None, "save_state": gui["save_state"],
        "training_comment": gui["training_comment"], "metadata_title": gui["metadata_title"],
        "metadata_author": gui["metadata_author"], "metadata_description": gui["metadata_description"],
        "metadata_license": gui["metadata_license"], "metadata_tags": gui["metadata_tags"],
        "metadata_trigger_phrase": gui["metadata_trigger_phrase"], "metadata_usage_hint": gui["metadata_usage_hint"],
    }
    if train.max_steps:
        arguments["max_train_steps"] = train.max_steps
    elif train.gui_step_count:  # what the GUI passes, counted from the images now
        from engine.plan.kohya_steps import gui_step_count

        folder = resolve_path(base_dir, config.dataset.image_dir)
        if config.dataset.dataset_config or folder is None or not folder.is_dir():
            arguments["max_train_steps"] = 1600 if config.dataset.dataset_config else "<see loradeck plan>"
        else:
            arguments["max_train_steps"] = gui_step_count(folder, bool(config.dataset.reg_dir.strip()),
                                                          train.batch_size, train.gradient_accumulation_steps,
                                                          train.epochs).steps
    else:
        arguments["max_train_epochs"] = train.epochs
    # the family's options; a 0 is sd-scripts' default (no block swap, the model's T5 length)
    arguments.update({option: gui[key] for key, option in family.kohya_options.items() if gui[key] != 0})
    command = ["accelerate", "launch", "--num_cpu_threads_per_process=2"]
    if train.processes > 1:  # sd-scripts shares each epoch among them as training.processes does
        command += ["--multi_gpu", f"--num_processes={train.processes}"]
    command.append(family.kohya_script)
    for name, value in arguments.items():
        if value is None or value is False or value == "" or value == []:
            continue
        if value is True:
            command.append(f"--{name}")
        elif isinstance(value, list):
            command += [f"--{name}", *map(str, value)]
        else:
            command.append(f"--{name}={value:g}" if isinstance(value, float) else f"--{name}={value}")
    return command
