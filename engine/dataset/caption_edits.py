"""Editing the captions of a dataset: filters, tag operations on many files, undo/redo.

Used by the caption editor screen and by `loradeck tags`. A `CaptionSession` holds
every image of a folder with the caption text it last read or wrote and that text's
stamp. An edit is planned first (`plan_edit`): the new text of each file, and which
files changed on disk since they were read (conflicts the user must decide on). Then
`commit` writes the files atomically and records one undo step, so a bulk operation
on 3,000 files is undone with one key.

Filters are comma-separated terms that must all match:
    tag:red hair      has the tag          -tag:city    lacks it
    text:arch         caption text contains "arch" (any case)
    is:uncaptioned    no caption file, or an empty one;  is:captioned
    is:unreviewed     not yet accepted;  is:reviewed
    anything else     caption text or file path contains it (any case)

Light module: standard library only.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from engine.dataset.caption_files import (
    CaptionChanged,
    CaptionFile,
    ReviewMarks,
    Stamp,
    caption_stamp,
    list_caption_files,
    read_caption,
    write_caption,
)
from engine.errors import UsageError
from engine.dataset.tags import Caption, caption_keys, parse_caption, tag_key

# ---- entries


@dataclass
class CaptionEntry:
    file: CaptionFile
    text: str | None = None  # None: no caption file
    stamp: Stamp = None
    loaded: bool = False
    _parsed: Caption | None = field(default=None, repr=False)
    _keys: set[str] | None = field(default=None, repr=False)

    @property
    def relative(self) -> str:
        return self.file.relative

    @property
    def caption(self) -> Caption:
        if self._parsed is None:
            self._parsed = parse_caption(self.text or "")
        return self._parsed

    @property
    def keys(self) -> set[str]:
        """Tag names, without building the whole parsed caption when it is plain."""
        if self._keys is None:
            self._keys = caption_keys(self.text or "")
        return self._keys

    @property
    def is_captioned(self) -> bool:
        return bool(self.text and self.text.strip())

    def set_text(self, text: str | None, stamp: Stamp) -> None:
        self.text, self.stamp, self.loaded, self._parsed, self._keys = text, stamp, True, None, None


# ---- filters


@dataclass(frozen=True)
class FilterTerm:
    kind: str  # "tag", "text", "is", "any"
    value: str
    negate: bool = False


def parse_filter(query: str) -> list[FilterTerm]:
    terms = []
    for piece in query.split(","):
        piece = piece.strip()
        if not piece:
            continue
        negate = piece.startswith(("-", "!")) and ":" in piece
        body = piece[1:] if negate else piece
        kind, sep, value = body.partition(":")
        kind = kind.strip().lower()
        if sep and kind in ("tag", "text", "is"):
            value = value.strip()
            if kind == "is" and value.lower() not in ("captioned", "uncaptioned", "reviewed", "unreviewed"):
                raise UsageError(f"filter `{piece}`: is: takes captioned, uncaptioned, reviewed or unreviewed")
            terms.append(FilterTerm(kind, tag_key(value) if kind == "tag" else value.lower(), negate))
        else:
            terms.append(FilterTerm("any", piece.lower()))
    return terms


def _term_matches(term: FilterTerm, entry: CaptionEntry, reviewed: bool) -> bool:
    if term.kind == "tag":
        found = term.value in entry.keys
    elif term.kind == "text":
        found = term.value in (entry.text or "").lower()
    elif term.kind == "is":
        found = {
            "captioned": entry.is_captioned,
            "uncaptioned": not entry.is_captioned,
            "reviewed": reviewed,
            "unreviewed": not reviewed,
        }[term.value]
    else:
        found = term.value in (entry.text or "").lower() or term.value in entry.relative.lower()
    return found != term.negate


# ---- planned and committed changes


@dataclass(frozen=True)
class FileChange:
    index: int
    before: str | None
    after: str | None


@dataclass
class EditPlan:
    label: str
    changes: list[FileChange]
    conflicts: list[int]  # entry indices whose file changed on disk since read

    @property
    def empty(self) -> bool:
        return not self.changes


@dataclass(frozen=True)
class UndoStep:
    label: str
    changes: tuple[FileChange, ...]


Operation = Callable[[Caption], Caption]


def operation_for(action: str, value: str, keep_tokens: int = 0) -> tuple[str, Operation]:
    """(label, caption -> caption) for add / remove / replace / move-first / dedupe."""
    value = value.strip()
    if action == "add":
        return f"add {value}", lambda caption: caption.add(value)
    if action == "remove":
        return f"remove {value}", lambda caption: caption.remove(value)
    if action == "replace":
        old, sep, new = value.partition("=")
        if not sep or not old.strip():
            raise UsageError(f"replace `{value}`: write OLD=NEW")
        return f"replace {old.strip()} with {new.strip()}", lambda caption: caption.replace(old, new)
    if action == "move-first":
        return f"move {value} first", lambda caption: caption.move_first(value, keep_tokens)
    if action == "dedupe":
        return "remove duplicate tags", lambda caption: caption.dedupe()
    raise UsageError(f"unknown tag operation `{action}`")


class CaptionSession:
    def __init__(self, root: str | Path, caption_extension: str = ".txt"):
        self.root = Path(root)
        self.caption_extension = caption_extension
        self.entries = [CaptionEntry(item) for item in list_caption_files(self.root, caption_extension)]
        self.marks = ReviewMarks(self.root)
        self.undo_stack: list[UndoStep] = []
        self.redo_stack: list[UndoStep] = []
        self._frequency: Counter[str] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    # ---- loading

    def load(self, index: int) -> CaptionEntry:
        entry = self.entries[index]
        if not entry.loaded:
            text, stamp = read_caption(entry.file.caption_path)
            entry.set_text(text, stamp)
        return entry

    def read_all(self) -> list[tuple[str | None, Stamp]]:
        """Read every caption not yet loaded (safe from a worker thread: no mutation)."""
        return [read_caption(entry.file.caption_path) if not entry.loaded else (entry.text, entry.stamp)
                for entry in self.entries]

    def accept_read(self, results: list[tuple[str | None, Stamp]]) -> None:
        """Take what `read_all` read, for entries still unloaded (the UI may have edited some)."""
        for entry, (text, stamp) in zip(self.entries, results):
            if not entry.loaded:
                entry.set_text(text, stamp)
        self._frequency = None

    def load_all(self) -> None:
        self.accept_read(self.read_all())

    def refresh_from_disk(self, index: int) -> bool:
        """Re-read one caption if it changed on disk; True when it did."""
        entry = self.entries[index]
        if not entry.loaded:
            self.load(index)
            return False
        if caption_stamp(entry.file.caption_path) == entry.stamp:
            return False
        old_keys = entry.keys
        text, stamp = read_caption(entry.file.caption_path)
        entry.set_text(text, stamp)
        self._count_change(old_keys, entry.keys)
        return True

    # ---- queries

    def is_reviewed(self, index: int) -> bool:
        return self.entries[index].relative in self.marks

    def set_reviewed(self, index: int, reviewed: bool = True) -> None:
        self.marks.set(self.entries[index].relative, reviewed)

    def matching(self, query: str | list[FilterTerm]) -> list[int]:
        terms = parse_filter(query) if isinstance(query, str) else query
        if not terms:
            return list(range(len(self.entries)))
        result = []
        for index, entry in enumerate(self.entries):
            if not entry.loaded:
                self.load(index)
            reviewed = entry.relative in self.marks
            if all(_term_matches(term, entry, reviewed) for term in terms):
                result.append(index)
        return result

    def frequency(self) -> Counter[str]:
        """Tag -> number of captions that carry it, kept current through edits."""
        if self._frequency is None:
            counts: Counter[str] = Counter()
            for index in range(len(self.entries)):
                counts.update(self.load(index).keys)
            self._frequency = counts
        return self._frequency

    @property
    def frequency_ready(self) -> bool:
        """Counted already, or cheap to count (every caption read)."""
        return self._frequency is not None or all(entry.loaded for entry in self.entries)

    def take_frequency(self, counts: Counter[str]) -> None:
        """Counts made elsewhere (a worker) from the texts this session holds."""
        self._frequency = counts

    def _count_change(self, old_keys: set[str], new_keys: set[str]) -> None:
        if self._frequency is None:
            return
        self._frequency.subtract(old_keys - new_keys)
        self._frequency.update(new_keys - old_keys)
        for key in old_keys - new_keys:
            if self._frequency[key] <= 0:
                del self._frequency[key]

    # ---- planning edits

    def _conflicts(self, indices: Iterable[int]) -> list[int]:
        return [index for index in indices
                if caption_stamp(self.entries[index].file.caption_path) != self.entries[index].stamp]

    def plan_operation(self, indices: Iterable[int], label: str, operation: Operation) -> EditPlan:
        changes = []
        for index in indices:
            entry = self.load(index)
            before = entry.text
            edited = operation(entry.caption)
            if edited is entry.caption:
                continue
            after = edited.render()
            if after != (before or ""):
                changes.append(FileChange(index, before, after))
        return EditPlan(label, changes, self._conflicts(change.index for change in changes))

    def plan_text(self, index: int, text: str, label: str = "edit caption") -> EditPlan:
        entry = self.load(index)
        if text == (entry.text or "") and entry.text is not None:
            return EditPlan(label, [], [])
        return EditPlan(label, [FileChange(index, entry.text, text)], self._conflicts([index]))

    def commit(self, plan: EditPlan, overwrite_conflicts: bool = False,
               record: str = "undo") -> list[FileChange]:
        """Write a plan. Conflicting files are overwritten only when asked; otherwise
        they are re-read from disk and left alone. Returns the changes written."""
        written = []
        conflicts = set(plan.conflicts)
        for change in plan.changes:
            entry = self.entries[change.index]
            if change.index in conflicts and not overwrite_conflicts:
                self.refresh_from_disk(change.index)
                continue
            expected = "any" if change.index in conflicts else entry.stamp
            try:
                stamp = write_caption(entry.file.caption, change.after, expected)
            except CaptionChanged:
                # Changed between planning and writing: treat as a conflict left alone.
                self.refresh_from_disk(change.index)
                continue
            old_keys = entry.keys
            entry.set_text(change.after, stamp)
            self._count_change(old_keys, entry.keys)
            written.append(change)
        if written:
            step = UndoStep(plan.label, tuple(written))
            if record == "undo":
                self.undo_stack.append(step)
                self.redo_stack.clear()
            elif record == "redo":
                self.redo_stack.append(step)
        return written

    def apply(self, indices: Iterable[int], label: str, operation: Operation,
              attempts: int = 5) -> tuple[list[FileChange], list[int]]:
        """Plan and commit in one go (the CLI). A caption that changed on disk since it was
        read (another `loradeck tags`, an editor) is read again and the operation applied
        to what it holds now, up to `attempts` times: nothing anyone wrote is lost.
        Returns the changes written and the entries still changing under it."""
        written: list[FileChange] = []
        pending = list(indices)
        for _attempt in range(attempts):
            plan = self.plan_operation(pending, label, operation)
            done = self.commit(plan)
            written += done
            done_indices = {change.index for change in done}
            pending = [change.index for change in plan.changes if change.index not in done_indices]
            if not pending:
                break
        return written, pending

    # ---- undo / redo

    def _reverse_plan(self, step: UndoStep) -> EditPlan:
        changes = [FileChange(change.index, change.after, change.before) for change in reversed(step.changes)]
        return EditPlan(step.label, changes, self._conflicts(change.index for change in changes))

    def plan_undo(self) -> EditPlan | None:
        return self._reverse_plan(self.undo_stack[-1]) if self.undo_stack else None

    def plan_redo(self) -> EditPlan | None:
        return self._reverse_plan(self.redo_stack[-1]) if self.redo_stack else None

    def commit_undo(self, plan: EditPlan, overwrite_conflicts: bool = False) -> list[FileChange]:
        self.undo_stack.pop()
        return self.commit(plan, overwrite_conflicts, record="redo")

    def commit_redo(self, plan: EditPlan, overwrite_conflicts: bool = False) -> list[FileChange]:
        self.redo_stack.pop()
        written = self.commit(plan, overwrite_conflicts, record="none")
        if written:
            self.undo_stack.append(UndoStep(plan.label, tuple(written)))
        return written
