"""The plan's duration estimate: the speed of a run on this machine, scaled by pixels and
images per step to the plan, and a note that says where it comes from."""
from __future__ import annotations

import pytest

from engine.config.schema import config_from_dict, save_config
from engine.plan.duration import estimate_duration, recent_speed
from engine.plan.training_plan import make_plan
from engine.run.events import EventWriter
from tests.datasets import write_caption, write_image
from tui.app import make_app
from tui.widgets.config.plan_panel import format_duration


def measured_run(workspace, name, *, size, batch, steps_per_s, family="SD 1.x"):
    """A run folder whose events say it trained `size` images, `batch` a step, at that speed."""
    with EventWriter(workspace / "runs" / name, fsync=False) as events:
        events.emit("run_start", run_name=name, plan={
            "total_steps": 4, "epochs": 1, "batch_size": batch, "effective_batch": batch, "family_label": family,
            "buckets": [{"width": size, "height": size, "count": 8, "batches": 8 // batch}]})
        for step in range(1, 5):
            events.emit("step", step=step, epoch=1, loss=0.1, steps_per_s=steps_per_s)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "ws"
    for index in range(4):
        write_caption(write_image(root / "img" / "5_city" / f"{index}.png", (256, 256)), "city")
    save_config(config_from_dict({
        "model": {"pretrained_model": "some/model"},
        "dataset": {"image_dir": "img", "resolution": "256"},
        "training": {"batch_size": 2, "epochs": 2},
        "saving": {"output_name": "city-v2"},
    }), root / "loradeck.toml")
    return root


def plan_of(workspace):
    from engine.config.schema import load_config

    return make_plan(load_config(workspace / "loradeck.toml"), workspace)


def test_a_speed_measured_at_another_size_is_scaled_by_pixels_and_batch(workspace, capsys):
    measured_run(workspace, "city-v1", size=768, batch=4, steps_per_s=0.5)
    plan = plan_of(workspace)
    estimate = estimate_duration(plan, recent_speed(workspace / "runs"))
    # 768² with 4 images a step -> 256² with 2: each step does 1/18 of the work
    assert estimate.steps_per_s == pytest.approx(0.5 * 18)
    assert estimate.seconds == pytest.approx(plan.total_steps / 9.0)
    assert "city-v1 on this machine made 0.50 at 768×768, 4 images a step" in estimate.note
    assert "scaled by pixels and images to 256×256, 2 a step" in estimate.note
    # `loradeck plan` says the same
    from tui.cli import main as loradeck

    assert loradeck(["plan", str(workspace / "loradeck.toml")]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("Estimated ") and "scaled by pixels and images to 256×256" in last


def test_another_family_or_unknown_sizes_are_said(workspace):
    measured_run(workspace, "xl-v1", size=1024, batch=1, steps_per_s=0.25, family="SDXL")
    plan = plan_of(workspace)
    estimate = estimate_duration(plan, recent_speed(workspace / "runs"))
    assert estimate.steps_per_s == 0.25 and "(SDXL): not comparable to SD 1.x, a rough guess" in estimate.note
    # a run of the plan's own family is preferred when there is one
    measured_run(workspace, "old-sd15", size=256, batch=2, steps_per_s=3.0)
    assert recent_speed(workspace / "runs", "SD 1.x").run_name == "old-sd15"
    # a run that did not record its sizes: its speed as it is, and the note says so
    with EventWriter(workspace / "runs" / "bare", fsync=False) as events:
        events.emit("run_start", run_name="bare", plan={"total_steps": 4})
        events.emit("step", step=1, epoch=1, loss=0.1, steps_per_s=2.0)
    bare = estimate_duration(plan, recent_speed(workspace / "runs"))
    assert bare.steps_per_s == 2.0 and "its image size is not recorded" in bare.note


async def test_the_config_screen_shows_the_scaled_estimate_and_where_it_comes_from(workspace):
    measured_run(workspace, "city-v1", size=768, batch=4, steps_per_s=0.5)
    plan = plan_of(workspace)
    app = make_app(workspace, start_screen="config")
    async with app.run_test(size=(120, 40)) as pilot:
        panel = app.screen.plan_panel
        for _ in range(200):
            await pilot.pause(0.05)
            if "Estimated " in panel.plan_text() and "scaled" in panel.plan_text():
                break
        text = " ".join(panel.plan_text().split())
        assert f"Estimated {format_duration(plan.total_steps / 9.0)}" in text
        assert "made 0.50 at 768×768, 4 images a step; scaled by pixels and images to 256×256" in text
