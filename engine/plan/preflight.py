"""Everything a run needs that can be checked before it starts, checked before it starts.

    check_before_run(config, base_dir) -> Dataset    both below, in order
    check_paths(config, base_dir)       the files and folders the config names
    check_dataset(config, dataset)      images to train on; held-out images for validation
    plan_warnings(config, base_dir)     what does not stop a run but is likely a mistake
    plan_with_warnings(config, base_dir, dataset)   the plan a user reads, those warnings in it

`loradeck plan` runs all three (an error is its one line and exit 1, a warning a line
of the plan); `loradeck train` runs the checks before the run folder takes its name, and
the engine runs `check_dataset` again on what it loads. The config's own values and the
rules between them are engine.config.schema's. Light module.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from engine.config.schema import SINGLE_FILE_SUFFIXES, TrainConfig, looks_like_hub_id, resolve_path
from engine.dataset.folders import Dataset
from engine.errors import LoradeckError


# --------------------------------------------------------------------------- paths


def check_paths(config: TrainConfig, base_dir: str | Path, *, new_run: bool = True) -> None:
    """Raise LoradeckError ("setting: what is wrong") for the first path setting that a run
    cannot use: missing, a folder where a file belongs or the reverse, unreadable, or (for
    a `new_run`) an output folder where its run folder cannot be made. Relative paths are
    the config folder's."""
    base_dir = Path(base_dir)
    _check_base_model(config, base_dir)
    _check_vae(config, base_dir)
    weights = resolve_path(base_dir, config.network.network_weights.strip())
    if weights is not None:
        _check_file("network.network_weights", weights, "LoRA file", (".safetensors",))
    if config.dataset.dataset_config.strip():
        _check_file("dataset.dataset_config", resolve_path(base_dir, config.dataset.dataset_config), "dataset TOML",
                    (".toml",))
    else:
        _check_folder("dataset.image_dir", resolve_path(base_dir, config.dataset.image_dir), "image folder")
        _check_folder("dataset.reg_dir", resolve_path(base_dir, config.dataset.reg_dir), "regularisation folder")
    _check_folder("validation.image_dir", resolve_path(base_dir, config.validation.image_dir), "validation folder")
    if config.sampling.prompts_file.strip():
        # A typo here would otherwise surface only as a warning once the first samples are due.
        from engine.config.prompts import load_prompts

        _kind("sampling.prompts_file", resolve_path(base_dir, config.sampling.prompts_file))  # never read a pipe
        load_prompts(config, base_dir)
    if new_run:
        _check_output_folder(config, base_dir)


MISSING, FOLDER, FILE = "missing", "folder", "file"


