"""Tiny models of every family, made offline: the real module layout at toy width.

Tests, the demo and CPU benchmarks need a model that loads like the real one
(`StableDiffusionPipeline.from_pretrained`, ...), has the same module names (so LoRA keys,
Kohya conversion and diffusers' loader see exactly what they see on the real model) and
trains a step in milliseconds. Each family builds its own (`FamilyRuntime.tiny_pipeline`:
every part from a config with random weights; engine.model.tiny_parts writes CLIP's
vocabulary), so nothing is downloaded.

    make_tiny_model(out_dir) -> out_dir                  # SD1.5: a diffusers folder (model_index.json, unet/ ...)
    make_tiny_model(out_dir, family="sdxl") -> out_dir   # any registered family
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from engine.atomic import atomic_write_text, ensure_folder
from engine.errors import LoradeckError
from engine.model.families import family_named, one_per_runtime
from engine.model.tiny_parts import tiny_clip_vocabulary, write_vocabulary


def make_tiny_pipeline(family: str | None = None, seed: int = 0):
    """The tiny model of `family` (default: the first) as a diffusers pipeline, in memory."""
    return _family(family or tiny_families()[0]).runtime().tiny_pipeline(seed)


def tiny_families() -> tuple[str, ...]:
    """The families a tiny model is made of: one per family runtime (engine.model.families)."""
    return tuple(family.name for family in one_per_runtime())


def _family(name: str):
    if name not in tiny_families():
        raise LoradeckError(f"--family: {name!r} is not one of {', '.join(tiny_families())}")
    return family_named(name)


def make_tiny_model(out_dir: str | Path, seed: int = 0, family: str | None = None) -> Path:
    """Write the tiny model of `family` (default: the first, SD 1.5) as a diffusers folder at
    `out_dir` (created) and return it."""
    out = Path(out_dir)
    descriptor = _family(family or tiny_families()[0])
    if out.exists() and not out.is_dir():
        raise LoradeckError(f"{out}: exists and is not a folder")
    try:
        ensure_folder(out.parent)
        pipeline = descriptor.runtime().tiny_pipeline(seed)
        # Built beside the target and moved in, so a crash never leaves half a model behind.
        temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the model folder's
        try:
            pipeline.save_pretrained(temporary, safe_serialization=True)
            # CLIP's slow-tokenizer files too, as the released models ship them, for tools that read those.
            for tokenizer_folder in descriptor.tokenizers:
                if type(getattr(pipeline, tokenizer_folder)).__name__.startswith("CLIPTokenizer"):
                    write_vocabulary(temporary / tokenizer_folder, *tiny_clip_vocabulary())
            atomic_write_text(
                temporary / "README.md",
                f"Tiny {descriptor.label} layout with random weights, made by `loradeck make-tiny-model`.\n"
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
