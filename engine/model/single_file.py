"""Single-file Stable Diffusion checkpoints (the original LDM / AUTOMATIC1111 key layout).

    load_single_file(path) -> {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    load_single_file_vae(path) -> AutoencoderKL
    export_single_file(diffusers_dir, out_path) -> out_path

Loading needs no network at all: the SD 1.x and SD 2.x model configs and CLIP's BPE
vocabulary ship in `engine/model/assets/` as diffusers folders hold them, and each component
is loaded by diffusers' own `from_single_file(..., config=<that folder>, local_files_only=True)`
(the text encoder by the function the pipelines' `from_single_file` uses). We keep what
diffusers does not do: the `.ckpt` gate (a pickle is only read with torch's weights-only
loader, and only when the caller allows it: nothing is ever unpickled), the family detection
from the keys, a one-line message naming the weight that does not fit, and the export.
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
FAMILY_CONFIGS = {"sd15": ASSETS / "sd15", "sd2": ASSETS / "sd2"}
CLIP_TOKENIZER_DIR = ASSETS / "clip_tokenizer"

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


def detect_family(state: dict[str, Any], path: str | Path) -> str:
    """"sd15" or "sd2" from the keys (and text-encoder width); anything else is refused."""
    if any(key.startswith("conditioner.embedders.") for key in state):
        raise LoradeckError(f"{path}: an SDXL checkpoint; this loader reads SD 1.x and 2.x "
                            "(engine.model.families.sdxl.load_single_file reads SDXL)")
    conv_in = state.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None or conv_in.ndim != 4:
        raise LoradeckError(
            f"{path}: not a Stable Diffusion checkpoint (no {UNET_PREFIX}* U-Net weights in the original layout)"
        )
    if conv_in.shape[1] != 4:
        raise LoradeckError(
            f"{path}: its U-Net takes {conv_in.shape[1]} input channels (an inpainting or other special "
            "model); loradeck trains text-to-image SD 1.x/2.x with 4"
        )
    if not any(key.startswith(VAE_PREFIX) for key in state):
        raise LoradeckError(f"{path}: has no VAE weights ({VAE_PREFIX}*); it is not a complete SD checkpoint")
    # Some SD 1.x merges were saved by old transformers, without the `text_model.` level.
    token_embedding = state.get(CLIP_PREFIX + "text_model.embeddings.token_embedding.weight")
    if token_embedding is None:
        token_embedding = state.get(CLIP_PREFIX + "embeddings.token_embedding.weight")
    if token_embedding is not None:
        return "sd2" if token_embedding.shape[-1] == 1024 else "sd15"
    if OPEN_CLIP_PREFIX + "token_embedding.weight" in state:
        return "sd2"
    raise LoradeckError(f"{path}: has no text-encoder weights (cond_stage_model.*); it is not a complete SD checkpoint")


# ---------------------------------------------------------------- configs and tokenizer


def _config_dir(config_dir: str | Path | None, family: str) -> Path:
    folder = Path(config_dir) if config_dir is not None else FAMILY_CONFIGS[family]
    if not (folder / "unet" / "config.json").is_file():
        raise LoradeckError(f"{folder}: not a diffusers model folder (no unet/config.json)")
    return folder


def _read_json(path: Path) -> dict[str, Any]:
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
    settings = _read_json(settings_file) if settings_file.is_file() else {}
    overrides = {key: settings[key] for key in ("pad_token", "model_max_length") if key in settings}
    return CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR), local_files_only=True, **overrides)


def _load_scheduler(folder: Path, prediction_type: str | None):
    import diffusers

    config = _read_json(folder / "scheduler" / "scheduler_config.json")
    class_name = config.get("_class_name", "PNDMScheduler")
    scheduler_class = getattr(diffusers, class_name, None)
    if scheduler_class is None or not issubclass(scheduler_class, diffusers.SchedulerMixin):
        raise LoradeckError(f"{folder / 'scheduler' / 'scheduler_config.json'}: unknown scheduler {class_name!r}")
    overrides = {"prediction_type": prediction_type} if prediction_type else {}
    return scheduler_class.from_config(config, **overrides)


# ---------------------------------------------------------------- LDM keys -> diffusers
# diffusers' converters, as its from_single_file applies them: used to name what does not
# fit when loading fails, and to check an export's round trip


def _unet_to_diffusers(state: dict[str, Any], unet_config: dict[str, Any]) -> dict[str, Any]:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    return convert_ldm_unet_checkpoint({k: v for k, v in state.items() if k.startswith(UNET_PREFIX)}, unet_config)


def _vae_to_diffusers(state: dict[str, Any], vae_config: dict[str, Any]) -> dict[str, Any]:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    state = _vae_state(state)
    if "encoder.down_blocks.0.resnets.0.norm1.weight" in state:
        return state  # already in diffusers' layout (a diffusers VAE saved as one file)
    return convert_ldm_vae_checkpoint(state, vae_config)


def _text_encoder_to_diffusers(state: dict[str, Any], text_encoder) -> dict[str, Any]:
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint

    state = _text_encoder_state(state)
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


def _vae_state(state: dict[str, Any]) -> dict[str, Any]:
    """The VAE's weights in the original layout, with the `first_stage_model.` prefix or without."""
    if any(key.startswith(VAE_PREFIX) for key in state):
        return {key: value for key, value in state.items() if key.startswith(VAE_PREFIX)}
    return dict(state)


