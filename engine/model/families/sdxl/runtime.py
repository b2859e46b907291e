"""The heavy half of SDXL (engine.model.family.FamilyRuntime): a U-Net conditioned on two CLIP
encoders and six size/crop numbers, trained by DDPM (see this folder's __init__; the
objective, schedule, speed settings, caption tokens, U-Net call and samplers are
engine.model.unet_models.UNetClipRuntime's)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from engine.model.families.sdxl import conditioning, sgm_named, single_file
from engine.model.families.sdxl.conditioning import TextStateCache, encode_tokens, time_ids
from engine.model.family import BaseModel, FamilyRuntime
from engine.model.parts import load_parts, pretrained
from engine.model.text_conditioning import applied_weights
from engine.model.tiny_parts import tiny_tokenizer, tiny_vae
from engine.model.unet_models import UNetClipRuntime

# SDXL base 1.0's noise schedule (scheduler/scheduler_config.json of stabilityai/stable-diffusion-xl-base-1.0)
SDXL_SCHEDULE = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    steps_offset=1,
    timestep_spacing="leading",
    interpolation_type="linear",
    prediction_type="epsilon",
    use_karras_sigmas=False,
)


class StableDiffusionXLRuntime(UNetClipRuntime, FamilyRuntime):
    # ---- loading

    def load_diffusers(self, source: str, *, local_only: bool, dtype, vae_dtype) -> dict[str, Any]:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        return load_parts(source, local_only, {
            "unet": pretrained(UNet2DConditionModel, source, "unet", local_only, torch_dtype=dtype),
            "vae": pretrained(AutoencoderKL, source, "vae", local_only, torch_dtype=vae_dtype),
            "text_encoder": pretrained(CLIPTextModel, source, "text_encoder", local_only, dtype=dtype),
            "text_encoder_2": pretrained(CLIPTextModelWithProjection, source, "text_encoder_2", local_only, dtype=dtype),
            "tokenizer": pretrained(CLIPTokenizer, source, "tokenizer", local_only),
            "tokenizer_2": pretrained(CLIPTokenizer, source, "tokenizer_2", local_only),
            "scheduler": pretrained(DDPMScheduler, source, "scheduler", local_only),
        })

    # ---- the LoRA file: U-Net keys in the original layout (sd-scripts'), older diffusers-named ones renamed on reading

    def lora_network_tensors(self, tensors: dict[str, Any]) -> dict[str, Any]:
        return sgm_named(tensors)

    # single files in the family's original layout (single_file.py), offline
    load_single_file = staticmethod(single_file.load_single_file)
    export_single_file = staticmethod(single_file.export_single_file)

    # ---- data

    def text_state_cache(self, model: BaseModel, captions, config, *, autocast=None) -> TextStateCache:
        cache = TextStateCache()
        cache.fill(captions, model.tokenizers, model.text_encoders, max_token_length=config.captions.max_token_length,
                   weighted=config.captions.weighted_captions, autocast=autocast)
        return cache

    # ---- the step

    def condition(self, text_encoders: Sequence[Any], batch: Mapping[str, Any], *, config, train_text_encoder: bool,
                  device) -> dict[str, Any]:
        """Both encoders' states as the context; the pooled output and the size numbers as
        the U-Net's `added_cond_kwargs`."""
        if batch.get("text_states") is not None:
            states, pooled = batch["text_states"].to(device), batch["pooled_states"].to(device)
        else:
            weights = applied_weights(batch.get("token_weights"), config.captions.weighted_captions, device)
            with torch.set_grad_enabled(train_text_encoder and torch.is_grad_enabled()):
                states, pooled = encode_tokens(text_encoders[0], text_encoders[1], batch["input_ids"].to(device),
                                               batch["input_ids_2"].to(device), weights)
        added = {"text_embeds": pooled, "time_ids": time_ids(batch, device, pooled.dtype)}
        return {"encoder_hidden_states": states, "added_cond_kwargs": added}

    # ---- sampling

    def build_pipeline(self, parts: Mapping[str, Any], scheduler) -> Any:
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=parts["vae"], text_encoder=parts["text_encoder"], text_encoder_2=parts["text_encoder_2"],
            tokenizer=parts["tokenizer"], tokenizer_2=parts["tokenizer_2"], unet=parts["unet"], scheduler=scheduler,
        )

    def prompt_embeddings(self, pipeline, prompt: str, negative_prompt: str, clip_skip: int) -> dict[str, Any]:
        return conditioning.prompt_embeddings(pipeline, prompt, negative_prompt)  # SDXL uses no clip skip

    # ---- tests

    def tiny_pipeline(self, seed: int = 0) -> Any:
        """A StableDiffusionXLPipeline with SDXL base's structure at tiny width, random weights.

        As SDXL: a first block without attention, deeper transformer stacks further down
        (`transformer_layers_per_block`), linear projections, CLIP-L (`text_encoder`) and an
        OpenCLIP-bigG-shaped encoder with a projection (`text_encoder_2`) whose hidden states
        are concatenated for cross-attention, and the "text_time" embedding that adds the
        second encoder's pooled output and six size/crop numbers to the timestep embedding.
        """
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        torch.manual_seed(seed)
        width_1, width_2, time_width = 32, 32, 8
        unet = UNet2DConditionModel(
            sample_size=8,  # 64 px / 8
            block_out_channels=(16, 32, 64),
            layers_per_block=2,
            norm_num_groups=8,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1, 2),  # SDXL: (1, 2, 10)
            attention_head_dim=(2, 4, 8),  # SDXL: (5, 10, 20), the heads per block
            use_linear_projection=True,
            cross_attention_dim=width_1 + width_2,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_width,
            projection_class_embeddings_input_dim=width_2 + 6 * time_width,
        )
        vae = tiny_vae(0.13025, force_upcast=True)
        tokenizer = tiny_tokenizer()
        tokenizer_2 = tiny_tokenizer(pad_token="!")  # OpenCLIP's tokenizer pads with "!"
        common = dict(
            vocab_size=len(tokenizer), intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
            max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=width_1, hidden_act="quick_gelu",
                                                    projection_dim=width_1, pad_token_id=tokenizer.pad_token_id,
                                                    **common))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=width_2, hidden_act="gelu", projection_dim=width_2, pad_token_id=tokenizer_2.pad_token_id,
            **common
        ))
        return StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
            tokenizer_2=tokenizer_2, unet=unet, scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULE),
            force_zeros_for_empty_prompt=True,
        )
