"""The heavy half of SD 1.x/2.x (engine.model.family.FamilyRuntime): a U-Net conditioned on
one CLIP encoder's hidden states, trained by DDPM (the objective, schedule, speed settings,
caption tokens, U-Net call and samplers are engine.model.unet_models.UNetClipRuntime's). Its
numbers are what loradeck computed before families existed: the same loss and the same
LoRA for the same seed."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from engine.model.families.sd import single_file
from engine.model.family import BaseModel, FamilyRuntime
from engine.model.parts import load_parts, pretrained
from engine.model.text_conditioning import TextStateCache, applied_weights, condition_on_tokens, encode_prompts
from engine.model.tiny_parts import tiny_clip_vocabulary, tiny_tokenizer, tiny_vae
from engine.model.unet_models import UNetClipRuntime

# SD1.5's noise schedule (scheduler/scheduler_config.json of runwayml/stable-diffusion-v1-5)
SD15_SCHEDULE = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
)


class StableDiffusionRuntime(UNetClipRuntime, FamilyRuntime):
    # ---- loading

    def load_diffusers(self, source: str, *, local_only: bool, dtype, vae_dtype) -> dict[str, Any]:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        return load_parts(source, local_only, {
            "unet": pretrained(UNet2DConditionModel, source, "unet", local_only, torch_dtype=dtype),
            "vae": pretrained(AutoencoderKL, source, "vae", local_only, torch_dtype=vae_dtype),
            "text_encoder": pretrained(CLIPTextModel, source, "text_encoder", local_only, dtype=dtype),
            "tokenizer": pretrained(CLIPTokenizer, source, "tokenizer", local_only),
            "scheduler": pretrained(DDPMScheduler, source, "scheduler", local_only),
        })

    # single files in the family's original layout (single_file.py), offline
    load_single_file = staticmethod(single_file.load_single_file)
    export_single_file = staticmethod(single_file.export_single_file)

    # ---- data

    def text_state_cache(self, model: BaseModel, captions, config, *, autocast=None) -> TextStateCache:
        """Every caption's U-Net conditioning, computed once (engine.model.text_conditioning)."""
        cache = TextStateCache()
        cache.fill(captions, model.tokenizer, model.text_encoder, max_token_length=config.captions.max_token_length,
                   weighted=config.captions.weighted_captions, clip_skip=config.model.clip_skip, autocast=autocast)
        return cache

    # ---- the step

    def condition(self, text_encoders: Sequence[Any], batch: Mapping[str, Any], *, config, train_text_encoder: bool,
                  device) -> dict[str, Any]:
        """CLIP's hidden states (clip skip, emphasis, 75-token windows) as the U-Net's context."""
        if batch.get("text_states") is not None:
            return {"encoder_hidden_states": batch["text_states"].to(device)}
        input_ids = batch["input_ids"].to(device)
        weights = applied_weights(batch.get("token_weights"), config.captions.weighted_captions, input_ids.device)
        with torch.set_grad_enabled(train_text_encoder and torch.is_grad_enabled()):
            states = condition_on_tokens(text_encoders[0], input_ids, clip_skip=config.model.clip_skip, weights=weights)
        return {"encoder_hidden_states": states}

    # ---- sampling

    def build_pipeline(self, parts: Mapping[str, Any], scheduler) -> Any:
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], unet=parts["unet"],
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )

    def prompt_embeddings(self, pipeline, prompt: str, negative_prompt: str, clip_skip: int) -> dict[str, Any]:
        positive, negative = encode_prompts(pipeline, prompt, negative_prompt, clip_skip)
        return {"prompt_embeds": positive, "negative_prompt_embeds": negative}

    # ---- tests

    def tiny_pipeline(self, seed: int = 0) -> Any:
        """A StableDiffusionPipeline with SD1.5's blocks and tiny widths, random weights."""
        from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8,  # 64 px / 8
            block_out_channels=(32, 32, 64, 64),
            layers_per_block=2,
            norm_num_groups=8,
            cross_attention_dim=32,
            attention_head_dim=2,  # SD1.5 passes the head count here (8); diffusers keeps the name
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
        vae = tiny_vae(0.18215)
        vocab, _ = tiny_clip_vocabulary()
        tokenizer = tiny_tokenizer()
        text_config = CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,  # enough for clip skip 2 and 3
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=32,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        text_encoder = CLIPTextModel(text_config)
        return StableDiffusionPipeline(
            unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            scheduler=PNDMScheduler(**SD15_SCHEDULE), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
