"""Start-up as the user waits for it, in a real terminal (tmux, 120x40 by default).

    python bench/startup.py [--runs 3] [--big 10000] [--big-dir FOLDER] [--size 120x40]

Every time is from process start (interpreter, imports, terminal probe, first paint) to the
frame the user waits for, read off the tmux pane (bench/tmux_frames.py). Baselines run in
the same pane in the same run, interleaved with ours: a minimal Textual app (process start
to its first drawn frame) and, for `--help`, a bare `python -c pass`. Rows:

1. `loradeck WS` to the first drawn screen: a 36-photo workspace (1024x768 JPEGs with
   captions, Kohya folders, loradeck.toml), opening on Health (a new user's first screen),
   drawn when its status line, findings table and footer are on screen.
2. Config screen: `3` pressed in that running app (2 s after its scan ended, as a user
   looks at the first screen) until the form's first group, the plan panel and the status
   line are drawn; then "every setting reachable": `/`, the name of
   the last setting of the last group, enter, until that setting is focused and drawn.
   Also `loradeck WS --screen config` from process start.
3. `loradeck --help`: the process's wall time.
4. First open of a workspace of BIG photos (no scan cache): the health screen drawn with
   the scan's progress ("Scanning 120/10000 images"), how far the progress moves in the 3 s
   after, and with --scan-to-end (context; the scan's speed is bench/scan_speed.py's) the
   time until the scan finished. The photos are written once into --big-dir and reused.

Medians of --runs runs; each line prints the runs and the ratio to its baseline.
Not a test: numbers to read, not assertions.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.tmux_frames import (  # noqa: E402
    TmuxPane, cpu_row, environment, load_line, minimal_app_seconds, python, row,
)

PHOTO_SIZE = (1024, 768)
LOOK_S = 2.0  # seconds between the scan's end and `3` (the app reads other screens meanwhile)
LAST_SETTING = "Early-stop patience"  # the last setting of the last group (validation)


def _write_photos(args: tuple[Path, range]) -> None:
    from tests.health_corpus import photo

    folder, seeds = args
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        path = folder / f"{seed:06d}.jpg"
        if not path.exists():
            photo(seed, PHOTO_SIZE).save(path, quality=90)
            path.with_suffix(".txt").write_text("cty, a city street, photo", encoding="utf-8")


def make_workspace(root: Path, count: int) -> Path:
    """A workspace of `count` photos in img/10_city photo/ and a saved sd15-general config."""
    from engine.config.presets import load_preset
    from engine.config.schema import save_config

    folder = root / "img" / "10_city photo"
    have = sum(1 for _ in folder.glob("*.jpg")) if folder.is_dir() else 0
    if have < count:
        print(f"writing {count - have:,} photos of {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} into {folder} …", flush=True)
        step = max(1, count // ((os.cpu_count() or 1) * 8))
        parts = [(folder, range(start, min(start + step, count))) for start in range(0, count, step)]
        with ProcessPoolExecutor() as pool:
            list(pool.map(_write_photos, parts))
    if not (root / "loradeck.toml").exists():
        save_config(load_preset("sd15-general"), root / "loradeck.toml")
    return root


def forget_app_state(workspace: Path, *, scan_cache: bool = False) -> None:
    """Open on Health as a new user would; optionally without the scan cache (a first open)."""
    state = workspace / ".loradeck"
    (state / "app.json").unlink(missing_ok=True)
    (state / "config_draft.json").unlink(missing_ok=True)
    if scan_cache:
        (state / "health-cache.json").unlink(missing_ok=True)


def health_drawn(text: str) -> bool:
    return "Severity" in text and "Rescan" in text and ("images" in text or "Scanning" in text)


def health_scanning_drawn(text: str) -> bool:
    """The health screen drawn with the scan's progress (images done of all)."""
    return re.search(r"Scanning \d+/\d+ images", text) is not None and "Severity" in text and "Rescan" in text


def health_finished(text: str) -> bool:
    return "scanned in" in text


def config_drawn(text: str) -> bool:
    return "Base model" in text and "loradeck.toml ·" in text and "Plan" in text


def setting_focused(label: str):
    # the help panel names the focused setting; the form row is drawn beside it
    return lambda text: text.count(label) >= 2


def loradeck(*args: str) -> list[str]:
    return [python(), "-m", "tui.cli", *args]


def quit_app(pane: TmuxPane) -> None:
    pane.keys("Escape")
    pane.keys("q")
    time.sleep(0.3)


