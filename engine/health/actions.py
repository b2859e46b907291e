"""The three things a user can do about findings, as the CLI and the health screen do them.

    apply_action("fix", root, findings, ".txt")         bake EXIF orientations
    apply_action("quarantine", root, findings, ".txt")  move files (and captions) aside
    apply_action("undo", root, [], ".txt")              put everything quarantined back
    apply_action("undo_last", root, [], ".txt")         take back the newest action only

Each call of "fix" or "quarantine" is one action on the quarantine's undo stack. Each
returns one line per file for the user and whether anything failed.
"""
from __future__ import annotations

import os
from pathlib import Path

from engine.errors import LoradeckError
from engine.health.report import Finding


def apply_action(kind: str, root: Path, findings: list[Finding], caption_extension: str) -> tuple[list[str], bool]:
    if kind == "fix":
        return fix_findings(root, findings)
    if kind == "quarantine":
        return quarantine_findings(root, findings, caption_extension)
    if kind == "undo":
        return undo(root)
    if kind == "undo_last":
        return undo(root, last_only=True)
    raise ValueError(f"unknown health action {kind!r}")


def fix_findings(root: Path, findings: list[Finding]) -> tuple[list[str], bool]:
    from engine.dataset.quarantine import next_action
    from engine.health.exif_fix import fix_orientation

    lines, failed = [], False
    try:
        action = next_action(root)
    except LoradeckError as error:
        return [f"not fixed: {error}"], True
    for item in findings:
        if item.code != "exif_rotated":
            lines.append(f"not fixed {item.path}: {item.code} has no automatic fix")
            continue
        try:
            fixed = fix_orientation(root, item.path, action)
        except LoradeckError as error:
            lines.append(f"not fixed: {error}")
            failed = True
            continue
        lines.append(f"fixed {item.path}: {fixed.note}; original kept as {fixed.original}")
    return lines, failed


def quarantine_findings(root: Path, findings: list[Finding], caption_extension: str) -> tuple[list[str], bool]:
    from engine.dataset.quarantine import quarantine_files

    # Folders stay where they are: the user renames them or fixes their permissions.
    reasons = {"bad_folder_name": "has no <repeats>_ prefix; rename it",
               "unreadable_folder": "cannot be read; fix its permissions"}
    lines = [f"not moved: folder {item.path} {reasons[item.code]}" for item in findings if item.code in reasons]
    # A named pipe or a broken link is not moved (the quarantine holds files and can only
    # restore files): said here, so it is never skipped silently.
    lines += [f"not moved: {item.path} is not a file ({item.message}); remove or replace it by hand"
              for item in findings if item.code not in reasons and not os.path.isfile(root / item.path)]
    movable = [(item.path, item.code) for item in findings
               if item.code not in reasons and os.path.isfile(root / item.path)]
    try:
        entries = quarantine_files(root, movable, caption_extension)
    except LoradeckError as error:
        return lines + [str(error)], True
    return [f"moved {entry.path} -> {entry.stored}" for entry in entries] + lines, False


def undo(root: Path, *, last_only: bool = False) -> tuple[list[str], bool]:
    from engine.dataset.quarantine import undo_last_action, undo_quarantine

    try:
        result = undo_last_action(root) if last_only else undo_quarantine(root)
    except LoradeckError as error:
        return [str(error)], True
    lines = [f"restored {path}" for path in result.restored]
    lines += [f"not restored {path}: {why}; it stays in the quarantine" for path, why in result.skipped]
    if not lines:
        return ["nothing to undo"], False
    if last_only:  # first: the screen shows only the first lines of a long list
        lines.insert(0, f"undone; {result.actions_left} earlier action(s) can still be undone (u)"
                     if result.actions_left else "undone; nothing earlier to undo")
    return lines, bool(result.skipped)
