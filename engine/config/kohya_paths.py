"""The paths of a Kohya GUI config, read as the GUI's sd-scripts process reads them.

The GUI starts sd-scripts in its own folder (the kohya_ss checkout), so a relative
`train_data_dir`, `dataset_config` or `output_dir` in its JSON, and a relative `image_dir`
inside its dataset TOML, start from there, not from the JSON's folder. The import takes
that folder from `--kohya-dir`, or finds it: the first of the JSON's folder and the folders
above it that holds one of the config's relative paths (the GUI's own `test/config/*.json`
name `./test/config/dataset.toml`, found two folders up). It says which folder it used.

Light module: standard library only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.dataset.kohya_toml import exists, expanded, relative_path

# the keys whose relative paths can tell where the GUI ran, most telling first
FINDER_KEYS = ("dataset_config", "train_data_dir", "reg_data_dir", "lora_network_weights", "network_weights", "vae",
               "pretrained_model_name_or_path")
WINDOWS_ABSOLUTE = re.compile(r"^[A-Za-z]:[\\/]")


@dataclass(frozen=True)
class GuiFolder:
    """The folder the GUI's relative paths start from (None: not known) and how it was found."""

    path: Path | None
    found_by: str = ""

    def resolve(self, text: str, *, must_exist: bool = False) -> str:
        """A relative path of the config as an absolute one under the GUI's folder (when known;
        with `must_exist`, only when it is there: a model may be a hub id); others as written."""
        if self.path is None or is_absolute(text):
            return text
        path = relative_path(self.path, text)
        return str(path) if exists(path) or not must_exist else text

    def note(self) -> str:
        if self.path is None:
            return ""
        return f"relative paths start from the Kohya GUI's folder {self.path} ({self.found_by}), as in the GUI"


def is_absolute(text: str) -> bool:
    return expanded(text).is_absolute() or bool(WINDOWS_ABSOLUTE.match(text))


def relative_paths(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, text) of every non-empty relative path of the config that can locate the GUI."""
    found = []
    for key in FINDER_KEYS:
        text = data.get(key)
        if isinstance(text, str) and text.strip() and not is_absolute(text.strip()):
            found.append((key, text.strip()))
    return found


def find_gui_folder(data: dict[str, Any], json_folder: Path | None, given: Path | None = None) -> GuiFolder:
    """The GUI's folder: `given` (--kohya-dir), else the nearest of the JSON's folder and those
    above it holding one of the config's relative paths; GuiFolder(None) when none does."""
    if given is not None:
        return GuiFolder(expanded(str(given)).resolve(), "given with --kohya-dir")
    if json_folder is None:
        return GuiFolder(None)
    start = Path(json_folder).resolve()
    candidates = relative_paths(data)
    for folder in (start, *start.parents):
        for key, text in candidates:
            if exists(relative_path(folder, text)):
                return GuiFolder(folder, f"where {key} {text} is; --kohya-dir sets it")
    return GuiFolder(None)
