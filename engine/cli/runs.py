"""`loradeck runs [WORKSPACE_OR_RUNS_DIR] [--json]`: every run folder and how it is doing."""
from __future__ import annotations

import json
from pathlib import Path

from engine.errors import UsageError
from engine.run.format import COLUMNS, summary_row
from engine.run.events import CRASHED, FAILED
from engine.run.folder import RunDir, RunSummary, list_runs, summarize_run
from engine.config.workspace import Workspace


def add_arguments(parser) -> None:
    parser.add_argument(
        "path", nargs="?", type=Path, default=Path("."),
        help="a workspace, its runs folder, or one run folder (default: the current folder)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per run")


def find_runs(path: Path) -> list[RunSummary]:
    """Runs under a workspace (its configured runs folder), a runs folder, or one run."""
    path = path.expanduser()
    if not path.is_dir():
        raise UsageError(f"{path}: {'not a folder' if path.exists() else 'no such folder'}")
    if RunDir(path).is_run():
        return [summarize_run(path)]
    workspace = Workspace.at(path)
    if workspace.exists():
        return list_runs(workspace.runs_dir)
    return list_runs(path)


def format_table(runs: list[RunSummary]) -> str:
    rows = [COLUMNS] + [summary_row(run) for run in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    for run in runs:
        if run.status in (FAILED, CRASHED) and run.message:
            lines.append(f"{run.name}: {run.message}")
    return "\n".join(lines)


def run(args) -> int:
    runs = find_runs(args.path)
    if args.json:
        print(json.dumps([summary.as_json() for summary in runs], indent=1))
    elif not runs:
        print(f"no runs under {args.path}")
    else:
        print(format_table(runs))
    return 0
