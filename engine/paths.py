"""Path settings resolved against the folder of the config that names them. Light module."""
from __future__ import annotations

from pathlib import Path


def resolve_path(base_dir: str | Path, value: str) -> Path | None:
    """A path setting resolved against the config file's folder; None when unset."""
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path
