"""Stable Diffusion 1.x and 2.x: one CLIP text encoder, a U-Net conditioned on its hidden states.

The reference family: its training is what loradeck did before families existed, number
for number. SD 1.x (OpenAI CLIP-L, 768 wide) and SD 2.x (OpenCLIP-H, 1024 wide, padded with
"!") share this folder's runtime and differ in sizes, detection and metadata, so the folder
registers two descriptors.

* Text: CLIP's hidden states (clip skip N: the Nth-from-last layer through the final layer
  norm), long captions in 75-token windows, A1111 emphasis (engine.model.text_conditioning).
* Objective: DDPM, epsilon or v-prediction (`model.v_parameterization`, SD 2.x 768-v), min-SNR
  (engine.model.objectives.ddpm).
* Files: LoRA keys `lora_unet_*`, `lora_te_*`; `ss_base_model_version` sd_v1 / sd_v2;
  single files in the original LDM layout (runtime.py, single_file.py).

Light module (the descriptors); the heavy half is runtime.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from engine.model.family import FamilyDescriptor, LoraComponent, descriptor_dataclass
from engine.model.shapes import (CLIP_BLOCKS, CLIP_TARGET_MODULES, UNET_BLOCKS, UNET_CONV_BLOCKS, UNET_TARGET_MODULES,
                                 ModelShapes, UNetClipShapes, read_json)

ASSETS = Path(__file__).resolve().parents[2] / "assets"
UNET_PREFIX = "model.diffusion_model."  # the U-Net in an original-layout checkpoint
OPEN_CLIP_WIDTH = 1024  # SD 2.x's text encoder; SD 1.x's is 768
TEXT_ENCODER_PER_WINDOW = 0.037  # GiB of CLIP-L activations per 77-token window and image, when it trains


@descriptor_dataclass
class StableDiffusion(UNetClipShapes, FamilyDescriptor):
    v2: bool = False  # SD 2.x: OpenCLIP's width tells it apart

    def recognizes_folder(self, folder: Path) -> bool:
        index = read_json(folder / "model_index.json") or {}
        unet = read_json(folder / "unet" / "config.json")
        if unet is None or index.get("_class_name", "").startswith("StableDiffusionXL"):
            return False  # no U-Net: another family's folder, or a hub snapshot that says nothing yet
        if unet.get("addition_embed_type") == "text_time":
            return False  # SDXL's size conditioning
        text = read_json(folder / "text_encoder" / "config.json") or {}
        wide = text.get("hidden_size") == OPEN_CLIP_WIDTH or unet.get("cross_attention_dim") == OPEN_CLIP_WIDTH
        return wide == self.v2

    def recognizes_checkpoint(self, shapes: Mapping[str, Sequence[int]]) -> bool:
        if any(key.startswith("conditioner.embedders.") for key in shapes):
            return False  # SDXL's two text encoders
        if not any(key.startswith(UNET_PREFIX + "input_blocks.") for key in shapes):
            return False
        return checkpoint_is_v2(shapes) == self.v2

    def text_encoder_activations(self, shapes: ModelShapes, windows: int) -> float:
        return sum(windows * TEXT_ENCODER_PER_WINDOW * text.get("hidden_size", 768) / 768
                   for text in shapes.text_encoders)

    def lora_metadata(self, config) -> dict[str, Any]:
        if not self.v2:
            architecture = "stable-diffusion-v1"
        else:  # sd-scripts' sai_model_spec: the 768-v models predict v, the 512 base noise
            architecture = "stable-diffusion-v2-768-v" if config.model.v_parameterization else "stable-diffusion-v2-512"
        return {"ss_base_model_version": "sd_v2" if self.v2 else "sd_v1", "ss_v2": self.v2,
                "modelspec.architecture": f"{architecture}/lora"}


def checkpoint_is_v2(shapes: Mapping[str, Sequence[int]]) -> bool:
    """SD 2.x from an original-layout checkpoint's text encoder: OpenCLIP's layout, or CLIP
    1024 wide (with or without the `text_model.` level old SD 1.x merges lack)."""
    for key in ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
                "cond_stage_model.transformer.embeddings.token_embedding.weight"):
        if key in shapes:
            return tuple(shapes[key])[-1] == OPEN_CLIP_WIDTH
    return "cond_stage_model.model.token_embedding.weight" in shapes


_COMMON = dict(
    runtime_path="engine.model.families.sd.runtime:StableDiffusionRuntime",
    default_resolution=512,
    lora_components=(
        LoraComponent("unet", "lora_unet", "unet", UNET_TARGET_MODULES, UNET_BLOCKS, UNET_CONV_BLOCKS),
        LoraComponent("text_encoder", "lora_te", "text_encoder", CLIP_TARGET_MODULES, CLIP_BLOCKS,
                      text_model_level=True),
    ),
    # GiB per 512×512 image at bf16/fp16, keyed by gradient checkpointing (engine.plan.vram)
    activations_per_image={False: 1.26, True: 0.32},
    vae_encode_per_image=0.44,
)

SD15 = StableDiffusion(
    name="sd15", label="SD 1.x", config_folder=ASSETS / "sd15", v2=False,
    frozen_parameters={"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863},
    **_COMMON,
)
SD2 = StableDiffusion(
    name="sd2", label="SD 2.x", config_folder=ASSETS / "sd2", v2=True, kohya_flags=("v2",),
    frozen_parameters={"unet": 865_910_724, "text_encoder": 340_387_840, "vae": 83_653_863},
    **_COMMON,
)
DESCRIPTORS = (SD15, SD2)
