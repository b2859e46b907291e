"""`loradeck export-kohya CONFIG [-o OUT.json]`: a loradeck config as a Kohya GUI JSON config,
and the sd-scripts command line it runs (engine.config.kohya_export).

The JSON goes to stdout (or -o); the command line and the notes go to stderr."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.config.schema import load_config
from engine.errors import LoradeckError, UsageError


def add_arguments(parser) -> None:
    parser.add_argument("config", type=Path, help="loradeck config (TOML)")
    parser.add_argument("-o", "--output", type=Path, help="write the JSON here (and the sample prompts beside it)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")


def run(args) -> int:
    from engine.atomic import atomic_write_text
    from engine.config.kohya_export import PROMPTS_FILE, export_kohya

    if args.output and args.output.exists() and not args.force:
        raise UsageError(f"{args.output} exists; pass --force to overwrite it")
    config = load_config(args.config)
    prompts = args.output.with_name(f"{args.output.stem}.prompt.txt") if args.output else None
    result = export_kohya(config, args.config.resolve().parent, str(prompts.resolve()) if prompts else PROMPTS_FILE)
    text = json.dumps(result.gui, indent=2, ensure_ascii=False) + "\n"
    try:
        if args.output:
            atomic_write_text(args.output, text)
            if config.sampling.prompts.strip():
                atomic_write_text(prompts, config.sampling.prompts.rstrip("\n") + "\n")
        else:
            sys.stdout.write(text)
    except OSError as error:
        raise LoradeckError(f"{args.output}: cannot write ({error.strerror or error})") from None
    if args.output:
        print(args.output)
    print("sd-scripts command line:", file=sys.stderr)
    print(f"  {result.command_line}", file=sys.stderr)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0
