"""`loradeck caption DIR --model MODEL [--kind blip|florence2|wd14] ...`: auto-caption a dataset.

With `--progress-json` every line on stdout is one JSON object (start, progress, done,
error) for the TUI, which runs this as `python -m tui.cli caption`.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from engine.errors import LoradeckError, UsageError
from engine.run.events import CAPTION_DONE, CAPTION_PROGRESS, CAPTION_START, ERROR, EventWriter



def add_arguments(parser: argparse.ArgumentParser) -> None:
    from engine.captioning.captioners import EXISTING_MODES, FLORENCE_TASKS, KINDS

    parser.add_argument("dir", type=Path, help="dataset folder (images in it and its subfolders), "
                        "or a workspace (its image folder)")
    parser.add_argument("--model", required=True, help="local model folder or hub id, e.g. "
                        "SmilingWolf/wd-vit-tagger-v3, Salesforce/blip-image-captioning-large, "
                        "florence-community/Florence-2-large")
    parser.add_argument("--kind", choices=KINDS, help="captioner kind (default: told from the model)")
    parser.add_argument("--prefix", default="", help="put in front of every caption, e.g. a trigger word")
    parser.add_argument("--suffix", default="", help="put at the end of every caption")
    parser.add_argument("--mode", choices=EXISTING_MODES, default="skip",
                        help="images that already have a caption: skip them (default), append new tags, "
                        "or overwrite")
    parser.add_argument("--caption-extension", default=None,
                        help="caption file extension (default: the workspace config's, else .txt)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per model call (default 8)")
    parser.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, cuda, cuda:N")
    parser.add_argument("--task", choices=tuple(FLORENCE_TASKS), default="caption",
                        help="Florence-2 task (default caption)")
    parser.add_argument("--max-new-tokens", type=int, default=75, help="BLIP/Florence-2 caption length limit")
    parser.add_argument("--num-beams", type=int, default=3, help="BLIP/Florence-2 beam search width")
    parser.add_argument("--general-threshold", type=float, default=0.35, help="WD14 general tag threshold")
    parser.add_argument("--character-threshold", type=float, default=0.85,
                        help="WD14 character tag threshold")
    parser.add_argument("--undesired-tags", default="", help="WD14 tags never written, comma-separated")
    parser.add_argument("--keep-underscores", action="store_true",
                        help="WD14: keep tag underscores (default: write spaces)")
    parser.add_argument("--progress-json", action="store_true", help="print progress as JSON lines")


def run(args) -> int:
    from engine.dataset.caption_files import caption_folder_of
    from engine.captioning.captioners import CaptionerOptions, CaptionRun, caption_folder, load_captioner

    emit = _json_emitter() if args.progress_json else None
    try:
        _check_numbers(args)
        folder = caption_folder_of(args.dir)
        root, default_extension = folder.root, folder.caption_extension
        if not root.is_dir():
            raise LoradeckError(f"{root}: not a folder")
        options = CaptionerOptions(
            device=args.device, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
            num_beams=args.num_beams, florence_task=args.task,
            general_threshold=args.general_threshold, character_threshold=args.character_threshold,
            undesired_tags=tuple(tag.strip() for tag in args.undesired_tags.split(",") if tag.strip()),
            underscores_to_spaces=not args.keep_underscores,
        )
        caption_run = CaptionRun(prefix=args.prefix, suffix=args.suffix, existing=args.mode,
                                 caption_extension=args.caption_extension or default_extension)
        _quiet_libraries()
        started = time.monotonic()
        captioner = load_captioner(args.model, args.kind, options)
        if emit:
            emit(CAPTION_START, model=captioner.name, total=0)
        else:
            print(f"{captioner.name} loaded in {time.monotonic() - started:.1f}s", file=sys.stderr)
        report = caption_folder(root, captioner, caption_run, batch_size=args.batch_size,
                                progress=_progress(emit))
    except LoradeckError as error:
        if emit:
            emit(ERROR, message=str(error))
        raise
    if emit:
        emit(CAPTION_DONE, total=report.total, written=report.written, skipped=report.skipped,
             failed=len(report.failed))
    else:
        print(f"{report.written} captions written, {report.skipped} skipped, {len(report.failed)} failed "
              f"({report.total} images, {time.monotonic() - started:.1f}s)")
    for path, reason in report.failed:
        print(f"{path}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0


def _check_numbers(args) -> None:
    """Usage errors before a model loads (which can take minutes)."""
    for flag, value in (("--batch-size", args.batch_size), ("--max-new-tokens", args.max_new_tokens),
                        ("--num-beams", args.num_beams)):
        if value < 1:
            raise UsageError(f"{flag} {value}: must be at least 1")
    for flag, value in (("--general-threshold", args.general_threshold),
                        ("--character-threshold", args.character_threshold)):
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"{flag} {value}: must be between 0 and 1")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", args.device):
        raise UsageError(f"--device {args.device}: choose auto, cpu, cuda or cuda:N")


def _json_emitter():
    """Events in the run event format (engine.run.events) on stdout, for the TUI's caption bar."""
    return EventWriter.on_stream(sys.stdout).emit


def _progress(emit):
    if emit:
        return lambda done, total, path, caption: emit(CAPTION_PROGRESS, done=done, total=total, path=path,
                                                      caption=caption)
    last = [0.0]

    def show(done: int, total: int, path: str, caption: str) -> None:
        now = time.monotonic()
        if now - last[0] >= 1 or done == total:  # a line a second is enough on a terminal
            last[0] = now
            print(f"[{done}/{total}] {path}: {caption}", file=sys.stderr)

    return show


def _quiet_libraries() -> None:
    """transformers' notices (no torchvision, weight loading bars) would swamp the progress."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
