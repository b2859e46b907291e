"""`loradeck import-kohya FILE.json [-o OUT.toml]`: a Kohya GUI config as a loradeck config.

`loradeck import-kohya A.json B.json ...` reports on each config without writing any."""
from __future__ import annotations

import sys
from pathlib import Path

from engine.config.schema import dumps_config, save_config
from engine.errors import LoradeckError, UsageError
from engine.config.kohya_import import import_kohya_file



def add_arguments(parser) -> None:
    parser.add_argument("file", type=Path, nargs="+",
                        help="Kohya GUI config (.json); several: report on each, write none")
    parser.add_argument("-o", "--output", type=Path, help="write the TOML here (default: print it)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    parser.add_argument("--model", default="", metavar="PATH",
                        help="base model (folder, .safetensors file or hub id): fills in a preset's, replaces a config's")
    parser.add_argument("--kohya-dir", type=Path, metavar="DIR",
                        help="the Kohya GUI's folder, where its relative paths start (found from the JSON's folder "
                        "when not given)")


def run(args) -> int:
    if len(args.file) > 1:
        if args.output:
            raise UsageError("-o takes one config; give one FILE.json, or several without -o for their reports")
        return _report_all(args.file, args)
    if args.output and args.output.exists() and not args.force:
        raise UsageError(f"{args.output} exists; pass --force to overwrite it")
    [path] = args.file
    result = import_kohya_file(path, model=args.model, kohya_dir=args.kohya_dir)
    # the report goes to stderr, so that stdout stays the TOML when no -o is given
    _print_report(path, result)
    if args.output:
        save_config(result.config, args.output)
        print(args.output)
    else:
        sys.stdout.write(dumps_config(result.config))
    return 0


def _print_report(path: Path, result) -> None:
    print(f"{path}:", file=sys.stderr)
    for line in result.report():
        print(f"  {line}", file=sys.stderr)


def _report_all(paths: list[Path], args) -> int:
    """One report per config; a config that cannot be imported gets its one-line error."""
    status = 0
    for path in paths:
        try:
            _print_report(path, import_kohya_file(path, model=args.model, kohya_dir=args.kohya_dir))
        except LoradeckError as error:
            print(f"{path}: not imported: {error}", file=sys.stderr)
            status = 1
    return status