def _text_encoder_state(state: dict[str, Any]) -> dict[str, Any]:
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


def _load_component(load, diagnose, what: str, path: Path, folder: Path):
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


def _check_fit(model, weights: dict[str, Any], what: str, path: Path, config_source: Path) -> None:
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


def _build_unet(state, folder: Path, path: Path, dtype):
    from diffusers import UNet2DConditionModel

    # Only the model.diffusion_model.* keys: full checkpoints also carry model_ema.*, and
    # diffusers' converter, like sd-scripts, takes the non-EMA weights.
    unet_state = {key: value for key, value in state.items() if key.startswith(UNET_PREFIX)}

    def diagnose():
        unet = _empty(lambda: UNet2DConditionModel.from_config(_read_json(folder / "unet" / "config.json")))
        _check_fit(unet, _unet_to_diffusers(unet_state, unet.config), "U-Net", path, folder / "unet")

    return _load_component(
        lambda: UNet2DConditionModel.from_single_file(
            unet_state, config=str(folder), subfolder="unet", local_files_only=True, torch_dtype=dtype
        ),
        diagnose, "U-Net", path, folder / "unet",
    )


def _build_vae(state, folder: Path, path: Path, dtype):
    from diffusers import AutoencoderKL

    vae_state = _vae_state(state)
    config = folder / "vae" / "config.json"
    if "encoder.down_blocks.0.resnets.0.norm1.weight" in vae_state:
        # a diffusers VAE saved as one file: already in diffusers' layout
        vae = _empty(lambda: AutoencoderKL.from_config(_read_json(config)))
        _check_fit(vae, vae_state, "VAE", path, folder / "vae")
        vae.load_state_dict({key: value.to(dtype) for key, value in vae_state.items() if key in vae.state_dict()},
                            strict=True, assign=True)
        return vae.eval()

    def diagnose():
        vae = _empty(lambda: AutoencoderKL.from_config(_read_json(config)))
        _check_fit(vae, _vae_to_diffusers(vae_state, vae.config), "VAE", path, folder / "vae")

    return _load_component(
        lambda: AutoencoderKL.from_single_file(
            vae_state, config=str(folder), subfolder="vae", local_files_only=True, torch_dtype=dtype
        ),
        diagnose, "VAE", path, folder / "vae",
    )


def _build_text_encoder(state, folder: Path, path: Path, dtype):
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextConfig, CLIPTextModel

    text_state = _text_encoder_state(state)

    def diagnose():
        config = CLIPTextConfig.from_dict(_read_json(folder / "text_encoder" / "config.json"))
        text_encoder = _empty(lambda: CLIPTextModel(config))
        _check_fit(text_encoder, _text_encoder_to_diffusers(text_state, text_encoder), "text-encoder", path,
                   folder / "text_encoder")

    return _load_component(
        lambda: create_diffusers_clip_model_from_ldm(
            CLIPTextModel, text_state, subfolder="text_encoder", config=str(folder),
            torch_dtype=dtype, local_files_only=True,
        ),
        diagnose, "text-encoder", path, folder / "text_encoder",
    )


def load_single_file(
    path: str | Path,
    *,
    allow_ckpt: bool = False,
    config_dir: str | Path | None = None,
    prediction_type: str | None = None,
    dtype=None,
) -> dict[str, Any]:
    """Diffusers components from a single-file SD 1.x / 2.x checkpoint, with no network.

    `config_dir` is a diffusers folder whose configs (and tokenizer) describe the model;
    by default the shipped SD 1.5 or SD 2.x configs, picked from the checkpoint's keys.
    `prediction_type` ("epsilon" / "v_prediction") overrides the scheduler's: the weights
    cannot tell SD 2.x 512-base from 768-v, so the shipped SD 2.x config says epsilon and a
    768-v model needs "v_prediction" (what `model.v_parameterization` means). Weights are
    cast to `dtype` (default float32, as `from_pretrained` gives).
    """
    import torch

    path = Path(path)
    dtype = dtype or torch.float32
    state = read_checkpoint(path, allow_ckpt=allow_ckpt)
    family = detect_family(state, path)
    folder = _config_dir(config_dir, family)
    components = {}
    for name, build, source_prefixes in (
        ("unet", _build_unet, (UNET_PREFIX, "model_ema.")),
        ("vae", _build_vae, (VAE_PREFIX,)),
        ("text_encoder", _build_text_encoder, ("cond_stage_model.",)),
    ):
        components[name] = build(state, folder, path, dtype)
        # Drop what this model was built from: when the file's precision differs from
        # `dtype` the model holds copies, and a .ckpt's originals can go now (a
        # .safetensors file is memory-mapped copy-on-write, so its pages cost little).
        for key in [key for key in state if key.startswith(source_prefixes)]:
            del state[key]
    components["tokenizer"] = load_tokenizer(folder)
    components["scheduler"] = _load_scheduler(folder, prediction_type)
    log.info("loaded %s checkpoint %s with configs from %s", family, path, folder)
    return components


