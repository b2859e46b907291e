"""The original LDM / AUTOMATIC1111 single-file layout: reading checkpoints, the key maps
to and from diffusers, building each component offline, writing a file. Shared by the
families whose single files use it (SD 1.x/2.x, SDXL: engine.model.families.<name>.single_file).

    read_checkpoint(path, allow_ckpt=...)      tensors by key (.safetensors; .ckpt weights-only)
    build_unet / build_vae / build_text_encoder(state, config_folder, path, dtype)
    load_single_file_vae(path, config_dir=...) an AutoencoderKL from a VAE file
    unet_to_ldm / vae_to_ldm / text_encoder_to_ldm, and back: unet_to_diffusers, ...
    unet_module_to_ldm(name, ...), kohya_unet_name_to_ldm(name, ...)   LoRA keys' module names
    check_round_trip(source, components); save_ldm_file(state, out_path, dtype)

Loading needs no network at all: the model configs and CLIP's BPE vocabulary ship in
`engine/model/assets/` as diffusers folders hold them, and each component is loaded by
diffusers' own `from_single_file(..., config=<that folder>, local_files_only=True)` (a text
encoder by the function the pipelines' `from_single_file` uses). We keep what diffusers
does not do: the `.ckpt` gate (a pickle is only read with torch's weights-only loader, and
only when the caller allows it: nothing is ever unpickled), a one-line message naming the
weight that does not fit, and the export. Shared machinery: imports no family.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from engine.atomic import atomic_path
from engine.errors import LoradeckError, first_line

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"
CLIP_TOKENIZER_DIR = ASSETS / "clip_tokenizer"
# SD's VAE architecture, which SD 1.x, 2.x and SDXL share (only the weights and scale differ)
VAE_CONFIGS = ASSETS / "sd15"

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # SD 1.x: OpenAI CLIP in transformers' layout
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD 2.x: OpenCLIP's own layout

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


# ---------------------------------------------------------------- reading a checkpoint


def read_checkpoint(path: str | Path, *, allow_ckpt: bool = False) -> dict[str, Any]:
    """The file's tensors by key. `.safetensors` always; pickle formats only weights-only."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise LoradeckError(f"{path}: no such checkpoint file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as error:  # safetensors raises its own error type and OSError
            raise LoradeckError(f"{path}: not a readable .safetensors file ({first_line(error)})") from error
    elif suffix in PICKLE_SUFFIXES:
        if not allow_ckpt:
            raise LoradeckError(
                f"{path}: {suffix} files are Python pickles and are not loaded by default; set "
                "model.allow_ckpt = true to read its tensors with torch's weights-only loader, "
                "or convert it to .safetensors"
            )
        import pickle

        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise LoradeckError(
                f"{path}: holds Python objects besides tensors, so the weights-only loader refused it "
                "(nothing was unpickled); convert it to .safetensors with a tool you trust"
            ) from error
        except Exception as error:  # truncated zip, bad magic number, EOF
            raise LoradeckError(f"{path}: not a readable checkpoint ({first_line(error)})") from error
    else:
        raise LoradeckError(f"{path}: not a checkpoint file (expected .safetensors, or .ckpt with model.allow_ckpt)")

    # Lightning checkpoints nest the weights under "state_dict", sometimes twice.
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise LoradeckError(f"{path}: holds a {type(state).__name__}, not a dictionary of weights")
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}


# ---------------------------------------------------------------- configs and tokenizer


def config_folder(config_dir: str | Path | None, shipped: Path) -> Path:
    """The diffusers folder whose configs describe a single file: `config_dir` when given,
    else the family's `shipped` one."""
    folder = Path(config_dir) if config_dir is not None else shipped
    if not (folder / "unet" / "config.json").is_file():
        raise LoradeckError(f"{folder}: not a diffusers model folder (no unet/config.json)")
    return folder


def read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LoradeckError(f"{path}: missing model config") from None
    except (OSError, ValueError) as error:
        raise LoradeckError(f"{path}: unreadable model config ({first_line(error)})") from error


