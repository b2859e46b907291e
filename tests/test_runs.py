"""The runs list: `loradeck runs [--json]`, incremental summaries, and the Runs screen."""
from __future__ import annotations

import json

import pytest
from textual.widgets import DataTable

from engine.run.events import read_events
from engine.run.fold import fold_event
from engine.run.folder import RunFollower, RunSummary, summarize_run
from tests.run_recordings import (  # noqa: F401 - workspace is a fixture
    RecordedRun,
    dashboard_ready,
    healthy_run,
    screen_text,
    wait_until,
    workspace,
)
from tui.app import make_app
from tui.cli import main
from tui.run_state import RunState
from tui.screens import runs as runs_screen
from tui.screens.dashboard import DashboardScreen
from tui.screens.runs import RunsScreen


def five_runs(workspace):
    """finished, crashed, failed, running, stopped, started an hour apart; the running one."""
    healthy_run(workspace, "a_finished")
    RecordedRun(workspace, "b_crashed", start=1_700_000_000).start().steps(1, 12).write().engine_dead()
    failed = RecordedRun(workspace, "c_failed", start=1_700_003_600).start().steps(1, 2)
    failed.event("error", message="ValueError: bad bucket", traceback="Traceback...\nValueError: bad bucket")
    failed.event("run_end", status="failed", step=2, epoch=0, message="ValueError: bad bucket")
    failed.write()
    running = RecordedRun(workspace, "d_running", start=1_700_007_200).start().steps(1, 5).write().engine_alive()
    stopped = RecordedRun(workspace, "e_stopped", start=1_700_010_800).start().steps(1, 7)
    stopped.event("run_end", status="stopped", step=7, epoch=0, message="stopped at step 7")
    stopped.write()
    return running


def test_runs_json_lists_every_status(workspace, capsys):
    five_runs(workspace)
    assert main(["runs", str(workspace), "--json"]) == 0
    runs = {run["name"]: run for run in json.loads(capsys.readouterr().out)}
    assert {name: run["status"] for name, run in runs.items()} == {
        "a_finished": "finished", "b_crashed": "crashed", "c_failed": "failed",
        "d_running": "running", "e_stopped": "stopped",
    }
    finished = runs["a_finished"]
    assert finished["step"] == finished["total_steps"] == 30 and finished["progress"] == 1.0
    assert finished["epochs"] == 3 and finished["checkpoints"] == 3
    assert finished["lora"] == str(workspace / "runs" / "a_finished" / "checkpoints" / "a_finished-000003.safetensors")
    assert finished["loss"] == pytest.approx(0.1 + 0.4 * 2.718281828 ** (-30 / 50) + 0.01 * (30 % 7))
    assert finished["steps_per_s"] == 2.0 and finished["duration"] == pytest.approx(15.0)
    assert runs["c_failed"]["message"] == "ValueError: bad bucket"
    assert runs["b_crashed"]["step"] == 12 and runs["b_crashed"]["progress"] == pytest.approx(0.4)


