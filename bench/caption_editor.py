"""Caption editor speed on a big dataset: open time and next-image time.

    python bench/caption_editor.py [--count 10000] [--dir FOLDER] [--steps 200] [--runs 3]

1. Writes a workspace with COUNT photo-like 1024x768 JPEGs (tests.health_corpus.photo)
   and tag captions (about 20 tags each from a vocabulary of 2,000) under img/10_bench/,
   or reuses --dir when it already has them (writing 10,000 takes minutes, once).
2. Engine: time to list the folder, to read every caption, to count the tags.
3. Open, as the user waits for it: `loradeck WS --screen captions` in a real terminal
   (tmux, 120x40; bench/tmux_frames.py), from process start (interpreter, imports, terminal
   probe) until the first image's name and caption are drawn, then until the tag counts
   are drawn (a worker reads every caption meanwhile). Baseline in the same pane,
   interleaved: a minimal Textual app to its first frame. Medians of --runs runs.
4. App, headless (pilot, 120x40), captions screen:
   - next image: our own work per `j` (cursor move, caption shown, tag list rebuilt,
     preview pointed at the next file, prefetch started), measured around the handlers,
     over STEPS presses; and the whole key-to-idle time through the pilot for context.
4. Decode of one 6000x4000 JPEG for the preview (worker thread, never the UI): the JPEG
   draft decode against a full decode.
Not a test: numbers to read, not assertions.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from concurrent.futures import ProcessPoolExecutor  # noqa: E402

from bench.tmux_frames import TmuxPane, load_line, minimal_app_seconds, python, row  # noqa: E402
from engine.config.schema import TrainConfig, save_config  # noqa: E402

PHOTO_SIZE = (1024, 768)


def _write_some(args: tuple[Path, range]) -> None:
    from tests.health_corpus import photo

    folder, numbers = args
    rng = random.Random(numbers.start)
    vocabulary = [f"tag {number}" for number in range(2000)]
    for number in numbers:
        path = folder / f"{number:05d}.jpg"
        if not path.exists():
            photo(number, PHOTO_SIZE).save(path, quality=90)
        tags = ["ohwx"] + rng.sample(vocabulary, 19)
        (folder / f"{number:05d}.txt").write_text(", ".join(tags) + "\n", encoding="utf-8")


def make_workspace(root: Path, count: int) -> Path:
    folder = root / "img" / "10_bench"
    if folder.is_dir() and sum(1 for _ in folder.glob("*.jpg")) >= count:
        return root
    folder.mkdir(parents=True, exist_ok=True)
    save_config(TrainConfig(), root / "loradeck.toml")
    step = max(1, count // ((os.cpu_count() or 1) * 8))
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_some, [(folder, range(start, min(start + step, count))) for start in range(0, count, step)]))
    return root


def bench_open(root: Path, runs: int) -> None:
    """Process start to the first caption drawn, and to the tag counts drawn, in tmux."""
    baseline, first, counted = [], [], []
    with TmuxPane(120, 40, name="loradeck-captions") as pane:
        for index in range(runs + 1):  # the first round warms the disk cache and .pyc files
            base = minimal_app_seconds(pane)
            (root / ".loradeck" / "captions.json").unlink(missing_ok=True)  # start at the first image
            pane.start([python(), "-m", "tui.cli", str(root), "--screen", "captions"])
            opened = pane.wait_until(lambda text: "00000.jpg" in text and "ohwx" in text)
            tags = pane.wait_until(lambda text: re.search(r"\d{3,} +ohwx", text) is not None)
            pane.keys("q")
            time.sleep(0.5)
            if index:
                baseline.append(base)
                first.append(opened)
                counted.append(tags)
    print(row("minimal Textual app, start to first frame (baseline)", baseline, baseline))
    print(row("loradeck WS --screen captions → first caption drawn", first, baseline))
    print(row("… → every caption read, tag counts drawn", counted, baseline))


def bench_engine(root: Path) -> None:
    from engine.dataset.caption_edits import CaptionSession
    from engine.dataset.caption_files import list_caption_files
    from engine.dataset.tags import tag_frequency

    started = time.perf_counter()
    files = list_caption_files(root / "img")
    listed = time.perf_counter() - started
    session = CaptionSession(root / "img")
    started = time.perf_counter()
    results = session.read_all()
    read = time.perf_counter() - started
    started = time.perf_counter()
    tag_frequency(text or "" for text, _stamp in results)
    counted = time.perf_counter() - started
    print(f"engine: list {len(files):,} images {listed * 1000:.0f} ms · read every caption "
          f"{read * 1000:.0f} ms · count tags {counted * 1000:.0f} ms")


async def bench_app(root: Path, steps: int) -> None:
    from tui.app import make_app
    from tui.screens.captions import CaptionsScreen

    # Start at the first image, not where the last run stopped.
    (root / ".loradeck" / "captions.json").unlink(missing_ok=True)
    app = make_app(root, start_screen="captions", image_protocol="halfcell")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = None
        while True:
            screen = app.screen if isinstance(app.screen, CaptionsScreen) else None
            if screen is not None and screen.session is not None and screen.files.rows and \
                    screen.query_one("#captions-frequency").option_count:
                break
            await asyncio.sleep(0.01)

        # Our own work per next image: the key's action plus the cursor-moved handler
        # (Textual finds handlers on the class, so the class is wrapped).
        spent: list[float] = []
        original_step = CaptionsScreen.action_step
        original_moved = CaptionsScreen.on_caption_file_list_cursor_moved
        pending = [0.0]

        def timed_step(self, step: int) -> None:
            begin = time.perf_counter()
            original_step(self, step)
            pending[0] = time.perf_counter() - begin

        def timed_moved(self, message) -> None:
            begin = time.perf_counter()
            original_moved(self, message)
            spent.append(pending[0] + time.perf_counter() - begin)

        CaptionsScreen.action_step = timed_step
        CaptionsScreen.on_caption_file_list_cursor_moved = timed_moved
        await pilot.pause(0.3)
        key_to_idle = []
        for _ in range(steps):
            begin = time.perf_counter()
            await pilot.press("j")
            key_to_idle.append(time.perf_counter() - begin)
        spent_ms = sorted(value * 1000 for value in spent)
        idle_ms = sorted(value * 1000 for value in key_to_idle)
        print(f"app: next image, our work: median {statistics.median(spent_ms):.1f} ms, "
              f"95th percentile {spent_ms[int(len(spent_ms) * 0.95) - 1]:.1f} ms, max {spent_ms[-1]:.1f} ms "
              f"({len(spent_ms)} presses)")
        print(f"app: next image, key press to idle through the pilot (Textual's render included): "
              f"median {statistics.median(idle_ms):.1f} ms")


def bench_decode(root: Path) -> None:
    from tui.widgets.shared.image_preview import decode_image

    photo = root / "big.jpg"
    if not photo.exists():
        Image.radial_gradient("L").resize((6000, 4000)).convert("RGB").save(photo, quality=90)
    full = time.perf_counter()
    with Image.open(photo) as image:
        image.load()
    full = time.perf_counter() - full
    draft = time.perf_counter()
    decode_image(photo, True, (800, 600))
    draft = time.perf_counter() - draft
    print(f"preview decode of a 6000x4000 JPEG: {draft * 1000:.0f} ms to fit 800x600 "
          f"(full-size decode alone: {full * 1000:.0f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, help="workspace folder to create or reuse")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="loradeck-caption-bench-"))
    started = time.perf_counter()
    make_workspace(root, args.count)
    print(f"workspace {root} ready in {time.perf_counter() - started:.1f} s")
    print(load_line())
    bench_engine(root)
    bench_open(root, args.runs)
    asyncio.run(bench_app(root, args.steps))
    bench_decode(root)


if __name__ == "__main__":
    main()
