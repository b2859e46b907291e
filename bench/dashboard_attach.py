"""Dashboard cost as the user feels it: `loradeck attach` of a long run to a drawn view
with its history, and CPU while following a live run.

    python bench/dashboard_attach.py [--steps 100000] [--runs 3] [--follow-seconds 20]

1. Writes a run folder with STEPS logged steps (plus epochs, samples, checkpoints), and
   one a tenth as long; our own pid stands in for a live engine.
2. Runs `loradeck attach RUN` in a real terminal (tmux, 120x40; bench/tmux_frames.py) and
   times, from process start (interpreter, imports, terminal probe, first paint): the
   dashboard drawn with curves over the whole history (the preview of head, evenly spaced
   samples and tail counts: what the user sees while the exact replay goes on), and the
   exact history replayed (the step row at the last step, nothing left to replay). Baseline in
   the same pane, interleaved: a minimal Textual app to its first frame.
3. With the long run open, the app process's CPU (all its threads, /proc) while the run is
   idle for FOLLOW seconds, then while a writer process appends 10 steps a second.
Medians of --runs runs. Not a test: numbers to read, not assertions.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.tmux_frames import TmuxPane, cpu_row, load_line, minimal_app_seconds, python, row  # noqa: E402

STEPS_PER_EPOCH = 1000


def write_run(run_dir: Path, steps: int) -> Path:
    """A finished-looking history (no run end, so the dashboard keeps following)."""
    from PIL import Image

    for name in ("samples", "checkpoints", "control", "state"):
        (run_dir / name).mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text('[saving]\noutput_name = "bench"\n')
    start = time.time() - steps * 0.5
    lines = [json.dumps({"v": 1, "seq": 0, "time": start, "type": "run_start", "run_name": run_dir.name,
                         "config": {}, "plan": {"images": 100, "image_repeats": 1000,
                         "steps_per_epoch": STEPS_PER_EPOCH, "total_steps": steps * 2,
                         "epochs": math.ceil(steps * 2 / STEPS_PER_EPOCH), "batch_size": 1, "effective_batch": 1},
                         "start_step": 0, "start_epoch": 0, "resumed": False, "device": "cuda",
                         "precision": "bf16", "pid": os.getpid()})]
    seq = 1
    for step in range(1, steps + 1):
        when = start + step * 0.5
        epoch = (step - 1) // STEPS_PER_EPOCH + 1
        loss = 0.08 + 0.4 * math.exp(-step / 5000) + 0.02 * math.sin(step)
        lines.append(json.dumps({"v": 1, "seq": seq, "time": when, "type": "step", "step": step, "epoch": epoch,
                                 "loss": loss, "loss_avg": loss, "lr_unet": 1e-4, "lr_text_encoder": 5e-5,
                                 "steps_per_s": 2.0, "images_per_s": 2.0, "gpu_memory_mb": 9000.0,
                                 "gpu_memory_total_mb": 24000.0, "gpu_util": 98}, separators=(",", ":")))
        seq += 1
        if step % STEPS_PER_EPOCH == 0:
            lines.append(json.dumps({"v": 1, "seq": seq, "time": when, "type": "epoch_end", "epoch": epoch,
                                     "step": step, "loss_epoch": loss}))
            seq += 1
            if epoch % 10 == 0:
                relative = f"samples/e{epoch:04d}-s{step:06d}-p00.png"
                Image.new("RGB", (64, 64), (epoch % 255, 90, 160)).save(run_dir / relative)
                lines.append(json.dumps({"v": 1, "seq": seq, "time": when, "type": "sample", "path": relative,
                                         "epoch": epoch, "step": step, "prompt_index": 0, "prompt": "a dog"}))
                relative = f"checkpoints/bench-{epoch:06d}.safetensors"
                (run_dir / relative).write_bytes(b"0" * 1024)
                lines.append(json.dumps({"v": 1, "seq": seq + 1, "time": when, "type": "checkpoint",
                                         "path": relative, "epoch": epoch, "step": step, "bytes": 1024,
                                         "kind": "lora", "final": False}))
                seq += 2
    (run_dir / "events.jsonl").write_text("\n".join(lines) + "\n")
    (run_dir / "engine.log").write_text("bench run\n")
    # our own pid stands in for a live engine, so the run reads as running
    from engine.run.folder import RunDir

    RunDir(run_dir).write_pid()
    return run_dir


WRITER = r"""
import json, sys, time
path, start_step, seconds, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
step = start_step
end = time.time() + seconds
with open(path, "a") as handle:
    while time.time() < end:
        step += 1
        handle.write(json.dumps({"v": 1, "seq": step + 1000000, "time": time.time(), "type": "step", "step": step,
                                 "epoch": 1, "loss": 0.1, "loss_avg": 0.1, "lr_unet": 1e-4,
                                 "lr_text_encoder": 5e-5, "steps_per_s": rate, "images_per_s": rate}) + "\n")
        handle.flush()
        time.sleep(1 / rate)
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its threads so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def history_drawn(steps: int):
    """The view with the whole history: the step row at the last step, nothing left to replay."""
    shown = f"{steps}/"

    def drawn(text: str) -> bool:
        return shown in text and "replaying history" not in text and "reading events" not in text

    return drawn


