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

Light module (the descriptor): the plan and the TUI read it; the heavy half is runtime.py.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Mapping, Sequence

from engine.model.families.flux import layout
from engine.model.family import FamilyDescriptor, LoraComponent, descriptor_dataclass
from engine.model.objectives.flow_matching import flow_matching_unused
from engine.model.shapes import CLIP_BLOCKS, CLIP_TARGET_MODULES, LayerShape, ModelShapes, text_encoder_layers

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


def base_model_version(variant: str = "dev") -> str:  # noqa: ARG001 (the same for both variants)
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


# --------------------------------------------------------------------------- the descriptor

T5_TARGET_MODULES = ("q", "k", "v", "o", "wi_0", "wi_1", "wo")  # sd-scripts: T5Attention, T5DenseGatedActDense
T5_BLOCKS = ("T5Attention", "T5DenseGatedActDense")
TRANSFORMER_BLOCKS = ("FluxTransformerBlock", "FluxSingleTransformerBlock")
CARD_NOTE = ("Flux.1 on a 24 GB card: precision.fp8_base, gradient checkpointing and cached text outputs fit 1024² at "
             "batch 1 (about 16 GiB); on a 16 GB card: 512² with those, or 1024² with precision.blocks_to_swap")


def _header_keys(path: Path) -> list[str]:
    """Tensor names of a .safetensors file from its header alone (nothing else is read)."""
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100_000_000:
                return []
            return [key for key in json.loads(handle.read(length)) if key != "__metadata__"]
    except (OSError, ValueError, struct.error):
        return []


def config_variant(config, base_dir=".") -> str:
    """"dev" or "schnell" of a config's base model, when its files say; else "dev"."""
    from engine.paths import resolve_path

    path = resolve_path(base_dir, config.model.pretrained_model.strip())
    if path is not None and path.is_dir():
        return folder_variant(path) or "dev"
    if path is not None and path.is_file() and path.suffix.lower() == ".safetensors":
        return keys_variant(_header_keys(path)) or "dev"
    return "schnell" if "schnell" in config.model.pretrained_model.lower() else "dev"  # a hub id says it


def t5_tokens(config, base_dir=".") -> int:
    """T5 tokens per caption: the setting, else the variant's (sd-scripts' defaults)."""
    return config.flux.t5xxl_max_token_length or T5_MAX_TOKENS[config_variant(config, base_dir)]


def fused_layers(transformer: Mapping[str, Any]) -> list[LayerShape]:
    """The transformer's adapted modules as sd-scripts has them (fused qkv and linear1)."""
    inner = transformer.get("num_attention_heads", 24) * transformer.get("attention_head_dim", 128)
    mlp = 4 * inner
    stream = [LayerShape(inner, 3 * inner, 1, (inner,) * 3), LayerShape(inner, inner), LayerShape(inner, mlp),
              LayerShape(mlp, inner), LayerShape(inner, 6 * inner)]  # qkv, proj, mlp 0 and 2, modulation
    single = [LayerShape(inner, 3 * inner + mlp, 1, (inner, inner, inner, mlp)), LayerShape(inner + mlp, inner),
              LayerShape(inner, 3 * inner)]  # linear1 (q, k, v, MLP in), linear2, modulation
    return stream * 2 * transformer.get("num_layers", 19) + single * transformer.get("num_single_layers", 38)


def t5_layers(text: Mapping[str, Any]) -> list[LayerShape]:
    width, inner, feed = text["d_model"], text["num_heads"] * text["d_kv"], text["d_ff"]
    per_layer = [LayerShape(width, inner)] * 3 + [LayerShape(inner, width)] + [LayerShape(width, feed)] * 2 + [
        LayerShape(feed, width)]
    return per_layer * text["num_layers"]