def load_tokenizer(config_dir: str | Path | None = None, subfolder: str = "tokenizer"):
    """CLIPTokenizer for a model folder (its `subfolder`: SDXL's second is tokenizer_2), offline.

    A folder whose `tokenizer/` holds a vocabulary (vocab.json) is loaded as is. Otherwise
    (our shipped configs) the vocabulary is CLIP's BPE from `engine/model/assets/clip_tokenizer`,
    with the folder's tokenizer settings: SD 2.x pads with "!" where SD 1.x pads with
    <|endoftext|>, and the padding token is what the text encoder sees after a prompt.
    """
    from transformers import CLIPTokenizer

    folder = Path(config_dir) / subfolder if config_dir is not None else CLIP_TOKENIZER_DIR
    if (folder / "vocab.json").is_file():
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    settings_file = folder / "tokenizer_config.json"
    settings = read_config(settings_file) if settings_file.is_file() else {}
    overrides = {key: settings[key] for key in ("pad_token", "model_max_length") if key in settings}
    return CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR), local_files_only=True, **overrides)


def load_scheduler(folder: Path, prediction_type: str | None):
    import diffusers

    config = read_config(folder / "scheduler" / "scheduler_config.json")
    class_name = config.get("_class_name", "PNDMScheduler")
    scheduler_class = getattr(diffusers, class_name, None)
    if scheduler_class is None or not issubclass(scheduler_class, diffusers.SchedulerMixin):
        raise LoradeckError(f"{folder / 'scheduler' / 'scheduler_config.json'}: unknown scheduler {class_name!r}")
    overrides = {"prediction_type": prediction_type} if prediction_type else {}
    return scheduler_class.from_config(config, **overrides)


# ---------------------------------------------------------------- LDM keys -> diffusers
# diffusers' converters, as its from_single_file applies them: used to name what does not
# fit when loading fails, and to check an export's round trip


def unet_to_diffusers(state: dict[str, Any], unet_config: dict[str, Any]) -> dict[str, Any]:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    return convert_ldm_unet_checkpoint({k: v for k, v in state.items() if k.startswith(UNET_PREFIX)}, unet_config)


def vae_to_diffusers(state: dict[str, Any], vae_config: dict[str, Any]) -> dict[str, Any]:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    state = vae_weights_of(state)
    if "encoder.down_blocks.0.resnets.0.norm1.weight" in state:
        return state  # already in diffusers' layout (a diffusers VAE saved as one file)
    return convert_ldm_vae_checkpoint(state, vae_config)


def text_encoder_to_diffusers(state: dict[str, Any], text_encoder) -> dict[str, Any]:
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint

    state = text_encoder_weights_of(state)
    if any(key.startswith(OPEN_CLIP_PREFIX) for key in state):
        converted = convert_open_clip_checkpoint(text_encoder, state, prefix=OPEN_CLIP_PREFIX)
    else:
        converted = convert_ldm_clip_checkpoint(state)
    return match_text_model_level(converted, text_encoder)


def match_text_model_level(weights: dict[str, Any], text_encoder) -> dict[str, Any]:
    """Converted CLIP weights named as `text_encoder` names them: transformers >= 5.6
    flattened CLIPTextModel (no `text_model.` level); older ones, and
    CLIPTextModelWithProjection, keep it."""
    weights = {key.removeprefix("text_model."): value for key, value in weights.items()}
    if hasattr(text_encoder, "text_model"):
        weights = {f"text_model.{key}": value for key, value in weights.items()}
    return weights


def vae_weights_of(state: dict[str, Any]) -> dict[str, Any]:
    """The VAE's weights in the original layout, with the `first_stage_model.` prefix or without."""
    if any(key.startswith(VAE_PREFIX) for key in state):
        return {key: value for key, value in state.items() if key.startswith(VAE_PREFIX)}
    return dict(state)


