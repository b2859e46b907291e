"""The `loradeck` command: the app, and every headless engine command.

`loradeck [WORKSPACE]` opens the app; `loradeck COMMAND ...` runs a headless command whose
module lives in `engine.cli` (or `tui.cli_app` for the commands that open the app).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from engine.errors import LoradeckError, one_line
from engine.library_noise import silence_library_noise

EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE: what a shell tool killed by a closed pipe returns

# command name -> (module defining add_arguments(parser) and run(args), its one-line help).
# The help lives here so that `loradeck --help` lists every command without importing any:
# a command's module (and whatever it needs) is imported only when that command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "plan": ("engine.cli.plan", "Show images, repeats, buckets, steps per epoch and total steps of a config."),
    "import-kohya": ("engine.cli.import_kohya",
                     "Convert a Kohya GUI JSON config to a loradeck TOML config; reports, for each config, what "
                     "was mapped, what was changed and why, and what was ignored."),
    "export-kohya": ("engine.cli.export_kohya",
                     "Write a config as a Kohya GUI JSON config and print the sd-scripts command line that trains "
                     "it, to check or reproduce a run in Kohya."),
    "make-tiny-model": ("engine.cli.make_tiny_model",
                        "Write a tiny model with a family's real layout (random weights, offline) as a diffusers "
                        "folder."),
    "train": ("engine.cli.train", "Train a LoRA from a config; prints the run folder as its last line."),
    "stop": ("engine.cli.control", "Stop a run gracefully: finish the step, save the LoRA and state, exit."),
    "save-now": ("engine.cli.control", "Ask a running engine to save the LoRA and its state now."),
    "sample-now": ("engine.cli.control", "Ask a running engine to render its sample prompts now."),
    "skip-sample": ("engine.cli.control", "Skip the samples a running engine is rendering; training goes on."),
    "runs": ("engine.cli.runs", "List the runs of a workspace: status, progress, loss, speed, start time, duration."),
    "scan": ("engine.cli.scan",
             "Check a dataset for corrupt, sideways, tiny, duplicate and uncaptioned images; fix what is safe."),
    "caption": ("engine.cli.caption",
                "Auto-caption every image of a dataset folder with BLIP, Florence-2 or a WD14 tagger."),
    "tags": ("engine.cli.tags", "Tag statistics and bulk tag edits (add, remove, replace, move first) over caption files."),
    "prepare": ("engine.cli.prepare",
                "Build the Kohya folder (<repeats>_<subject> <class>) from a flat folder of images and captions."),
    "grid": ("engine.cli.grid",
             "Render every sample prompt against every saved LoRA of a run into one labelled grid image."),
    "presets": ("engine.cli.presets", "List the shipped config presets, or write one out as a config file."),
    "attach": ("tui.cli_app", "Open the dashboard of a run (live or finished); quitting leaves the run going."),
    "demo": ("tui.cli_app",
             "Create a demo workspace (generated images, tiny model) and train it on CPU, watched live."),
}


def build_parser(commands: dict[str, tuple[str, str]] = COMMANDS, *,
                 full: tuple[str, ...] | None = None) -> argparse.ArgumentParser:
    """The `loradeck` parser. Only the commands in `full` (all when None) get their
    arguments, which imports their modules; the others are listed by name and help."""
    parser = argparse.ArgumentParser(
        prog="loradeck",
        description="Train Stable Diffusion and Flux LoRAs from the terminal. "
        "Run `loradeck [WORKSPACE]` to open the app, or a command below.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in commands.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        if full is None or name in full:
            adder = importlib.import_module(module_name).add_arguments
            adder(sub, name) if _takes_command_name(adder) else adder(sub)
    return parser


def _takes_command_name(function) -> bool:
    return function.__code__.co_argcount >= 2


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _run_command(argv)
        finally:
            sys.stdout.flush()  # a closed pipe shows here (also after --help), not at the interpreter's exit
    except BrokenPipeError:
        # `loradeck plan --json | head -5`: the reader has all it wanted. Quietly, like `cat`:
        # stdout goes to /dev/null so the exit's flush cannot complain again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_CLOSED_PIPE


def _run_command(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        # `loradeck`, `loradeck WORKSPACE`, `loradeck --theme x WORKSPACE`
        from tui import cli_app

        return cli_app.open_workspace(argv)
    parser = build_parser(full=(argv[0],))
    args = parser.parse_args(argv)
    silence_library_noise()  # a command's output is the user's: no import-time chatter of the libraries
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except LoradeckError as error:
        print(f"loradeck {args.command}: {one_line(str(error))}", file=sys.stderr)
        return error.exit_status


if __name__ == "__main__":
    sys.exit(main())
