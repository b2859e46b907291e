"""A tiny Stable Diffusion 1.5 made offline: the real module layout at toy width.

Tests, the demo and CPU benchmarks need a model that loads like SD1.5
(`StableDiffusionPipeline.from_pretrained`), has the same module names (so LoRA keys,
Kohya conversion and diffusers' loader see exactly what they see on the real model) and
trains a step in milliseconds. Every part is built from a config with random weights;
the CLIP tokenizer's vocabulary is written here too, so nothing is downloaded.

    make_tiny_model(out_dir) -> out_dir   # a diffusers folder (model_index.json, unet/ ...)
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


def make_tiny_pipeline(seed: int = 0):
    """A StableDiffusionPipeline with SD1.5's blocks and tiny widths, random weights."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

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
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.18215,
    )
    vocab, merges = tiny_clip_vocabulary()
    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = _write_vocabulary(Path(folder), vocab, merges)
        tokenizer = CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file), model_max_length=77)
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


def make_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny SD1.5 as a diffusers folder at `out_dir` (created) and return it."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LoradeckError(f"{out}: exists and is not a folder")
    try:
        ensure_folder(out.parent)
        pipeline = make_tiny_pipeline(seed)
        # Built beside the target and moved in, so a crash never leaves half a model behind.
        temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the model folder's
        try:
            pipeline.save_pretrained(temporary, safe_serialization=True)
            # The slow-tokenizer files too, as SD1.5 ships them, for tools that read those.
            _write_vocabulary(temporary / "tokenizer", *tiny_clip_vocabulary())
            atomic_write_text(
                temporary / "README.md",
                "Tiny Stable Diffusion 1.5 layout with random weights, made by `loradeck make-tiny-model`.\n"
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