def _kind(key: str, path: Path) -> str:
    """MISSING, FOLDER or FILE (a regular one, links followed); anything else (a FIFO, a
    device: reading one can block forever) and any other error is one line."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return MISSING
    except OSError as error:  # a name too long, a loop of links, no permission on the way
        raise LoradeckError(f"{key}: {path} cannot be used ({error.strerror or error})") from None
    if stat.S_ISDIR(mode):
        return FOLDER
    if stat.S_ISREG(mode):
        return FILE
    raise LoradeckError(f"{key}: {path} is not a regular file or folder (a pipe or a device)")


def _check_base_model(config: TrainConfig, base_dir: Path) -> None:
    from engine.model.families import FAMILIES, check_family, file_family, folder_family

    key, value = "model.pretrained_model", config.model.pretrained_model.strip()
    path = resolve_path(base_dir, value)
    if path is None:
        return  # the schema says it is required
    kind = _kind(key, path)
    if kind == MISSING:
        if looks_like_hub_id(value):
            return  # a hub id: plan_warnings says so, the engine downloads it
        raise LoradeckError(f"{key}: {path} does not exist")
    _check_readable(key, path, kind)
    if kind == FOLDER:
        denoisers = sorted({family.denoiser for family in FAMILIES})  # unet/, transformer/
        if not any(_kind(key, path / denoiser) == FOLDER for denoiser in denoisers):
            raise LoradeckError(f"{key}: {path} is a folder but not a diffusers model (no "
                                f"{' or '.join(name + '/' for name in denoisers)} inside)")
        found = folder_family(path)
    else:
        _check_model_file(key, path, config.model.allow_ckpt)
        try:
            found = file_family(path)
        except LoradeckError as error:
            raise LoradeckError(f"{key}: {error}") from None
    if found is not None:
        check_family(config, found, path)


def _check_vae(config: TrainConfig, base_dir: Path) -> None:
    key = "model.vae"
    path = resolve_path(base_dir, config.model.vae.strip())
    if path is None:
        return
    kind = _kind(key, path)
    if kind == MISSING:
        raise LoradeckError(f"{key}: {path} does not exist")
    _check_readable(key, path, kind)
    if kind == FOLDER:
        folder = path / "vae" if _kind(key, path / "vae") == FOLDER else path
        if _kind(key, folder / "config.json") != FILE:
            raise LoradeckError(f"{key}: {path} is a folder but not a diffusers VAE (no config.json, nor vae/config.json)")
    else:
        _check_model_file(key, path, config.model.allow_ckpt)


def _check_model_file(key: str, path: Path, allow_ckpt: bool) -> None:
    suffix = path.suffix.lower()
    if suffix not in SINGLE_FILE_SUFFIXES:
        raise LoradeckError(f"{key}: {path} is neither a diffusers folder nor a .safetensors or .ckpt file")
    if suffix == ".ckpt" and not allow_ckpt:
        raise LoradeckError(f"{key}: {path} is a .ckpt (pickle) file; convert it to .safetensors or set "
                            "model.allow_ckpt = true to load it with torch's weights-only loader")


def _check_file(key: str, path: Path, what: str, suffixes: tuple[str, ...]) -> None:
    kind = _kind(key, path)
    if kind == MISSING:
        raise LoradeckError(f"{key}: {what} {path} does not exist")
    if kind == FOLDER:
        raise LoradeckError(f"{key}: {path} is a folder; a {what} ({'/'.join(suffixes)}) belongs here")
    if path.suffix.lower() not in suffixes:
        raise LoradeckError(f"{key}: {path} is not a {what} ({'/'.join(suffixes)})")
    _check_readable(key, path, kind)


def _check_folder(key: str, path: Path | None, what: str) -> None:
    if path is None:
        return
    kind = _kind(key, path)
    if kind == MISSING:
        raise LoradeckError(f"{key}: {what} {path} does not exist")
    if kind != FOLDER:
        raise LoradeckError(f"{key}: {path} is a file; the {what} belongs here")
    _check_readable(key, path, kind)


def _check_readable(key: str, path: Path, kind: str) -> None:
    if not os.access(path, os.R_OK | (os.X_OK if kind == FOLDER else 0)):
        raise LoradeckError(f"{key}: {path} cannot be read (permission denied)")


def _check_output_folder(config: TrainConfig, base_dir: Path) -> None:
    """The run folder `<output_dir>/<output_name>` can be made: nothing but folders on the
    way, and the nearest existing one writable."""
    from engine.run.naming import run_folder_for

    run_folder = run_folder_for(config, base_dir)
    existing = next(folder for folder in (run_folder.parent, *run_folder.parent.parents)
                    if _kind("saving.output_dir", folder) != MISSING)
    if _kind("saving.output_dir", existing) != FOLDER:
        raise LoradeckError(f"saving.output_dir: cannot create the run folder {run_folder} ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LoradeckError(f"saving.output_dir: cannot create the run folder {run_folder} "
                            f"(permission denied in {existing})")
    if _kind("saving.output_name", run_folder) == FILE:
        raise LoradeckError(f"saving.output_name: {run_folder} is a file; the run folder belongs here")


def check_before_run(config: TrainConfig, base_dir: str | Path) -> Dataset:
    """The paths, then the dataset they lead to (returned scanned, for the plan)."""
    from engine.dataset.folders import scan_dataset

    check_paths(config, base_dir)
    dataset = scan_dataset(config, base_dir)
    check_dataset(config, dataset)
    return dataset


# --------------------------------------------------------------------------- dataset


def check_dataset(config: TrainConfig, dataset: Dataset, undecodable: list[tuple[Path, str]] = ()) -> None:
    """Raise LoradeckError when the scanned dataset cannot be trained on: an image that
    cannot be read (the scan's, and `undecodable` ones the trainer found decoding them), no
    training image, validation without a held-out image."""
    unreadable = dataset.unreadable + list(undecodable)
    if unreadable:
        listed = "; ".join(message for _, message in unreadable)
        raise LoradeckError(f"{len(unreadable)} unreadable image(s), training not started "
                            f"(fix or remove them): {listed}")
    if not dataset.training_instances():
        raise LoradeckError(f"dataset.image_dir: no training images in {dataset.root} "
                            "(folders must be named <repeats>_<name>)")
    if config.validation.enabled and not dataset.validation_items:
        where = (f"validation.image_dir: no images in {config.validation.image_dir}" if config.validation.image_dir
                 else f"validation.split_fraction: {len(dataset.train_items)} training image(s) cannot be split")
        raise LoradeckError(f"{where}; validation needs at least one held-out image")


# --------------------------------------------------------------------------- warnings


def plan_with_warnings(config: TrainConfig, base_dir: str | Path, dataset: Dataset):
    """The plan a user reads (`loradeck plan`, the config screen's panel): the run's numbers
    with `plan_warnings` after its own problems. The trainer's plan has no such lines."""
    from dataclasses import replace

    from engine.plan.training_plan import make_plan

    plan = make_plan(config, base_dir, dataset)
    return replace(plan, problems=plan.problems + plan_warnings(config, base_dir))


def plan_warnings(config: TrainConfig, base_dir: str | Path) -> list[str]:
    """What will not stop a run but is likely not what the user meant."""
    from engine.run.folder import RunDir
    from engine.run.naming import run_folder_for

    warnings = []
    value = config.model.pretrained_model.strip()
    local = resolve_path(base_dir, value)
    run = RunDir(run_folder_for(config, Path(base_dir)))
    try:  # the config screen plans settings no check has passed yet: a path may be unusable
        if local is not None and not local.exists() and looks_like_hub_id(value):
            warnings.append(f"model.pretrained_model: {value} is not a local path (no {local}); it is loaded from "
                            "the model hub, which needs the network the first time")
        if run.is_run():
            warnings.append(f"saving.output_name: {run.path} already holds a run; `loradeck train` refuses to "
                            f"start over it: choose another name, or continue it with --resume {run.path}")
    except OSError:
        pass  # check_paths says what is wrong with such a path
    return warnings
