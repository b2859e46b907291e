"""Flux.1 [dev] and [schnell]: a rectified-flow transformer on packed 16-channel latents.

What differs from SD and SDXL, and where it lives in this folder:

* Model (`single_files`, `loading`, `layout`): BFL's single-file transformer with separate
  `clip_l`, `t5xxl` and `ae` files, a diffusers folder, or a hub id; detected from the
  keys (`double_blocks.*`) or the folder's configs, never from a name. [schnell] is the
  same architecture without the guidance embedding: one setting derived from the weights.
* Objective: flow matching (engine.model.objectives.flow_matching), target noise - latents,
  sigmas from `sigmoid` / `shift` / `flux_shift` / `uniform` / `sigma`.
* Denoiser input (`latents`): 2x2 latent patches packed into tokens, each with its (0, row,
  column) position for the rotary embedding, the guidance scale embedded for [dev].
* Text (`text`): CLIP-L's pooled output modulates every block; T5-XXL's hidden states
  (`t5xxl_max_token_length` tokens: 512 for [dev], 256 for [schnell]) are the text tokens.
* LoRA (`lora_layout`): sd-scripts' `networks.lora_flux` names (`lora_unet_double_blocks_0_img_attn_qkv`,
  `lora_te1_` for CLIP-L, `lora_te3_` for T5), its fused projections written exactly.

Light module: the standard library only (the plan and the TUI read it).
"""
from __future__ import annotations

import json
from pathlib import Path

from engine.model.families.flux import layout

NAME = "flux"
LABEL = "Flux.1"
VARIANTS = ("dev", "schnell")
PIPELINE_CLASS = "FluxPipeline"
DEFAULT_RESOLUTION = 1024
TEXT_ENCODERS = (("text_encoder", "lora_te1"), ("text_encoder_2", "lora_te3"))
T5_MAX_TOKENS = {"dev": 512, "schnell": 256}  # sd-scripts' t5xxl_max_token_length defaults
DEFAULT_GUIDANCE = {"dev": 3.5, "schnell": 0.0}  # sampling; training embeds guidance_scale (1.0)
DEFAULT_SAMPLE_STEPS = {"dev": 28, "schnell": 4}

# Parameters of the frozen parts (counted on the meta device from the shipped configs; T5's
# token embedding once, as the t5xxl files hold it)
PARAMETERS = {
    "dev": {"transformer": 11_901_408_320, "text_encoder": 123_060_480, "text_encoder_2": 4_762_310_656,
            "vae": 83_819_683},
    "schnell": {"transformer": 11_891_178_560, "text_encoder": 123_060_480, "text_encoder_2": 4_762_310_656,
                "vae": 83_819_683},
}
ASSETS = Path(__file__).resolve().parents[2] / "assets" / "flux"

# --------------------------------------------------------------------------- memory
# Activations of a training step grow with the tokens the transformer attends over, image
# (latent 2x2 patches: 4096 at 1024²) plus text (T5's 512), not with pixels alone: GiB per
# token at bf16, keyed by gradient checkpointing, measured on the meta device with FLUX.1-dev's
# configs by `python bench/train_speed.py --memory-model --family flux` (docs/speed.md):
# 1024² batch 1 rank 16: 42.49 GiB without checkpointing, 2.89 with; 512²: 14.27 and 0.97
# (per token 0.00922 and 0.00929; 0.000627 and 0.000629). A rank's own share is small:
# rank 32 adds 0.20 GiB at 1024² without checkpointing, nothing measurable with it.
ACTIVATIONS_PER_TOKEN = {False: 0.00923, True: 0.000628}
ACTIVATIONS_PER_TOKEN_RANK = {False: 0.0000027, True: 0.0}
VAE_ENCODE_PER_IMAGE = 0.44  # GiB per 512² image: the VAE encoder is SD's architecture, 32 output channels instead of 8

