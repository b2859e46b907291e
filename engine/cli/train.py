"""`loradeck train CONFIG [--detach] [--resume RUN_DIR]`: train a LoRA; prints the run folder last."""
from __future__ import annotations

import sys
from pathlib import Path

from engine.errors import UsageError



def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", type=Path,
                        help="training config (TOML); with --resume, optional new settings for the run")
    parser.add_argument("--detach", action="store_true",
                        help="return at once; the engine keeps running in its own session")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="continue a stopped or crashed run from its last saved state")


def run(args) -> int:
    from engine.config.schema import load_config
    from engine.run.folder import RunDir
    from engine.run.launch import start_training

    if args.config is None and args.resume is None:
        raise UsageError("give a CONFIG to start a run, or --resume RUN_DIR")
    if args.config is not None and args.config.is_file():
        notes: list[str] = []
        load_config(args.config, notes)
        for note in notes:  # an older config, migrated; the run folder holds it in the current version
            print(f"note: {args.config}: {note}", file=sys.stderr)
    # read before the engine starts: a detached one may save before we look again
    starting_over = args.resume is not None and RunDir(args.resume.expanduser().resolve()).saved_state_step() is None
    run_dir = start_training(args.config, detach=args.detach, resume=args.resume)
    if args.detach:
        if starting_over:  # in the foreground the engine's log says so
            print(f"note: {RunDir(run_dir).start_over_note()}")
        print(f"training in the background; follow it with `loradeck attach {run_dir}` or stop it with "
              f"`loradeck stop {run_dir}`")
    print(run_dir)
    return 0
