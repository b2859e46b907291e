"""A workspace folder: images, the config, runs, and loradeck's own remembered state.

    <workspace>/
      img/<repeats>_<class>/...   training images and captions (Kohya layout)
      loradeck.toml               the workspace config (engine.config.schema)
      runs/<output_name>/         run folders (engine.run.folder)
      .loradeck/                  app state (last screen, theme, review marks, drafts)

Light module.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.atomic import atomic_write_text

CONFIG_NAME = "loradeck.toml"
STATE_DIR = ".loradeck"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, path: str | Path) -> "Workspace":
        return cls(Path(path).expanduser().resolve())

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    def setting(self, key: str) -> Any:
        """One setting of the workspace config, read leniently (`engine.config.schema.lenient_setting`):
        a config that does not validate yet, or none at all, still names its folders."""
        from engine.config.schema import lenient_setting, tomllib

        try:
            data = tomllib.loads(self.config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            data = {}
        return lenient_setting(data, key)

    def _folder(self, key: str, default: str) -> Path:
        path = Path(self.setting(key) or default).expanduser()
        return path if path.is_absolute() else self.root / path

    @property
    def image_dir(self) -> Path:
        return self._folder("dataset.image_dir", "img")

    @property
    def runs_dir(self) -> Path:
        return self._folder("saving.output_dir", "runs")

    def exists(self) -> bool:
        return self.config_path.exists() or (self.root / "img").is_dir()

    # ---- remembered app state: small JSON documents under .loradeck/

    def load_state(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads((self.state_dir / f"{name}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save_state(self, name: str, data: dict[str, Any]) -> None:
        atomic_write_text(self.state_dir / f"{name}.json", json.dumps(data, indent=1, sort_keys=True))
