"""Single-file checkpoints of every family: loaded offline, written back, VAE files.

    load_single_file(path) -> {"unet", "vae", "text_encoder", ..., "scheduler"}   the family from the keys
    export_single_file(diffusers_dir, out_path, family=None) -> out_path           through the folder's family
    load_single_file_vae(path) -> AutoencoderKL

The family of a file is read from its tensor names (engine.model.families; never from the
file name), the family of a folder from its configs, and the family's runtime does the
work (engine.model.families.<name>.single_file, on engine.model.ldm_checkpoints' shared
machinery). Asked for one family (`family="sd15"`), a model of another is refused in one
line instead of being written or read in the wrong layout.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import LoradeckError
from engine.model.families import default_family, family_named, file_family, folder_family
from engine.model.ldm_checkpoints import load_single_file_vae, load_tokenizer  # noqa: F401 (this API's too)


def file_family_or_none(path: Path):
    """The family a single file's keys say; None for a pickle or a file that cannot be read
    (its family's loader then says what is wrong, in one line)."""
    if not path.is_file():
        return None
    try:
        return file_family(path)
    except LoradeckError:
        return None


def _refuse_other(found, family: str | None, what: Path) -> None:
    if family is not None and found is not family_named(family):
        raise LoradeckError(f"{what}: is an {found.label} model, not {family_named(family).label}")


def load_single_file(path: str | Path, *, allow_ckpt: bool = False, config_dir: str | Path | None = None,
                     prediction_type: str | None = None, dtype=None, family: str | None = None) -> dict[str, Any]:
    """The parts of a single-file checkpoint by pipeline name, with no network.

    The family comes from the file's keys; a .ckpt's cannot be read without unpickling
    it, so it is `family` (default: the first registered family). `config_dir` is a
    diffusers folder whose configs describe the model (default: the family's shipped ones);
    `prediction_type` overrides the schedule's ("v_prediction" for SD 2.x 768-v models)."""
    path = Path(path)
    found = file_family_or_none(path)
    if found is None:
        found = family_named(family) if family is not None else default_family()
    _refuse_other(found, family, path)
    return found.runtime().load_single_file(path, allow_ckpt=allow_ckpt,
                                            config_dir=Path(config_dir) if config_dir is not None else None,
                                            prediction_type=prediction_type, dtype=dtype)


def export_single_file(diffusers_dir: str | Path, out_path: str | Path, *, dtype=None, family: str | None = None) -> Path:
    """Write a diffusers folder as one original-layout `.safetensors` of its family (A1111 /
    ComfyUI / sd-scripts read it), optionally cast to `dtype` (torch.float16 halves it).
    Every weight is checked to come back through diffusers' own converters before anything
    is written, so a file we write is a file `load_single_file` reads."""
    source = Path(diffusers_dir)
    if not (source / "model_index.json").is_file():
        raise LoradeckError(f"{source}: not a diffusers model folder (no model_index.json)")
    found = folder_family(source)
    if found is None:
        raise LoradeckError(f"{source}: its configs match no model family loradeck exports")
    _refuse_other(found, family, source)
    return found.runtime().export_single_file(source, Path(out_path), dtype=dtype)
