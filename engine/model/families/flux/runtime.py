"""The heavy half of Flux.1 (engine.model.family.FamilyRuntime): a transformer on packed latents
conditioned on CLIP-L's pooled output and T5's states, trained by flow matching (see this
folder's __init__ for what differs and where each piece lives).

Text encoders and memory: when captions' outputs are cached (`text_state_cache`), CLIP-L and
T5 leave the GPU afterwards and visit it only to encode a sample prompt or a validation
caption (`_on_device`), as sd-scripts moves them to the CPU; `place_parts` stores the frozen
weights in fp8 under `precision.fp8_base`, and `apply_speed_settings` swaps blocks under
`precision.blocks_to_swap`.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from engine.errors import LoradeckError
from engine.model.families.flux import DEFAULT_GUIDANCE, SCALE_WEIGHT_NORMS_REFUSAL, T5_MAX_TOKENS, loading, t5_tokens
from engine.model.families.flux import latents as flux_latents
from engine.model.families.flux import network as flux_network
from engine.model.families.flux import sampling, single_files
from engine.model.families.flux import text as flux_text
from engine.model.family import BaseModel, FamilyRuntime
from engine.model.objectives.flow_matching import FlowMatchingObjective, read_prediction
from engine.model.text_conditioning import text_cache_refusal


@contextlib.contextmanager
def _on_device(modules, device):
    """The modules on `device` for the block, back where each was after it."""
    places = [(module, next(module.parameters()).device) for module in modules]
    moved = [(module, place) for module, place in places if place != torch.device(device)]
    for module, _ in moved:
        module.to(device)
    try:
        yield
    finally:
        for module, place in moved:
            module.to(place)


class FluxCaptionTokens:
    """Each caption's CLIP-L ids (77) and T5 ids and mask (t5xxl_max_token_length)."""

    def __init__(self, tokenizers, t5_length: int):
        self.tokenizers, self.t5_length = tokenizers, t5_length

    def example(self, caption: str) -> dict[str, torch.Tensor]:
        tokens = flux_text.tokenize(self.tokenizers, [caption], self.t5_length)
        return {key: value[0] for key, value in tokens.items()}


class FluxTextStateCache:
    """T5's states, CLIP-L's pooled output and T5's mask of every distinct caption, computed
    once, on the CPU in the dtype the encoders give (bf16 under bf16: 4 MiB a caption at 512
    T5 tokens)."""

    def __init__(self):
        self.states: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.states)

    def example(self, caption: str) -> dict[str, torch.Tensor]:
        states, pooled, mask = self.states[caption]
        return {"text_states": states, "pooled_states": pooled, "attention_mask_2": mask}

    @torch.no_grad()
    def fill(self, captions, tokenizers, text_encoders, *, t5_length: int, apply_t5_mask: bool, device,
             batch_size: int = 16, autocast=None, progress=None) -> None:
        todo = sorted(set(captions) - set(self.states))
        with _on_device(text_encoders, device):
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                tokens = flux_text.tokenize(tokenizers, chunk, t5_length)
                with autocast() if autocast is not None else contextlib.nullcontext():
                    pooled, states = flux_text.encode(text_encoders, tokens, apply_t5_mask=apply_t5_mask)
                for index, caption in enumerate(chunk):
                    self.states[caption] = (states[index].cpu().clone(), pooled[index].cpu().clone(),
                                            tokens["attention_mask_2"][index].clone())
                if progress is not None:
                    progress(start + len(chunk))


