"""Shipped starting configs: `engine/presets/<name>.toml`.

A preset is an ordinary config file with one extra `[preset]` table (title and
description) that is removed before parsing, so every preset is validated exactly like a
user's config. Light module.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from engine.config.schema import TrainConfig, config_from_dict
from engine.errors import ConfigError, LoradeckError

PRESETS_DIR = Path(__file__).with_name("preset_files")


@dataclass(frozen=True)
class Preset:
    name: str  # file stem, e.g. "seed-workflow"
    title: str
    description: str
    path: Path


def _read(path: Path) -> tuple[dict, dict]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("toml", f"not valid TOML: {error}", str(path)) from None
    about = data.pop("preset", {})
    return about, data


def list_presets() -> list[Preset]:
    """Every shipped preset, the general one first (`order` in the `[preset]` table)."""
    found = []
    for path in PRESETS_DIR.glob("*.toml"):
        about, _data = _read(path)
        preset = Preset(path.stem, about.get("title", path.stem), about.get("description", ""), path)
        found.append((about.get("order", 100), path.stem, preset))
    return [preset for _order, _name, preset in sorted(found)]


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.toml"
    if not path.is_file():
        names = ", ".join(p.stem for p in sorted(PRESETS_DIR.glob("*.toml")))
        raise LoradeckError(f"no preset named {name!r}; presets: {names}")
    return path


def load_preset(name: str) -> TrainConfig:
    """The preset's config, parsed and validated like any config file."""
    path = preset_path(name)
    _about, data = _read(path)
    return config_from_dict(data, str(path))
