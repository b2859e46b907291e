"""`loradeck make-tiny-model DIR [--family sdxl]`: a tiny random SD1.5- or SDXL-layout model for tests and demos."""
from __future__ import annotations

from pathlib import Path



def add_arguments(parser) -> None:
    parser.add_argument("directory", type=Path, help="folder to write (created)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--family", choices=("sd15", "sdxl"), default="sd15", help="model layout (default sd15)")


def run(args) -> int:
    from engine.model.tiny import make_tiny_model

    print(make_tiny_model(args.directory, seed=args.seed, family=args.family))
    return 0
