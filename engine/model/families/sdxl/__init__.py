"""SDXL (base 1.0 and its fine-tunes): two text encoders and size/crop conditioning.

* Text: CLIP-L (`text_encoder`) and OpenCLIP-bigG (`text_encoder_2`) each give their
  penultimate hidden states (no final layer norm), concatenated on the width (768 + 1280
  = 2048 on the real model); the second encoder's pooled, projected output is the U-Net's
  `text_embeds`. As in sd-scripts' SDXL training, clip skip is not used, a long caption's
  windows are joined as SD1.x's are, and the pooled output is the first window's
  (conditioning.py).
* Size: six numbers per image, `time_ids` = original (height, width), crop top-left
  (top, left) and target (height, width): the image's own size, the crop the bucket fit
  actually applied, and the bucket (engine.train.data carries them per example:
  `size_conditioning`).
* Objective: DDPM, as SD's (engine.model.objectives.ddpm).
* Files: LoRA keys `lora_te1_*`, `lora_te2_*` and `lora_unet_*` after the original (SGM)
  U-Net's module names, key for key as sd-scripts writes them
  (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`; `SgmUNetComponent`); a
  file keyed by diffusers' module names (`lora_unet_down_blocks_1_...`, loradeck's SDXL
  files before) is read too (runtime.py: `lora_network_tensors`); `ss_base_model_version`
  `sdxl_base_v1-0`; single files in the original SGM layout (single_file.py). 1024² by
  default. The VAE overflows in fp16, so under fp16 it runs in fp32 unless `model.vae`
  gives a fixed one.

Light module (the descriptor); the heavy half is runtime.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from engine.model.family import FamilyDescriptor, LoraComponent, descriptor_dataclass
from engine.model.ldm_checkpoints import kohya_unet_name_to_ldm, unet_module_to_ldm
from engine.model.shapes import (CLIP_BLOCKS, CLIP_TARGET_MODULES, UNET_BLOCKS, UNET_CONV_BLOCKS, UNET_TARGET_MODULES,
                                 ModelShapes, UNetClipShapes, read_json)

CONFIG_FOLDER = Path(__file__).resolve().parents[2] / "assets" / "sdxl"
TEXT_ENCODER_PER_WINDOW = 0.037  # GiB of CLIP-L activations per 77-token window and image, when it trains

FP16_VAE_NOTE = ("SDXL's VAE overflows in fp16 (black or NaN images): it runs in fp32 under fp16 training, "
                 "about 0.3 GB more; give a VAE fixed for fp16 (e.g. madebyollin/sdxl-vae-fp16-fix) as model.vae "
                 "to run it in fp16")

# What a 24 GB card needs for SDXL (engine.plan.vram): the plan names each one a config departs from
RECOMMENDED = {
    "dataset.resolution": ("1024,1024", "SDXL was trained at 1024²; smaller buckets lose detail"),
    "precision.gradient_checkpointing": (True, "without it 1024² activations take about 8 GiB per image"),
    "precision.cache_text_encoder_outputs": (True, "captions are encoded once instead of by both text "
                                             "encoders (0.8 G parameters) every step"),
}


# SDXL's U-Net as sd-scripts builds it (library/sdxl_original_unet.py), which every SDXL model
# shares: two (resnet, attention) layers per block, the upsamplers of up blocks 0 and 1 after
# their attention (up block 2 has none)
SGM_LAYERS, SGM_UP_WITH_ATTENTION = 2, frozenset({0, 1})


@dataclass(frozen=True)
class SgmUNetComponent(LoraComponent):
    """SDXL's U-Net adapters, keyed by the original layout's module names, as sd-scripts trains
    SDXL (on its own SGM-layout U-Net) and A1111, ComfyUI and diffusers read them."""

    def key(self, module_name: str) -> str:
        return f"{self.prefix}_{unet_module_to_ldm(module_name, SGM_LAYERS, SGM_UP_WITH_ATTENTION).replace('.', '_')}"


def sgm_named(tensors: dict[str, Any]) -> dict[str, Any]:
    """A LoRA file's tensors with every U-Net key in the original layout: a key named after
    diffusers' modules (`lora_unet_down_blocks_1_attentions_0_proj_in.alpha`) is renamed to
    sd-scripts' (`lora_unet_input_blocks_4_1_proj_in.alpha`); the others are kept."""
    renamed = {}
    for key, value in tensors.items():
        module, dot, rest = key.partition(".")
        if module.startswith("lora_unet_"):
            sgm = kohya_unet_name_to_ldm(module.removeprefix("lora_unet_"), SGM_LAYERS, SGM_UP_WITH_ATTENTION)
            if sgm is not None:
                key = f"lora_unet_{sgm}{dot}{rest}"
        renamed[key] = value
    return renamed


