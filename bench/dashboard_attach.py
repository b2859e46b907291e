"""Dashboard cost: time to attach to a long run, CPU while following, memory.

    /work/venv/bin/python bench/dashboard_attach.py [--steps 100000] [--follow-seconds 20]

1. Writes a run folder with STEPS logged steps (plus epochs, samples, checkpoints), and
   one a tenth as long.
2. Opens the app headless (pilot, 120x40) in a fresh process with `attach_run` = that
   folder and measures, from the app's creation: the dashboard mounted, its first paint
   (a preview from the head and tail of the history), and the whole history shown.
3. Follows the run while it is idle for FOLLOW seconds, then while a separate writer
   process appends 10 steps a second, and reports this process's CPU time per second
   (all threads: UI, tailer) as a percentage of one core.
4. Reports resident memory after attaching and after following, and the size of the
   folded run state (fixed: 512 bins per curve whatever the number of steps).
Not a test: numbers to read, not assertions.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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


def resident_mib() -> float:
    """Resident memory now (Linux); the peak is set by Textual's start-up, not by the run."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


async def measure(run_dir: Path, steps: int, follow_seconds: float) -> dict:
    from tui.app import make_app
    from tui.screens.dashboard import DashboardScreen

    results: dict = {}
    started = time.perf_counter()
    app = make_app(run_dir.parent.parent, start_screen="runs", attach_run=run_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        first_paint = mounted = None
        while True:
            screen = app.screen
            if isinstance(screen, DashboardScreen):
                if mounted is None and screen.is_mounted:
                    mounted = time.perf_counter()
                if first_paint is None and screen.view is not None:
                    first_paint = time.perf_counter() - started
                if screen.view is not None and screen.view.replayed is None and screen.view.state.step == steps:
                    break
            await pilot.pause(0.01)
        full_history = time.perf_counter() - started
        results["first_paint_s"] = round(first_paint, 3)
        results["full_history_s"] = round(full_history, 3)
        results["app_start_to_dashboard_mount_s"] = round(mounted - started, 3)
        results["mount_to_first_paint_s"] = round(first_paint - (mounted - started), 3)
        results["mount_to_full_history_s"] = round(full_history - (mounted - started), 3)
        results["rss_after_attach_mib"] = resident_mib()
        state = app.screen.view.state
        results["loss_summary_bins"] = state.loss_series.capacity
        results["loss_summary_steps_per_bin"] = state.loss_series.bin_width
        if not follow_seconds:
            return results

        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(follow_seconds)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        results["idle_follow_cpu_percent"] = round(100 * cpu / wall, 2)

        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run_dir / "events.jsonl"), str(steps),
                                   str(follow_seconds), "10"])
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(follow_seconds)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        writer.wait()
        results["live_follow_10_steps_per_s_cpu_percent"] = round(100 * cpu / wall, 2)
        await pilot.pause(1.0)
        results["steps_shown_after_follow"] = app.screen.view.state.step
        results["rss_after_follow_mib"] = resident_mib()
        results["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return results


def measure_in_subprocess(run_dir: Path, steps: int, follow_seconds: float) -> dict:
    """A fresh interpreter per measurement: its peak memory is the app's alone."""
    output = subprocess.run(
        [sys.executable, __file__, "--measure", str(run_dir), "--steps", str(steps),
         "--follow-seconds", str(follow_seconds)],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--follow-seconds", type=float, default=20.0)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(asyncio.run(measure(args.measure, args.steps, args.follow_seconds))))
        return
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as temp:
        rows = []
        # a run a tenth as long shows what does (and does not) grow with length
        for steps, follow in ((args.steps // 10, 0.0), (args.steps, args.follow_seconds)):
            workspace = Path(temp) / f"ws{steps}"
            (workspace / "img").mkdir(parents=True)
            run_dir = write_run(workspace / "runs" / "bench", steps)
            size = (run_dir / "events.jsonl").stat().st_size
            print(f"\n{steps} steps, events.jsonl {size / 2**20:.1f} MiB")
            results = measure_in_subprocess(run_dir, steps, follow)
            for key, value in results.items():
                print(f"  {key:42s} {value}")
            rows.append(results)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
