"""The engine process: `python -m engine.train.process RUN_DIR [--resume]`.

`loradeck train` starts it (engine.run.launch). For several GPUs, start it with accelerate,
giving the config instead of a prepared folder; the main process prepares the folder:

    accelerate launch -m engine.train.process --config lora.toml [--resume RUN_DIR]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.errors import LoradeckError


def main(argv: list[str] | None = None) -> int:
    from engine.library_noise import silence_library_noise

    silence_library_noise()  # engine.log is the user's: no import-time chatter of the libraries
    parser = argparse.ArgumentParser(prog="python -m engine.train.process")
    parser.add_argument("run_dir", nargs="?", type=Path, help="prepared run folder (holds config.toml)")
    parser.add_argument("--resume", nargs="?", const=True, default=None,
                        help="continue from the run's saved state (with --config: the run folder)")
    parser.add_argument("--config", type=Path, help="start a new run from this config (for accelerate launch)")
    args = parser.parse_args(argv)
    try:
        run_dir, resume = _run_dir(args)
    except LoradeckError as error:
        print(f"loradeck train: {error}", file=sys.stderr)
        return error.exit_status
    from engine.train.loop import train

    return train(run_dir, resume=resume)


def _run_dir(args) -> tuple[Path, bool]:
    if args.config is None:
        if args.run_dir is None:
            raise LoradeckError("give a run folder, or --config CONFIG")
        return args.run_dir, bool(args.resume)
    # Under `accelerate launch` every process gets here: the main one makes the folder.
    from accelerate import PartialState

    from engine.config.schema import load_config
    from engine.run.launch import prepare_run, run_folder_for

    state = PartialState()
    resume = args.resume if isinstance(args.resume, str) else None
    if state.is_main_process:
        run = prepare_run(args.config, resume=resume)
        path = run.path
    else:
        config_path = args.config.expanduser().resolve()
        path = Path(resume).resolve() if resume else run_folder_for(load_config(config_path), config_path.parent)
    state.wait_for_everyone()
    return path, resume is not None


if __name__ == "__main__":
    sys.exit(main())
