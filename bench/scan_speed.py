"""Health-scan speed as the user waits for it: `loradeck scan DIR` from process start,
against a one-process Pillow decode of the same files measured in the same run.

    python bench/scan_speed.py [--count 2000] [--size 1024x768] [--dir FOLDER] [--keep]
                               [--repeats 3] [--cores N] [--workers N] [--before TREE]
                               [--pixel-checks-only] [--scene photo|flat|screenshot]

1. Writes COUNT photo-like JPEGs of SIZE (smooth colour fields, hard-edged discs and
   grain, quality 90, about 100 KB each at 1024x768, each with a caption) into a
   temporary folder, or uses --dir as it is; --scene flat or screenshot writes the
   flat-colour scenes or screenshots of tests/health_corpus.py instead (the pixel
   checks cost most on flat content, which has many stepping boundaries). Every file is read once first, so both
   sides start with the files in the page cache.
2. Baseline, in its own process from interpreter start: Pillow's default full decode
   (`Image.open` + `load`: libjpeg-turbo, accurate integer DCT, fancy upsampling) of
   every file, one after another in one process, nothing else checked.
3. `python -m tui.cli scan DIR` in its own process from interpreter start, cold (no
   scan cache: every file strictly decoded by libjpeg-turbo through simplejpeg with the
   fast DCT, checked for silent damage, hashed, measured for sharpness and pHash, on a
   worker process per core), then warm (the cache it wrote), then cold again without the
   silent-damage pixel checks (they answer "whole" at once): what those checks add to
   the scan the user waits for.
Each repeat alternates the order; the table gives medians and the ratio Pillow / scan
(above 1: the scan finishes first). --cores N pins both sides to N cores (as `taskset`),
so a bigger machine measures a small one; --before TREE also times the cold scan of
another checkout (e.g. `git archive main | tar -x -C /tmp/main`) in the same runs. Also
prints the CPU milliseconds per image of each in one process, and the per-image CPU cost
of the checks with the silent-damage pixel checks on and off (alternating runs over the
same 100 files; --pixel-checks-only: just this). Not a test: numbers to read.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.health_corpus import flat_scene, photo, screenshot  # noqa: E402  (as the damage bench and tests use)

SCENES = {"photo": photo, "flat": flat_scene, "screenshot": screenshot}

PILLOW_DECODE = """
import sys
from pathlib import Path
from PIL import Image
for path in sorted(Path(sys.argv[1]).glob("*.jpg")):
    with Image.open(path) as image:
        image.load()
"""

# `loradeck scan` with the silent-damage pixel checks answering "whole" at once: its scan
# workers are forked from this process, so they inherit the switch.
SCAN_WITHOUT_PIXEL_CHECKS = """
import sys
import engine.health.image_checks as checks
checks.silent_damage = lambda *args, **kwargs: None
from tui.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _write_some(args: tuple[Path, range, tuple[int, int], str]) -> None:
    folder, seeds, size, scene = args
    for seed in seeds:
        path = folder / f"{seed:06d}.jpg"
        SCENES[scene](seed, size).save(path, quality=90)
        path.with_suffix(".txt").write_text(f"a {scene}", encoding="utf-8")


def generate(folder: Path, count: int, size: tuple[int, int], scene: str = "photo") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    workers = os.cpu_count() or 1
    step = max(1, count // (workers * 4))
    parts = [(folder, range(start, min(start + step, count)), size, scene) for start in range(0, count, step)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_some, parts))


def timed(command: list[str], cores: int | None, tree: Path = ROOT) -> tuple[float, float]:
    """Wall seconds of a command from its process start to its exit, run in `tree`, and
    the CPU seconds (user + system) of it and the children it waited for (forked scan
    workers count; a forkserver's workers may not)."""
    environment = dict(os.environ, PYTHONPATH=str(tree))
    pin = (lambda: os.sched_setaffinity(0, range(cores))) if cores else None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, cwd=tree, env=environment, preexec_fn=pin, check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cpu_per_image(paths: list[Path]) -> tuple[float, float]:
    """CPU milliseconds per image in this process: Pillow's decode, and all our checks."""
    from PIL import Image

    from engine.health.image_checks import inspect_image

    sample = paths[:100]
    inspect_image(sample[0])  # the first pHash imports scipy: not a per-image cost
    started = time.process_time()
    for path in sample:
        with Image.open(path) as image:
            image.load()
    pillow = time.process_time() - started
    started = time.process_time()
    for path in sample:
        inspect_image(path)
    ours = time.process_time() - started
    return pillow * 1000 / len(sample), ours * 1000 / len(sample)


def pixel_check_cost(paths: list[Path], rounds: int = 9) -> tuple[float, float]:
    """CPU milliseconds per image of inspect_image with the pixel-damage checks and without
    them (silent_damage answering "whole" at once), alternating runs over the same files so
    that a busy machine slows both alike; the lowest of `rounds` runs of each."""
    from engine.health import image_checks

    sample = paths[:100]
    image_checks.inspect_image(sample[0])
    checks = image_checks.silent_damage
    with_checks, without = [], []
    try:
        for _ in range(rounds):
            for switched_on, times in ((True, with_checks), (False, without)):
                image_checks.silent_damage = checks if switched_on else (lambda *args, **kwargs: None)
                started = time.process_time()
                for path in sample:
                    image_checks.inspect_image(path)
                times.append((time.process_time() - started) * 1000 / len(sample))
    finally:
        image_checks.silent_damage = checks
    return min(with_checks), min(without)


