"""`loradeck stop|save-now|sample-now|skip-sample RUN_DIR`: requests to a running engine.

The engine handles a request at its next step boundary: stop finishes the step, saves the
LoRA and state and exits; save-now saves them and goes on; sample-now renders samples.
skip-sample ends the sampling in progress after its current denoising step.
"""
from __future__ import annotations

from pathlib import Path

from engine.errors import LoradeckError

ACTIONS = {"stop": "stop", "save-now": "save", "sample-now": "sample", "skip-sample": "skip"}


def add_arguments(parser, command_name: str) -> None:
    parser.add_argument("run_dir", type=Path, help="the run folder (runs/<name>)")
    parser.set_defaults(_action=ACTIONS[command_name])


def run(args) -> int:
    from engine.run.folder import RunDir

    run_dir = RunDir(args.run_dir.expanduser().resolve())
    if not run_dir.is_run():
        raise LoradeckError(f"{run_dir.path}: not a run folder")
    if not run_dir.engine_alive():
        # a request left for a dead engine would fire when the run is next resumed
        raise LoradeckError(f"{run_dir.path}: no engine is running for this run")
    try:
        run_dir.request(args._action)
    except OSError as error:  # a read-only run folder, or a file where control/ should be
        raise LoradeckError(f"{run_dir.control}: cannot write the request ({error.strerror or error})") from None
    when = "after its current denoising step" if args._action == "skip" else "at its next step"
    print(f"{args._action} requested; the engine handles it {when} ({run_dir.path})")
    return 0
