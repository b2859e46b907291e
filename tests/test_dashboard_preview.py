"""Attaching to a long run: the preview drawn while the history replays already spans the
whole run (evenly spaced samples between head and tail), agrees with the full fold, and is
in the dashboard's first frame."""
from __future__ import annotations

import json
import math
from pathlib import Path

from engine.run.events import EventTail
from engine.run.folder import RunDir
from tests.run_recordings import screen_text
from tui.app import make_app
from tui.run_state import RunState
from tui.widgets.dashboard.run_tailer import PREVIEW_MIN_BYTES, RunTailer, preview_state

STEPS = 12_000


def write_long_run(run_dir: Path) -> RunDir:
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text('[saving]\noutput_name = "long"\n')
    lines = [json.dumps({"v": 1, "seq": 0, "time": 1000.0, "type": "run_start", "run_name": "long",
                         "plan": {"steps_per_epoch": 1000, "total_steps": STEPS, "epochs": 12}})]
    for step in range(1, STEPS + 1):
        loss = 0.1 + 0.5 * math.exp(-step / 3000)  # falls over the whole run
        lines.append(json.dumps({"v": 1, "seq": step, "time": 1000.0 + step, "type": "step", "step": step,
                                 "epoch": (step - 1) // 1000 + 1, "loss": loss, "loss_avg": loss,
                                 "lr_unet": 1e-4, "lr_text_encoder": 5e-5, "steps_per_s": 2.0,
                                 "images_per_s": 2.0, "gpu_memory_mb": 9000.0}))
    (run_dir / "events.jsonl").write_text("\n".join(lines) + "\n")
    return RunDir(run_dir)


def test_the_preview_curve_spans_the_whole_run_and_matches_the_full_fold(tmp_path):
    run = write_long_run(tmp_path / "runs" / "long")
    size = run.events.stat().st_size
    assert size > PREVIEW_MIN_BYTES  # long enough to get a preview in the app

    preview = preview_state(run, size)
    full = RunState(path=run.path)
    full.fold_all(EventTail(run.events).read_new())

    assert preview.step == full.step == STEPS
    shown, exact = preview.loss_series.columns(60), full.loss_series.columns(60)
    assert shown.x_first <= 300 and shown.x_last == STEPS
    assert all(value is not None for value in shown.mean)  # no gap between head and tail
    for sampled, folded in zip(shown.mean, exact.mean):
        assert math.isclose(sampled, folded, rel_tol=0.05)


async def test_the_first_frame_of_an_attach_has_the_preview_before_any_replay(tmp_path, monkeypatch):
    run = write_long_run(tmp_path / "runs" / "long")
    monkeypatch.setattr(RunTailer, "_follow", lambda self: None)  # no replay, no following
    app = make_app(tmp_path, start_screen="runs", attach_run=run.path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        view = app.screen.view
        assert view is not None and view.replayed == 0.0 and view.state.step == STEPS
        loss_line = next(line for line in screen_text(app).splitlines() if line.strip().startswith("loss "))
        assert "█" in loss_line and "▁" in loss_line  # the curve over the whole run
