"""Every screen at 80x24 (a phone, a split tmux pane): `?` and the most used keys in the
footer, nothing half drawn at its right edge, and what the user must read is readable whole."""
from __future__ import annotations

import pytest

from tests.datasets import write_caption, write_image
from tests.run_recordings import (
    RecordedRun,
    dashboard_ready,
    screen_text,
    wait_until,
    workspace,  # noqa: F401 - the fixture
)
from tui.app import make_app

SMALL = (80, 24)

# screen -> keys its footer must show at 80 columns
MAIN_KEYS = {
    "health": ("r Rescan", "csa Filter", "fF Fix", "xX Quarantine", "u Undo", "1234 Screens", "q Quit"),
    "captions": ("jk Next/prev", "space Accept", "a Add", "x Remove", "/ Filter", "^z Undo", "c Caption"),
    "config": ("/ Jump", "^s Save", "^o Import", "^t Train", "1234 Screens", "q Quit"),
    "runs": ("⏎ Open", "t Train", "r Resume", "g Grid", "m Rename", "d Delete", "q Quit"),
}


def footer(app) -> str:
    return app.screen._compositor.render_strips()[-1].text


def check_footer(app, keys) -> None:
    line = footer(app)
    assert line.rstrip().endswith("? Keys"), line  # pinned to the right edge, nothing after it
    for key in keys:
        assert key in line, f"{key!r} missing from the footer: {line!r}"


@pytest.fixture
def small_workspace(workspace):
    for index in range(3):
        write_caption(write_image(workspace / "img" / "2_sks dog" / f"{index}.png", (64, 64)), "sks dog, red")
    # a stopped run named as the config's next run: the config screen cannot train
    recorded = RecordedRun(workspace, "next").start(steps_per_epoch=10, epochs=3).steps(1, 4).checkpoint(1, 4)
    recorded.event("run_end", status="stopped", step=4, epoch=1, message="stopped at step 4")
    recorded.write().engine_dead()
    return workspace


@pytest.mark.parametrize("screen_name", ["health", "captions", "config", "runs"])
async def test_every_screen_at_80x24_shows_keys_and_its_main_keys(small_workspace, screen_name):
    app = make_app(small_workspace, start_screen=screen_name)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.pause(0.3)
        if screen_name == "runs":
            await wait_until(pilot, lambda: app.screen.runs, what="the runs list")
        if screen_name == "config":
            await wait_until(pilot, lambda: "cannot train" in screen_text(app), what="the config status")
            # the reason a run cannot start is on screen whole, wrapped above the footer
            await pilot.pause(0.2)
            shown = " ".join(line.strip() for line in screen_text(app).splitlines()[-5:-1])
            assert "cannot train: saving.output_name:" in shown and "next-v1b (new settings)" in shown, shown
        await pilot.pause(0.2)
        check_footer(app, MAIN_KEYS[screen_name])
        await pilot.press("question_mark")  # `?` works from every screen
        await wait_until(pilot, lambda: "Keys" in screen_text(app) and "Action" in screen_text(app), 10, "the keys")


async def test_dashboard_at_80x24_shows_keys_and_its_main_keys(workspace):
    recorded = RecordedRun(workspace, "live").start(steps_per_epoch=10, epochs=3).steps(1, 4)
    recorded.write().engine_alive()
    app = make_app(workspace, start_screen="runs", attach_run=recorded.path)
    async with app.run_test(size=SMALL) as pilot:
        await dashboard_ready(pilot)
        await pilot.pause(0.2)
        check_footer(app, ("esc Runs", "x Stop", "c Save", "n Sample", "g Plot"))
