"""What each key of a Kohya GUI JSON config means to loradeck.

Every key the GUI's LoRA tab saves falls in one of these tables:

    SIMPLE_KEYS     copied into one loradeck setting (converted from the GUI's text)
    NETWORK_KEYS    a network setting, mapped where the chosen type uses it
    NOT_BUILT       changes training, loradeck does not train it: a note when it is on
    NO_EFFECT       does not change the LoRA (logging, uploads, speed, the GUI's own state)
    OTHER_TABS      belongs to the DreamBooth, fine-tuning or Textual Inversion tab
    OTHER_FAMILY_KEYS  other families' settings (Flux.1, SD3, ...): no effect on an SD/SDXL LoRA; a family
                       loradeck does not train (SD3, ...) is refused when its switch is on; Flux.1's own
                       keys are the Flux family's (engine.model.families.flux: kohya_values, ...)

The keys the importer reads by hand are in kohya_import (SPECIAL_KEYS). A key in none
of them is reported as unknown, never silently dropped.

Light module: standard library only.
"""
from __future__ import annotations

from typing import Any, Callable

from engine.config import kohya_values as value

# kohya key -> (our setting, converter)
SIMPLE_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "vae": ("model.vae", value.text),
    "v_parameterization": ("model.v_parameterization", value.flag),
    "enable_bucket": ("dataset.enable_buckets", value.flag),
    "bucket_no_upscale": ("dataset.bucket_no_upscale", value.flag),
    "shuffle_caption": ("captions.shuffle_caption", value.flag),
    "keep_tokens": ("captions.keep_tokens", value.integer),
    "caption_dropout_rate": ("captions.caption_dropout_rate", value.number),
    "caption_tag_dropout_rate": ("captions.caption_tag_dropout_rate", value.number),
    "caption_dropout_every_n_epochs": ("captions.caption_dropout_every_n_epochs", value.integer),
    "keep_tokens_separator": ("captions.keep_tokens_separator", value.text),
    "weighted_captions": ("captions.weighted_captions", value.flag),
    "max_token_length": ("captions.max_token_length", value.integer),
    "flip_aug": ("augmentation.flip", value.flag),
    "color_aug": ("augmentation.color", value.flag),
    "random_crop": ("augmentation.random_crop", value.flag),
    "network_dim": ("network.rank", value.integer),
    "optimizer_args": ("optimizer.optimizer_args", value.text),
    "learning_rate": ("optimizer.learning_rate", value.number),
    "unet_lr": ("optimizer.unet_lr", value.optional_rate),
    "text_encoder_lr": ("optimizer.text_encoder_lr", value.optional_rate),
    "lr_scheduler_power": ("optimizer.lr_scheduler_power", value.number),
    "lr_warmup_steps": ("optimizer.lr_warmup_steps", value.integer),
    "train_batch_size": ("training.batch_size", value.integer),
    "epoch": ("training.epochs", value.integer),
    "gradient_accumulation_steps": ("training.gradient_accumulation_steps", value.integer),
    "num_processes": ("training.processes", value.process_count),  # the GUI's accelerate launch setting
    "adaptive_noise_scale": ("training.adaptive_noise_scale", value.number),
    "multires_noise_iterations": ("training.multires_noise_iterations", value.integer),
    "multires_noise_discount": ("training.multires_noise_discount", value.number),
    "ip_noise_gamma": ("training.ip_noise_gamma", value.number),
    "min_snr_gamma": ("training.min_snr_gamma", value.number),
    "noise_offset_random_strength": ("training.noise_offset_random_strength", value.flag),
    "ip_noise_gamma_random_strength": ("training.ip_noise_gamma_random_strength", value.flag),
    "debiased_estimation_loss": ("training.debiased_estimation_loss", value.flag),
    "masked_loss": ("training.masked_loss", value.flag),
    "alpha_mask": ("dataset.alpha_mask", value.flag),  # sd-scripts' --alpha_mask (additional_parameters)
    "min_timestep": ("training.min_timestep", value.integer),
    "loss_type": ("training.loss_type", value.choice),
    "huber_c": ("training.huber_c", value.number),
    "huber_schedule": ("training.huber_schedule", value.choice),
    "huber_scale": ("training.huber_scale", value.number),
    "mixed_precision": ("precision.mixed_precision", value.choice),
    "gradient_checkpointing": ("precision.gradient_checkpointing", value.flag),
    "max_data_loader_n_workers": ("precision.dataloader_workers", value.integer),
    "sample_prompts": ("sampling.prompts", value.text),
    "sample_every_n_epochs": ("sampling.every_n_epochs", value.integer),
    "sample_every_n_steps": ("sampling.every_n_steps", value.integer),
    "output_name": ("saving.output_name", value.text),
    "save_every_n_epochs": ("saving.save_every_n_epochs", value.integer),
    "save_every_n_steps": ("saving.save_every_n_steps", value.integer),
    "save_last_n_epochs": ("saving.save_last_n", value.integer),
    "save_state": ("saving.save_state", value.flag),
    "noise_offset": ("training.noise_offset", value.number),
}

