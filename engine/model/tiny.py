"""Tiny Stable Diffusion 1.5 and SDXL models made offline: the real module layout at toy width.

Tests, the demo and CPU benchmarks need a model that loads like SD1.5
(`StableDiffusionPipeline.from_pretrained`), has the same module names (so LoRA keys,
Kohya conversion and diffusers' loader see exactly what they see on the real model) and
trains a step in milliseconds. Every part is built from a config with random weights;
the CLIP tokenizer's vocabulary is written here too, so nothing is downloaded.

    make_tiny_model(out_dir) -> out_dir                  # SD1.5: a diffusers folder (model_index.json, unet/ ...)
    make_tiny_model(out_dir, family="sdxl") -> out_dir   # SDXL: two text encoders, size conditioning
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from engine.atomic import atomic_write_text, ensure_folder
from engine.errors import LoradeckError

# SD1.5's noise schedule (scheduler/scheduler_config.json of runwayml/stable-diffusion-v1-5)
SD15_SCHEDULE = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    clip_sample=False,
)

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
TINY_FAMILIES = ("sd15", "sdxl")

# Words that get whole-word BPE merges, so captions in tests tokenize like real ones
# (a few tokens per word) rather than one token per character.
_COMMON_WORDS = (
    "a photo of the and with in on at city street night day man woman girl boy dog cat "
    "red blue green black white portrait landscape sky tree house car style art painting "
    "sks ohwx person face smile hair eyes standing sitting outdoors indoors"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte gets a printable unicode character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def tiny_clip_vocabulary() -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) in the layout of CLIP's: bytes, bytes + `</w>`, merges, specials."""
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [symbol + "</w>" for symbol in alphabet]
    merges: list[str] = []
    for word in _COMMON_WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merged = parts[0] + parts[1]
            rule = f"{parts[0]} {parts[1]}"
            if rule not in merges:
                merges.append(rule)
                if merged not in tokens:
                    tokens.append(merged)
            parts = [merged] + parts[2:]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def _write_vocabulary(folder: Path, vocab: dict[str, int], merges: list[str]) -> tuple[Path, Path]:
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    atomic_write_text(vocab_file, json.dumps(vocab, ensure_ascii=False))
    atomic_write_text(merges_file, "#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_file, merges_file


def _tiny_tokenizer(**settings):
    """A CLIPTokenizer over the tiny vocabulary; `settings` as a model's tokenizer config has them."""
    from transformers import CLIPTokenizer

    vocab, merges = tiny_clip_vocabulary()
    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = _write_vocabulary(Path(folder), vocab, merges)
        return CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file), model_max_length=77, **settings)


def _tiny_vae(scaling_factor: float, **settings):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
        **settings,
    )


def make_tiny_pipeline(seed: int = 0):
    """A StableDiffusionPipeline with SD1.5's blocks and tiny widths, random weights."""
    import torch
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
    vae = _tiny_vae(0.18215)
    vocab, merges = tiny_clip_vocabulary()
    tokenizer = _tiny_tokenizer()
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
    scheduler = PNDMScheduler(**{k: v for k, v in SD15_SCHEDULE.items() if k != "clip_sample"})
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def make_tiny_sdxl_pipeline(seed: int = 0):
    """A StableDiffusionXLPipeline with SDXL base's structure at tiny width, random weights.

    As SDXL: a first block without attention, deeper transformer stacks further down
    (`transformer_layers_per_block`), linear projections, CLIP-L (`text_encoder`) and an
    OpenCLIP-bigG-shaped encoder with a projection (`text_encoder_2`) whose hidden states
    are concatenated for cross-attention, and the "text_time" embedding that adds the
    second encoder's pooled output and six size/crop numbers to the timestep embedding.
    """
    import torch
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
    vae = _tiny_vae(0.13025, force_upcast=True)
    tokenizer = _tiny_tokenizer()
    tokenizer_2 = _tiny_tokenizer(pad_token="!")  # OpenCLIP's tokenizer pads with "!"
    common = dict(
        vocab_size=len(tokenizer), intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=width_1, hidden_act="quick_gelu", projection_dim=width_1,
                                                pad_token_id=tokenizer.pad_token_id, **common))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_size=width_2, hidden_act="gelu", projection_dim=width_2, pad_token_id=tokenizer_2.pad_token_id, **common
    ))
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULE),
        force_zeros_for_empty_prompt=True,
    )


def make_tiny_model(out_dir: str | Path, seed: int = 0, family: str = "sd15") -> Path:
    """Write the tiny SD1.5 (or SDXL, `family="sdxl"`) as a diffusers folder at `out_dir`
    (created) and return it."""
    out = Path(out_dir)
    if family not in TINY_FAMILIES:
        raise LoradeckError(f"--family: {family!r} is not one of {', '.join(TINY_FAMILIES)}")
    if family == "sdxl":
        return save_tiny_pipeline(lambda: make_tiny_sdxl_pipeline(seed), out, "SDXL", ("tokenizer", "tokenizer_2"))
    return save_tiny_pipeline(lambda: make_tiny_pipeline(seed), out, "Stable Diffusion 1.5", ("tokenizer",))


def save_tiny_pipeline(make_pipeline, out: Path, layout: str, clip_tokenizer_folders: tuple[str, ...]) -> Path:
    """Save the pipeline `make_pipeline()` builds as a diffusers folder at `out`, with CLIP's
    slow-tokenizer files in `clip_tokenizer_folders` and a README naming the `layout`."""
    if out.exists() and not out.is_dir():
        raise LoradeckError(f"{out}: exists and is not a folder")
    try:
        ensure_folder(out.parent)
        pipeline = make_pipeline()
        # Built beside the target and moved in, so a crash never leaves half a model behind.
        temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the model folder's
        try:
            pipeline.save_pretrained(temporary, safe_serialization=True)
            # The slow-tokenizer files too, as SD1.5 ships them, for tools that read those.
            for tokenizer_folder in clip_tokenizer_folders:
                _write_vocabulary(temporary / tokenizer_folder, *tiny_clip_vocabulary())
            atomic_write_text(
                temporary / "README.md",
                f"Tiny {layout} layout with random weights, made by `loradeck make-tiny-model`.\n"
                "For tests and demos only: it draws noise.\n",
            )
            _move_into(temporary, out)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)  # our own temporary folder
    except OSError as error:
        raise LoradeckError(f"{out}: cannot write the tiny model ({error.strerror or error})") from None
    return out


def _move_into(source: Path, target: Path) -> None:
    """Rename `source` to `target`, or, when `target` is a folder already, each file into it."""
    if not target.exists():
        os.replace(source, target)
        return
    for path in sorted(source.rglob("*")):
        if path.is_file():
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, destination)