def load_single_file_vae(
    path: str | Path, *, allow_ckpt: bool = False, config_dir: str | Path | None = None, dtype=None
):
    """An AutoencoderKL from a VAE file: original layout (with or without `first_stage_model.`,
    e.g. vae-ft-mse-840000) or a diffusers VAE saved as one file. SD 1.x and 2.x share the
    VAE architecture, so the shipped SD 1.5 config fits both unless `config_dir` says otherwise."""
    import torch

    path = Path(path)
    state = read_checkpoint(path, allow_ckpt=allow_ckpt)
    has_vae = any(
        key.startswith(("encoder.", "decoder.", VAE_PREFIX + "encoder.", VAE_PREFIX + "decoder.")) for key in state
    )
    if not has_vae:
        raise LoradeckError(f"{path}: not a VAE (no encoder.* / decoder.* weights)")
    folder = Path(config_dir) if config_dir is not None else FAMILY_CONFIGS["sd15"]
    return _build_vae(state, folder, path, dtype or torch.float32)


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


def _unet_to_ldm(weights: dict[str, Any], config) -> dict[str, Any]:
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise LoradeckError("a U-Net with a different layers_per_block per block has no single-file layout")
    up_with_attention = {int(key.split(".")[1]) for key in weights if re.match(r"up_blocks\.\d+\.attentions\.", key)}
    return {UNET_PREFIX + _unet_key_to_ldm(key, layers, up_with_attention): value for key, value in weights.items()}


_VAE_RENAMES = [
    (re.compile(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\."), lambda m, n: f"encoder.down.{m[1]}.block.{m[2]}."),
    (re.compile(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\."), lambda m, n: f"encoder.down.{m[1]}.downsample."),
    (re.compile(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\."), lambda m, n: f"decoder.up.{n - 1 - int(m[1])}.block.{m[2]}."),
    (re.compile(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\."), lambda m, n: f"decoder.up.{n - 1 - int(m[1])}.upsample."),
    (re.compile(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\."), lambda m, n: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
    (re.compile(r"^(encoder|decoder)\.mid_block\.attentions\.0\."), lambda m, n: f"{m[1]}.mid.attn_1."),
]
_VAE_ATTENTION_TO_LDM = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}


def _vae_to_ldm(weights: dict[str, Any], config) -> dict[str, Any]:
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


def _text_encoder_to_ldm(weights: dict[str, Any], hidden_act: str, *, clip_prefix: str = CLIP_PREFIX,
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


def export_single_file(diffusers_dir: str | Path, out_path: str | Path, *, dtype=None) -> Path:
    """Write a diffusers SD folder as one original-layout `.safetensors` (A1111 / ComfyUI /
    sd-scripts read it), optionally cast to `dtype` (e.g. torch.float16 halves the size).

    The keys are checked by converting them back with diffusers' own functions before
    anything is written, so a file we write is a file `load_single_file` reads.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    source, out_path = Path(diffusers_dir), Path(out_path)
    if not (source / "model_index.json").is_file():
        raise LoradeckError(f"{source}: not a diffusers model folder (no model_index.json)")
    try:
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(source / "text_encoder", local_files_only=True)
    except (OSError, ValueError) as error:
        raise LoradeckError(f"{source}: cannot load the diffusers model ({first_line(error)})") from error

    text_weights = text_encoder.state_dict()
    state = {
        **_unet_to_ldm(unet.state_dict(), unet.config),
        **_vae_to_ldm(vae.state_dict(), vae.config),
        **_text_encoder_to_ldm(text_weights, text_encoder.config.hidden_act),
    }
    check_round_trip(source, (
        ("U-Net", unet, _unet_to_diffusers(state, unet.config)),
        ("VAE", vae, _vae_to_diffusers(state, vae.config)),
        ("text-encoder", text_encoder, _text_encoder_to_diffusers(state, text_encoder)),
    ))
    return save_ldm_file(state, out_path, dtype)


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
