"""Load Flux.1 into named parts: a diffusers folder or hub id, or BFL's four single files.

    load_diffusers(source, local_only=..., dtype=..., vae_dtype=...) -> parts
    load_single_files(transformer, clip_l=..., t5xxl=..., ae=..., dtype=...) -> parts

Parts: transformer, vae, text_encoder (CLIP-L), text_encoder_2 (T5-XXL), tokenizer,
tokenizer_2, scheduler, and "variant" ("dev" or "schnell", from the weights). `dtype` None
keeps a file's own dtypes (an fp8 file stays fp8 for engine.model.families.flux.fp8).

T5's vocabulary is the one piece a single-file setup does not carry: it is read from a
diffusers folder's `tokenizer_2` (`config_dir`, or the base folder), else from the local
Hugging Face cache, else fetched once by the hub id sd-scripts uses (`google/t5-v1_1-xxl`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import LoradeckError, first_line
from engine.model.families.flux import ASSETS, folder_variant, single_files

T5_TOKENIZER_HUB_ID = "google/t5-v1_1-xxl"
SCHNELL_SCHEDULER = {"shift": 1.0, "use_dynamic_shifting": False}


def scheduler_for(variant: str, config_dir: Path | None = None):
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = single_files.read_config(config_dir or ASSETS, "scheduler", "scheduler_config.json")
    if variant == "schnell" and Path(config_dir or ASSETS) == ASSETS:  # the shipped config is [dev]'s
        config = {**config, **SCHNELL_SCHEDULER}
    return FlowMatchEulerDiscreteScheduler.from_config(config)


def load_clip_tokenizer(config_dir: Path | None = None):
    from engine.model.ldm_checkpoints import load_tokenizer

    return load_tokenizer(config_dir or ASSETS)


def load_t5_tokenizer(config_dir: Path | None = None, *, local_only: bool = False):
    """T5's tokenizer: `config_dir`'s tokenizer_2 when it holds a vocabulary, else the hub's
    (from the local cache first; over the network only when `local_only` is off)."""
    from transformers import AutoTokenizer

    folder = (config_dir or ASSETS) / "tokenizer_2"
    if any((folder / name).is_file() for name in ("tokenizer.json", "spiece.model")):
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    settings = single_files.read_config(config_dir or ASSETS, "tokenizer_2", "tokenizer_config.json")
    hub_id = settings.get("vocabulary_from", T5_TOKENIZER_HUB_ID)
    for cached_only in (True, False) if not local_only else (True,):
        try:
            return AutoTokenizer.from_pretrained(hub_id, local_files_only=cached_only)
        except (OSError, ValueError) as error:
            reason = first_line(error)
    raise LoradeckError(f"T5's tokenizer is not on this machine ({reason}); run once with the network on, or give "
                        f"a Flux.1 diffusers folder (its tokenizer_2/) as the model config")


def load_diffusers(source: str, *, local_only: bool, dtype, vae_dtype) -> dict[str, Any]:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

    from engine.model.parts import load_parts

    def pretrained(model_class, subfolder: str, **kwargs):
        return lambda: model_class.from_pretrained(source, subfolder=subfolder, local_files_only=local_only, **kwargs)

    parts = load_parts(source, local_only, {
        "transformer": pretrained(FluxTransformer2DModel, "transformer", torch_dtype=dtype),
        "vae": pretrained(AutoencoderKL, "vae", torch_dtype=vae_dtype),
        "text_encoder": pretrained(CLIPTextModel, "text_encoder", dtype=dtype),
        "text_encoder_2": pretrained(T5EncoderModel, "text_encoder_2", dtype=dtype),
        "tokenizer": pretrained(CLIPTokenizer, "tokenizer"),
        "tokenizer_2": pretrained(AutoTokenizer, "tokenizer_2"),
        "scheduler": pretrained(FlowMatchEulerDiscreteScheduler, "scheduler"),
    })
    parts["variant"] = "dev" if parts["transformer"].config.guidance_embeds else "schnell"
    if local_only and folder_variant(Path(source)) is None:
        raise LoradeckError(f"model.pretrained_model: {source} is not a Flux.1 diffusers folder")
    return parts


def load_single_files(transformer: str | Path, *, clip_l: str | Path, t5xxl: str | Path, ae: str | Path,
                      config_dir: Path | None = None, dtype=None, text_dtype=None, vae_dtype=None,
                      local_only: bool = False) -> dict[str, Any]:
    """The four files sd-scripts' Flux training takes (`--pretrained_model_name_or_path`,
    `--clip_l`, `--t5xxl`, `--ae`), with `config_dir`'s configs (FLUX.1-dev's shipped ones
    by default; the transformer's sizes come from its file)."""
    for what, path in (("clip_l", clip_l), ("t5xxl", t5xxl), ("ae", ae)):
        if not str(path).strip():
            raise LoradeckError(f"model.{what}: a Flux.1 single-file transformer needs its {what} file as well")
    parts: dict[str, Any] = {
        "transformer": single_files.load_transformer(transformer, config_dir=config_dir, dtype=dtype),
        "text_encoder": single_files.load_clip_l(clip_l, config_dir=config_dir, dtype=text_dtype or dtype),
        "text_encoder_2": single_files.load_t5xxl(t5xxl, config_dir=config_dir, dtype=text_dtype or dtype),
        "vae": single_files.load_ae(ae, config_dir=config_dir, dtype=vae_dtype),
        "tokenizer": load_clip_tokenizer(config_dir),
        "tokenizer_2": load_t5_tokenizer(config_dir, local_only=local_only),
    }
    parts["variant"] = "dev" if parts["transformer"].config.guidance_embeds else "schnell"
    parts["scheduler"] = scheduler_for(parts["variant"], config_dir)
    return parts
