"""`loradeck make-tiny-model DIR`: a tiny random SD1.5-layout model for tests and demos."""
from __future__ import annotations

from pathlib import Path

HELP = "Write a tiny Stable Diffusion 1.5-layout model (random weights, offline) as a diffusers folder."


def add_arguments(parser) -> None:
    parser.add_argument("directory", type=Path, help="folder to write (created)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")


def run(args) -> int:
    from engine.model.tiny import make_tiny_model

    print(make_tiny_model(args.directory, seed=args.seed))
    return 0