def report_pixel_check_cost(paths: list[Path]) -> None:
    with_checks, without = pixel_check_cost(paths)
    print(f"\nCPU per image in one process (best of 9 alternating runs over {min(len(paths), 100)} files): "
          f"{with_checks:.2f} ms with the silent-damage pixel checks, {without:.2f} ms without "
          f"({with_checks / without - 1:+.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", default="1024x768", help="WIDTHxHEIGHT of generated images")
    parser.add_argument("--dir", type=Path, help="scan this folder (of .jpg files) instead of generating one")
    parser.add_argument("--keep", action="store_true", help="keep the generated folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", type=int, default=None, help="pin both sides to this many cores")
    parser.add_argument("--workers", type=int, default=None, help="scan workers (default: one per core it may use)")
    parser.add_argument("--before", type=Path, help="another checkout whose cold scan is timed too")
    parser.add_argument("--scene", choices=sorted(SCENES), default="photo", help="what the generated images show")
    parser.add_argument("--pixel-checks-only", action="store_true",
                        help="only compare the per-image cost with and without the silent-damage pixel checks")
    args = parser.parse_args()

    temporary = None
    if args.dir:
        folder = args.dir.resolve()
    else:
        temporary = Path(tempfile.mkdtemp(prefix="loradeck-scan-bench-"))
        folder = temporary / "pictures"
        width, height = (int(side) for side in args.size.lower().split("x"))
        started = time.perf_counter()
        generate(folder, args.count, (width, height), args.scene)
        print(f"generated {args.count} {args.scene} JPEGs of {width}x{height} in {time.perf_counter() - started:.1f} s")
    try:
        paths = sorted(folder.glob("*.jpg"))
        if args.pixel_checks_only:
            report_pixel_check_cost(paths)
            return
        megabytes = sum(len(path.read_bytes()) for path in paths) / 1e6  # also fills the page cache
        cache = folder / ".loradeck-scan-cache"
        scan = [sys.executable, "-m", "tui.cli", "scan", str(folder)]
        if args.workers:
            scan += ["--workers", str(args.workers)]
        pillow_times, cold_times, warm_times, before_times, unchecked_times = [], [], [], [], []
        for repeat in range(args.repeats):
            def run_pillow():
                pillow_times.append(timed([sys.executable, "-c", PILLOW_DECODE, str(folder)], args.cores))

            def run_scan():
                cache.unlink(missing_ok=True)
                cold_times.append(timed(scan, args.cores))
                warm_times.append(timed(scan, args.cores))
                cache.unlink(missing_ok=True)
                unchecked_times.append(timed([sys.executable, "-c", SCAN_WITHOUT_PIXEL_CHECKS, *scan[3:]], args.cores))
                if args.before:
                    cache.unlink(missing_ok=True)
                    before_times.append(timed(scan, args.cores, args.before.resolve()))

            for step in ((run_pillow, run_scan) if repeat % 2 == 0 else (run_scan, run_pillow)):
                step()
        cache.unlink(missing_ok=True)
        pillow_cpu, ours_cpu = cpu_per_image(paths)
        cores = args.cores or len(os.sched_getaffinity(0))
        pillow = statistics.median(wall for wall, _ in pillow_times)
        count = len(paths)
        print(f"\n{count} JPEGs, {megabytes:.0f} MB, {cores} cores, scan workers: "
              f"{args.workers or 'one per core'}, medians of {args.repeats} runs, "
              f"load average {os.getloadavg()[0]:.1f} at the end")
        print(f"CPU per image in one process: Pillow decode {pillow_cpu:.1f} ms, "
              f"loradeck checks {ours_cpu:.1f} ms (strict decode, damage test, pixel hash, pHash, sharpness)\n")
        print(f"{'from process start to exit':48}{'seconds':>9}{'images/s':>10}{'Pillow/this':>13}{'CPU s':>8}")
        rows = [("Pillow", "baseline: Pillow decode, 1 process, no checks", pillow_times),
                ("cold", f"loradeck scan, cold (no cache), {cores} cores", cold_times),
                ("warm", f"loradeck scan, warm (cache), {cores} cores", warm_times),
                ("unchecked", "scan, cold, without the pixel-damage checks", unchecked_times)]
        if before_times:
            rows.append(("before", f"--before: scan, cold, {cores} cores", before_times))
        for _name, label, runs in rows:
            seconds, cpu = statistics.median(wall for wall, _ in runs), statistics.median(cpu for _, cpu in runs)
            print(f"{label:48}{seconds:>9.2f}{count / seconds:>10.0f}{pillow / seconds:>12.2f}x{cpu:>8.2f}")
        print("\nruns (wall s): " + " | ".join(
            f"{name}: " + " ".join(f"{wall:.2f}" for wall, _ in runs) for name, _label, runs in rows))
        cold, unchecked = (statistics.median(wall for wall, _ in runs) for runs in (cold_times, unchecked_times))
        cold_cpu, unchecked_cpu = (statistics.median(cpu for _, cpu in runs) for runs in (cold_times, unchecked_times))
        print(f"\nthe silent-damage pixel checks in a cold scan: {cold / unchecked - 1:+.0%} wall, "
              f"{cold_cpu / unchecked_cpu - 1:+.0%} CPU (scan with them / without, medians)")
        report_pixel_check_cost(paths)
    finally:
        if temporary and not args.keep:
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary:
            print(f"\nkept {folder}")


if __name__ == "__main__":  # worker processes import this file; they must not run it
    main()
