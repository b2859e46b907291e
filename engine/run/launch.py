"""Start a training run: make its folder, freeze its config, start the engine process.

    start_training(config_path, detach=True) -> run folder
    start_training(None, resume=run_folder)   -> the same folder, continued

The engine (`python -m engine.train.process RUN_DIR`) runs in its own session with its
stdout and stderr in the run's engine.log, so closing the terminal or losing SSH does not
end it. With `training.processes` above 1 it runs under torchrun (`--standalone`: the
rendezvous takes a free port, so two runs on one machine do not collide), which starts
one engine per process and forwards a stop signal to each of them. Light module: no
torch; the TUI starts runs through it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

from engine.config.schema import (
    load_config,
    save_config,
    with_absolute_paths,
    with_drawn_seed,
)
from engine.errors import LoradeckError
from engine.plan.preflight import check_before_run, check_paths
from engine.run.events import ERROR, FINISHED, RUN_END, RUN_START, STOPPED, read_events
from engine.run.folder import RunDir
from engine.run.naming import run_folder_for


def prepare_run(config_path: str | Path | None, *, resume: str | Path | None = None) -> RunDir:
    """A run folder with its frozen config, ready for the engine. Refuses to overwrite a run.

    Everything a run needs that can be checked before it starts is checked here, before a
    new run folder takes its name (engine.plan.preflight) and before a resume is detached."""
    if resume is not None:
        return _prepare_resume(Path(resume).expanduser().resolve(), config_path)
    if config_path is None:
        raise LoradeckError("a config file is needed to start a run (or --resume RUN_DIR)")
    path = Path(config_path).expanduser().resolve()
    config = load_config(path)
    check_before_run(config, path.parent)
    run = RunDir(run_folder_for(config, path.parent))
    if run.is_run():
        raise LoradeckError(
            f"{run.path} already holds a run; continue it with --resume {run.path}, "
            "or choose another saving.output_name"
        )
    try:
        run.create()
    except OSError as error:  # saving.output_dir is a file, read-only, or on a missing mount
        raise LoradeckError(
            f"saving.output_dir: cannot create the run folder {run.path} ({error.strerror or error})"
        ) from None
    save_config(with_drawn_seed(with_absolute_paths(config, path.parent)), run.config)
    return run


ENGINE_EXIT_SECONDS = 60.0


def _ended_engine_exits(run: RunDir) -> bool:
    """A run that has written its run end but whose engine is still closing (releasing the
    GPU, tearing down torch): wait for it, so `resume` right after a stop just works.
    True when the engine has gone; False at once for a run that has not ended."""
    from engine.run.events import RUN_END_STATUSES
    from engine.run.folder import summarize_run

    if summarize_run(run.path).status not in RUN_END_STATUSES:
        return False
    deadline = time.monotonic() + ENGINE_EXIT_SECONDS
    while run.engine_alive():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _prepare_resume(folder: Path, config_path: str | Path | None) -> RunDir:
    run = RunDir(folder)
    if not run.config.is_file():
        raise LoradeckError(f"{run.path}: not a run folder (no {run.config.name}); nothing to resume")
    if run.engine_alive() and not _ended_engine_exits(run):
        raise LoradeckError(f"{run.path}: its engine is still running (pid {run.read_pid()['pid']})")
    frozen = load_config(run.config)  # a damaged frozen config: its own error, not "the engine failed"
    if config_path is None:
        check_paths(frozen, run.path, new_run=False)  # the frozen paths are absolute: the model may have moved
        run.start_over_note()  # refuses a run that can neither continue nor start again
        return run
    # new settings for the rest of the run (say, more epochs), frozen in place of the old
    path = Path(config_path).expanduser().resolve()
    config = load_config(path)
    check_paths(config, path.parent, new_run=False)
    run.start_over_note()
    save_config(with_drawn_seed(with_absolute_paths(config, path.parent), frozen.training.seed), run.config)
    return run


def engine_command(run: RunDir, *, resume: bool, processes: int = 1) -> list[str]:
    """The engine's command line: one process, or `processes` under torchrun.

    torchrun rather than `accelerate launch`: it comes with torch, starts processes the
    same way with or without GPUs (accelerate's launcher needs --multi_gpu even for CPU
    processes), and reads no accelerate config file that could change the run behind the
    config's back. The engine's Accelerator takes its settings from the config either way."""
    engine = ["-m", "engine.train.process", str(run.path)] + (["--resume"] if resume else [])
    if processes == 1:
        return [sys.executable, *engine]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *engine]


def start_training(config_path: str | Path | None, *, detach: bool = True, resume: str | Path | None = None,
                   echo: TextIO | None = None) -> Path:
    """Start the engine for a new run (or a resumed one) and return the run folder.

    Detached, this returns at once. In the foreground it copies engine.log to `echo`
    (stdout by default) until the engine exits; Ctrl-C asks the engine to stop gracefully.
    A failed run raises LoradeckError with the engine's own error message.
    """
    run = prepare_run(config_path, resume=resume)
    run.path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(run.log, "ab") as log:
        process = subprocess.Popen(
            engine_command(run, resume=resume is not None, processes=load_config(run.config).training.processes),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: a closed terminal or SSH does not end it
            env=env,
        )
    run.write_pid(process.pid)  # "starting" is visible at once; the engine rewrites it
    if detach:
        return run.path
    status = _follow(process, run, echo or sys.stdout)
    # torchrun exits non-zero when it was interrupted, even after its engines stopped cleanly
    if status != 0 and last_run_end(run) not in (FINISHED, STOPPED):
        raise LoradeckError(f"training failed: {last_error(run) or f'engine exit status {status}'} (see {run.log})")
    return run.path


def _follow(process: subprocess.Popen, run: RunDir, echo: TextIO) -> int:
    """Copy engine.log to `echo` while the engine lives; Ctrl-C = graceful stop."""
    offset = run.log.stat().st_size if run.log.exists() else 0
    interrupts = 0

    def copy_new() -> None:
        nonlocal offset
        try:
            with open(run.log, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            return
        offset += len(data)
        if data:
            echo.write(data.decode(errors="replace"))
            echo.flush()

    while True:
        try:
            status = process.poll()
            copy_new()
            if status is not None:
                return status
            time.sleep(0.2)
        except KeyboardInterrupt:
            interrupts += 1
            # the engine finishes its step, saves and exits; a second Ctrl-C aborts it
            process.send_signal(signal.SIGINT if interrupts == 1 else signal.SIGTERM)


def last_run_end(run: RunDir) -> str:
    """The status of the run end of the run's last session ("" when it has none)."""
    status = ""
    for event in read_events(run.events):
        if event.get("type") == RUN_START:
            status = ""
        elif event.get("type") == RUN_END:
            status = str(event.get("status", ""))
    return status


def last_error(run: RunDir) -> str:
    message = ""
    for event in read_events(run.events):
        if event.get("type") == ERROR:
            message = str(event.get("message", ""))
    return message
