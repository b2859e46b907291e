"""`loradeck import-kohya FILE.json [-o OUT.toml]`: a Kohya GUI config as a loradeck config."""
from __future__ import annotations

import sys
from pathlib import Path

from engine.config.schema import dumps_config, save_config
from engine.errors import UsageError
from engine.config.kohya_import import import_kohya_file

HELP = ("Convert a Kohya GUI JSON config to a loradeck TOML config; reports what was mapped, "
        "what was changed and why, and what was ignored.")


def add_arguments(parser) -> None:
    parser.add_argument("file", type=Path, help="Kohya GUI config (.json)")
    parser.add_argument("-o", "--output", type=Path, help="write the TOML here (default: print it)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")


def run(args) -> int:
    if args.output and args.output.exists() and not args.force:
        raise UsageError(f"{args.output} exists; pass --force to overwrite it")
    result = import_kohya_file(args.file)
    # the report goes to stderr, so that stdout stays the TOML when no -o is given
    print(f"{args.file}:", file=sys.stderr)
    for line in result.report():
        print(f"  {line}", file=sys.stderr)
    if args.output:
        save_config(result.config, args.output)
        print(args.output)
    else:
        sys.stdout.write(dumps_config(result.config))
    return 0
