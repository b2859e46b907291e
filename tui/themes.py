"""Themes from TOML files: the shipped ones in `themes/`, and the user's own.

A theme file holds the fields of `textual.theme.Theme` (name, primary, secondary, accent,
warning, error, success, foreground, background, surface, panel, boost, dark, and an
optional [variables] table). Users add theme files to `~/.config/loradeck/themes/`.
The chosen theme is remembered in `~/.config/loradeck/settings.json`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from textual.theme import Theme

import themes as shipped_themes
from engine.atomic import atomic_write_text

DEFAULT_THEME = "loradeck-dark"
THEME_FIELDS = {
    "name", "primary", "secondary", "warning", "error", "success", "accent", "foreground",
    "background", "surface", "panel", "boost", "dark", "luminosity_spread", "text_alpha", "variables",
}


def user_config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "loradeck"


@dataclass(frozen=True)
class ThemeProblem:
    path: Path
    message: str


def theme_from_file(path: Path) -> Theme:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    unknown = set(data) - THEME_FIELDS
    if unknown:
        raise ValueError(f"unknown keys {', '.join(sorted(unknown))}")
    if "name" not in data or "primary" not in data:
        raise ValueError("a theme needs at least name and primary")
    return Theme(**data)


def theme_files() -> list[Path]:
    shipped = sorted(Path(shipped_themes.__file__).parent.glob("*.toml"))
    user_dir = user_config_dir() / "themes"
    own = sorted(user_dir.glob("*.toml")) if user_dir.is_dir() else []
    return shipped + own


def load_themes() -> tuple[list[Theme], list[ThemeProblem]]:
    themes, problems = [], []
    for path in theme_files():
        try:
            themes.append(theme_from_file(path))
        except (OSError, ValueError, TypeError, tomllib.TOMLDecodeError) as error:
            problems.append(ThemeProblem(path, str(error)))
    return themes, problems


def _settings_path() -> Path:
    return user_config_dir() / "settings.json"


def load_settings() -> dict:
    try:
        data = json.loads(_settings_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_setting(key: str, value) -> None:
    data = load_settings()
    if key in data and data[key] == value:
        return  # unchanged (Textual reports the theme at every start): no synced write
    data[key] = value
    try:
        atomic_write_text(_settings_path(), json.dumps(data, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only home must not break the app; the choice is just not remembered
