"""`loradeck tags DIR --stats | --add T | --remove T | --replace OLD=NEW | --move-first T`.

Operations apply to every caption of the folder, or to those matching `--filter`
(the caption editor's filter language: `tag:x, -tag:y, text:z, is:uncaptioned`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine.errors import LoradeckError, UsageError



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="dataset folder, or a workspace (its image folder)")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--stats", action="store_true", help="tag frequency, captions past the token window")
    action.add_argument("--add", metavar="TAGS", help="add tags (comma-separated) at the end of each caption")
    action.add_argument("--remove", metavar="TAGS", help="remove tags (comma-separated), weighted ones too")
    action.add_argument("--replace", metavar="OLD=NEW", help="rename a tag, keeping its place and weight")
    action.add_argument("--move-first", metavar="TAG", help="move a tag to the front (after the keep-tokens part)")
    action.add_argument("--dedupe", action="store_true", help="drop repeated tags, keeping the first")
    parser.add_argument("--filter", default="", help="only captions matching, e.g. 'tag:city, -tag:night'")
    parser.add_argument("--keep-tokens", type=int, default=None,
                        help="tags --move-first leaves in front (default: the workspace config's, else 0)")
    parser.add_argument("--caption-extension", default=None, help="default: the workspace config's, else .txt")
    parser.add_argument("--top", type=int, default=40, help="--stats: how many tags to list (default 40)")
    parser.add_argument("--dry-run", action="store_true", help="say what would change, write nothing")
    parser.add_argument("--json", action="store_true", help="--stats: one JSON object")


def _dataset(args) -> tuple[Path, str, int]:
    from engine.dataset.caption_files import caption_folder_of

    folder = caption_folder_of(args.dir)
    extension = args.caption_extension or folder.caption_extension
    keep_tokens = folder.keep_tokens if args.keep_tokens is None else args.keep_tokens
    return folder.root, extension, keep_tokens


def run(args) -> int:
    from engine.dataset.caption_edits import CaptionSession, operation_for

    for flag, value in (("--keep-tokens", args.keep_tokens), ("--top", args.top)):
        if value is not None and value < 0:
            raise UsageError(f"{flag} {value}: must be 0 or more")
    for name in ("add", "remove", "replace", "move_first", "filter"):
        if isinstance(getattr(args, name), list):  # argparse reads `--add=--` as an empty list
            raise UsageError(f"--{name.replace('_', '-')}: give a value, e.g. --{name.replace('_', '-')}=TAG")
    root, extension, keep_tokens = _dataset(args)
    session = CaptionSession(root, extension)
    session.load_all()
    indices = session.matching(args.filter)
    if args.stats:
        return _print_stats(session, indices, args)
    if args.add is not None or args.remove is not None:
        action, value = ("add", args.add) if args.add is not None else ("remove", args.remove)
        from engine.dataset.tags import parse_caption

        names = [tag.raw for tag in parse_caption(value).tags]
        if not names:
            raise UsageError(f"--{action}: give at least one tag")
        operations = [operation_for(action, name, keep_tokens) for name in names]
        label = f"{action} {', '.join(names)}"

        def operation(caption):
            for _label, step in operations:
                caption = step(caption)
            return caption
    elif args.replace is not None:
        label, operation = operation_for("replace", args.replace, keep_tokens)
    elif args.move_first is not None:
        label, operation = operation_for("move-first", args.move_first, keep_tokens)
    else:
        label, operation = operation_for("dedupe", "", keep_tokens)
    scope = f"{len(indices)} of {len(session)} captions" if args.filter else f"{len(session)} captions"
    if args.dry_run:
        plan = session.plan_operation(indices, label, operation)
        for change in plan.changes[:20]:
            entry = session.entries[change.index]
            print(f"{entry.relative}: {(change.before or '').strip()!r} -> {(change.after or '').strip()!r}")
        if len(plan.changes) > 20:
            print(f"... and {len(plan.changes) - 20} more")
        print(f"{label}: would change {len(plan.changes)} of {scope}")
        return 0
    written, still_changing = session.apply(indices, label, operation)
    print(f"{label}: changed {len(written)} of {scope}")
    if still_changing:
        names = ", ".join(session.entries[index].relative for index in still_changing[:3])
        more = f" and {len(still_changing) - 3} more" if len(still_changing) > 3 else ""
        raise LoradeckError(f"{len(still_changing)} caption(s) kept changing on disk while being edited and were "
                            f"left as they are: {names}{more}; run the command again")
    return 0


def _print_stats(session, indices: list[int], args) -> int:
    from collections import Counter

    from engine.dataset.tags import CLIP_TOKEN_WINDOW, approximate_clip_tokens

    counts: Counter[str] = Counter()
    uncaptioned = over_window = 0
    for index in indices:
        entry = session.entries[index]
        if not entry.is_captioned:
            uncaptioned += 1
            continue
        counts.update(entry.keys)
        if approximate_clip_tokens(entry.text) > CLIP_TOKEN_WINDOW:
            over_window += 1
    reviewed = sum(1 for index in indices if session.is_reviewed(index))
    summary = {
        "images": len(indices), "uncaptioned": uncaptioned, "reviewed": reviewed,
        "distinct_tags": len(counts), "past_token_window": over_window,
        "tags": dict(counts.most_common(args.top)),
    }
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"{summary['images']} images, {uncaptioned} uncaptioned, {reviewed} reviewed, "
          f"{len(counts)} distinct tags, {over_window} past the {CLIP_TOKEN_WINDOW}-token window (approximate)")
    width = len(str(max(counts.values(), default=0)))
    for tag, count in counts.most_common(args.top):
        print(f"{count:>{width}}  {tag}")
    return 0
