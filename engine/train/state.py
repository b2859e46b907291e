"""Resumable trainer state, without pickle: safetensors for tensors, JSON for the rest.

    state/
      latest.json              {"folder": "step-00000120"}   the state to resume from
      step-00000120/
        lora.safetensors       the LoRA in fp32 (the checkpoint may be fp16)
        tensors.safetensors    optimizer moments, RNG states
        state.json             progress, optimizer and scheduler settings, where each tensor goes

A state is written into a hidden temporary folder, which is renamed into place and only
then named in `latest.json` (itself replaced atomically). A `kill -9` at any moment leaves
`latest.json` naming a complete state. The two newest states are kept.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.atomic import atomic_path, atomic_write_text
from engine.errors import LoradeckError
from engine.run.folder import LATEST_STATE_FILE, latest_state_name

STATE_VERSION = 1
STATES_KEPT = 2


# --------------------------------------------------------------------------- tree <-> (json, tensors)


def split_tensors(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able copy of `value` with each tensor moved to `tensors` under a path key.

    Dicts with non-string keys (an optimizer's per-parameter state) become key/value lists.
    """
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(value, np.ndarray):
        # torch has no safetensors-storable uint32 (NumPy's RNG key): widen, keep the dtype
        tensors[path] = torch.from_numpy(value.astype(np.int64) if value.dtype.kind == "u" else value.copy())
        return {"__ndarray__": path, "dtype": str(value.dtype)}
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            return {"__dict__": {key: split_tensors(item, f"{path}.{key}", tensors) for key, item in value.items()}}
        return {"__pairs__": [[key, split_tensors(item, f"{path}.{key}", tensors)] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        kind = "__tuple__" if isinstance(value, tuple) else "__list__"
        return {kind: [split_tensors(item, f"{path}.{index}", tensors) for index, item in enumerate(value)]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store a {type(value).__name__} in trainer state ({path})")


def join_tensors(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `split_tensors`."""
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return tensors[value["__ndarray__"]].numpy().astype(value["dtype"])
    if "__dict__" in value:
        return {key: join_tensors(item, tensors) for key, item in value["__dict__"].items()}
    if "__pairs__" in value:
        return {key: join_tensors(item, tensors) for key, item in value["__pairs__"]}
    if "__tuple__" in value:
        return tuple(join_tensors(item, tensors) for item in value["__tuple__"])
    if "__list__" in value:
        return [join_tensors(item, tensors) for item in value["__list__"]]
    raise ValueError(f"unknown state entry {sorted(value)}")


# --------------------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


# --------------------------------------------------------------------------- save / load


@dataclass
class SavedState:
    folder: Path
    progress: dict[str, Any]
    lora: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    lr_scheduler: dict[str, Any]
    rng: dict[str, Any]


def state_folder_name(step: int) -> str:
    return f"step-{step:08d}"


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())


def save_state(
    state_dir: Path, *, step: int, lora: dict[str, torch.Tensor], optimizer: dict[str, Any],
    lr_scheduler: dict[str, Any], progress: dict[str, Any],
) -> Path:
    """Write a complete state for `step` and make it the one to resume from; returns its folder."""
    from safetensors.torch import save_file

    state_dir.mkdir(parents=True, exist_ok=True)
    name = state_folder_name(step)
    final = state_dir / name
    latest = latest_state_name(state_dir)
    if final.exists():
        if latest == name:
            return final  # this step's state is already the latest (e.g. save and stop together)
        shutil.rmtree(final)  # left by a run killed before it named this state latest
    temp = state_dir / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    tensors: dict[str, torch.Tensor] = {}
    tree = {
        "version": STATE_VERSION,
        "progress": progress,
        "optimizer": split_tensors(optimizer, "optimizer", tensors),
        "lr_scheduler": split_tensors(lr_scheduler, "lr_scheduler", tensors),
        "rng": split_tensors(capture_rng(), "rng", tensors),
    }
    try:
        with atomic_path(temp / "lora.safetensors") as path:
            save_file({k: v.float().contiguous() for k, v in lora.items()}, str(path))
        with atomic_path(temp / "tensors.safetensors") as path:
            save_file(tensors, str(path))
        atomic_write_text(temp / "state.json", json.dumps(tree))
        os.replace(temp, final)
        atomic_write_text(state_dir / LATEST_STATE_FILE, json.dumps({"folder": name, "step": step}))
    except BaseException:
        # A full disk (or a stop mid-save): the half-written state goes, the one latest.json
        # names stays, and the space the attempt took is free again.
        shutil.rmtree(temp, ignore_errors=True)
        if latest_state_name(state_dir) != name:
            shutil.rmtree(final, ignore_errors=True)
        raise
    _prune(state_dir, keep=name)
    return final


def _prune(state_dir: Path, keep: str) -> None:
    folders = sorted(p for p in state_dir.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for folder in folders[:-STATES_KEPT]:
        if folder.name != keep:
            shutil.rmtree(folder, ignore_errors=True)
    for leftover in state_dir.iterdir():
        if leftover.is_dir() and leftover.name.startswith(".step-"):
            shutil.rmtree(leftover, ignore_errors=True)  # half-written by a killed run


def load_state(state_dir: Path) -> SavedState | None:
    """The state `latest.json` names (or the newest complete one); None when there is none."""
    from safetensors.torch import load_file

    name = latest_state_name(state_dir)
    if name is None:
        candidates = sorted(
            p.name for p in state_dir.glob("step-*") if (p / "state.json").is_file()
        ) if state_dir.is_dir() else []
        if not candidates:
            return None
        name = candidates[-1]
    folder = state_dir / name
    try:
        tree = json.loads((folder / "state.json").read_text())
        tensors = load_file(str(folder / "tensors.safetensors"))
        lora = load_file(str(folder / "lora.safetensors"))
    except Exception as error:  # a damaged state is a user-facing problem, not a traceback
        raise LoradeckError(f"{folder}: trainer state cannot be read ({error})") from None
    if tree.get("version") != STATE_VERSION:
        raise LoradeckError(f"{folder}: trainer state version {tree.get('version')} is not supported")
    return SavedState(
        folder=folder,
        progress=tree["progress"],
        lora=lora,
        optimizer=join_tensors(tree["optimizer"], tensors),
        lr_scheduler=join_tensors(tree["lr_scheduler"], tensors),
        rng=join_tensors(tree["rng"], tensors),
    )
