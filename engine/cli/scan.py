"""`loradeck scan DIR [--json] [--fix-exif] [--quarantine] [--undo-quarantine]`.

Exit status 1 while any error finding remains, else 0; 2 on bad usage. What the fixes
did goes to stderr, so `--json` keeps stdout to the one report object. A file name that
is not valid UTF-8 is shown as `\\xNN` per undecodable byte in text, and kept exactly in
JSON (see engine.health.report).
"""
from __future__ import annotations

import sys
from pathlib import Path

from engine.errors import LoradeckError, UsageError



def add_arguments(parser) -> None:
    parser.add_argument("dir", type=Path, help="image folder, a workspace's img/, or a workspace")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--fix-exif", action="store_true",
                        help="bake EXIF orientation into the pixels (originals kept in _quarantine/)")
    parser.add_argument("--quarantine", action="store_true",
                        help="move files with errors and their captions to _quarantine/")
    parser.add_argument("--undo-quarantine", action="store_true",
                        help="put every quarantined file (and fixed original) back, then scan")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")


def format_report(report) -> str:
    """One line per finding, then one per skipped entry, then the summary. File names
    are shown with `display` (an undecodable byte as \\xNN), so each stays one line."""
    from engine.health.report import CHECKS, display

    lines = [display(f"{report.images} images in {report.root}")]
    skipped = [f"{'skipped':<8} {'':<18} {display(item.path)}  {display(item.reason)}" for item in report.skipped]
    if not report.findings:
        return "\n".join([lines[0] + ": no problems found"] + skipped)
    width = max(len(display(item.path)) for item in report.findings)
    for item in report.findings:
        lines.append(f"{item.severity:<8} {item.code:<18} {display(item.path):<{width}}  {display(item.message)}")
    lines.extend(skipped)
    lines.append("")
    lines.append("Summary")
    for code, count in report.summary.items():
        check = CHECKS[code]
        lines.append(f"  {check.severity:<8} {code:<18} {count:>6}  {check.title}")
    return "\n".join(lines)


def _progress_printer():
    if not sys.stderr.isatty():
        return None
    state = {"shown": -1}

    def show(done: int, total: int) -> None:
        percent = done * 100 // max(total, 1)
        if percent != state["shown"] or done == total:
            state["shown"] = percent
            end = "\n" if done == total else ""
            print(f"\rscanning {done}/{total} images ({percent}%)", end=end, file=sys.stderr, flush=True)

    return show


def run(args) -> int:
    from engine.health.scan import scan, target_for
    from engine.health.actions import apply_action
    from engine.health.report import display, json_text

    if args.undo_quarantine and (args.fix_exif or args.quarantine):
        raise UsageError("--undo-quarantine cannot be combined with --fix-exif or --quarantine")
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if not args.dir.is_dir():
        raise UsageError(f"{args.dir}: not a folder")
    target = target_for(args.dir)
    if target.config_problem:
        print(f"warning: {target.config_problem}", file=sys.stderr)
    if not target.root.is_dir():
        raise LoradeckError(f"{target.root}: image folder does not exist")

    def run_scan():
        return scan(target, workers=args.workers, progress=_progress_printer())

    def act(kind: str, findings) -> None:
        lines, _failed = apply_action(kind, target.root, findings, target.settings.caption_extension)
        for line in lines:
            print(display(line), file=sys.stderr)

    if args.undo_quarantine:
        act("undo", [])
    report = run_scan()
    rotated = [item for item in report.findings if item.code == "exif_rotated"]
    if args.fix_exif and rotated:
        act("fix", rotated)
        report = run_scan()
    if args.quarantine and report.errors:
        act("quarantine", report.errors)
        report = run_scan()
    if args.json:
        print(json_text(report.as_json(), indent=1))
    else:
        print(format_report(report))
    return 1 if report.errors else 0