@descriptor_dataclass
class StableDiffusionXL(UNetClipShapes, FamilyDescriptor):
    def recognizes_folder(self, folder: Path) -> bool:
        index = read_json(folder / "model_index.json") or {}
        if index.get("_class_name", "").startswith("StableDiffusionXL"):
            return True
        unet = read_json(folder / "unet" / "config.json") or {}
        return unet.get("addition_embed_type") == "text_time"

    def recognizes_checkpoint(self, shapes: Mapping[str, Sequence[int]]) -> bool:
        return any(key.startswith("conditioner.embedders.") for key in shapes)

    def text_encoder_activations(self, shapes: ModelShapes, windows: int) -> float:
        # CLIP-L's measured activations, scaled by each encoder's width and depth (bigG: 1280 wide, 32 deep)
        return sum(windows * TEXT_ENCODER_PER_WINDOW * text.get("hidden_size", 768) / 768
                   * text.get("num_hidden_layers", 12) / 12 for text in shapes.text_encoders)

    def vae_runs_in_fp16(self, config) -> bool:
        """Only a VAE the user gives (model.vae) is taken to be fixed for fp16; SDXL's own overflows."""
        return bool(config.model.vae.strip())

    def plan_notes(self, config) -> list[str]:
        """One line per setting that departs from what SDXL wants on a 24 GB card, and the VAE's."""
        notes = []
        for key, (wanted, why) in RECOMMENDED.items():
            group, name = key.split(".")
            value = getattr(getattr(config, group), name)
            if key == "dataset.resolution":
                width, height = config.resolution_size
                if width * height >= self.default_resolution**2:
                    continue
            elif value == wanted or (key == "precision.cache_text_encoder_outputs"
                                     and config.network.train_text_encoder):
                continue  # a text encoder that trains cannot have its outputs cached
            shown = str(wanted).lower() if isinstance(wanted, bool) else wanted
            notes.append(f"SDXL: {key} is {value!r}; {shown} is recommended ({why})")
        if config.precision.mixed_precision == "fp16" and not self.vae_runs_in_fp16(config):
            notes.append(FP16_VAE_NOTE)
        return notes

    def memory_advice(self, config) -> list[str]:
        """Caching the two text encoders' outputs frees their LoRA, gradients and activations."""
        precision = config.precision
        if not (config.network.train_text_encoder or not precision.cache_text_encoder_outputs):
            return []
        wanted = [*(["turn off network.train_text_encoder"] if config.network.train_text_encoder else []),
                  *([] if precision.cache_text_encoder_outputs else ["turn on precision.cache_text_encoder_outputs"])]
        return [" and ".join(wanted) + " (the text encoders' outputs are then cached: no text-encoder "
                "LoRA, gradients or activations)"]

    def lora_metadata(self, config) -> dict[str, Any]:
        return {"ss_base_model_version": "sdxl_base_v1-0", "ss_v2": False,
                "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
                # sd-scripts' word for an SDXL LoRA in the original layout (library/sai_model_spec.py)
                "modelspec.implementation": "https://github.com/Stability-AI/generative-models"}


SDXL = StableDiffusionXL(
    name="sdxl", label="SDXL", runtime_path="engine.model.families.sdxl.runtime:StableDiffusionXLRuntime",
    default_resolution=1024, config_folder=CONFIG_FOLDER,
    text_encoders=("text_encoder", "text_encoder_2"), tokenizers=("tokenizer", "tokenizer_2"),
    lora_components=(
        SgmUNetComponent("unet", "lora_unet", "unet", UNET_TARGET_MODULES, UNET_BLOCKS, UNET_CONV_BLOCKS),
        LoraComponent("text_encoder", "lora_te1", "text_encoder", CLIP_TARGET_MODULES, CLIP_BLOCKS,
                      text_model_level=True),
        LoraComponent("text_encoder_2", "lora_te2", "text_encoder_2", CLIP_TARGET_MODULES, CLIP_BLOCKS,
                      text_model_level=True),
    ),
    size_conditioning=True,
    # Parameters of SDXL base 1.0's frozen parts (counted from the released safetensors headers)
    frozen_parameters={"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840,
                       "vae": 83_653_863},
    # GiB per 512×512 worth of pixels at bf16/fp16, keyed by gradient checkpointing; measured on
    # the meta device with SDXL base's configs (engine/model/assets/sdxl) by
    # `python bench/train_speed.py --memory-model --family sdxl`, as engine.plan.vram explains:
    # 1024² batch 2, rank 16: 16.67 GiB without checkpointing, 1.50 GiB with it
    activations_per_image={False: 2.08, True: 0.19},
    vae_encode_per_image=0.44,  # SDXL's VAE has SD's architecture (only its weights differ)
    fp16_vae_note=FP16_VAE_NOTE,
    kohya_flags=("sdxl",),
    kohya_settings={"sdxl_cache_text_encoder_outputs": "precision.cache_text_encoder_outputs"},
    kohya_script="sdxl_train_network.py",
    kohya_notes={"sdxl_no_half_vae": "sdxl_no_half_vae: loradeck runs SDXL's VAE in fp32 under fp16 unless "
                 "model.vae gives an fp16-fixed one (under bf16 it cannot overflow)"},
)
DESCRIPTORS = (SDXL,)