@descriptor_dataclass
class Flux(FamilyDescriptor):
    def recognizes_folder(self, folder: Path) -> bool:
        return folder_variant(Path(folder)) is not None

    def recognizes_checkpoint(self, shapes: Mapping[str, Sequence[int]]) -> bool:
        return layout.is_bfl_transformer(shapes)

    def adapted_layers(self, spec, shapes: ModelShapes) -> list[LayerShape]:
        layers = fused_layers(shapes.denoiser) if spec.train_unet else []
        if spec.train_text_encoder:
            layers += text_encoder_layers(shapes.text_encoders[0])
            if spec.train_t5xxl:
                layers += t5_layers(shapes.text_encoders[1])
        return layers

    def activation_scale(self, shapes: ModelShapes) -> float:
        # the constants were measured at Flux.1's width (3072); the tiny test model is narrower
        transformer = shapes.denoiser
        return transformer.get("num_attention_heads", 24) * transformer.get("attention_head_dim", 128) / 3072

    def step_activations(self, config, shapes: ModelShapes, *, width: int, height: int, batch: int) -> float:
        tokens = (width // 16) * (height // 16) + t5_tokens(config)
        checkpointing = config.precision.gradient_checkpointing
        rank = config.network.rank if config.network.type in ("lora", "dora") else 0
        per_token = ACTIVATIONS_PER_TOKEN[checkpointing] + rank * ACTIVATIONS_PER_TOKEN_RANK[checkpointing]
        return batch * tokens * per_token * self.activation_scale(shapes)

    def resident_weights(self, config, parameters: Mapping[str, int], weight_bytes: int,
                         in_fp32: tuple[str, ...]) -> float:
        """The transformer (1 byte a weight under fp8_base), the VAE, and the text encoders only
        when they run every step: cached outputs send them off the GPU (runtime.py)."""
        transformer_bytes = 1 if config.precision.fp8_base else weight_bytes
        total = parameters.get("transformer", 0) * transformer_bytes
        total += parameters.get("vae", 0) * (4 if "vae" in in_fp32 else weight_bytes)
        if _text_encoders_run(config):
            t5_bytes = 1 if config.precision.fp8_base else weight_bytes
            total += parameters.get("text_encoder", 0) * weight_bytes + parameters.get("text_encoder_2", 0) * t5_bytes
        if config.precision.blocks_to_swap:
            total -= parameters.get("transformer", 0) * transformer_bytes * config.precision.blocks_to_swap / 57
        return total

    def system_ram_bytes(self, parameters: Mapping[str, int], weight_bytes: int, config=None) -> int:
        """loradeck's streaming load holds the process and the text encoders once they leave the
        GPU (engine.model.families.flux.system_ram_gib; a read-everything-first loader needs
        the files' sum)."""
        fp8 = bool(config is not None and config.precision.fp8_base)
        kept = not (config is not None and _text_encoders_run(config))
        text = (parameters.get("text_encoder", 0) * weight_bytes
                + parameters.get("text_encoder_2", 0) * (1 if fp8 else weight_bytes)) if kept else 0
        # a diffusers folder or hub id passes its parts through memory (from_pretrained): the
        # transformer, the largest, in the compute precision before fp8 storage
        streamed = config is not None and config.model.pretrained_model.strip().lower().endswith(".safetensors")
        through = 0 if streamed else parameters.get("transformer", 0) * weight_bytes
        return int(PROCESS_RAM * GIB + max(text, through))

    def fp32_under_fp16(self, config) -> tuple[str, ...]:
        return ("vae",)

    def network_problem(self, spec) -> str | None:
        if spec.type == "locon":
            return "network.type: locon adds LoRA to convolutions, and Flux.1's transformer has none; use lora"
        if spec.type not in layout.FLUX_NETWORK_TYPES:
            return (f"network.type: {spec.type} is not trained on Flux.1 (sd-scripts' Flux file fuses q, k and v, "
                    f"which loradeck writes exactly for {', '.join(layout.FLUX_NETWORK_TYPES)})")
        if spec.type == "dora" and spec.dora_layout != "output":
            return ("network.dora_layout: Flux.1's fused qkv takes DoRA's magnitude per output only; set "
                    "network.dora_layout = \"output\"")
        return None

    def plan_notes(self, config) -> list[str]:
        notes = [CARD_NOTE]
        precision = config.precision
        if not precision.fp8_base:
            notes.append("Flux.1: precision.fp8_base is off: the transformer alone holds 22 GiB in bf16 (11 in fp8)")
        if not precision.gradient_checkpointing:
            notes.append("Flux.1: precision.gradient_checkpointing is off: 1024² activations take about 42 GiB "
                         "per image (3 with it)")
        if precision.fp8_base and config.network.type == "dora":
            notes.append("Flux.1: DoRA cannot train over fp8_base weights (the run refuses it); use lora, loha or lokr")
        training = config.training
        unused = flow_matching_unused(training)
        if unused:
            notes.append(f"Flux.1: {', '.join(unused)} not used: flow matching draws sigmas by flux.timestep_sampling "
                         "and has no SNR schedule or noise offset (sd-scripts' Flux training ignores them too)")
        if training.loss_type in ("huber", "smooth_l1") and training.huber_schedule == "snr":
            notes.append("Flux.1: training.huber_schedule snr needs a DDPM schedule (the run refuses it); use "
                         "exponential or constant")
        if config.network.scale_weight_norms:
            notes.append(f"Flux.1: {SCALE_WEIGHT_NORMS_REFUSAL} (the run refuses it)")
        if precision.blocks_to_swap and not precision.gradient_checkpointing:
            notes.append("Flux.1: precision.blocks_to_swap needs precision.gradient_checkpointing (the run refuses it)")
        return notes

    def memory_advice(self, config) -> list[str]:
        precision, advice = config.precision, []
        if not precision.fp8_base:
            advice.append("turn on precision.fp8_base (the transformer's weights in 11 GiB instead of 22)")
        if _text_encoders_run(config):
            advice.append("turn off network.train_text_encoder and on precision.cache_text_encoder_outputs "
                          "(T5 and CLIP then leave the GPU after encoding the captions)")
        if precision.gradient_checkpointing and precision.blocks_to_swap < 40:
            advice.append(f"raise precision.blocks_to_swap (now {precision.blocks_to_swap}; each block about "
                          "0.2 GiB in fp8)")
        return advice

    def lora_metadata(self, config) -> dict[str, Any]:
        settings = config.flux
        variant = config_variant(config)
        return {"ss_base_model_version": base_model_version(variant), "ss_v2": False,
                "modelspec.architecture": modelspec_architecture(variant),
                "modelspec.implementation": MODELSPEC_IMPLEMENTATION,
                **training_settings_metadata(
                    timestep_sampling=settings.timestep_sampling, sigmoid_scale=settings.sigmoid_scale,
                    discrete_flow_shift=settings.discrete_flow_shift,
                    model_prediction_type=settings.model_prediction_type, guidance_scale=settings.guidance_scale,
                    apply_t5_attn_mask=settings.apply_t5_attn_mask)}


SCALE_WEIGHT_NORMS_REFUSAL = ("network.scale_weight_norms: not trained on Flux.1 yet (sd-scripts holds each fused "
                              "qkv Linear to the norm as one); set it to 0")


def _text_encoders_run(config) -> bool:
    """Whether CLIP-L and T5 run at every step (they train, or their outputs are not cached)."""
    return bool(config.network.train_text_encoder or not config.precision.cache_text_encoder_outputs)


FLUX = Flux(
    name="flux", label="Flux.1", runtime_path="engine.model.families.flux.runtime:FluxRuntime",
    default_resolution=DEFAULT_RESOLUTION, config_folder=ASSETS, denoiser="transformer",
    text_encoders=("text_encoder", "text_encoder_2"), tokenizers=("tokenizer", "tokenizer_2"),
    lora_components=(
        LoraComponent("transformer", "lora_unet", "unet", (), TRANSFORMER_BLOCKS),
        LoraComponent("text_encoder", "lora_te1", "text_encoder", CLIP_TARGET_MODULES, CLIP_BLOCKS,
                      text_model_level=True),
        LoraComponent("text_encoder_2", "lora_te3", "text_encoder_2", T5_TARGET_MODULES, T5_BLOCKS,
                      switch="train_t5xxl"),
    ),
    frozen_parameters=PARAMETERS["dev"],
    # GiB per 512² of pixels at 1024² (the plan uses step_activations; these give the checkpointing ratio)
    activations_per_image={False: 42.49 / 4, True: 2.89 / 4},
    vae_encode_per_image=VAE_ENCODE_PER_IMAGE,
    kohya_flags=("flux1_checkbox",),
    kohya_values={
        "ae": "model.ae", "clip_l": "model.clip_l", "t5xxl": "model.t5xxl",
        "flux1_clip_l": "model.clip_l", "flux1_t5xxl": "model.t5xxl",
        "fp8_base": "precision.fp8_base", "blocks_to_swap": "precision.blocks_to_swap",
        "flux1_cache_text_encoder_outputs": "precision.cache_text_encoder_outputs",
        "train_t5xxl": "network.train_t5xxl",
        "timestep_sampling": "flux.timestep_sampling", "sigmoid_scale": "flux.sigmoid_scale",
        "discrete_flow_shift": "flux.discrete_flow_shift", "model_prediction_type": "flux.model_prediction_type",
        "guidance_scale": "flux.guidance_scale", "t5xxl_max_token_length": "flux.t5xxl_max_token_length",
        "apply_t5_attn_mask": "flux.apply_t5_attn_mask",
    },
    kohya_notes={
        "flux1_cache_text_encoder_outputs_to_disk": "flux1_cache_text_encoder_outputs_to_disk: the captions' T5 "
        "outputs are cached in memory (4 MiB a caption at 512 tokens)",
        "split_mode": "split_mode: not honoured; precision.fp8_base and precision.blocks_to_swap fit small cards",
        "split_qkv": "split_qkv: not needed; loradeck writes sd-scripts' fused qkv, exactly",
        "cpu_offload_checkpointing": "cpu_offload_checkpointing: not honoured; use precision.blocks_to_swap",
        "flux_fused_backward_pass": "flux_fused_backward_pass: not honoured (an optimizer step per parameter); "
        "AdamW8bit and checkpointing keep the optimizer small",
        "blockwise_fused_optimizers": "blockwise_fused_optimizers: not honoured",
        "mem_eff_save": "mem_eff_save: not needed; a LoRA file is small",
        "enable_all_linear": "enable_all_linear: not honoured; every Linear of the blocks trains, as sd-scripts' default",
    },
    lora_loads_in_diffusers=False,
    kohya_script="flux_train_network.py", kohya_lora_type="Flux1", kohya_lora_module="networks.lora_flux",
    kohya_options={key: key for key in (
        "ae", "clip_l", "t5xxl", "fp8_base", "blocks_to_swap", "timestep_sampling", "sigmoid_scale",
        "discrete_flow_shift", "model_prediction_type", "guidance_scale", "t5xxl_max_token_length",
        "apply_t5_attn_mask")} | {"flux1_cache_text_encoder_outputs": "cache_text_encoder_outputs"},
    # networks.lora_flux's network_args the GUI passes for LoRA_type Flux1
    kohya_not_built={
        "train_blocks": (("all", ""), "training only the double or single blocks"),
        **{key: (("", 0), "per-block ranks") for key in (
            "img_attn_dim", "img_mlp_dim", "img_mod_dim", "single_dim", "txt_attn_dim", "txt_mlp_dim", "txt_mod_dim",
            "single_mod_dim", "in_dims")},
        "train_double_block_indices": (("", "all"), "training only some double blocks"),
        "train_single_block_indices": (("", "all"), "training only some single blocks"),
    },
)
DESCRIPTORS = (FLUX,)