def bench_open(pane: TmuxPane, workspace: Path, runs: int) -> None:
    baseline, opened, config_key, reachable, config_cold = [], [], [], [], []
    base_cpu, opened_cpu = [], []
    for index in range(runs + 1):  # the first round warms the disk cache and .pyc files
        base = minimal_app_seconds(pane)
        base_cpu_now = pane.cpu
        forget_app_state(workspace)
        pane.start(loradeck(str(workspace)))
        first = pane.wait_until(health_drawn)
        first_cpu = pane.cpu
        pane.wait_until(health_finished)
        time.sleep(LOOK_S)  # a user looks at the first screen before pressing `3`
        pressed = pane.keys("3")
        config = pane.since(pressed, config_drawn)
        time.sleep(0.2)
        pressed = pane.keys("/")
        time.sleep(0.3)  # the palette opens; typing waits for it as a user would
        pane.keys("-l", LAST_SETTING)
        pane.keys("Enter")
        try:
            reach = pane.since(pressed, setting_focused(LAST_SETTING), timeout=10) - 0.3
        except TimeoutError:
            reach = float("nan")  # the jump did not focus the setting
        quit_app(pane)
        forget_app_state(workspace)
        pane.start(loradeck(str(workspace), "--screen", "config"))
        cold = pane.wait_until(config_drawn)
        quit_app(pane)
        if index == 0:
            continue
        baseline.append(base)
        opened.append(first)
        base_cpu.append(base_cpu_now)
        opened_cpu.append(first_cpu)
        config_key.append(config)
        reachable.append(reach)
        config_cold.append(cold)
    print(row("minimal Textual app, start to first frame (baseline)", baseline, baseline))
    print(row("loradeck WS → first drawn screen (Health)", opened, baseline, 0.5))
    print(cpu_row("  its CPU by then", opened_cpu, base_cpu))
    print(row("`3` → config screen drawn", config_key, baseline, 0.5))
    print(row("`/` last setting ⏎ → it is focused and drawn", reachable, baseline))
    print(row("loradeck WS --screen config → config drawn", config_cold, baseline))


def bench_help(runs: int) -> None:
    def wall(command: list[str]) -> float:
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=environment(), cwd=ROOT)
        return time.perf_counter() - started

    bare, helped = [], []
    for index in range(2 * runs + 1):
        bare_time = wall([python(), "-c", "pass"])
        help_time = wall(loradeck("--help"))
        if index:
            bare.append(bare_time)
            helped.append(help_time)
    print(row("python -c pass (baseline)", bare, bare))
    print(row("loradeck --help", helped, bare, 0.15))


def scan_done(text: str) -> int:
    found = re.search(r"Scanning (\d+)/\d+ images", text)
    return int(found.group(1)) if found else -1


def bench_big(pane: TmuxPane, workspace: Path, runs: int, to_end: bool) -> None:
    count = sum(1 for _ in (workspace / "img" / "10_city photo").glob("*.jpg"))
    baseline, drawn, first, finished, base_cpu, first_cpu, filling = [], [], [], [], [], [], []
    for index in range(runs):
        baseline.append(minimal_app_seconds(pane))
        base_cpu.append(pane.cpu)
        forget_app_state(workspace, scan_cache=True)
        pane.start(loradeck(str(workspace)))
        drawn.append(pane.wait_until(health_drawn))
        first_cpu.append(pane.cpu)
        first.append(pane.wait_until(health_scanning_drawn))
        done_then = scan_done(pane.text())
        time.sleep(3.0)  # the scan fills in behind the drawn screen
        filling.append(scan_done(pane.text()) - done_then)
        if to_end:
            finished.append(pane.wait_until(health_finished, timeout=1200))
        quit_app(pane)
    print(row("minimal Textual app (baseline)", baseline, baseline))
    print(row(f"first open of {count:,} photos → Health drawn (Scanning …)", drawn, baseline, 0.5))
    print(cpu_row("  its CPU by then", first_cpu, base_cpu))
    print(row(f"  → the scan's first progress drawn (n/{count:,})", first, baseline))
    print(f"  images the progress line counted in the 3 s after: {', '.join(str(n) for n in filling)}")
    if to_end:
        print(row(f"first open of {count:,} photos → scan finished (context)", finished, baseline))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", default="120x40", help="terminal columns x rows")
    parser.add_argument("--big", type=int, default=10_000, help="photos in the big workspace (0: skip)")
    parser.add_argument("--big-dir", type=Path, default=Path(tempfile.gettempdir()) / "loradeck-bench-big",
                        help="where the big workspace is written once and reused")
    parser.add_argument("--only", choices=("open", "help", "big"), help="run one part")
    parser.add_argument("--scan-to-end", action="store_true",
                        help="also wait for the big workspace's scan to end (bench/scan_speed.py times the scan)")
    args = parser.parse_args()
    width, height = (int(part) for part in args.size.split("x"))
    print(load_line())
    small = Path(tempfile.mkdtemp(prefix="loradeck-startup-"))
    try:
        with TmuxPane(width, height, name="loradeck-startup") as pane:
            if args.only in (None, "help"):
                bench_help(args.runs)
            if args.only in (None, "open"):
                bench_open(pane, make_workspace(small, 36), args.runs)
            if args.only in (None, "big") and args.big:
                bench_big(pane, make_workspace(args.big_dir, args.big), args.runs, args.scan_to_end)
    finally:
        shutil.rmtree(small, ignore_errors=True)
    print(load_line())


if __name__ == "__main__":
    main()
