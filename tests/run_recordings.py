"""Recorded run folders for the runs list and dashboard tests, written by hand.

Import the `workspace` fixture from here to use it.

`RecordedRun` writes `events.jsonl` lines in the engine's schema (engine.run.events) with
chosen times, so a test can replay a healthy run, a crash, a failure, a stall or a
100,000-step history without a trainer, and can append to it while the dashboard follows.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from PIL import Image

from engine.config.schema import config_from_dict, save_config
from engine.run.folder import RunDir
from tui.screens.dashboard import DashboardScreen


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def default_loss(step: int) -> float:
    return 0.1 + 0.4 * math.exp(-step / 50) + 0.01 * (step % 7)


class RecordedRun:
    def __init__(self, workspace: Path, name: str, *, start: float | None = None):
        self.run = RunDir(workspace / "runs" / name)
        self.run.create()
        save_config(config_from_dict({"model": {"pretrained_model": "tiny/model"}, "saving": {"output_name": name}}), self.run.config)
        self.lines: list[str] = []
        self.seq = 0
        self.time = time.time() - 3600 if start is None else start
        self.steps_per_epoch = 0

    @property
    def path(self) -> Path:
        return self.run.path

    def event(self, type: str, **fields: Any) -> None:
        event = {"v": 1, "seq": self.seq, "time": fields.pop("time", self.time), "type": type}
        event.update(fields)
        self.lines.append(json.dumps(event, separators=(",", ":")))
        self.seq += 1

    def start(self, *, steps_per_epoch: int = 10, epochs: int = 3, start_step: int = 0,
              start_epoch: int = 0, device: str = "cuda:0", config: dict | None = None) -> "RecordedRun":
        self.steps_per_epoch = steps_per_epoch
        plan = {"images": 4, "image_repeats": 8, "reg_images": 0, "buckets": [{"width": 64, "height": 64, "count": 4}],
                "steps_per_epoch": steps_per_epoch, "total_steps": steps_per_epoch * epochs, "epochs": epochs,
                "batch_size": 1, "effective_batch": 1}
        self.event("run_start", run_name=self.run.name, config=config or {}, plan=plan, start_step=start_step,
                   start_epoch=start_epoch, resumed=start_step > 0, device=device, precision="bf16", pid=12345)
        return self

    def steps(self, first: int, last: int, *, loss: Callable[[int], Any] = default_loss, every: float = 0.5,
              gpu: bool = True, epoch_ends: bool = True) -> "RecordedRun":
        for step in range(first, last + 1):
            self.time += every
            epoch = (step - 1) // self.steps_per_epoch + 1
            extra = {"gpu_memory_mb": 8192.0, "gpu_memory_total_mb": 24576.0, "gpu_util": 97} if gpu else {}
            value = loss(step)
            self.event("step", step=step, epoch=epoch, loss=value, loss_avg=value if isinstance(value, str) else value * 0.9,
                       lr_unet=1e-4, lr_text_encoder=5e-5, steps_per_s=1 / every, images_per_s=1 / every, **extra)
            if epoch_ends and step % self.steps_per_epoch == 0:
                self.event("epoch_end", epoch=epoch, step=step, loss_epoch=0.2 + 0.1 / epoch)
        return self

    def sample(self, epoch: int, step: int, index: int, prompt: str, color=(200, 40, 40)) -> "RecordedRun":
        relative = f"samples/e{epoch:04d}-s{step:06d}-p{index:02d}.png"
        Image.new("RGB", (64, 64), color).save(self.path / relative)
        self.event("sample", path=relative, epoch=epoch, step=step, prompt_index=index, prompt=prompt,
                   negative_prompt="", seed=1000 + index, width=64, height=64, steps=20, cfg=7.0, sampler="euler_a")
        return self

    def checkpoint(self, epoch: int, step: int, size: int = 2048, *, final: bool = False) -> "RecordedRun":
        relative = f"checkpoints/{self.run.name}-{epoch:06d}.safetensors"
        (self.path / relative).write_bytes(b"\0" * size)
        self.event("checkpoint", path=relative, epoch=epoch, step=step, bytes=size, kind="lora", final=final)
        return self

    def write(self, partial_line: str = "") -> "RecordedRun":
        text = "\n".join(self.lines) + "\n" + partial_line
        self.run.events.write_text(text)
        return self

    def append(self, text: str) -> None:
        with open(self.run.events, "a") as handle:
            handle.write(text)

    def flush_new(self, since: int) -> None:
        """Append the lines recorded after index `since` (the engine writing more)."""
        self.append("".join(line + "\n" for line in self.lines[since:]))

    def log(self, text: str) -> "RecordedRun":
        self.run.log.write_text(text)
        return self

    def engine_alive(self) -> "RecordedRun":
        """This test process stands in for a live engine."""
        self.run.write_pid(os.getpid())
        return self

    def engine_dead(self) -> "RecordedRun":
        self.run.write_pid(dead_pid())
        return self

    def engine_pid_reused(self) -> "RecordedRun":
        """A live process holds the pid, but not the one that started the run."""
        self.run.write_pid(os.getpid())
        record = json.loads(self.run.pid_file.read_text())
        record["start_ticks"] = (record["start_ticks"] or 0) + 12345
        self.run.pid_file.write_text(json.dumps(record))
        return self


def healthy_run(workspace: Path, name: str = "healthy") -> RecordedRun:
    """Three epochs of ten steps, samples at epochs 1 and 2, a checkpoint per epoch, finished."""
    recorded = RecordedRun(workspace, name).start(steps_per_epoch=10, epochs=3)
    for epoch in (1, 2, 3):
        recorded.steps(epoch * 10 - 9, epoch * 10)
        if epoch < 3:
            recorded.sample(epoch, epoch * 10, 0, f"a photo of sks dog, epoch {epoch}", color=(60 * epoch, 80, 80))
            recorded.sample(epoch, epoch * 10, 1, f"sks dog on a beach, epoch {epoch}", color=(80, 60 * epoch, 80))
        recorded.checkpoint(epoch, epoch * 10, size=3 * 1024 * 1024, final=epoch == 3)
    recorded.event("warning", message="img/2_sks dog/7.png could not be read; skipped", code="unreadable_image")
    recorded.event("run_end", status="finished", step=30, epoch=3, message="")
    recorded.log("loading the base model\nstep 10 epoch 1 loss 0.2\n"
                 "\x1b[32mcaching latents 50%\rcaching latents 100%\x1b[0m\nrun finished\n")
    return recorded.write()


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """A workspace with a config and no runs; app settings kept inside the test folder."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "ws"
    (root / "img").mkdir(parents=True)
    write_workspace_config(root)
    return root


def write_workspace_config(workspace: Path) -> None:
    save_config(config_from_dict({"model": {"pretrained_model": "tiny/model"}, "saving": {"output_name": "next"}}), workspace / "loradeck.toml")


def screen_text(app) -> str:
    """What the terminal shows now, as plain text."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def wait_until(pilot, condition: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}:\n{screen_text(pilot.app)}")
        await pilot.pause(0.05)


async def dashboard_ready(pilot) -> DashboardScreen:
    """Wait until the dashboard on top has replayed its run's whole history and drawn it."""
    app = pilot.app
    await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.view is not None
                     and app.screen.view.replayed is None, what="the dashboard")
    await pilot.pause()
    return app.screen
