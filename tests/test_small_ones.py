"""The small things users met: the first r after a stop, an auto-caption failure that
must stay readable, and the libraries' import chatter kept out of the user's logs."""
from __future__ import annotations

import logging
import subprocess
import sys

from tests.run_recordings import (
    RecordedRun,
    dashboard_ready,
    wait_until,
    workspace,  # noqa: F401 - the fixture
)
from tests.datasets import write_image
from tui.app import make_app


async def test_the_first_r_after_a_stop_resumes_once_the_engine_has_closed(workspace, monkeypatch):
    import engine.run.launch as launch

    recorded = RecordedRun(workspace, "stopped").start(steps_per_epoch=10, epochs=3).steps(1, 4)
    recorded.event("run_end", status="stopped", step=4, epoch=1, message="stopped at step 4")
    recorded.write()
    write_image(recorded.path / "img" / "1_x" / "0.png", (64, 64))  # the frozen config's dataset, checked at resume
    # the engine has written its run end but is still closing (a second and a half)
    closing = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    recorded.run.write_pid(closing.pid)
    started = []
    monkeypatch.setattr(launch, "engine_command", lambda run, resume: started.append(closing.poll()) or [
        sys.executable, "-c", "pass"])
    app = make_app(workspace, start_screen="runs", attach_run=recorded.path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await dashboard_ready(pilot)
        assert screen.view.health.status == "stopped" and screen.check_action("resume", ())
        await pilot.press("r")
        await wait_until(pilot, lambda: any("resumed" in str(n.message) for n in app._notifications), 20,
                         "the resume")
        assert not any("failed" in str(n.message) for n in app._notifications)
        assert started == [0]  # the new engine started after the old one had gone
    closing.wait()


async def test_a_failed_auto_caption_says_why_and_the_reason_stays(tmp_path, monkeypatch):
    import json

    from engine.config.schema import TrainConfig, save_config
    from PIL import Image
    from tui.screens import captions

    # the captioner failing as `loradeck caption` does offline (its error event, exit status 1)
    error = {"v": 1, "seq": 0, "time": 0.0, "type": "error",
             "message": "Salesforce/blip-image-captioning-base: cannot load (no network)"}
    monkeypatch.setattr(captions, "caption_command", lambda root, choice, extension: [
        sys.executable, "-c", f"import sys; print({json.dumps(json.dumps(error))}); sys.exit(1)"])

    save_config(TrainConfig(), tmp_path / "loradeck.toml")
    folder = tmp_path / "img" / "10_city"
    folder.mkdir(parents=True)
    Image.new("RGB", (24, 16)).save(folder / "a.png")
    app = make_app(tmp_path, start_screen="captions", image_protocol="unicode")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("c")
        await pilot.pause()
        await pilot.press(*"Salesforce/blip-image-captioning-base", "ctrl+s")  # a hub id, and no network
        bar = app.screen.query_one("#captions-job")
        await wait_until(pilot, lambda: bar.has_class("-failed"), 120, "the failure")
        text = str(bar.query_one("Static").render())
        assert "auto-caption failed: Salesforce/blip-image-captioning-base: cannot load (no network)" in text
        assert "c tries again" in text and bar.display
        app.clear_notifications()  # the toasts go; the reason stays in the bar
        await pilot.pause()
        assert bar.has_class("-failed") and bar.display


def test_the_torchvision_fallback_warning_is_dropped_and_others_are_kept(caplog):
    from engine.library_noise import silence_library_noise

    silence_library_noise()
    logger = logging.getLogger("transformers.utils.import_utils")
    with caplog.at_level(logging.WARNING, logger="transformers.utils.import_utils"):
        logger.warning("`CLIPImageProcessor` requires torchvision (not installed); falling back to "
                       "`CLIPImageProcessorPil` for backward compatibility.")
        logger.warning("something the user should see")
    assert [record.getMessage() for record in caplog.records] == ["something the user should see"]