# System RAM, GiB. Where a loader reads every file into memory before moving it to the GPU
# (sd-scripts does: flux_utils.load_flow_model, load_t5xxl), the peak is the files' sum;
# loradeck reads each tensor and puts it on the device as it goes (single_files.read_tensors),
# so its peak is the process itself plus what stays on the CPU.
PROCESS_RAM = 3.0  # Python, torch with CUDA, diffusers and transformers imported, the data loader
GIB = 2**30


def weight_gib(variant: str, part: str, bytes_per_parameter: float) -> float:
    return PARAMETERS[variant][part] * bytes_per_parameter / GIB


def system_ram_gib(variant: str, *, fp8_base: bool, text_encoders_in_ram: bool) -> dict[str, float]:
    """{"read_all_first": what a load-everything-first loader peaks at (sd-scripts' way),
    "loradeck": what loradeck's streaming load and run hold}, for the bf16 / fp16 release files
    (fp8 ones with `fp8_base`). `text_encoders_in_ram`: CLIP-L and T5 kept on the CPU after
    their outputs are cached (to encode sample prompts), else freed."""
    transformer = weight_gib(variant, "transformer", 1 if fp8_base else 2)
    t5 = weight_gib(variant, "text_encoder_2", 1 if fp8_base else 2)
    small = weight_gib(variant, "text_encoder", 2) + weight_gib(variant, "vae", 4)
    kept = t5 + weight_gib(variant, "text_encoder", 2) if text_encoders_in_ram else 0.0
    return {"read_all_first": PROCESS_RAM + transformer + t5 + small, "loradeck": PROCESS_RAM + kept + 0.5}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def folder_variant(folder: Path) -> str | None:
    """"dev" or "schnell" for a Flux.1 diffusers folder, None for any other folder."""
    index = _read_json(folder / "model_index.json") or {}
    transformer = _read_json(folder / "transformer" / "config.json") or {}
    if index.get("_class_name") != "FluxPipeline" and transformer.get("_class_name") != "FluxTransformer2DModel":
        return None
    return "dev" if transformer.get("guidance_embeds", True) else "schnell"


def keys_variant(keys) -> str | None:
    """"dev" or "schnell" for a BFL transformer file's tensor names, None for anything else."""
    if not layout.is_bfl_transformer(keys):
        return None
    return "dev" if layout.has_guidance(keys) else "schnell"


# --------------------------------------------------------------------------- the LoRA's metadata
# sd-scripts' flux_train_network writes ss_base_model_version "flux1", the modelspec
# architecture by variant (library/sai_model_spec: flux-1-dev, flux-1-schnell) and its Flux
# settings (FluxNetworkTrainer.update_metadata); the density-weighting ones loradeck does not
# use carry sd-scripts' defaults (weighting_scheme "none"), as its files have them.
MODELSPEC_IMPLEMENTATION = "https://github.com/black-forest-labs/flux"


def base_model_version(variant: str = "dev") -> str:
    return "flux1"


def modelspec_architecture(variant: str = "dev") -> str:
    return f"flux-1-{variant}/lora"


def training_settings_metadata(*, timestep_sampling: str, sigmoid_scale: float, discrete_flow_shift: float,
                               model_prediction_type: str, guidance_scale: float,
                               apply_t5_attn_mask: bool) -> dict[str, str]:
    return {
        "ss_model_type": "flux",
        "ss_apply_t5_attn_mask": str(bool(apply_t5_attn_mask)),
        "ss_weighting_scheme": "none",
        "ss_logit_mean": "0.0",
        "ss_logit_std": "1.0",
        "ss_mode_scale": "1.29",
        "ss_guidance_scale": str(float(guidance_scale)),
        "ss_timestep_sampling": timestep_sampling,
        "ss_sigmoid_scale": str(float(sigmoid_scale)),
        "ss_model_prediction_type": model_prediction_type,
        "ss_discrete_flow_shift": str(float(discrete_flow_shift)),
    }