SPARKS = set("▁▂▃▄▅▆▇█")


def history_preview_drawn(text: str) -> bool:
    """The dashboard drawn with curves over the history: the preview (head, evenly spaced
    samples, tail) while the exact replay goes on counts."""
    loss_row = next((line for line in text.splitlines() if line.lstrip().startswith("loss ")), "")
    return "reading events" not in text and "no data yet" not in loss_row and sum(c in SPARKS for c in loss_row) >= 16


def follow_cpu(pane: TmuxPane, run_dir: Path, steps: int, seconds: float) -> dict:
    """The app's CPU share while the run is idle, then while 10 steps a second arrive."""
    pid = pane.pid()
    time.sleep(2.0)  # the dashboard settles after the replay
    cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    idle = 100 * (cpu_seconds(pid) - cpu0) / (time.perf_counter() - wall0)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run_dir / "events.jsonl"), str(steps),
                               str(seconds), "10"])
    cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    live = 100 * (cpu_seconds(pid) - cpu0) / (time.perf_counter() - wall0)
    writer.wait()
    time.sleep(1.5)
    text = pane.text()
    last = steps + int(seconds * 10)
    followed = any(f"{step}/" in text for step in range(last - 20, last + 5))
    return {"idle": idle, "live": live, "followed": followed}


def measure(pane: TmuxPane, run_dir: Path, steps: int, runs: int) -> dict:
    results: dict = {"baseline": [], "first": [], "history": [], "baseline_cpu": [], "first_cpu": []}
    for _ in range(runs):  # first: with the sampled history
        results["baseline"].append(minimal_app_seconds(pane))
        results["baseline_cpu"].append(pane.cpu)
        pane.start([python(), "-m", "tui.cli", "attach", str(run_dir)])
        results["first"].append(pane.wait_until(history_preview_drawn))
        results["first_cpu"].append(pane.cpu)
        results["history"].append(pane.wait_until(history_drawn(steps), timeout=120))
        pane.keys("q")
        time.sleep(0.5)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--follow-seconds", type=float, default=20.0)
    args = parser.parse_args()
    print(load_line())
    with tempfile.TemporaryDirectory() as temp, TmuxPane(120, 40, name="loradeck-attach") as pane:
        # a run a tenth as long shows what does (and does not) grow with length
        for steps in (args.steps // 10, args.steps):
            workspace = Path(temp) / f"ws{steps}"
            (workspace / "img").mkdir(parents=True)
            run_dir = write_run(workspace / "runs" / "bench", steps)
            size = (run_dir / "events.jsonl").stat().st_size
            print(f"\n{steps:,} steps, events.jsonl {size / 2**20:.1f} MiB")
            results = measure(pane, run_dir, steps, args.runs)
            print(row("minimal Textual app, start to first frame (baseline)", results["baseline"], results["baseline"]))
            print(row("loradeck attach → drawn, curves over the history", results["first"], results["baseline"],
                      1.0 if steps == args.steps else None))
            print(cpu_row("  its CPU by then", results["first_cpu"], results["baseline_cpu"]))
            print(row("loradeck attach → the exact history replayed", results["history"], results["baseline"]))
        if args.follow_seconds:
            pane.start([python(), "-m", "tui.cli", "attach", str(run_dir)])
            pane.wait_until(history_drawn(args.steps), timeout=120)
            cpu = follow_cpu(pane, run_dir, args.steps, args.follow_seconds)
            print(f"CPU following the run while it is idle:        {cpu['idle']:.2f}% of a core")
            print(f"CPU following it at 10 steps/s:                {cpu['live']:.2f}% of a core (goal ≤ 1%); "
                  f"the new steps were {'shown' if cpu['followed'] else 'NOT shown'}")
            pane.keys("q")
    print(load_line())


if __name__ == "__main__":
    main()
