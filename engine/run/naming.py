"""Output names that follow the user's versioning scheme, and the rule that a new run
never starts over an existing run folder.

The Kohya community names runs like `city-v2`: the number goes up when the images change,
a letter is added when only the settings change (`city-v2b`, `city-v2c`). Given the
current name and the run folders that exist, `suggest_names` proposes the next name of
each kind. Light module.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.paths import resolve_path

if TYPE_CHECKING:
    from engine.config.schema import TrainConfig

_VERSIONED = re.compile(r"^(?P<prefix>.*?)(?P<number>\d+)(?P<letters>[a-z]*)$")


@dataclass(frozen=True)
class VersionedName:
    """`city-v2b` -> prefix `city-v`, number 2, letters `b` (width keeps zero padding)."""

    prefix: str
    number: int
    width: int
    letters: str

    def format(self, number: int | None = None, letters: str | None = None) -> str:
        number = self.number if number is None else number
        letters = self.letters if letters is None else letters
        return f"{self.prefix}{str(number).zfill(self.width)}{letters}"


@dataclass(frozen=True)
class NameSuggestions:
    new_images: str  # next number: the training images changed
    new_settings: str  # next letter: same images, different settings


def parse_name(name: str) -> VersionedName:
    """Split a run name into its version parts; an unnumbered `city` counts as `city-v1`."""
    match = _VERSIONED.match(name)
    if match is None or not match.group("prefix"):
        return VersionedName(f"{name}-v", 1, 1, "")
    digits = match.group("number")
    return VersionedName(match.group("prefix"), int(digits), len(digits), match.group("letters"))


def _letters_key(letters: str) -> tuple[int, str]:
    # the bare name is version "a"; "b" < "c" < ... < "z" < "za"
    return (len(letters or "a"), letters or "a")


def _next_letters(letters: str) -> str:
    letters = letters or "a"
    if letters[-1] < "z":
        return letters[:-1] + chr(ord(letters[-1]) + 1)
    return letters + "a"


def suggest_names(current: str, existing: set[str] | list[str]) -> NameSuggestions:
    """The next name for new images and for new settings, never one that exists."""
    taken = set(existing)
    version = parse_name(current)
    series = [parse_name(name) for name in taken]  # an unnumbered run is version 1
    numbers = [v.number for v in series if v.prefix == version.prefix]
    new_images = version.format(max(numbers, default=version.number - 1) + 1, "")

    same_number = [v.letters for v in series if v.prefix == version.prefix and v.number == version.number]
    if same_number:
        letters = _next_letters(max(same_number, key=_letters_key))
        new_settings = version.format(letters=letters if letters != "a" else "b")
    else:
        new_settings = version.format(letters="")

    return NameSuggestions(_free(new_images, taken), _free(new_settings, taken))


def _free(name: str, taken: set[str]) -> str:
    """`name`, or the next letter version of it that no run uses yet."""
    version = parse_name(name)
    while version.format() in taken:
        version = VersionedName(version.prefix, version.number, version.width,
                                _next_letters(version.letters) if version.letters else "b")
    return version.format()


def existing_run_names(runs_dir: str | Path) -> set[str]:
    """Names of every folder in the runs folder (finished, failed or half-made)."""
    try:
        return {entry.name for entry in os.scandir(runs_dir) if entry.is_dir()}
    except OSError:
        # missing, a file, unreadable, a loop of links: no names known here. The names only
        # steer the suggestions; starting a run checks the folder itself and says what is wrong.
        return set()


def run_folder_for(config: TrainConfig, base_dir: Path) -> Path:
    """Where a config's run goes: `<output_dir>/<output_name>`, output_dir relative to the
    config's folder."""
    output_dir = resolve_path(base_dir, config.saving.output_dir) or base_dir
    return output_dir / config.saving.output_name


def run_folder_problem(name: str, runs_dir: str | Path, existing: set[str] | None = None) -> str | None:
    """Why a new run named `name` may not start in `runs_dir`, or None when it may."""
    taken = existing_run_names(runs_dir) if existing is None else existing
    if name not in taken:
        return None
    suggestion = suggest_names(name, taken)
    return (
        f"{Path(runs_dir) / name} already exists and a new run never overwrites one; "
        f"use {suggestion.new_images} (new images) or {suggestion.new_settings} (new settings)"
    )