def text_encoder_weights_of(state: dict[str, Any]) -> dict[str, Any]:
    """The text encoder's weights, with the `text_model.` level that old SD 1.x merges
    (saved by old transformers) lack put back, so diffusers' converter recognises them."""
    text_state = {key: value for key, value in state.items() if key.startswith("cond_stage_model.")}
    if CLIP_PREFIX + "embeddings.token_embedding.weight" in text_state:
        text_state = {
            CLIP_PREFIX + "text_model." + key[len(CLIP_PREFIX):] if key.startswith(CLIP_PREFIX) else key: value
            for key, value in text_state.items()
        }
    return text_state


# ---------------------------------------------------------------- building the models


def load_component(load, diagnose, what: str, path: Path, folder: Path):
    """`load()` is diffusers' own single-file loading of one component. When it fails,
    `diagnose()` (our key conversion against a meta-device model of the config) names the
    missing or misshapen weight in one line; diffusers' errors do not (a missing weight
    surfaces as "Cannot copy out of meta tensor")."""
    # diffusers logs a warning about float32 modules at every cast, even when there are none
    casting_log = logging.getLogger("diffusers.models.modeling_utils")
    level = casting_log.level
    casting_log.setLevel(logging.ERROR)
    try:
        return load().eval()
    except LoradeckError:
        raise
    except Exception as error:  # diffusers raises ValueError, KeyError, NotImplementedError, ...
        diagnose()
        raise LoradeckError(
            f"{path}: the {what} does not load with the config in {folder} ({first_line(error)})"
        ) from error
    finally:
        casting_log.setLevel(level)


