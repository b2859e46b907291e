"""Health-scan speed: our scan (cold and warm cache) against a single-process Pillow decode.

    /work/venv/bin/python bench/scan_speed.py [--count 2000] [--size 1024x768] [--dir FOLDER]
                                              [--workers N] [--keep] [--pixel-checks-only]

1. Writes COUNT photo-like JPEGs of SIZE (smooth colour fields, edges and mild noise,
   about 100 KB each at 1024x768) into a temporary folder, or uses --dir as it is.
2. Times a plain single-process Pillow full decode of every file (`open` + `load`):
   what a one-thread checker that only asks "does it decode?" costs.
3. Times `engine.health.scan.scan` with no cache (strict libjpeg decode, pixel hash,
   perceptual hash, sharpness, over every core), then again with the cache it wrote.
4. Times the per-image checks in one process with the silent-damage pixel checks
   (engine.health.pixel_damage) on and off, alternating runs over the same 100 files, and
   prints both and the ratio (--pixel-checks-only: just this, on COUNT generated files).
Prints a table of seconds and images per second. Not a test: numbers to read.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.health_corpus import photo  # noqa: E402  (the same photos the damage bench and tests use)



def _write_some(args: tuple[Path, range, tuple[int, int]]) -> None:
    folder, seeds, size = args
    for seed in seeds:
        path = folder / f"{seed:06d}.jpg"
        photo(seed, size).save(path, quality=90)
        path.with_suffix(".txt").write_text("a photo", encoding="utf-8")


def generate(folder: Path, count: int, size: tuple[int, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    workers = os.cpu_count() or 1
    step = max(1, count // (workers * 4))
    parts = [(folder, range(start, min(start + step, count)), size) for start in range(0, count, step)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_some, parts))


def pillow_decode(paths: list[Path]) -> float:
    from PIL import Image

    started = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            image.load()
    return time.perf_counter() - started


def cpu_per_image(paths: list[Path]) -> tuple[float, float]:
    """CPU milliseconds per image in this process: Pillow's decode, and all our checks.

    On a busy machine wall time lies; CPU time says what each image costs, so the
    scan's rate on C free cores is about C x 1000 / (our milliseconds)."""
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
    them (damaged_row answering "whole" at once), alternating runs over the same files so
    that a busy machine slows both alike; the lowest of `rounds` runs of each."""
    from engine.health import image_checks

    sample = paths[:100]
    image_checks.inspect_image(sample[0])
    checks = image_checks.damaged_row
    with_checks, without = [], []
    try:
        for _ in range(rounds):
            for switched_on, times in ((True, with_checks), (False, without)):
                image_checks.damaged_row = checks if switched_on else (lambda *args, **kwargs: -1)
                started = time.process_time()
                for path in sample:
                    image_checks.inspect_image(path)
                times.append((time.process_time() - started) * 1000 / len(sample))
    finally:
        image_checks.damaged_row = checks
    return min(with_checks), min(without)


def timed_scan(target, workers: int | None) -> tuple[float, int]:
    from engine.health.scan import scan

    started = time.perf_counter()
    report = scan(target, workers=workers)
    return time.perf_counter() - started, len(report.findings)


def report_pixel_check_cost(paths: list[Path]) -> None:
    with_checks, without = pixel_check_cost(paths)
    print(f"\nCPU per image in one process (best of 9 alternating runs over {min(len(paths), 100)} files): "
          f"{with_checks:.2f} ms with the silent-damage pixel checks, {without:.2f} ms without "
          f"({with_checks / without - 1:+.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", default="1024x768", help="WIDTHxHEIGHT of generated images")
    parser.add_argument("--dir", type=Path, help="scan this folder instead of generating one")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    parser.add_argument("--keep", action="store_true", help="keep the generated folder")
    parser.add_argument("--pixel-checks-only", action="store_true",
                        help="only compare the per-image cost with and without the silent-damage pixel checks")
    args = parser.parse_args()

    from engine.health.scan import target_for
    from engine.health.image_checks import CANDIDATE_EXTENSIONS

    temporary = None
    if args.dir:
        folder = args.dir.resolve()
    else:
        temporary = Path(tempfile.mkdtemp(prefix="loradeck-scan-bench-"))
        folder = temporary / "pictures"
        width, height = (int(side) for side in args.size.lower().split("x"))
        started = time.perf_counter()
        generate(folder, args.count, (width, height))
        print(f"generated {args.count} JPEGs of {width}x{height} in {time.perf_counter() - started:.1f} s")
    try:
        if args.pixel_checks_only:
            paths = sorted(folder.glob("*.jpg"))
            report_pixel_check_cost(paths)
            return
        target = target_for(folder)
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in CANDIDATE_EXTENSIONS
                       and "_quarantine" not in p.parts)
        megabytes = sum(p.stat().st_size for p in paths) / 1e6
        target.cache_path.unlink(missing_ok=True)
        pillow = pillow_decode(paths)
        cold, findings = timed_scan(target, args.workers)
        warm, _ = timed_scan(target, args.workers)
        pillow_cpu, ours_cpu = cpu_per_image(paths)
        count = len(paths)
        print(f"\n{count} images, {megabytes:.0f} MB, {os.cpu_count()} cores, "
              f"{args.workers or os.cpu_count()} scan workers, {findings} findings, "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"CPU per image: Pillow decode {pillow_cpu:.1f} ms, loradeck checks {ours_cpu:.1f} ms "
              f"(strict decode, pixel hash, pHash, sharpness)\n")
        print(f"{'':38}{'seconds':>10}{'images/s':>12}{'vs Pillow':>11}")
        for label, seconds in (("Pillow full decode, one process", pillow),
                               ("loradeck scan, cold (no cache)", cold),
                               ("loradeck scan, warm (cache)", warm)):
            print(f"{label:38}{seconds:>10.2f}{count / seconds:>12.0f}{pillow / seconds:>10.1f}x")
        report_pixel_check_cost(paths)
    finally:
        if temporary and not args.keep:
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary:
            print(f"\nkept {folder}")


if __name__ == "__main__":  # worker processes import this file; they must not run it
    main()
