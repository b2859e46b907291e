"""A save that cannot finish loses nothing: a full disk is one line, the partial files go,
the last good state stays; what a killed save left is cleaned when the run starts or
resumes; a run killed before its first save resumes by starting again.

The full disk is real: a small tmpfs under the run folder (mounting needs root or
CAP_SYS_ADMIN; skipped without it), filled after the first save so that the second save's
LoRA file fits and its state does not, and the kernel's ENOSPC reaches safetensors' own
writer. Where no tmpfs can be mounted, RLIMIT_FSIZE on an engine subprocess makes the same
writer fail with the kernel's EFBIG half-way through a file: the same error path (a write
that fails mid-file, in Rust, reported as "os error N"), with its own words.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from engine.network.lora import read_lora_file
from engine.run.events import read_events
from engine.run.folder import RunDir
from engine.train.loop import train
from tests.conftest import new_run, write_tiny_dataset
from tui.cli import main as loradeck

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs at tmp_path/runs; unmounted afterwards."""
    mount_point = tmp_path / "runs"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN); the RLIMIT_FSIZE test covers it")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill_disk_after_first_state(run: RunDir, monkeypatch) -> None:
    """After the first state is saved, fill the disk until the room of one more LoRA file
    (and a little for events) is left: the next LoRA file fits, its state cannot."""
    from engine.run.events import EventWriter

    real_emit = EventWriter.emit

    def emit(self, type, **fields):
        event = real_emit(self, type, **fields)
        if type == "checkpoint" and fields.get("kind") == "state" and not (run.path / "filler").exists():
            free = os.statvfs(run.path).f_bavail * os.statvfs(run.path).f_frsize
            leave_free = max(path.stat().st_size for path in run.checkpoints.glob("*.safetensors")) + 64_000
            with open(run.path / "filler", "wb") as handle:
                handle.write(b"\0" * max(0, free - leave_free))
        return event

    monkeypatch.setattr(EventWriter, "emit", emit)


def test_a_full_disk_during_a_state_save_is_one_line_and_keeps_the_last_good_state(
        tiny_model_dir, tmp_path, small_disk, monkeypatch, capsys):
    root = write_tiny_dataset(tmp_path)
    run = new_run(tiny_model_dir, root, "full", training={"epochs": 2})  # saves at steps 4 and 8
    fill_disk_after_first_state(run, monkeypatch)
    assert train(run.path) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    [line] = [text for text in captured.err.splitlines() if text.startswith("loradeck train:")]
    assert line == "loradeck train: disk full while saving the state at step 8; the last good checkpoint is step 4"
    # the partial state is gone, the good one is whole and named, and resume would use it
    assert sorted(p.name for p in run.state.iterdir()) == ["latest.json", "step-00000004"]
    assert json.loads((run.state / "latest.json").read_text())["folder"] == "step-00000004"
    read_lora_file(run.state / "step-00000004" / "lora.safetensors")
    read_lora_file(run.checkpoints / "full-000001.safetensors")
    assert not [p for p in run.checkpoints.iterdir() if p.name.startswith(".")]
    error = [event for event in read_events(run.events) if event["type"] == "error"][-1]
    assert error["message"] == line.removeprefix("loradeck train: ") and error["traceback"] == ""


def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: writes fail with EFBIG

    return apply


@pytest.mark.slow
def test_a_file_size_limit_during_the_first_state_save_is_one_line_and_leaves_no_partial_state(
        tiny_model_dir, tmp_path, one_thread_env):
    root = write_tiny_dataset(tmp_path)
    run = new_run(tiny_model_dir, root, "limited", training={"epochs": 1, "max_steps": 1})
    # the LoRA file (~400 KB) and the state's copy of it fit; the optimizer moments (~800 KB) do not
    engine = subprocess.run([sys.executable, "-m", "engine.train.process", str(run.path)], cwd=ROOT,
                            env={**one_thread_env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                            preexec_fn=_limit_file_size(600_000), timeout=300)
    assert engine.returncode == 1, engine.stderr
    assert "Traceback" not in engine.stderr
    [line] = [text for text in engine.stderr.splitlines() if text.startswith("loradeck train:")]
    assert line == ("loradeck train: file size limit reached while saving the state at step 1; "
                    "no state was saved before")
    assert list(run.state.iterdir()) == []  # no half-written state folder keeps the space
    read_lora_file(run.checkpoints / "limited.safetensors")  # the LoRA of that step is whole


def test_leftovers_of_killed_saves_are_removed_and_a_run_killed_before_its_first_save_starts_again(
        tiny_model_dir, tmp_path, capsys):
    root = write_tiny_dataset(tmp_path)
    run = new_run(tiny_model_dir, root, "early", training={"epochs": 1})
    # a run killed during its first save: the engine's leftovers, no state, no LoRA file
    leftovers = [run.checkpoints / ".early-000001.safetensors.k2j4h5.tmp", run.samples / ".e1-s4-p0.png.a8d9f0.tmp",
                 run.state / ".step-00000004.tmp-4242" / "lora.safetensors"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    (run.events).write_text('{"v":1,"seq":0,"time":1.0,"type":"run_start","run_name":"early"}\n')
    assert train(run.path, resume=True) == 0
    assert not any(path.exists() for path in leftovers) and not (run.state / ".step-00000004.tmp-4242").exists()
    events = list(read_events(run.events))
    [note] = [event for event in events if event["type"] == "warning"]
    assert note["message"] == f"{run.path} has no saved state (it ended before its first save): training starts " \
                              "again from step 0"
    assert events[-1]["type"] == "run_end" and events[-1]["status"] == "finished" and events[-1]["step"] == 4
    read_lora_file(run.checkpoints / "early.safetensors")


def test_resume_detached_is_checked_before_it_detaches(tiny_model_dir, tmp_path, capsys):
    root = write_tiny_dataset(tmp_path)
    # LoRA files but no state (saving.save_state off): a new start would overwrite them
    no_state = new_run(tiny_model_dir, root, "no-state", saving={"save_state": False})
    (no_state.checkpoints / "no-state-000001.safetensors").write_bytes(b"a LoRA")
    assert loradeck(["train", "--resume", str(no_state.path), "--detach"]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"loradeck train: {no_state.path}: no saved trainer state to resume from")
    assert not no_state.pid_file.exists()  # no engine was started
    # the base model moved away since the run started
    moved = new_run(tmp_path / "gone", root, "moved")
    assert loradeck(["train", "--resume", str(moved.path), "--detach"]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == f"loradeck train: model.pretrained_model: {tmp_path / 'gone'} does not exist"
    assert not moved.pid_file.exists()


def test_resume_detached_of_a_run_without_state_says_it_starts_again(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import engine.run.launch as launch

    root = write_tiny_dataset(tmp_path)
    run = new_run(tiny_model_dir, root, "again")
    started = []
    monkeypatch.setattr(launch.subprocess, "Popen", lambda command, **_: started.append(command) or _NoProcess())
    assert loradeck(["train", "--resume", str(run.path), "--detach"]) == 0
    out = capsys.readouterr().out
    assert f"note: {run.path} has no saved state (it ended before its first save): training starts again " \
           "from step 0" in out
    assert started and started[0][-1] == "--resume"


class _NoProcess:
    pid = os.getpid()
