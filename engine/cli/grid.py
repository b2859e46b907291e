"""`loradeck grid RUN_DIR [--prompts FILE] [--weights 0.6,0.8,1.0] [--mark-best] [-o OUT.png]`.

Light at import time (the command table is built by the TUI's CLI); the model stack is
imported when the command runs.
"""
from __future__ import annotations

import sys
from pathlib import Path



def add_arguments(parser) -> None:
    parser.add_argument("run_dir", type=Path, help="run folder (runs/<name>)")
    parser.add_argument(
        "--prompts",
        type=Path,
        default=None,
        help="prompts file in sd-scripts syntax (default: the run config's sample prompts)",
    )
    parser.add_argument(
        "--weights",
        default="1.0",
        help="comma-separated LoRA weights, one row each per prompt; 0 shows the base model (default 1.0)",
    )
    parser.add_argument(
        "--mark-best", action="store_true",
        help="label each column with its validation loss and mark the best (runs trained with validation)",
    )
    parser.add_argument("-o", "--output", type=Path, default=None, help="output PNG (default RUN_DIR/grid.png)")
    parser.add_argument(
        "--device", default="auto", help="torch device: auto (CUDA when present), cpu, cuda, cuda:1 ..."
    )


def run(args) -> int:
    from engine.sampling.grid import parse_weights, render_grid

    weights = parse_weights(args.weights)
    output = render_grid(
        args.run_dir,
        prompts_file=args.prompts,
        weights=weights,
        output=args.output,
        device=args.device,
        mark_best=args.mark_best,
        progress=lambda message: print(message, file=sys.stderr, flush=True),
    )
    print(output)
    return 0