# the GUI sends sd-scripts nothing for these when they are 0 or empty (it drops every value equal
# to "", False or None, and 0 == False): sd-scripts then uses its own default, so do we
SD_SCRIPTS_DEFAULTS: dict[str, Any] = {
    "max_grad_norm": 1.0,  # 0 means "no clipping" to sd-scripts, but the GUI never sends it
    "min_bucket_reso": 256,
    "max_bucket_reso": 1024,
    "lr_scheduler_power": 1.0,
    "gradient_accumulation_steps": 1,
    "train_batch_size": 1,
    "network_alpha": 1.0,
    "clip_skip": 1,  # None: the last layer
    "max_timestep": 1000,  # None: the schedule's end
}

# paths of the GUI, resolved as the GUI's sd-scripts process does: against its working folder
PATH_KEYS = {
    "pretrained_model_name_or_path": "model.pretrained_model",
    "train_data_dir": "dataset.image_dir",
    "reg_data_dir": "dataset.reg_dir",
    "dataset_config": "dataset.dataset_config",
    "output_dir": "saving.output_dir",
    "lora_network_weights": "network.network_weights",
    "network_weights": "network.network_weights",
}

# network settings the GUI keeps for every type and passes sd-scripts only for the ones that
# use them: mapped where our type uses them, noted when set for one that does not
NETWORK_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "conv_dim": ("network.conv_dim", value.integer),
    "conv_alpha": ("network.conv_alpha", value.number),
    "factor": ("network.factor", value.integer),
    "use_cp": ("network.use_tucker", value.flag),
    "use_tucker": ("network.use_tucker", value.flag),
    "network_dropout": ("network.network_dropout", value.number),
    "rank_dropout": ("network.rank_dropout", value.number),
    "module_dropout": ("network.module_dropout", value.number),
    "train_on_input": ("network.train_on_input", value.flag),
    "unit": ("network.block_size", value.integer),
    "constrain": ("network.constraint", value.number),
    "scale_weight_norms": ("network.scale_weight_norms", value.number),
    "rescaled": ("network.rescaled", value.flag),
}
# LyCORIS options loradeck does not build: noted when set to something but their default
LYCORIS_OPTIONS = {"decompose_both": False, "use_scalar": False, "rank_dropout_scale": False,
                   "train_norm": False, "bypass_mode": False}

# key -> (the values that leave it off, what it would change). A note when it is on.
NOT_BUILT: dict[str, tuple[tuple, str]] = {
    "secondary_separator": (("",), "the secondary caption separator"),
    "enable_wildcard": ((False,), "caption wildcards"),
    "caption_prefix": (("",), "a caption prefix"),
    "caption_suffix": (("",), "a caption suffix"),
    "prior_loss_weight": ((1,), "the loss weight of regularisation images (loradeck weighs them 1)"),
    "v_pred_like_loss": ((0,), "the v-prediction-like loss term"),
    "scale_v_pred_loss_like_noise_pred": ((False,), "the v-prediction loss scaled like noise prediction"),
    "zero_terminal_snr": ((False,), "the zero-terminal-SNR noise schedule"),
    "full_bf16": ((False,), "the LoRA's weights and gradients kept in bf16 (loradeck keeps them in fp32)"),
    "full_fp16": ((False,), "the LoRA's weights and gradients kept in fp16 (loradeck keeps them in fp32)"),
    "fp8_base": ((False,), "the base model in fp8"),
    "dim_from_weights": ((False,), "the rank read from the LoRA file it starts from"),
    "block_dims": (("",), "per-block ranks"),
    "block_alphas": (("",), "per-block alphas"),
    "conv_block_dims": (("",), "per-block conv ranks"),
    "conv_block_alphas": (("",), "per-block conv alphas"),
    "conv_dims": (("",), "per-block conv ranks"),
    "conv_alphas": (("",), "per-block conv alphas"),
    "down_lr_weight": (("",), "per-block learning rates"),
    "mid_lr_weight": (("",), "per-block learning rates"),
    "up_lr_weight": (("",), "per-block learning rates"),
    "block_lr_zero_threshold": (("",), "per-block learning rates"),
    "loraplus_lr_ratio": ((0,), "LoRA+ learning-rate ratios"),
    "loraplus_unet_lr_ratio": ((0,), "LoRA+ learning-rate ratios"),
    "loraplus_text_encoder_lr_ratio": ((0,), "LoRA+ learning-rate ratios"),
    "fused_backward_pass": ((False,), "the optimizer step fused into the backward pass (no gradient clipping)"),
    "resume": (("",), "resuming an sd-scripts state (loradeck resumes its own runs: train --resume)"),
    "train_inpainting": ((False,), "inpainting training"),
    "face_crop_aug_range": (("",), "face-centred crops"),
    "save_model_as": (("safetensors", ""), "the file format (loradeck writes .safetensors)"),
}

