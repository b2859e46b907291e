"""Pieces of the tiny test models every family builds (engine.model.families.<name>.runtime's
`tiny_pipeline`): CLIP's tokenizer over a small vocabulary written here, and a tiny VAE with
SD's layout. Nothing is downloaded. Shared machinery: imports no family."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from engine.atomic import atomic_write_text

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


def write_vocabulary(folder: Path, vocab: dict[str, int], merges: list[str]) -> tuple[Path, Path]:
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    atomic_write_text(vocab_file, json.dumps(vocab, ensure_ascii=False))
    atomic_write_text(merges_file, "#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_file, merges_file


def tiny_tokenizer(**settings):
    """A CLIPTokenizer over the tiny vocabulary; `settings` as a model's tokenizer config has them."""
    from transformers import CLIPTokenizer

    vocab, merges = tiny_clip_vocabulary()
    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = write_vocabulary(Path(folder), vocab, merges)
        return CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file), model_max_length=77, **settings)


def tiny_vae(scaling_factor: float, **settings):
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
