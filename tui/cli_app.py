"""The commands that open the app: `loradeck [WORKSPACE]`, `loradeck attach`, `loradeck demo`."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from engine.errors import LoradeckError, UsageError

IMAGE_PROTOCOLS = ("auto", "kitty", "sixel", "halfcell", "unicode", "none")


def _app_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--theme", help="theme name (default: the one chosen last)")
    parser.add_argument("--image-protocol", choices=IMAGE_PROTOCOLS, default="auto",
                        help="how images are drawn (default: the best the terminal offers)")


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    if command == "attach":
        parser.add_argument("run_dir", type=Path, help="run folder (runs/<name>)")
    else:
        parser.add_argument("dir", type=Path, nargs="?", default=Path("loradeck-demo"),
                            help="demo workspace folder (default: ./loradeck-demo)")
        parser.add_argument("--headless", action="store_true",
                            help="train without the UI and print the run folder")
        parser.add_argument("--epochs", type=int, default=4, help="epochs to train (default 4)")
    _app_options(parser)


def _protocol(args) -> str | None:
    return None if args.image_protocol == "auto" else args.image_protocol


def _run_app(workspace: Path, args, **options) -> int:
    from tui.app import make_app

    app = make_app(workspace, theme=args.theme, image_protocol=_protocol(args), **options)
    app.run()
    for line in app.farewell:  # a live run goes on: how to come back to it
        print(line)
    return int(app.return_code or 0)


def workspace_of_run(run_dir: Path) -> Path:
    """runs/<name> lives in its workspace; a loose run folder is its own parent's."""
    run_dir = run_dir.resolve()
    parent = run_dir.parent
    if (parent.parent / "loradeck.toml").exists():
        return parent.parent
    return parent.parent if parent.name == "runs" else parent


def run(args) -> int:
    if args.command == "attach":
        from engine.run.folder import RunDir

        if not RunDir(args.run_dir).is_run():
            raise UsageError(f"{args.run_dir} is not a run folder (no config.toml or events.jsonl)")
        return _run_app(workspace_of_run(args.run_dir), args, start_screen="runs", attach_run=args.run_dir.resolve())
    return run_demo(args)


def run_demo(args) -> int:
    from engine.config.schema import load_config, replace_setting, save_config
    from engine.run.demo import next_demo_run_name
    from engine.run.launch import start_training
    from engine.config.workspace import Workspace

    root = args.dir.resolve()
    print(f"Creating the demo workspace in {root} ...", file=sys.stderr)
    # A subprocess builds the tiny model so this process (the app) never imports torch.
    made = subprocess.run([sys.executable, "-m", "engine.run.demo", str(root), "--epochs", str(args.epochs)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        last_line = (made.stderr.strip().splitlines() or ["no message"])[-1]
        raise LoradeckError(f"could not create the demo workspace: {last_line}")
    workspace = Workspace.at(root)
    # The tiny model's operations are too small to split across threads: one thread per
    # engine is several times faster than torch's default, and leaves a core for the app.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    config = load_config(workspace.config_path)
    config = replace_setting(config, "saving.output_name", next_demo_run_name(workspace))
    save_config(config, workspace.config_path)
    if args.headless:
        run_dir = start_training(workspace.config_path, detach=False)
        _print_ending(run_dir, root)
        print(run_dir)
        return 0
    run_dir = start_training(workspace.config_path, detach=True)
    return _run_app(root, args, start_screen="runs", attach_run=run_dir)


def _print_ending(run_dir: Path, root: Path) -> None:
    """Where the LoRA is, how to load it, what next (stderr: stdout ends with the run folder)."""
    from engine.run.folder import summarize_run
    from engine.run.next_steps import ending_lines

    from engine.run.folder import RunDir

    summary = summarize_run(run_dir)
    for line in ending_lines(RunDir(run_dir), summary, root=root, demo=True, in_app=False):
        print(line, file=sys.stderr)


def open_workspace(argv: list[str]) -> int:
    """`loradeck [WORKSPACE] [--theme T] [--image-protocol P] [--screen S]`."""
    parser = argparse.ArgumentParser(
        prog="loradeck",
        description="Open the loradeck app on a workspace folder (images under img/, loradeck.toml, runs/). "
        "Run `loradeck --help` for the headless commands.",
    )
    parser.add_argument("workspace", type=Path, nargs="?", default=Path("."), help="workspace folder (default: here)")
    parser.add_argument("--screen", choices=("health", "captions", "config", "runs"), help="screen to open")
    _app_options(parser)
    args = parser.parse_args(argv)
    if args.workspace.exists() and not args.workspace.is_dir():
        print(f"loradeck: {args.workspace} is a file, not a workspace folder", file=sys.stderr)
        return 2
    args.workspace.mkdir(parents=True, exist_ok=True)
    return _run_app(args.workspace, args, start_screen=args.screen)
