"""`loradeck presets [--write NAME OUT.toml]`: the shipped starting configs."""
from __future__ import annotations

from pathlib import Path

from engine.config.schema import save_config
from engine.errors import UsageError
from engine.config.presets import list_presets, load_preset



def add_arguments(parser) -> None:
    parser.add_argument(
        "--write", nargs=2, metavar=("NAME", "OUT.toml"), help="write preset NAME to OUT.toml"
    )
    parser.add_argument("--force", action="store_true", help="overwrite OUT.toml if it exists")


def run(args) -> int:
    if args.write:
        name, out = args.write[0], Path(args.write[1])
        config = load_preset(name)
        if out.exists() and not args.force:
            raise UsageError(f"{out} already exists; pass --force to overwrite it")
        save_config(config, out)
        print(f"wrote preset {name} to {out}")
        return 0
    presets = list_presets()
    width = max((len(p.name) for p in presets), default=0)
    for preset in presets:
        print(f"{preset.name:<{width}}  {preset.title}")
        if preset.description:
            print(f"{'':<{width}}  {preset.description}")
    return 0
