"""Flux.1 as its users download it: four single files, loaded offline.

    load_transformer(path, config_dir, dtype)   BFL's flux1-dev / flux1-schnell .safetensors
                                                (bf16 or fp8 e4m3fn; ComfyUI's model.diffusion_model.
                                                prefix or none) -> FluxTransformer2DModel
    load_clip_l(path, config_dir, dtype)        clip_l.safetensors  -> CLIPTextModel
    load_t5xxl(path, config_dir, dtype)         t5xxl_fp16 / t5xxl_fp8_e4m3fn  -> T5EncoderModel
    load_ae(path, config_dir, dtype)            ae.safetensors (BFL's autoencoder) -> AutoencoderKL
    transformer_to_bfl(state) / vae_to_bfl(vae) / clip_l_state / t5xxl_state   the other way

Each model is built on the meta device from a config (engine/model/assets/flux, or a
diffusers folder given as `config_dir`) and takes the file's tensors (`assign=True`),
each read, cast and put on the device one at a time: where sd-scripts' `flux_utils` reads
every file into memory first (24 GB for the transformer, 9.5 for T5), loading here holds
one tensor at a time; an fp8 file stays fp8 unless a dtype is asked for. The transformer's config is read from the file
itself (block counts, widths, guidance embedding: [dev] or [schnell]), so any model of
Flux.1's architecture loads; its fused projections are split by engine.model.families.flux.layout.
CLIP-L and T5 are already in transformers' layout in these files; the autoencoder is in
the LDM layout that diffusers' `AutoencoderKL.from_single_file` converts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import LoradeckError, first_line
from engine.model.families.flux import layout

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "flux"
UNSUPPORTED_FP8 = ("scale_weight", "scaled_fp8")  # ComfyUI's "scaled fp8" files carry per-tensor scales


def read_tensors(path: Path, *, device=None, dtype=None) -> dict[str, Any]:
    """The file's tensors, read one at a time and put on `device` in `dtype` as they are
    read (None: the file's; a callable: key -> dtype or None), so loading a 24 GB model
    never holds more than one of its tensors in memory twice (the file itself is mapped)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise LoradeckError(f"{path}: no such file")
    if path.suffix.lower() not in (".safetensors", ".sft"):
        raise LoradeckError(f"{path}: Flux weights load from .safetensors (or .sft) files only")
    tensors = {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                tensor = handle.get_tensor(key)
                wanted = dtype(key) if callable(dtype) else dtype
                if wanted is not None and tensor.is_floating_point() and tensor.dtype != wanted:
                    tensor = tensor.to(device=device, dtype=wanted)
                elif device is not None:
                    tensor = tensor.to(device)
                tensors[key] = tensor
    except Exception as error:  # safetensors raises its own error type and OSError
        raise LoradeckError(f"{path}: not a readable .safetensors file ({first_line(error)})") from error
    return tensors


def read_config(folder: Path, part: str, name: str = "config.json") -> dict[str, Any]:
    from engine.model.ldm_checkpoints import read_config as read_json_config

    return read_json_config(folder / part / name)


def save_file(state: dict[str, Any], path: Path, dtype=None) -> Path:
    from engine.model.ldm_checkpoints import save_ldm_file

    return save_ldm_file(state, Path(path), dtype)


def _assign(model, state: dict[str, Any], what: str, path: Path, config_source: Path):
    """Load `state` into a meta-device `model` (tensors taken as they are), or one line
    naming the first weight that is missing or misshapen."""
    from engine.model.ldm_checkpoints import check_fit

    check_fit(model, state, what, path, config_source)
    model.load_state_dict({key: state[key] for key in model.state_dict()}, strict=True, assign=True)
    return model.eval()


def _empty(factory):
    from accelerate import init_empty_weights

    with init_empty_weights():  # parameters on the meta device: nothing allocated
        return factory()


# --------------------------------------------------------------------------- transformer


def transformer_config(shapes: dict[str, tuple], config_dir: Path | None = None) -> dict[str, Any]:
    """FluxTransformer2DModel's config for a BFL file: the folder's (FLUX.1-dev's shipped one
    by default) with every size the keys say: blocks, widths, guidance embedding."""
    config = dict(read_config(config_dir or ASSETS, "transformer"))
    stripped = layout.strip_prefix(shapes)
    inner = int(shapes[stripped["img_in.weight"]][0])
    head = int(shapes[stripped["double_blocks.0.img_attn.norm.key_norm.scale"]][0])
    doubles, singles = layout.block_counts(shapes)
    config.update(
        in_channels=int(shapes[stripped["img_in.weight"]][1]), num_layers=doubles, num_single_layers=singles,
        attention_head_dim=head, num_attention_heads=inner // head,
        joint_attention_dim=int(shapes[stripped["txt_in.weight"]][1]),
        pooled_projection_dim=int(shapes[stripped["vector_in.in_layer.weight"]][1]),
        guidance_embeds=layout.has_guidance(shapes),
    )
    axes = config.get("axes_dims_rope", [16, 56, 56])
    if sum(axes) != head:  # Flux's split of a head (1/8 time, 7/16 height, 7/16 width), at this width
        axes = [head // 8, head * 7 // 16, head * 7 // 16]
    config["axes_dims_rope"] = axes
    return config


def bfl_to_diffusers(state: dict[str, Any]) -> dict[str, Any]:
    """BFL's transformer tensors named and split as diffusers' FluxTransformer2DModel has them."""
    import torch

    converted = {}
    for stored, names, sizes, swapped in layout.bfl_to_diffusers_plan({k: tuple(v.shape) for k, v in state.items()}):
        tensor = state[stored]
        if swapped:
            shift, scale = tensor.chunk(2, dim=0)
            tensor = torch.cat([scale, shift], dim=0)
        parts = torch.split(tensor, list(sizes), dim=0) if sizes else (tensor,)
        if len(parts) != len(names):
            raise layout.LayoutError(f"{stored} does not split into {len(names)} parts")
        converted.update(zip(names, parts))
    return converted


def transformer_to_bfl(state: dict[str, Any]) -> dict[str, Any]:
    """diffusers' FluxTransformer2DModel tensors in BFL's layout (fused, final halves swapped)."""
    import torch

    plan = layout.bfl_plan_from_diffusers(state.keys())
    bfl = {}
    for stored, names, _, swapped in plan:
        tensor = torch.cat([state[name] for name in names], dim=0) if len(names) > 1 else state[names[0]]
        if swapped:
            scale, shift = tensor.chunk(2, dim=0)
            tensor = torch.cat([shift, scale], dim=0)
        bfl[stored] = tensor
    return bfl


def _check_fp8_layout(state: dict[str, Any], path: Path) -> None:
    if any(key.endswith(UNSUPPORTED_FP8) for key in state):
        raise LoradeckError(f"{path}: a 'scaled fp8' checkpoint (per-tensor scale_weight keys); use the bf16 or the "
                            "plain fp8 e4m3fn file (flux1-dev.safetensors / flux1-dev-fp8.safetensors)")


def load_transformer(path: str | Path, *, config_dir: Path | None = None, dtype=None, device=None):
    """FluxTransformer2DModel from a BFL single file, its tensors put on `device` as they are
    read. `dtype` None keeps the file's dtypes (fp8 weights stay fp8); a callable gives each
    BFL key its dtype (fp8_base: engine.model.families.flux.fp8.bfl_dtypes)."""
    from diffusers import FluxTransformer2DModel

    path = Path(path)
    state = read_tensors(path, device=device, dtype=dtype)
    if not layout.is_bfl_transformer(state):
        raise LoradeckError(f"{path}: not a Flux.1 transformer in BFL's layout (no double_blocks.0.img_attn.qkv)")
    _check_fp8_layout(state, path)
    try:
        config = transformer_config({key: tuple(value.shape) for key, value in state.items()}, config_dir)
        converted = bfl_to_diffusers(state)
    except (layout.LayoutError, KeyError) as error:
        raise LoradeckError(f"{path}: {first_line(error)}") from None
    del state
    model = _empty(lambda: FluxTransformer2DModel.from_config(config))
    return _assign(model, converted, "transformer", path, config_dir or ASSETS)


# --------------------------------------------------------------------------- text encoders


def clip_l_state(clip) -> dict[str, Any]:
    """CLIP-L as clip_l.safetensors holds it: transformers' names under `text_model.`."""
    return {"text_model." + key.removeprefix("text_model."): value for key, value in clip.state_dict().items()}


def load_clip_l(path: str | Path, *, config_dir: Path | None = None, dtype=None, device=None):
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.model.ldm_checkpoints import match_text_model_level

    path, folder = Path(path), config_dir or ASSETS
    state = {key: value for key, value in read_tensors(path, device=device, dtype=dtype).items()
             if key.startswith("text_model.")}
    if not state:
        raise LoradeckError(f"{path}: not a CLIP-L text encoder (no text_model.* weights)")
    model = _empty(lambda: CLIPTextModel(CLIPTextConfig.from_dict(read_config(folder, "text_encoder"))))
    state = match_text_model_level(state, model)
    return _assign(model, state, "CLIP-L", path, folder / "text_encoder")


def t5xxl_state(t5) -> dict[str, Any]:
    """T5's encoder as t5xxl_fp16.safetensors holds it: one copy of the token embedding (`shared`)."""
    return {key: value for key, value in t5.state_dict().items() if key != "encoder.embed_tokens.weight"}


def load_t5xxl(path: str | Path, *, config_dir: Path | None = None, dtype=None, device=None):
    from transformers import T5Config, T5EncoderModel

    path, folder = Path(path), config_dir or ASSETS
    state = read_tensors(path, device=device, dtype=dtype)
    if not any(key.startswith("encoder.block.") for key in state):
        raise LoradeckError(f"{path}: not a T5 encoder (no encoder.block.* weights)")
    _check_fp8_layout(state, path)
    # files keep the token embedding once, under either name; the model has it under both (tied)
    embedding = state.get("shared.weight", state.get("encoder.embed_tokens.weight"))
    if embedding is not None:
        state.setdefault("shared.weight", embedding)
        state.setdefault("encoder.embed_tokens.weight", embedding)
    model = _empty(lambda: T5EncoderModel(T5Config.from_dict(read_config(folder, "text_encoder_2"))))
    return _assign(model, state, "T5", path, folder / "text_encoder_2")


# --------------------------------------------------------------------------- autoencoder


def vae_to_bfl(vae) -> dict[str, Any]:
    """The autoencoder in BFL's ae.safetensors layout (LDM's names, no prefix)."""
    from engine.model.ldm_checkpoints import VAE_PREFIX, vae_to_ldm

    return {key.removeprefix(VAE_PREFIX): value for key, value in vae_to_ldm(vae.state_dict(), vae.config).items()}


def load_ae(path: str | Path, *, config_dir: Path | None = None, dtype=None):
    from engine.model.ldm_checkpoints import build_vae

    path, folder = Path(path), config_dir or ASSETS
    state = read_tensors(path)
    if "decoder.conv_in.weight" not in state and "first_stage_model.decoder.conv_in.weight" not in state:
        raise LoradeckError(f"{path}: not an autoencoder (no decoder.conv_in weights)")
    vae = build_vae(state, folder, path, dtype)
    if vae.config.latent_channels != 16:
        raise LoradeckError(f"{path}: a {vae.config.latent_channels}-channel autoencoder; Flux.1's has 16 (ae.safetensors)")
    return vae
