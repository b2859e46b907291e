"""The engine process: `python -m engine.train.process RUN_DIR [--resume]`.

`loradeck train` starts it (engine.run.launch), through `torchrun` when the config asks for
several processes. Started by hand with torchrun or accelerate, it takes the config instead
of a prepared folder, and the main process prepares the folder (the others never read it,
so on several machines it lives on the main one only):

    torchrun --standalone --nproc_per_node 2 -m engine.train.process --config lora.toml
    accelerate launch --multi_gpu --num_processes 2 -m engine.train.process --config lora.toml [--resume RUN_DIR]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.errors import LoradeckError


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine.train.process")
    parser.add_argument("run_dir", nargs="?", type=Path, help="prepared run folder (holds config.toml)")
    parser.add_argument("--resume", nargs="?", const=True, default=None,
                        help="continue from the run's saved state (with --config: the run folder)")
    parser.add_argument("--config", type=Path, help="start a new run from this config (for torchrun / accelerate launch)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from engine.library_noise import silence_library_noise

    silence_library_noise()  # engine.log is the user's: no import-time chatter of the libraries
    args = argument_parser().parse_args(argv)
    try:
        run_dir, resume = _run_dir(args)
    except LoradeckError as error:
        from engine.train.processes import repeats_main

        if not repeats_main(error):
            print(f"loradeck train: {error}", file=sys.stderr)
        return error.exit_status
    from engine.train.loop import train

    return train(run_dir, resume=resume)


def _run_dir(args) -> tuple[Path, bool]:
    if args.config is None:
        if args.run_dir is None:
            raise LoradeckError("give a run folder, or --config CONFIG")
        return args.run_dir, bool(args.resume)
    from engine.run.launch import prepare_run
    from engine.train.processes import share_from_main, start_processes

    resume = args.resume if isinstance(args.resume, str) else None
    # the process group first: the main process makes the folder, the others learn its path
    path = share_from_main(start_processes(), lambda: prepare_run(args.config, resume=resume).path)
    return path, resume is not None


if __name__ == "__main__":
    sys.exit(main())
