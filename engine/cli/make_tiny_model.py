"""`loradeck make-tiny-model DIR [--family sdxl]`: a tiny random model of a family's layout for tests and demos."""
from __future__ import annotations

from pathlib import Path

from engine.model.families import one_per_runtime


def add_arguments(parser) -> None:
    names = [family.name for family in one_per_runtime()]
    parser.add_argument("directory", type=Path, help="folder to write (created)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--family", choices=names, default=names[0], help=f"model layout (default {names[0]})")


def run(args) -> int:
    from engine.model.tiny import make_tiny_model

    print(make_tiny_model(args.directory, seed=args.seed, family=args.family))
    return 0
