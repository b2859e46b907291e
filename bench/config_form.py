"""Config screen speed: time to mount the 70-setting form, and the cost of one keystroke.

    /work/venv/bin/python bench/config_form.py

A keystroke re-parses one value, re-validates the whole config, updates the inline
messages, the help panel and the status line, and re-arms the plan timer (planning
itself runs later, in a thread). Target: well under 16 ms per keystroke.
"""
from __future__ import annotations

import asyncio
import cProfile
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config.schema import save_config  # noqa: E402
from engine.config.presets import load_preset  # noqa: E402
from tests.datasets import write_image  # noqa: E402
from tui.app import make_app  # noqa: E402
from tui.widgets.config.form import ConfigForm  # noqa: E402


async def main(profile: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix="loradeck-bench-"))
    try:
        for index in range(20):
            write_image(root / "img" / "4_thing" / f"{index}.png", (64 + 8 * index, 64))
        save_config(load_preset("sd15-general"), root / "loradeck.toml")
        app = make_app(root, start_screen="config")
        start = time.perf_counter()
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            mounted = time.perf_counter() - start
            screen = app.screen
            print(f"app start + config screen mounted: {mounted * 1000:.0f} ms "
                  f"({len(screen.query('*'))} widgets, {len(screen.form.rows)} settings)")
            times = []
            profiler = cProfile.Profile() if profile else None
            for index in range(200):
                message = ConfigForm.Edited("network.rank", str(8 + index % 50))
                began = time.perf_counter()
                if profiler:
                    profiler.enable()
                screen.on_config_form_edited(message)
                if profiler:
                    profiler.disable()
                times.append(time.perf_counter() - began)
            print(f"keystroke handling: median {statistics.median(times) * 1000:.2f} ms, "
                  f"max {max(times) * 1000:.2f} ms over {len(times)} edits")
            if profiler:
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(15)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main("--profile" in sys.argv))
