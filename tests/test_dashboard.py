"""The run dashboard, driven by recorded events.jsonl files (no trainer needed).

Healthy, half-written, unknown-typed, crashed, dead-pid, failed, NaN, stalled, disk-full
and 100,000-step runs; live following; control keys; sample browsing; the plot; 80x24.
"""
from __future__ import annotations

import json

import pytest

import engine.run.launch as launch
from textual.widgets import DataTable, Log, TabbedContent

from tests.run_recordings import (
    RecordedRun,
    dashboard_ready,
    healthy_run,
    screen_text,
    wait_until,
    workspace,  # noqa: F401 - the fixture
)
from tui.app import make_app
from tui.run_state import RunState
from tui.screens.confirm import ConfirmScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.run_plot import RunPlotScreen
from tui.screens.runs import RunsScreen
from tui.series_summary import SeriesSummary
from tui.widgets.dashboard import run_tailer
from tui.widgets.dashboard.sparkline_panel import spark_characters

SIZE = (120, 40)
SMALL = (80, 24)


def attach(workspace, run_dir):
    return make_app(workspace, start_screen="runs", attach_run=run_dir)


def badge(screen: DashboardScreen) -> str:
    return screen.query_one("#dash-badge").text.strip()


# --------------------------------------------------------------------------- summaries


def test_series_summary_keeps_whole_run_in_fixed_memory():
    summary = SeriesSummary(capacity=64)
    for step in range(1, 100_001):
        summary.add(step, 1.0 if step <= 50_000 else 3.0)
    assert summary.bin_width >= 100_000 // 64
    assert summary.count == 100_000 and summary.low == 1.0 and summary.high == 3.0
    columns = summary.columns(10)
    assert len(columns) == 10
    assert columns.mean[0] == pytest.approx(1.0) and columns.mean[-1] == pytest.approx(3.0)
    assert columns.x_last == 100_000
    # the batch path gives exactly what one add at a time gives
    batch = SeriesSummary(capacity=64)
    batch.extend(list(range(1, 100_001)), [1.0 if s <= 50_000 else 3.0 for s in range(1, 100_001)])
    assert batch.columns(10) == columns and batch.bin_width == summary.bin_width


def test_series_summary_marks_nan_without_averaging_it():
    summary = SeriesSummary(capacity=8)
    summary.extend([1, 2, 3, 4], [0.5, "nan", 0.7, None])
    assert summary.count == 2 and summary.nonfinite == 1
    columns = summary.columns(4)
    assert columns.bad == [False, True, False]  # steps 1-3: step 4 had no value
    assert columns.mean[1] is None
    assert [char for char, _bad in spark_characters(columns, 3)] == ["▁", "!", "█"]


# --------------------------------------------------------------------------- runs