def check_fit(model, weights: dict[str, Any], what: str, path: Path, config_source: Path) -> None:
    """Any gap or shape mismatch between converted weights and the config's model is the user's file."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in weights]
    if missing:
        raise LoradeckError(
            f"{path}: does not fit the {what} config in {config_source}: {len(missing)} weights missing "
            f"(first: {missing[0]}); the file is incomplete or another architecture"
        )
    for key, target in expected.items():
        if tuple(weights[key].shape) != tuple(target.shape):
            raise LoradeckError(
                f"{path}: {what} weight {key} has shape {tuple(weights[key].shape)} but the config in "
                f"{config_source} expects {tuple(target.shape)}; the file is another architecture"
            )


def _empty(factory):
    from accelerate import init_empty_weights

    with init_empty_weights():  # parameters on the meta device: nothing allocated
        return factory()


def _from_single_file(model_class, weights, to_diffusers, what: str, subfolder: str, folder: Path, path: Path,
                      dtype):
    """One component of an original-layout checkpoint by diffusers' single-file loader, with
    the config of `folder/subfolder`; on failure, our conversion (`to_diffusers`) against a
    meta-device model of that config names the weight that does not fit."""
    part_folder = folder / subfolder

    def diagnose():
        model = _empty(lambda: model_class.from_config(read_config(part_folder / "config.json")))
        check_fit(model, to_diffusers(weights, model.config), what, path, part_folder)

    return load_component(
        lambda: model_class.from_single_file(
            weights, config=str(folder), subfolder=subfolder, local_files_only=True, torch_dtype=dtype
        ),
        diagnose, what, path, part_folder,
    )


def build_unet(state, folder: Path, path: Path, dtype):
    from diffusers import UNet2DConditionModel

    # Only the model.diffusion_model.* keys: full checkpoints also carry model_ema.*, and
    # diffusers' converter, like sd-scripts, takes the non-EMA weights.
    unet_state = {key: value for key, value in state.items() if key.startswith(UNET_PREFIX)}

    return _from_single_file(UNet2DConditionModel, unet_state, unet_to_diffusers, "U-Net", "unet", folder, path, dtype)


def build_vae(state, folder: Path, path: Path, dtype):
    from diffusers import AutoencoderKL

    vae_state = vae_weights_of(state)
    config = folder / "vae" / "config.json"
    if "encoder.down_blocks.0.resnets.0.norm1.weight" in vae_state:
        # a diffusers VAE saved as one file: already in diffusers' layout
        vae = _empty(lambda: AutoencoderKL.from_config(read_config(config)))
        check_fit(vae, vae_state, "VAE", path, folder / "vae")
        vae.load_state_dict({key: value.to(dtype) for key, value in vae_state.items() if key in vae.state_dict()},
                            strict=True, assign=True)
        return vae.eval()

    return _from_single_file(AutoencoderKL, vae_state, vae_to_diffusers, "VAE", "vae", folder, path, dtype)


def build_text_encoder(state, folder: Path, path: Path, dtype):
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextConfig, CLIPTextModel

    text_state = text_encoder_weights_of(state)

    def diagnose():
        config = CLIPTextConfig.from_dict(read_config(folder / "text_encoder" / "config.json"))
        text_encoder = _empty(lambda: CLIPTextModel(config))
        check_fit(text_encoder, text_encoder_to_diffusers(text_state, text_encoder), "text-encoder", path,
                   folder / "text_encoder")

    return load_component(
        lambda: create_diffusers_clip_model_from_ldm(
            CLIPTextModel, text_state, subfolder="text_encoder", config=str(folder),
            torch_dtype=dtype, local_files_only=True,
        ),
        diagnose, "text-encoder", path, folder / "text_encoder",
    )


def load_single_file_vae(
    path: str | Path, *, allow_ckpt: bool = False, config_dir: str | Path | None = None, dtype=None
):
    """An AutoencoderKL from a VAE file: original layout (with or without `first_stage_model.`,
    e.g. vae-ft-mse-840000) or a diffusers VAE saved as one file. SD 1.x, 2.x and SDXL share
    the VAE architecture, so the shipped SD 1.5 config fits all unless `config_dir` (the base
    model's folder, or its family's shipped configs: the scale differs) says otherwise."""
    import torch

    path = Path(path)
    state = read_checkpoint(path, allow_ckpt=allow_ckpt)
    has_vae = any(
        key.startswith(("encoder.", "decoder.", VAE_PREFIX + "encoder.", VAE_PREFIX + "decoder.")) for key in state
    )
    if not has_vae:
        raise LoradeckError(f"{path}: not a VAE (no encoder.* / decoder.* weights)")
    folder = Path(config_dir) if config_dir is not None else VAE_CONFIGS
    return build_vae(state, folder, path, dtype or torch.float32)


# ---------------------------------------------------------------- diffusers keys -> LDM


_UNET_TOP_TO_LDM = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",  # SDXL's pooled-text and size embedding
    "add_embedding.linear_2.": "label_emb.0.2.",
}
_UNET_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_BLOCK_KEY = re.compile(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)")
_MID_KEY = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")


def _resnet_to_ldm(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_UNET_RESNET_TO_LDM.get(head, head)}.{tail}"


def _unet_key_to_ldm(key: str, layers: int, up_with_attention: set[int]) -> str:
    """The inverse of diffusers' `convert_ldm_unet_checkpoint` for one key.

    LDM numbers the U-Net's layers flat: input block 0 is conv_in, then each down block
    has `layers` (resnet, attention) pairs and a downsampler; each up block has
    `layers + 1` pairs, its upsampler sitting after the attention when there is one.
    """
    for diffusers_prefix, ldm_prefix in _UNET_TOP_TO_LDM.items():
        if key.startswith(diffusers_prefix):
            return ldm_prefix + key[len(diffusers_prefix):]
    match = _MID_KEY.fullmatch(key)
    if match:
        kind, index, rest = match.group(1), int(match.group(2)), match.group(3)
        if kind == "resnets":
            return f"middle_block.{2 * index}.{_resnet_to_ldm(rest)}"
        return f"middle_block.1.{rest}"
    match = _BLOCK_KEY.fullmatch(key)
    if not match:
        raise LoradeckError(f"U-Net weight {key} has no place in the original single-file layout")
    direction, block, kind, index, rest = match.group(1), int(match.group(2)), match.group(3), int(match.group(4)), match.group(5)
    if direction == "down_blocks":
        if kind == "downsamplers":
            return f"input_blocks.{(block + 1) * (layers + 1)}.0.op.{rest.removeprefix('conv.')}"
        slot = 1 + block * (layers + 1) + index
        return f"input_blocks.{slot}.0.{_resnet_to_ldm(rest)}" if kind == "resnets" else f"input_blocks.{slot}.1.{rest}"
    if kind == "upsamplers":
        position = 2 if block in up_with_attention else 1
        return f"output_blocks.{block * (layers + 1) + layers}.{position}.{rest}"
    slot = block * (layers + 1) + index
    return f"output_blocks.{slot}.0.{_resnet_to_ldm(rest)}" if kind == "resnets" else f"output_blocks.{slot}.1.{rest}"


def unet_to_ldm(weights: dict[str, Any], config) -> dict[str, Any]:
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise LoradeckError("a U-Net with a different layers_per_block per block has no single-file layout")
    up_with_attention = {int(key.split(".")[1]) for key in weights if re.match(r"up_blocks\.\d+\.attentions\.", key)}
    return {UNET_PREFIX + _unet_key_to_ldm(key, layers, up_with_attention): value for key, value in weights.items()}


# ---------------------------------------------------------------- LoRA module names in the original layout


def unet_module_to_ldm(name: str, layers: int, up_with_attention: set[int] | frozenset[int]) -> str:
    """A diffusers U-Net module's name in the original layout, as sd-scripts' SDXL U-Net
    (library/sdxl_original_unet.py) names its modules: `down_blocks.1.attentions.0.proj_in`
    -> `input_blocks.4.1.proj_in`, `down_blocks.0.resnets.0.conv1` -> `input_blocks.1.0.in_layers.2`,
    `down_blocks.0.downsamplers.0.conv` -> `input_blocks.3.0.op`."""
    return _unet_key_to_ldm(f"{name}.weight", layers, set(up_with_attention)).removesuffix(".weight")


_KOHYA_TOP = {prefix[:-1].replace(".", "_"): prefix[:-1] for prefix in _UNET_TOP_TO_LDM}
_KOHYA_BLOCK = re.compile(r"(down_blocks|up_blocks)_(\d+)_(resnets|attentions|downsamplers|upsamplers)_(\d+)_(.+)")
_KOHYA_MID = re.compile(r"mid_block_(resnets|attentions)_(\d+)_(.+)")


def kohya_unet_name_to_ldm(name: str, layers: int, up_with_attention: set[int] | frozenset[int]) -> str | None:
    """The module part of a Kohya U-Net key written after diffusers' module names, in the
    original layout: `down_blocks_1_attentions_0_proj_in` -> `input_blocks_4_1_proj_in`;
    None for a name that is not diffusers' (already the original's, or unknown). Only the
    block part is parsed, the rest keeps its underscores (a resnet's layer is one word of
    `_UNET_RESNET_TO_LDM`)."""
    if name in _KOHYA_TOP:
        dotted = _KOHYA_TOP[name]
    elif match := _KOHYA_BLOCK.fullmatch(name):
        dotted = ".".join(match.groups())
    elif match := _KOHYA_MID.fullmatch(name):
        dotted = "mid_block." + ".".join(match.groups())
    else:
        return None
    return unet_module_to_ldm(dotted, layers, up_with_attention).replace(".", "_")


_VAE_RENAMES = [
    (re.compile(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\."), lambda m, n: f"encoder.down.{m[1]}.block.{m[2]}."),
    (re.compile(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\."), lambda m, n: f"encoder.down.{m[1]}.downsample."),
    (re.compile(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\."), lambda m, n: f"decoder.up.{n - 1 - int(m[1])}.block.{m[2]}."),
    (re.compile(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\."), lambda m, n: f"decoder.up.{n - 1 - int(m[1])}.upsample."),
    (re.compile(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\."), lambda m, n: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
    (re.compile(r"^(encoder|decoder)\.mid_block\.attentions\.0\."), lambda m, n: f"{m[1]}.mid.attn_1."),
]
_VAE_ATTENTION_TO_LDM = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}


def vae_to_ldm(weights: dict[str, Any], config) -> dict[str, Any]:
    """The inverse of diffusers' `convert_ldm_vae_checkpoint`: LDM numbers decoder blocks
    bottom-up and keeps the mid-block attention as 1x1 convolutions."""
    blocks = len(config["block_out_channels"])
    converted = {}
    for key, value in weights.items():
        new_key = key
        for pattern, rename in _VAE_RENAMES:
            match = pattern.match(new_key)
            if match:
                new_key = rename(match, blocks) + new_key[match.end():]
                break
        if ".mid.attn_1." in new_key:
            head, _, tail = new_key.partition(".mid.attn_1.")
            for diffusers_name, ldm_name in _VAE_ATTENTION_TO_LDM.items():
                if tail.startswith(diffusers_name):
                    tail = ldm_name + tail[len(diffusers_name):]
            new_key = f"{head}.mid.attn_1.{tail}"
            if value.ndim == 2:
                value = value[:, :, None, None]
        new_key = new_key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        converted[VAE_PREFIX + new_key] = value
    return converted


def text_encoder_to_ldm(weights: dict[str, Any], hidden_act: str, *, clip_prefix: str = CLIP_PREFIX,
                         open_clip_prefix: str = OPEN_CLIP_PREFIX) -> dict[str, Any]:
    """SD 1.x keeps CLIP in transformers' layout under `cond_stage_model.transformer.`;
    SD 2.x (OpenCLIP, GELU) in OpenCLIP's, with q/k/v fused into one in_proj (SDXL's two
    encoders the same, under their `conditioner.embedders.N.` prefixes, the second with its
    projection as OpenCLIP's `text_projection`, x @ P)."""
    weights = {key.removeprefix("text_model."): value for key, value in weights.items()}
    if hidden_act != "gelu":
        return {clip_prefix + "text_model." + key: value for key, value in weights.items()}
    import torch

    renames = {
        "embeddings.token_embedding.weight": "token_embedding.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
        "final_layer_norm.weight": "ln_final.weight",
        "final_layer_norm.bias": "ln_final.bias",
    }
    layer_names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}
    converted = {}
    for key, value in weights.items():
        if key in renames:
            converted[open_clip_prefix + renames[key]] = value
            continue
        if key == "text_projection.weight":
            converted[open_clip_prefix + "text_projection"] = value.T.contiguous()
            continue
        match = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if not match:
            raise LoradeckError(f"text-encoder weight {key} has no place in the OpenCLIP layout")
        layer, name, kind = match.groups()
        prefix = f"{open_clip_prefix}transformer.resblocks.{layer}."
        if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            if name == "self_attn.q_proj":
                parts = [weights[f"encoder.layers.{layer}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
                converted[f"{prefix}attn.in_proj_{kind}"] = torch.cat(parts)
            continue
        converted[f"{prefix}{layer_names[name]}.{kind}"] = value
    return converted


def check_round_trip(source: Path, components) -> None:
    """Every weight of each (what, model, weights converted back by diffusers' functions)
    must come back under its own name."""
    for what, model, back in components:
        lost = sorted(set(model.state_dict()) - set(back))
        if lost:
            raise LoradeckError(f"{source}: {what} weight {lost[0]} does not survive the single-file layout")


def save_ldm_file(state: dict[str, Any], out_path: Path, dtype=None) -> Path:
    """Write original-layout weights atomically as one .safetensors, optionally cast to `dtype`."""
    from safetensors.torch import save_file

    state = {
        key: (value.to(dtype) if dtype is not None and value.is_floating_point() else value).contiguous()
        for key, value in state.items()
    }
    with atomic_path(out_path) as temporary:
        save_file(state, str(temporary), metadata={"format": "pt"})
    return out_path