# keys that do not change the LoRA a run trains
NO_EFFECT = frozenset({
    "additional_parameters", "async_upload", "dynamo_backend", "dynamo_mode", "dynamo_use_dynamic",
    "dynamo_use_fullgraph", "extra_accelerate_launch_args", "gpu_ids", "main_process_port", "num_machines",
    "multi_gpu",  # accelerate's launcher switch; training.processes (num_processes) starts the processes
    "num_cpu_threads_per_process", "highvram", "lowvram", "log_config", "log_tracker_config", "log_tracker_name",
    "log_with", "logging_dir", "log_prefix", "use_wandb", "wandb_api_key", "wandb_run_name", "huggingface_path_in_repo",
    "huggingface_repo_id", "huggingface_repo_type", "huggingface_repo_visibility", "huggingface_token",
    "resume_from_huggingface", "save_state_to_huggingface", "save_state_on_train_end", "save_last_n_steps",
    "save_last_n_steps_state", "save_last_n_epochs_state", "save_as_bool", "skip_cache_check",
    "disable_mmap_load_safetensors", "mem_eff_save", "model_list", "persistent_data_loader_workers",
    "vae_batch_size", "blockwise_fused_optimizers", "fused_optimizer_groups", "mem_eff_attn", "sdpa",
    "sdxl_checkbox", "cache_latents_to_disk", "cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk",
})

# settings of the GUI's other tabs (DreamBooth, fine-tuning, Textual Inversion)
OTHER_TABS = frozenset({
    "learning_rate_te", "learning_rate_te1", "learning_rate_te2", "no_token_padding", "train_text_encoder",
    "batch_size", "block_lr", "caption_metadata_filename", "latent_metadata_filename", "create_buckets",
    "create_caption", "dataset_repeats", "full_path", "image_folder", "train_dir", "use_latent_files",
    "token_string", "init_word", "num_vectors_per_token", "template", "weights",
})
TEXTUAL_INVERSION_KEYS = ("token_string", "init_word", "num_vectors_per_token")

# the family switches of the GUI that loradeck does not train, and the family each one means
# (flux1_checkbox selects the Flux.1 family: engine.model.families.flux)
FAMILY_SWITCHES = {"sd3_checkbox": "SD3", "hunyuan_image_checkbox": "HunyuanImage",
                   "anima_checkbox": "Anima", "lumina_checkbox": "Lumina"}
