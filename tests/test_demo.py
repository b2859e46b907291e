"""`loradeck demo --headless`: a real CPU training on a generated dataset and tiny model."""
from __future__ import annotations

import pytest
import os
import subprocess
import sys
from pathlib import Path

from engine.config.schema import load_config
from engine.run.events import read_events
from engine.health.scan import scan, target_for
from engine.plan.training_plan import make_plan


@pytest.mark.slow
def test_demo_headless_trains_with_checkpoints_and_samples(tmp_path):
    root = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "tui.cli", "demo", str(root), "--headless", "--epochs", "1"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    assert run_dir == root / "runs" / "demo-v1"

    events = list(read_events(run_dir / "events.jsonl"))
    assert events[-1]["type"] == "run_end" and events[-1]["status"] == "finished"
    plan = make_plan(load_config(root / "loradeck.toml"), root)
    assert events[-1]["step"] == plan.total_steps == plan.steps_per_epoch
    assert (run_dir / "checkpoints" / "demo-v1.safetensors").is_file()
    samples = sorted(p.name for p in (run_dir / "samples").glob("*.png"))
    assert len(samples) == 4  # two prompts, at the start and after the epoch
    assert {e["type"] for e in events} >= {"run_start", "step", "epoch_end", "sample", "checkpoint", "run_end"}

    # the generated dataset gives the health screen something real to show
    report = scan(target_for(root / "img"))
    codes = {(f.path, f.code) for f in report.findings}
    assert ("incoming", "bad_folder_name") in codes
    assert ("incoming/upload-01.jpg", "corrupt") in codes
    assert ("incoming/upload-02.png", "corrupt") in codes
    assert sum(code == "exif_rotated" for _path, code in codes) == 2

    # a second demo run never overwrites the first
    again = subprocess.run(
        [sys.executable, "-m", "tui.cli", "demo", str(root), "--headless", "--epochs", "1"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.strip().splitlines()[-1].endswith("demo-v2")