class FluxRuntime(FamilyRuntime):
    # ---- loading

    def load_diffusers(self, source: str, *, local_only: bool, dtype, vae_dtype) -> dict[str, Any]:
        parts = loading.load_diffusers(source, local_only=local_only, dtype=dtype, vae_dtype=vae_dtype)
        parts.pop("variant")
        return parts

    def single_file_companions(self, config, base_dir) -> dict[str, Any]:
        """The other three files (model.clip_l, t5xxl, ae) and how the transformer is stored."""
        from engine.paths import resolve_path

        files = {}
        for name in ("clip_l", "t5xxl", "ae"):
            value = getattr(config.model, name).strip()
            files[name] = resolve_path(base_dir, value) if value else ""
        return {**files, "fp8_base": config.precision.fp8_base}

    def load_single_file(self, path: Path, *, allow_ckpt: bool, config_dir: Path | None, prediction_type: str | None,
                         dtype, clip_l="", t5xxl="", ae="", fp8_base: bool = False) -> dict[str, Any]:
        from engine.model.families.flux.fp8 import bfl_dtypes

        from engine.model.families.flux import FLUX

        if Path(path).suffix.lower() != ".safetensors":
            raise LoradeckError(f"model.pretrained_model: {path}: Flux.1 loads from .safetensors files only")
        parts = loading.load_single_files(path, clip_l=clip_l, t5xxl=t5xxl, ae=ae, config_dir=config_dir or FLUX.config_folder,
                                          dtype=bfl_dtypes(dtype) if fp8_base else dtype, text_dtype=dtype,
                                          vae_dtype=torch.float32 if dtype == torch.float16 else dtype,
                                          local_only=False)
        parts.pop("variant")
        return parts

    def export_single_file(self, diffusers_dir: Path, out_path: Path, *, dtype=None) -> Path:
        """BFL's single-file transformer (what ComfyUI and sd-scripts load beside clip_l, t5xxl
        and ae), every weight checked to come back under its own name first."""
        from diffusers import FluxTransformer2DModel

        from engine.errors import first_line
        from engine.model.families.flux import folder_variant

        source = Path(diffusers_dir)
        if folder_variant(source) is None:
            raise LoradeckError(f"{source}: not a Flux.1 diffusers folder")
        try:
            transformer = FluxTransformer2DModel.from_pretrained(source, subfolder="transformer", local_files_only=True)
        except (OSError, ValueError) as error:
            raise LoradeckError(f"{source}: cannot load the Flux.1 transformer ({first_line(error)})") from error
        weights = transformer.state_dict()
        state = single_files.transformer_to_bfl(weights)
        back = single_files.bfl_to_diffusers(state)
        if back.keys() != weights.keys() or any(not torch.equal(back[key], weights[key]) for key in weights):
            raise LoradeckError(f"{source}: the transformer does not survive BFL's layout; nothing written")
        return single_files.save_file(state, Path(out_path), dtype)

    def place_parts(self, parts: dict[str, Any], config, *, device, dtype, in_fp32: tuple[str, ...]) -> None:
        """fp8_base: the transformer's block weights (and T5's) stored in fp8, the rest as
        every family's parts (engine.model.family.FamilyRuntime.place_parts)."""
        if config.precision.fp8_base:
            from engine.model.families.flux import fp8

            fp8.check_network(config.network.type)
            fp8.store_transformer_in_fp8(parts["transformer"], dtype)
            fp8.store_t5_in_fp8(parts["text_encoder_2"], dtype)
            stored = {name: parts.pop(name) for name in ("transformer", "text_encoder_2")}
            for module in stored.values():
                module.to(device)
                module.requires_grad_(False)
            super().place_parts(parts, config, device=device, dtype=dtype, in_fp32=in_fp32)
            parts.update(stored)
            return
        super().place_parts(parts, config, device=device, dtype=dtype, in_fp32=in_fp32)

    def training_scheduler(self, scheduler, config) -> Any:
        return scheduler  # flow matching draws its own sigmas; the schedule seeds the sampler

    def objective(self, scheduler, config):
        if config.network.scale_weight_norms:
            # sd-scripts holds each fused Linear (q, k and v as one) to the norm; the max norm
            # here scales each diffusers module, and its shared down factor more than once
            raise LoradeckError(SCALE_WEIGHT_NORMS_REFUSAL)
        return FlowMatchingObjective(config.flux, config.training)

    # ---- speed

    def apply_speed_settings(self, model: BaseModel, precision, *, train_text_encoder: bool, network_type: str) -> None:
        transformer = model.denoiser
        if precision.attention == "xformers":
            raise LoradeckError("precision.attention: Flux.1's attention runs PyTorch's SDPA (flash or memory-"
                                "efficient kernels); use sdpa")
        if precision.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
            for encoder in model.text_encoders if train_text_encoder else []:
                encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if precision.blocks_to_swap:
            from engine.model.families.flux.block_swap import BlockSwap

            device = next(transformer.parameters()).device
            transformer.loradeck_block_swap = BlockSwap(transformer, precision.blocks_to_swap, device,
                                                        gradient_checkpointing=precision.gradient_checkpointing)

    # ---- data

    def caption_tokens(self, tokenizers, *, max_token_length: int, weighted: bool, config=None) -> FluxCaptionTokens:
        return FluxCaptionTokens(tokenizers, t5_tokens(config) if config is not None else T5_MAX_TOKENS["dev"])

    def text_state_cache(self, model: BaseModel, captions, config, *, autocast=None,
                         progress=None) -> FluxTextStateCache:
        """Every caption's outputs, encoded on the training device; CLIP-L and T5 then leave it
        (they come back for sample prompts and validation captions only)."""
        device = next(model.denoiser.parameters()).device
        cache = FluxTextStateCache()
        cache.fill(captions, model.tokenizers, model.text_encoders, t5_length=t5_tokens(config),
                   apply_t5_mask=config.flux.apply_t5_attn_mask, device=device, autocast=autocast,
                   progress=progress)
        if text_cache_refusal(config, config.network.train_text_encoder) is None:
            for encoder in model.text_encoders:
                encoder.to("cpu")
        return cache

    # ---- the step

    def condition(self, text_encoders: Sequence[Any], batch: Mapping[str, Any], *, config, train_text_encoder: bool,
                  device) -> dict[str, Any]:
        """T5's states as the text tokens, CLIP-L's pooled output, the guidance to embed, and how
        to read the prediction; from the cache, else by the encoders (brought to `device`)."""
        settings = config.flux
        if batch.get("text_states") is not None:
            states, pooled = batch["text_states"].to(device), batch["pooled_states"].to(device)
        else:
            tokens = {key: batch[key] for key in ("input_ids", "input_ids_2", "attention_mask_2")}
            with _on_device(text_encoders, device), \
                    torch.set_grad_enabled(train_text_encoder and torch.is_grad_enabled()):
                pooled, states = flux_text.encode(text_encoders, tokens, apply_t5_mask=settings.apply_t5_attn_mask)
        mask = batch["attention_mask_2"].to(device) if settings.apply_t5_attn_mask else None
        return {"encoder_hidden_states": states, "pooled_projections": pooled, "t5_mask": mask,
                "guidance_scale": settings.guidance_scale, "prediction_type": settings.model_prediction_type}

    def predict(self, denoiser, noisy_latents, timesteps, conditioning: dict[str, Any]):
        """Packed 2x2 tokens with their positions, the sigmas as timesteps, the guidance for
        [dev]; unpacked, then read as `model_prediction_type` says."""
        config = getattr(denoiser, "module", denoiser).config  # accelerate may wrap it
        batch, _, height, width = noisy_latents.shape
        states = conditioning["encoder_hidden_states"]
        packed = flux_latents.pack(noisy_latents)
        device = noisy_latents.device
        guidance = flux_latents.guidance_vector(conditioning["guidance_scale"], batch, config.guidance_embeds, device)
        extra = {}
        if conditioning.get("t5_mask") is not None:
            extra["joint_attention_kwargs"] = {
                "attention_mask": flux_text.joint_attention_mask(conditioning["t5_mask"], packed.shape[1])}
        prediction = denoiser(hidden_states=packed, encoder_hidden_states=states,
                              pooled_projections=conditioning["pooled_projections"], timestep=timesteps,
                              img_ids=flux_latents.image_ids(height, width, device=device),
                              txt_ids=flux_latents.text_ids(states.shape[1], device=device), guidance=guidance,
                              **extra).sample
        prediction = flux_latents.unpack(prediction, height, width)
        return read_prediction(prediction, noisy_latents, timesteps, conditioning["prediction_type"])

    # ---- the LoRA file: sd-scripts' fused modules (network.py)

    def lora_file_tensors(self, tensors: dict[str, Any]) -> dict[str, Any]:
        return flux_network.fuse_file_tensors(tensors)

    def lora_network_tensors(self, tensors: dict[str, Any]) -> dict[str, Any]:
        return flux_network.split_file_tensors(tensors)

    def adapters_attached(self, component, module, spec) -> None:
        if component.part == "transformer":
            flux_network.tie(module, spec)

    # ---- sampling

    def sampling_scheduler(self, sampler: str, base_config, *, v_prediction: bool = False) -> Any:
        """Flow-matching Euler on the model's own schedule, whatever `--ss` says (sd-scripts'
        Flux samples have no other sampler)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(base_config)

    def build_pipeline(self, parts: Mapping[str, Any], scheduler) -> Any:
        return sampling.build_pipeline(dict(parts), scheduler)

    def prompt_embeddings(self, pipeline, prompt: str, negative_prompt: str, clip_skip: int) -> dict[str, Any]:
        with _on_device([pipeline.text_encoder, pipeline.text_encoder_2], pipeline.transformer.device):
            return sampling.prompt_embeddings(pipeline, prompt, negative_prompt, _sample_t5_tokens(pipeline))

    def sample_arguments(self, pipeline, prompt, clip_skip: int) -> dict[str, Any]:
        """sd-scripts' Flux samples: `--g` the embedded guidance, `--l` true CFG only when given,
        sizes in multiples of 16."""
        guidance_embeds = pipeline.transformer.config.guidance_embeds
        true_cfg = prompt.cfg if prompt.cfg_given else 1.0
        width, height = sampling.sample_size(prompt)
        embeddings = self.prompt_embeddings(pipeline, prompt.prompt, prompt.negative_prompt, clip_skip)
        if true_cfg <= 1:
            embeddings = {key: value for key, value in embeddings.items() if not key.startswith("negative_")}
        guidance = prompt.guidance if prompt.guidance is not None else DEFAULT_GUIDANCE[
            "dev" if guidance_embeds else "schnell"]
        return {**embeddings, "width": width, "height": height, "num_inference_steps": prompt.steps,
                "guidance_scale": guidance, "true_cfg_scale": true_cfg,
                "max_sequence_length": _sample_t5_tokens(pipeline)}

    def decode(self, pipeline, latents, *, width: int | None = None, height: int | None = None):
        return flux_latents.decode_latents(pipeline.vae, flux_latents.unpack(latents, height // 8, width // 8))

    # ---- tests

    def tiny_pipeline(self, seed: int = 0) -> Any:
        from engine.model.families.flux.tiny import make_tiny_flux_pipeline

        return make_tiny_flux_pipeline(seed)


def _sample_t5_tokens(pipeline) -> int:
    return T5_MAX_TOKENS["dev" if pipeline.transformer.config.guidance_embeds else "schnell"]
