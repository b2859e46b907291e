"""Caption writes are compare-and-swaps: nothing anyone writes to a caption is lost.

Every write (`loradeck tags`, bulk edits, the editor, auto-caption) goes through
`caption_files.write_caption` with the stamp the text was read at. These tests race real
`loradeck tags` processes against each other, and rewrite captions behind loradeck's back
the way another program would (in place, same size, modification time put back).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.dataset.caption_edits import CaptionSession, operation_for
from engine.dataset.caption_files import CaptionChanged, read_caption, write_caption
from engine.dataset.tags import parse_caption
from tui.cli import main as loradeck

ROOT = Path(__file__).resolve().parents[1]


def _dataset(root: Path, count: int, caption: str = "a, b") -> Path:
    root.mkdir(parents=True)
    for index in range(count):
        (root / f"{index}.png").write_bytes(b"not decoded by tags")
        (root / f"{index}.txt").write_text(caption)
    return root


def _rewrite_behind_our_back(path: Path, text: str) -> None:
    """Rewrite in place (same inode), then put the modification time back, as a tool that
    preserves times does; the same size makes (mtime, size) stamps blind to it."""
    before = path.stat()
    with open(path, "r+b") as handle:
        handle.write(text.encode())
        handle.truncate()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_concurrent_tags_processes_lose_no_tag(tmp_path):
    folder = _dataset(tmp_path / "img", 60)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    tags = ["t1", "t2", "t3", "t4"]
    processes = [subprocess.Popen([sys.executable, "-m", "tui.cli", "tags", str(folder), "--add", tag],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for tag in tags]
    results = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0] * len(tags), results
    for caption in sorted(folder.glob("*.txt")):
        keys = parse_caption(caption.read_text()).keys()
        assert sorted(keys) == ["a", "b", *tags], caption  # every tag, once, and the original two
    assert all("changed 60 of 60 captions" in out for out, _err in results)


def test_a_caption_rewritten_while_tags_runs_keeps_both_changes(tmp_path, monkeypatch, capsys):
    folder = _dataset(tmp_path / "img", 3)
    real_plan = CaptionSession.plan_operation
    rewrites = []

    def plan_then_someone_edits(self, indices, label, operation):
        plan = real_plan(self, indices, label, operation)
        if not rewrites:  # once, between reading and writing
            rewrites.append(folder / "1.txt")
            _rewrite_behind_our_back(folder / "1.txt", "a, c")
        return plan

    monkeypatch.setattr(CaptionSession, "plan_operation", plan_then_someone_edits)
    assert loradeck(["tags", str(folder), "--add", "new"]) == 0
    assert (folder / "1.txt").read_text() == "a, c, new"  # their "c" and our "new"
    assert (folder / "0.txt").read_text() == "a, b, new"
    assert "changed 3 of 3 captions" in capsys.readouterr().out


def test_a_caption_that_keeps_changing_is_left_alone_with_one_line(tmp_path, monkeypatch, capsys):
    folder = _dataset(tmp_path / "img", 2)
    real_plan = CaptionSession.plan_operation
    versions = iter(f"x{n}, y" for n in range(100))

    def plan_then_someone_edits(self, indices, label, operation):
        plan = real_plan(self, indices, label, operation)
        _rewrite_behind_our_back(folder / "1.txt", next(versions))  # a program rewriting it all the time
        return plan

    monkeypatch.setattr(CaptionSession, "plan_operation", plan_then_someone_edits)
    assert loradeck(["tags", str(folder), "--add", "new"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    [line] = captured.err.strip().splitlines()
    assert line.startswith("loradeck tags: 1 caption(s) kept changing on disk") and "1.png" in line
    assert (folder / "1.txt").read_text().startswith("x") and "new" not in (folder / "1.txt").read_text()
    assert (folder / "0.txt").read_text() == "a, b, new"


def test_a_same_size_rewrite_with_the_time_put_back_is_still_a_change(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("a, b")
    _text, stamp = read_caption(path)
    _rewrite_behind_our_back(path, "a, c")
    with pytest.raises(CaptionChanged):
        write_caption(path, "a, b, mine", stamp)
    assert path.read_text() == "a, c"


def test_an_edit_planned_in_the_editor_never_overwrites_a_rewrite_made_before_it_is_written(tmp_path):
    # The editor and bulk edits plan, show the plan, then commit: the commit compares again.
    folder = _dataset(tmp_path / "img", 2)
    session = CaptionSession(folder)
    session.load_all()
    label, operation = operation_for("add", "mine")
    plan = session.plan_operation([0, 1], label, operation)
    assert plan.conflicts == []
    _rewrite_behind_our_back(folder / "0.txt", "a, z")
    written = session.commit(plan)
    assert [change.index for change in written] == [1]
    assert (folder / "0.txt").read_text() == "a, z"  # kept as on disk, and shown so
    assert session.entries[0].text == "a, z"
    assert (folder / "1.txt").read_text() == "a, b, mine"