async def test_healthy_run_shows_progress_curves_samples_checkpoints(workspace):
    recorded = healthy_run(workspace)
    app = attach(workspace, recorded.path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await dashboard_ready(pilot)
        text = screen_text(app)
        assert badge(screen) == "FINISHED"
        assert "healthy" in text and "cuda:0 bf16" in text
        assert "epoch 3/3" in text and "30/30" in text
        for label in ("loss", "avg loss", "epoch loss", "lr unet", "lr text"):
            assert label in text
        assert "1.00e-04" in text and "GPU memory 8.0/24.0 GiB" in text and "GPU 97%" in text
        # newest samples with their prompt
        assert "epoch 2 · step 20 · prompt 1/2 (newest)" in text
        assert "a photo of sks dog, epoch 2" in text
        assert "could not be read" in text  # the warning, in the notices tab
        assert "run finished" in text
        # the checkpoints tab: newest first, with sizes
        await pilot.press("t")
        table = screen.query_one("#dash-checkpoints", DataTable)
        assert table.row_count == 3
        assert table.get_row_at(0) == ["healthy-000003.safetensors final", "3", "30", "3.0 MiB"]
        # the log tab: colours and progress-bar rewrites cleaned
        await pilot.press("t")
        lines = screen.query_one("#dash-log", Log).lines
        assert "caching latents 100%" in lines and "run finished" in lines
        # a finished run offers no stop and no resume
        assert screen.check_action("stop", ()) is False
        assert screen.check_action("resume", ()) is False


async def test_samples_browse_by_epoch_and_prompt(workspace):
    recorded = healthy_run(workspace)
    app = attach(workspace, recorded.path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await dashboard_ready(pilot)
        panel = screen.query_one("#dash-samples")
        assert panel.record.epoch == 2 and panel.record.prompt_index == 0
        await pilot.press("full_stop")
        assert panel.record.prompt_index == 1 and "sks dog on a beach, epoch 2" in screen_text(app)
        await pilot.press("left_square_bracket")
        assert (panel.record.epoch, panel.record.prompt_index) == (1, 1)
        assert "prompt 2/2 (set 1/2)" in screen_text(app)
        assert panel.query_one("#sample-image").path == recorded.path / "samples/e0001-s000010-p01.png"
        await pilot.press("right_square_bracket")
        assert panel.record.epoch == 2 and "(newest)" in screen_text(app)


async def test_half_written_last_line_then_follows_what_is_appended(workspace, monkeypatch):
    monkeypatch.setattr(run_tailer, "POLL_SECONDS", 0.1)
    recorded = RecordedRun(workspace, "live").start(steps_per_epoch=100, epochs=1).steps(1, 20, epoch_ends=False)
    recorded.engine_alive()
    written = len(recorded.lines)
    recorded.steps(21, 21, epoch_ends=False)
    half = recorded.lines[-1]
    recorded.lines.pop()
    recorded.write(partial_line=half[: len(half) // 2])
    app = attach(workspace, recorded.path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await dashboard_ready(pilot)
        assert screen.view.state.step == 20 and screen.view.skipped_lines == 0
        assert badge(screen) == "RUNNING" and "20/100" in screen_text(app)
        # the engine finishes the line, then writes more
        recorded.append(half[len(half) // 2:] + "\n")
        recorded.lines.append(half)
        recorded.steps(22, 30, epoch_ends=False)
        recorded.event("control", request="save", outcome="saved at step 30")
        recorded.flush_new(written + 1)
        await wait_until(pilot, lambda: screen.view.state.step == 30, what="step 30")
        await pilot.pause()
        text = screen_text(app)
        assert "30/100" in text and "save: saved at step 30" in text


async def test_unknown_event_types_and_damaged_lines_are_skipped(workspace):
    recorded = RecordedRun(workspace, "future").start(steps_per_epoch=10, epochs=1)
    recorded.event("telemetry", temperature=71, nested={"a": [1, 2]})
    recorded.steps(1, 5, epoch_ends=False)
    recorded.lines.append('{"v":1,"seq":99,"time":1,"type":"step","step":')  # damaged mid-file
    recorded.lines.append("[1, 2, 3]")  # JSON but not an event
    recorded.event("step", step=6, epoch=1)  # a step with most fields missing
    recorded.event("run_end", status="finished", step=6, epoch=1, message="")
    recorded.write()
    app = attach(workspace, recorded.path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await dashboard_ready(pilot)
        assert badge(screen) == "FINISHED"
        assert screen.view.state.unknown_events == 1
        assert screen.view.state.step == 6
        assert "2 damaged lines skipped" in screen_text(app)


@pytest.mark.parametrize("how", ["engine_dead", "engine_pid_reused", "no_pid_file"])
async def test_crash_is_loud_and_offers_resume(workspace, how):
    recorded = RecordedRun(workspace, "crashy").start(steps_per_epoch=10, epochs=2).steps(1, 14)
    recorded.write().log("step 14 epoch 2 loss 0.2\nKilled\n")
    if how != "no_pid_file":
        getattr(recorded, how)()
    app = attach(workspace, recorded.path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await dashboard_ready(pilot)
        text = screen_text(app)
        assert badge(screen) == "CRASHED"
        assert "CRASHED: the engine is gone without a run end (last step 14)" in text
        assert "press r to resume" in text
        assert screen.query_one("#dash-tabs", TabbedContent).active == "tab-log"
        assert "Killed" in screen.query_one("#dash-log", Log).lines
        assert screen.check_action("resume", ()) is True
        assert screen.check_action("stop", ()) is False


async def test_failed_run_shows_error_traceback_and_log_tail(workspace):
    recorded = RecordedRun(workspace, "broken").start(steps_per_epoch=10, epochs=2).steps(1, 3)
    trace = "Traceback (most recent call last):\n  File \"trainer.py\", line 1, in train\nRuntimeError: CUDA error: device-side assert"
    recorded.event("error", message="RuntimeError: CUDA error: device-side assert", traceback=trace)
    recorded.event("run_end", status="failed", step=3, epoch=0, message="RuntimeError: CUDA error: device-side assert")
    recorded.write().log("step 3 epoch 1 loss 0.3\nTraceback (most recent call last):\nRuntimeError: CUDA error\n")
    recorded.engine_dead()
    app = attach(workspace, recorded.path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await dashboard_ready(pilot)
        assert badge(screen) == "FAILED"
        assert "FAILED: RuntimeError: CUDA error: device-side assert  —  press r to resume" in screen_text(app)
        assert screen.query_one("#dash-tabs", TabbedContent).active == "tab-log"
        assert screen.query_one("#dash-log", Log).lines[-1] == "RuntimeError: CUDA error"
        await pilot.press("t")  # back round to the notices: message and traceback
        text = screen_text(app)
        assert 'File "trainer.py", line 1, in train' in text
        assert screen.check_action("resume", ()) is True


async def test_nan_loss_and_full_disk_are_flagged(workspace):
    recorded = RecordedRun(workspace, "nan").start(steps_per_epoch=10, epochs=1)
    recorded.steps(1, 6, loss=lambda step: "nan" if step == 5 else 0.2, epoch_ends=False)
    recorded.event("error", message="OSError: [Errno 28] No space left on device: 'checkpoints/x.safetensors'",
                   traceback="OSError: [Errno 28] No space left on device")
    recorded.event("run_end", status="failed", step=6, epoch=0, message="no space left")
    recorded.write().engine_dead()
    app = attach(workspace, recorded.path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await dashboard_ready(pilot)
        text = screen_text(app)
        assert "NaN loss at step 5" in text
        assert "DISK FULL: OSError: [Errno 28] No space left on device" in text
        assert screen.view.state.loss_series.nonfinite == 1


async def test_low_free_space_is_flagged(workspace, monkeypatch):
    monkeypatch.setattr(run_tailer, "_free_bytes", lambda path: 100 * 2**20)
    recorded = RecordedRun(workspace, "tight").start().steps(1, 3, epoch_ends=False).write().engine_alive()
    app = attach(workspace, recorded.path)
    async with app.run_test(size=SIZE) as pilot:
        await dashboard_ready(pilot)
        assert "disk nearly full: 100 MiB free in the run folder" in screen_text(app)


async def test_stalled_run_is_flagged(workspace):
    # steps every 5 s until an hour ago, the engine still alive: stalled
    recorded = RecordedRun(workspace, "stuck").start(steps_per_epoch=100, epochs=1)
    recorded.steps(1, 10, every=5.0, epoch_ends=False).write().engine_alive()
    app = attach(workspace, recorded.path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await dashboard_ready(pilot)
        assert badge(screen) == "RUNNING"
        assert "STALLED: no progress since" in screen_text(app)
        assert "steps usually every 5s" in screen_text(app)


async def test_recent_steps_are_not_stalled(workspace):
    import time

    recorded = RecordedRun(workspace, "fine", start=time.time() - 5).start(steps_per_epoch=100, epochs=1)
    recorded.steps(1, 10, every=0.1, epoch_ends=False).write().engine_alive()
    app = attach(workspace, recorded.path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await dashboard_ready(pilot)
        assert not screen.view.health.alerts
        assert "ETA" in screen_text(app)


async def test_control_keys_write_requests_and_outcomes_show(workspace, monkeypatch):
    monkeypatch.setattr(run_tailer, "POLL_SECONDS", 0.1)
    recorded = RecordedRun(workspace, "ctl").start(steps_per_epoch=100, epochs=1).steps(1, 5, epoch_ends=False)
    recorded.write().engine_alive()
    app = attach(workspace, recorded.path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await dashboard_ready(pilot)
        control = recorded.run.control
        await pilot.press("c")
        assert (control / "save").exists()
        await pilot.press("n")
        assert (control / "sample").exists()
        await wait_until(pilot, lambda: "save requested…" in screen_text(app), what="the pending mark")
        # stop asks first; "no" leaves the run alone
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert not (control / "stop").exists()
        await pilot.press("x")
        await pilot.press("y")
        assert isinstance(app.screen, DashboardScreen)
        request = json.loads((control / "stop").read_text())
        assert request["by"] > 0
        # the engine answers through the event stream
        since = len(recorded.lines)
        recorded.event("control", request="stop", outcome="stopped after step 5")
        recorded.event("run_end", status="stopped", step=5, epoch=0, message="stopped at step 5; resume with --resume")
        recorded.flush_new(since)
        for name in ("save", "sample", "stop"):
            (control / name).unlink()
        recorded.run.pid_file.unlink()
        await wait_until(pilot, lambda: badge(screen) == "STOPPED", what="the stopped run end")
        await pilot.pause()
        text = screen_text(app)
        assert "stop: stopped after step 5" in text
        assert "requested…" not in text
        assert screen.check_action("resume", ()) is True and screen.check_action("stop", ()) is False


async def test_resume_key_starts_the_engine_on_the_run(workspace, monkeypatch):
    calls = []
    monkeypatch.setattr(launch, "start_training",
                        lambda config, **options: calls.append((config, options)) or options["resume"])
    recorded = RecordedRun(workspace, "paused").start().steps(1, 4, epoch_ends=False)
    recorded.event("run_end", status="stopped", step=4, epoch=0, message="stopped")
    recorded.write()
    app = attach(workspace, recorded.path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await dashboard_ready(pilot)
        assert "STOPPED" in badge(screen)
        await pilot.press("r")
        await wait_until(pilot, lambda: calls, what="start_training")
        assert calls == [(None, {"detach": True, "resume": recorded.path})]


async def test_hundred_thousand_steps_replay_into_bounded_summaries(workspace):
    recorded = RecordedRun(workspace, "long").start(steps_per_epoch=1000, epochs=100)
    recorded.steps(1, 100_000, every=0.01, gpu=False)
    recorded.event("run_end", status="finished", step=100_000, epoch=100, message="")
    recorded.write()
    app = attach(workspace, recorded.path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await dashboard_ready(pilot)
        state = screen.view.state
        assert state.step == 100_000 and state.events == recorded.seq
        assert state.loss_series.count == 100_000
        assert state.loss_series.capacity == 512 and state.loss_series.bin_width == 256
        assert state.loss_epoch_series.count == 100
        text = screen_text(app)
        assert "epoch 100/100" in text and "100000/100000" in text
        loss_line = next(line for line in text.splitlines() if line.strip().startswith("loss "))
        assert "█" in loss_line and "▁" in loss_line  # the curve falls over the whole run
        # the plot, on demand, over the same fixed summary
        await pilot.press("g")
        assert isinstance(app.screen, RunPlotScreen)
        plot_text = screen_text(app)
        assert "loss · 100000 values, 256 step(s) per bin" in plot_text
        assert any("⠀" < char <= "⣿" for char in plot_text)
        assert "step 100000" in plot_text
        await pilot.press("right")
        assert "avg loss ·" in screen_text(app)
        await pilot.press("escape")
        assert isinstance(app.screen, DashboardScreen)


async def test_a_data_parallel_run_shows_its_processes_and_each_ones_speed(workspace):
    recorded = RecordedRun(workspace, "parallel").start(steps_per_epoch=10, epochs=1, processes=4)
    recorded.steps(1, 5, every=0.25)  # 4 steps a second of one image per process: 4 img/s in all
    app = attach(workspace, recorded.write().engine_alive().path)
    async with app.run_test(size=SIZE) as pilot:
        await dashboard_ready(pilot)
        text = screen_text(app)
        assert "4 processes on cuda bf16" in text
        assert "4.00 img/s (1.00 per process)" in text


async def test_dashboard_fits_80x24(workspace):
    recorded = healthy_run(workspace)
    app = attach(workspace, recorded.path)
    async with app.run_test(size=SMALL) as pilot:
        screen = await dashboard_ready(pilot)
        lines = screen_text(app).splitlines()
        assert len(lines) == 24
        text = "\n".join(lines)
        assert "FINISHED" in text and "epoch 3/3" in text and "30/30" in text
        for label in ("loss", "avg loss", "epoch loss", "lr unet", "lr text"):
            assert any(line.strip().startswith(label) for line in lines), label
        assert "prompt 1/2" in text
        assert "esc Runs" in lines[-1]
        assert screen.query_one("#dash-samples").region.height >= 8


async def test_escape_goes_back_to_the_runs_list_and_quit_leaves_files_alone(workspace):
    recorded = healthy_run(workspace)
    before = {p: p.stat().st_mtime_ns for p in recorded.path.rglob("*") if p.is_file()}
    app = attach(workspace, recorded.path)
    async with app.run_test(size=SIZE) as pilot:
        await dashboard_ready(pilot)
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)
        await wait_until(pilot, lambda: "healthy" in screen_text(app), what="the runs table")
        await pilot.press("q")
    after = {p: p.stat().st_mtime_ns for p in recorded.path.rglob("*") if p.is_file()}
    assert after == before  # viewing never writes to the run folder


async def test_attach_builds_the_dashboard_alone_and_the_runs_key_leads_back_to_it(workspace, monkeypatch):
    built: list[RunsScreen] = []
    real_init = RunsScreen.__init__

    def counted(self, *args, **kwargs):
        built.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(RunsScreen, "__init__", counted)
    recorded = healthy_run(workspace)
    app = attach(workspace, recorded.path)
    async with app.run_test(size=SIZE) as pilot:
        dashboard = await dashboard_ready(pilot)
        assert built == []  # nothing but the dashboard before it is drawn
        await pilot.press("1")
        await pilot.pause()
        assert type(app.screen).__name__ == "HealthScreen"
        await pilot.press("4")  # Runs: the attached run's dashboard, as it was
        await pilot.pause()
        assert app.screen is dashboard and built == []
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, RunsScreen), what="the runs list")
        await pilot.press("1", "4")  # the dashboard was closed: the list
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen) and len(built) == 1


def test_run_state_snapshot_is_independent():
    state = RunState(path=__import__("pathlib").Path("/tmp/x"))
    state.fold_all([{"type": "run_start", "time": 1.0, "plan": {"total_steps": 10, "steps_per_epoch": 5, "epochs": 2}},
                    {"type": "step", "time": 2.0, "step": 1, "epoch": 1, "loss": 0.5}])
    snapshot = state.snapshot()
    state.fold({"type": "step", "time": 3.0, "step": 2, "epoch": 1, "loss": 0.25})
    assert snapshot.step == 1 and snapshot.loss_series.count == 1
    assert state.step == 2 and state.loss_series.count == 2
    assert state.epoch_step == (2, 5)


async def test_starting_engine_then_one_that_died_before_its_first_event(workspace):
    recorded = RecordedRun(workspace, "early")
    recorded.log("loading the base model\n").engine_alive()  # no events.jsonl yet
    app = attach(workspace, recorded.path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await dashboard_ready(pilot)
        assert badge(screen) == "STARTING"
        assert screen.check_action("stop", ()) is True
    recorded.log("ModuleNotFoundError: No module named 'diffusers'\n").engine_dead()
    app = attach(workspace, recorded.path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await dashboard_ready(pilot)
        assert badge(screen) == "CRASHED"
        assert screen.query_one("#dash-log", Log).lines == ["ModuleNotFoundError: No module named 'diffusers'"]


async def test_a_sparkline_repaints_only_when_its_line_changes_and_recolours_with_the_theme():
    from textual.app import App

    from tui.widgets.dashboard.sparkline_panel import SeriesSparkline

    class One(App):
        def compose(self):
            yield SeriesSparkline("lr unet", id="line")

    summary = SeriesSummary()
    for x in range(1, 1001):
        summary.add(x, 1e-4)
    app = One()
    async with app.run_test(size=(60, 3)) as pilot:
        line = app.query_one(SeriesSparkline)
        line.show(summary)
        await pilot.pause()
        drawn = line.render()
        repaints = []
        original = line.refresh
        line.refresh = lambda *a, **k: repaints.append(1) or original(*a, **k)
        summary.add(1001, 1e-4)  # a constant LR one step on: the same line
        line.show(summary)
        assert repaints == []
        summary.add(1002, 5e-5)  # a new value: the line changes and is drawn
        line.show(summary)
        assert repaints == [1] and "5.00e-05" in line.render().plain
        line.refresh = original
        app.theme = "textual-light" if app.theme != "textual-light" else "textual-dark"
        await pilot.pause()
        assert line.render().spans != drawn.spans  # the theme's colours, not the cached line's