# settings of those families (no effect on an SD 1.x/2.x or SDXL LoRA)
OTHER_FAMILY_KEYS = frozenset({
    *FAMILY_SWITCHES, "flux1_checkbox", "ae", "apply_t5_attn_mask", "blocks_to_swap", "clip_g", "clip_l", "cpu_offload_checkpointing",
    "discrete_flow_shift", "double_blocks_to_swap", "flux1_cache_text_encoder_outputs",
    "flux1_cache_text_encoder_outputs_to_disk", "flux1_clip_l", "flux1_t5xxl", "flux_fused_backward_pass",
    "guidance_scale", "logit_mean", "logit_std", "mode_scale", "model_prediction_type", "save_clip", "save_t5xxl",
    "sd3_cache_text_encoder_outputs", "sd3_cache_text_encoder_outputs_to_disk", "sd3_fused_backward_pass",
    "sd3_text_encoder_batch_size", "single_blocks_to_swap", "split_mode", "t5xxl", "t5xxl_device", "t5xxl_dtype",
    "t5xxl_max_token_length", "timestep_sampling", "train_blocks", "weighting_scheme", "t5xxl_lr", "split_qkv",
    "train_t5xxl", "img_attn_dim", "img_mlp_dim", "img_mod_dim", "single_dim", "txt_attn_dim", "txt_mlp_dim",
    "txt_mod_dim", "single_mod_dim", "in_dims", "train_double_block_indices", "train_single_block_indices",
    "enable_all_linear", "model_type",
})

# metadata of the GUI -> loradeck's [metadata] settings (written to the file's modelspec.*)
METADATA_KEYS = {
    "metadata_title": "metadata.title",
    "metadata_author": "metadata.author",
    "metadata_description": "metadata.description",
    "metadata_license": "metadata.license",
    "metadata_tags": "metadata.tags",
    "metadata_trigger_phrase": "metadata.trigger_phrase",
    "metadata_usage_hint": "metadata.usage_hint",
    "training_comment": "metadata.training_comment",
}

# the network keys the GUI passes sd-scripts for each LoRA_type (lora_gui.py builds network_args per
# type); the others it keeps in the JSON but does not pass, so they change nothing there either.
# network_dropout goes to every type as --network_dropout, which LyCORIS' create_network does not read.
_LYCORIS_COMMON = {"conv_dim", "conv_alpha", "LyCORIS_preset"}
GUI_PASSES: dict[str, frozenset] = {
    "standard": frozenset({"rank_dropout", "module_dropout", "network_dropout"}),
    "": frozenset({"rank_dropout", "module_dropout", "network_dropout"}),
    "kohya locon": frozenset({"conv_dim", "conv_alpha", "rank_dropout", "module_dropout", "network_dropout"}),
    "kohya loha": frozenset({"conv_dim", "conv_alpha", "use_tucker", "rank_dropout", "module_dropout"}),
    "kohya lokr": frozenset({"conv_dim", "conv_alpha", "use_tucker", "factor", "rank_dropout", "module_dropout"}),
    "lycoris/locon": frozenset(_LYCORIS_COMMON | {"use_tucker", "rank_dropout", "bypass_mode", "dora_wd", "module_dropout",
                                                  "use_scalar", "rank_dropout_scale", "train_norm"}),
    "lycoris/loha": frozenset(_LYCORIS_COMMON | {"use_tucker", "rank_dropout", "bypass_mode", "dora_wd", "module_dropout",
                                                 "use_scalar", "rank_dropout_scale", "train_norm"}),
    "lycoris/lokr": frozenset(_LYCORIS_COMMON | {"use_tucker", "rank_dropout", "bypass_mode", "dora_wd", "module_dropout",
                                                 "factor", "use_cp", "use_scalar", "decompose_both",
                                                 "rank_dropout_scale", "train_norm"}),
    "lycoris/ia3": frozenset(_LYCORIS_COMMON | {"train_on_input"}),
    "lycoris/diag-oft": frozenset(_LYCORIS_COMMON | {"module_dropout", "use_tucker", "rank_dropout",
                                                     "rank_dropout_scale", "constrain", "rescaled", "train_norm"}),
    "lycoris/dylora": frozenset(_LYCORIS_COMMON | {"use_tucker", "unit", "rank_dropout", "module_dropout",
                                                   "train_norm"}),
    "lycoris/glora": frozenset(_LYCORIS_COMMON | {"use_tucker", "rank_dropout", "module_dropout", "rank_dropout_scale",
                                                  "train_norm"}),
}
GUI_PASSES["locon"] = GUI_PASSES["lycoris/locon"]
# Flux1 (networks.lora_flux): the GUI passes only its Flux block settings (the Flux family's keys)
# and, as for every type, --network_dropout
GUI_PASSES["flux1"] = frozenset({"network_dropout"})
# --scale_weight_norms goes to sd-scripts for every type (it calls the network's max norm)
GUI_PASSES = {gui_type: keys | {"scale_weight_norms"} for gui_type, keys in GUI_PASSES.items()}