def test_runs_table_and_paths(workspace, capsys):
    five_runs(workspace)
    assert main(["runs", str(workspace)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["STATUS", "PROGRESS", "LOSS", "AVG", "LOSS", "SPEED", "STARTED", "DURATION", "NAME", "LORA"]
    assert any(line.startswith("failed") and line.rstrip().endswith("c_failed    -") for line in out)
    assert any(line.startswith("finished") and line.endswith("a_finished  a_finished-000003.safetensors")
               for line in out)
    assert "c_failed: ValueError: bad bucket" in out
    # the runs folder itself, and one run folder, work too
    assert main(["runs", str(workspace / "runs"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 5
    assert main(["runs", str(workspace / "runs" / "e_stopped"), "--json"]) == 0
    assert [run["name"] for run in json.loads(capsys.readouterr().out)] == ["e_stopped"]
    assert main(["runs", str(workspace / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_nan_loss_is_valid_json(workspace, capsys):
    RecordedRun(workspace, "nan").start().steps(1, 2, loss=lambda step: "nan").write()
    main(["runs", str(workspace), "--json"])
    assert json.loads(capsys.readouterr().out)[0]["loss"] == "nan"


def test_follower_reads_only_what_was_appended_and_matches_a_full_fold(workspace):
    recorded = RecordedRun(workspace, "grow").start(steps_per_epoch=10, epochs=5).steps(1, 25)
    recorded.write().engine_alive()
    follower = RunFollower(recorded.path)
    assert follower.refresh().step == 25
    since = len(recorded.lines)
    recorded.checkpoint(2, 25)
    recorded.steps(26, 31)
    recorded.event("run_end", status="finished", step=31, epoch=4, message="")
    recorded.flush_new(since)
    summary = follower.refresh()
    assert (summary.status, summary.step, summary.checkpoints) == ("finished", 31, 1)
    # skipping the JSON of all but the last step of each run of steps is exact
    full = RunSummary(path=recorded.path, name="grow")
    for event in read_events(recorded.run.events):
        fold_event(full, event)
    assert summary.as_json() == full.as_json() == summarize_run(recorded.path).as_json()
    # an events file replaced by a shorter one is folded again from the start
    RecordedRun(workspace, "grow").start().steps(1, 3).write()
    assert follower.refresh().step == 3


def test_a_config_value_that_looks_like_a_step_is_not_skipped(workspace):
    recorded = RecordedRun(workspace, "odd")
    recorded.event("run_start", run_name="odd", config={"x": {"type": "step"}},
                   plan={"total_steps": 40, "epochs": 2, "steps_per_epoch": 20}, start_step=0)
    recorded.steps_per_epoch = 20
    recorded.steps(1, 3)
    recorded.write()
    assert summarize_run(recorded.path).total_steps == 40


def test_runs_list_and_dashboard_read_the_same_progress(workspace):
    """One fold (engine.run.fold) for both: a stopped, resumed, finished run reads alike."""
    recorded = RecordedRun(workspace, "both").start(steps_per_epoch=10, epochs=3).steps(1, 14)
    recorded.checkpoint(1, 10)
    recorded.event("error", message="CUDA out of memory", traceback="Traceback...")
    recorded.event("run_end", status="failed", step=14, epoch=1, message="")
    recorded.start(steps_per_epoch=10, epochs=3, start_step=14, start_epoch=1).steps(15, 30)
    recorded.checkpoint(3, 30, final=True)
    recorded.event("run_end", status="finished", step=30, epoch=3, message="")
    recorded.write()
    summary = summarize_run(recorded.path)
    state = RunState(path=recorded.path)
    state.fold_all(list(read_events(recorded.run.events)))
    for name in ("status", "step", "epoch", "total_steps", "epochs", "loss", "loss_avg", "steps_per_s",
                 "started", "ended", "last_event_time", "error_message", "end_message", "lora_checkpoints"):
        assert getattr(summary, name) == getattr(state, name), name
    # the resume forgot the first attempt's failure, in both
    assert summary.message == "" and state.error_message == ""


def test_bad_fields_keep_the_previous_value_instead_of_failing(workspace, capsys):
    recorded = RecordedRun(workspace, "odd").start(steps_per_epoch=10, epochs=3).steps(1, 4)
    recorded.event("run_start", run_name="odd", plan={"total_steps": "lots", "epochs": None}, start_step="x")
    recorded.event("step", step="five", epoch=[1], loss=0.5)
    recorded.event("run_end", status=None, step=None, epoch=0, message=None)
    recorded.write()
    assert main(["runs", str(workspace), "--json"]) == 0
    run = json.loads(capsys.readouterr().out)[0]
    assert (run["status"], run["step"], run["total_steps"], run["epochs"], run["loss"]) == ("finished", 4, 30, 3, 0.5)
    # a plan that is not a table at all
    odder = RecordedRun(workspace, "odder")
    odder.event("run_start", run_name="odder", plan=[1, 2], start_step=0)
    odder.write()
    assert (summarize_run(odder.path).status, summarize_run(odder.path).total_steps) == ("crashed", 0)


async def test_runs_screen_lists_refreshes_and_opens_the_dashboard(workspace, monkeypatch):
    monkeypatch.setattr(runs_screen, "REFRESH_SECONDS", 0.1)
    running = five_runs(workspace)
    app = make_app(workspace, start_screen="runs")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        table = screen.query_one("#runs-table", DataTable)
        await wait_until(pilot, lambda: table.row_count == 5, what="five runs")
        statuses = [table.get_row_at(row)[0] for row in range(5)]
        names = [table.get_row_at(row)[-2] for row in range(5)]
        assert names[0] == "a_finished"  # newest first
        assert dict(zip(names, statuses))["b_crashed"] == "crashed"
        # a new run appears by itself
        RecordedRun(workspace, "f_new").start().steps(1, 1).write().engine_alive()
        await wait_until(pilot, lambda: table.row_count == 6, what="the new run")
        assert "f_new" in screen_text(app)
        # rows update in place as a run goes on
        row = [table.get_row_at(r)[-2] for r in range(6)].index("d_running")
        table.move_cursor(row=row)
        await pilot.pause()
        assert screen.check_action("stop", ()) is True and screen.check_action("resume", ()) is False
        since = len(running.lines)
        running.steps(6, 9)
        running.flush_new(since)
        await wait_until(pilot, lambda: table.get_row_at(row)[1].startswith("9/30"), what="step 9")
        # enter opens that run's dashboard, and says so in the footer (the table's own
        # hidden enter binding used to shadow it)
        # (the footer recomposes a moment after the bindings change, so wait for it)
        await wait_until(pilot, lambda: "enter" in {key.key for key in screen.query("FooterKey")},
                         what="enter in the footer")
        await pilot.press("enter")
        dashboard = await dashboard_ready(pilot)
        assert dashboard.run.name == "d_running"
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


async def test_runs_screen_stop_and_resume_keys(workspace, monkeypatch):
    import engine.run.launch as launch

    calls = []
    monkeypatch.setattr(launch, "start_training",
                        lambda config, **options: calls.append((config, options)) or options["resume"])
    five_runs(workspace)
    app = make_app(workspace, start_screen="runs")
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.screen.query_one("#runs-table", DataTable)
        await wait_until(pilot, lambda: table.row_count == 5, what="five runs")
        names = [table.get_row_at(r)[-2] for r in range(5)]
        table.move_cursor(row=names.index("d_running"))
        await pilot.press("x", "y")
        assert (workspace / "runs" / "d_running" / "control" / "stop").exists()
        table.move_cursor(row=names.index("e_stopped"))
        await pilot.press("r")
        await wait_until(pilot, lambda: calls, what="start_training")
        assert calls == [(None, {"detach": True, "resume": workspace / "runs" / "e_stopped"})]
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen), what="its dashboard")


async def test_empty_workspace_says_how_to_start(workspace):
    app = make_app(workspace, start_screen="runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: "No runs yet" in screen_text(app), what="the empty message")
        # the footer draws its keys a frame after the screen's first paint
        await wait_until(pilot, lambda: "t Train" in screen_text(app), what="the train key in the footer")
