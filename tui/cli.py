"""The `loradeck` command: the app, and every headless engine command.

`loradeck [WORKSPACE]` opens the app; `loradeck COMMAND ...` runs a headless command whose
module lives in `engine.cli` (or `tui.cli_app` for the commands that open the app).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from engine.errors import LoradeckError

# command name -> module defining HELP, add_arguments(parser), run(args)
COMMANDS: dict[str, str] = {
    "plan": "engine.cli.plan",
    "import-kohya": "engine.cli.import_kohya",
    "export-kohya": "engine.cli.export_kohya",
    "make-tiny-model": "engine.cli.make_tiny_model",
    "train": "engine.cli.train",
    "stop": "engine.cli.control",
    "save-now": "engine.cli.control",
    "sample-now": "engine.cli.control",
    "runs": "engine.cli.runs",
    "scan": "engine.cli.scan",
    "caption": "engine.cli.caption",
    "tags": "engine.cli.tags",
    "grid": "engine.cli.grid",
    "presets": "engine.cli.presets",
    "attach": "tui.cli_app",
    "demo": "tui.cli_app",
}


def build_parser(commands: dict[str, str] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loradeck",
        description="Train Stable Diffusion LoRAs from the terminal. "
        "Run `loradeck [WORKSPACE]` to open the app, or a command below.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in commands.items():
        module = importlib.import_module(module_name)
        help_text = module.HELP[name] if isinstance(module.HELP, dict) else module.HELP
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        adder = module.add_arguments
        adder(sub, name) if _takes_command_name(adder) else adder(sub)
        sub.set_defaults(_module=module_name)
    return parser


def _takes_command_name(function) -> bool:
    return function.__code__.co_argcount >= 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        # `loradeck`, `loradeck WORKSPACE`, `loradeck --theme x WORKSPACE`
        from tui import cli_app

        return cli_app.open_workspace(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except LoradeckError as error:
        print(f"loradeck {args.command}: {error}", file=sys.stderr)
        return error.exit_status


if __name__ == "__main__":
    sys.exit(main())
