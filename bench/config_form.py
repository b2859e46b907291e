"""Config screen speed as the user feels it: `3` to the first painted frame, and a keystroke
in a field to the frame that shows it.

    python bench/config_form.py [--runs 3] [--keys 60] [--profile]

Headless (Textual's pilot, 120x40), keys pressed as a user presses them (`pilot.press`, the
app's own key handling), and the time is taken when Textual hands a frame of the screen to
its driver (`App._display`): what the terminal would draw.

1. Open: the app runs on the Runs screen for 2 s (as a user looks at the first screen);
   `3` is pressed; until the config screen's first frame. Also: the widgets it mounted, Textual's `Stylesheet.apply` calls on the way, and
   until every setting is mounted (the form mounts all of them before its first frame).
   Baseline, same run: `3` to the first frame of a screen of one Static.
2. Keystroke: `enter` on Max steps, then digits typed one at a time; each from the press
   to the frame showing it (re-parse, re-validate, messages, status, plan timer re-armed).
   Baseline, same run: the same keys into a lone Input of a minimal app.
Medians over --runs opens and --keys keystrokes; the ratio to each baseline is printed.
Process start to the drawn frame, in a real terminal, is bench/startup.py's.
Not a test: numbers to read, not assertions.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from textual.app import App  # noqa: E402
from textual.css.stylesheet import Stylesheet  # noqa: E402
from textual.screen import Screen  # noqa: E402
from textual.widgets import Input, Static  # noqa: E402

from bench.startup import make_workspace  # noqa: E402
from bench.tmux_frames import load_line  # noqa: E402
from tui.app import make_app  # noqa: E402

SIZE = (120, 40)
SETTLE_S = 2.0  # the app has been open this long (a user looks at the first screen) before `3`


class FrameClock:
    """Records when each frame of a screen class is handed to the driver, in wall time and
    in this thread's CPU time (the app's event loop runs here: on a machine shared with
    other work the CPU time is the steadier number, the wall time what the user waits)."""

    def __init__(self, app: App):
        self.frames: list[tuple[float, float, str]] = []
        self._drawn = asyncio.Event()
        display = app._display

        def timed(screen, renderable):
            self.frames.append((time.perf_counter(), time.thread_time(), type(screen).__name__))
            self._drawn.set()
            return display(screen, renderable)

        app._display = timed

    async def next_frame(self, screen_name: str, after: tuple[float, float],
                         timeout: float = 60.0) -> tuple[float, float]:
        """(wall, cpu) seconds from `after` (a `now()`) to the next frame of that screen."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            for wall, cpu, name in self.frames:
                if name == screen_name and wall > after[0]:
                    return wall - after[0], cpu - after[1]
            self._drawn.clear()
            try:
                await asyncio.wait_for(self._drawn.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass
        raise TimeoutError(f"no frame of {screen_name}")


def now() -> tuple[float, float]:
    return time.perf_counter(), time.thread_time()


class Counted:
    """Counts Textual's Stylesheet.apply calls."""

    def __enter__(self):
        self.calls = 0
        self._apply = Stylesheet.apply
        counter = self

        def apply(stylesheet, node, *args, **kwargs):
            counter.calls += 1
            return counter._apply(stylesheet, node, *args, **kwargs)

        Stylesheet.apply = apply
        return self

    def __exit__(self, *exc):
        Stylesheet.apply = self._apply


class OneStatic(Screen):
    def compose(self):
        yield Static("a screen of one line")


class Minimal(App):
    """A baseline app: `3` pushes a screen of one Static."""

    BINDINGS = [("3", "open", "Open")]

    def compose(self):
        yield Static("minimal")

    def action_open(self):
        self.push_screen(OneStatic())


class MinimalInput(App):
    """A baseline app: one Input takes the keys."""

    def compose(self):
        yield Input("20", id="field")


async def open_config(workspace: Path, profile: bool) -> dict:
    app = make_app(workspace, start_screen="runs")
    clock = FrameClock(app)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(SETTLE_S)
        profiler = cProfile.Profile() if profile else None
        with Counted() as counted:
            if profiler:
                profiler.enable()
            pressed = now()
            await pilot.press("3")
            first = await clock.next_frame("ConfigScreen", pressed)
            if profiler:
                profiler.disable()
            applied = counted.calls
        screen = app.screen
        result = {"first_frame": first, "widgets": len(screen.query("*")), "settings": len(screen.form.rows),
                  "mounted": sum(1 for line in screen.form.rows.values() if line.is_mounted), "applies": applied}
        if profiler:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    return result


async def open_baseline() -> tuple[float, float]:
    app = Minimal()
    clock = FrameClock(app)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(SETTLE_S)
        pressed = now()
        await pilot.press("3")
        return await clock.next_frame("OneStatic", pressed)


async def keystrokes(pilot, screen_name: str, keys: int) -> list[tuple[float, float]]:
    clock = FrameClock(pilot.app)
    times = []
    for index in range(keys):
        pressed = now()
        await pilot.press(str(index % 10))
        times.append(await clock.next_frame(screen_name, pressed))
        await asyncio.sleep(0.01)
    return times


async def config_keystrokes(workspace: Path, keys: int) -> list[tuple[float, float]]:
    app = make_app(workspace, start_screen="config")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.5)
        await pilot.press("slash", *"max steps", "enter", "end", "ctrl+u")
        await pilot.pause(0.5)
        if "max_steps" not in str(app.focused.id):
            raise SystemExit(f"the jump did not reach Max steps: {app.focused}")
        return await keystrokes(pilot, "ConfigScreen", keys)


async def baseline_keystrokes(keys: int) -> list[tuple[float, float]]:
    app = MinimalInput()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.3)
        await pilot.press("end")
        return await keystrokes(pilot, "Screen", keys)


def line(label: str, values: list[tuple[float, float]], baseline: list[tuple[float, float]] | None = None) -> str:
    """Median wall and CPU milliseconds, the runs, and the ratios to the baseline."""
    wall = statistics.median(value[0] for value in values)
    cpu = statistics.median(value[1] for value in values)
    text = f"{label:48s} {wall * 1000:7.1f} ms wall, {cpu * 1000:7.1f} ms CPU"
    if baseline is not None:
        base_wall = statistics.median(value[0] for value in baseline)
        base_cpu = statistics.median(value[1] for value in baseline)
        text += f"  ({wall / base_wall:.1f}× / {cpu / max(base_cpu, 1e-4):.1f}× baseline)"
    if len(values) <= 5:
        text += "  runs: " + ", ".join(f"{value[0] * 1000:.0f}" for value in values) + " ms"
    return text


async def main(runs: int, keys: int, profile: bool) -> None:
    print(load_line())
    root = Path(tempfile.mkdtemp(prefix="loradeck-config-bench-"))
    try:
        make_workspace(root, 36)
        opened, base_open = [], []
        for _ in range(runs):
            base_open.append(await open_baseline())
            opened.append(await open_config(root, profile=False))
        last = opened[-1]
        print(line("`3` → first frame, one-Static screen (baseline)", base_open))
        print(line("`3` → config screen's first frame", [result["first_frame"] for result in opened], base_open))
        print(f"   {last['widgets']} widgets, {last['settings']} settings, {last['mounted']} of them mounted by then, "
              f"Stylesheet.apply called {last['applies']:,} times")
        base_keys = await baseline_keystrokes(keys)
        config_keys = await config_keystrokes(root, keys)
        print(line("keystroke → frame, a lone Input (baseline)", base_keys))
        print(line("keystroke in Max steps → frame", config_keys, base_keys)
              + f", max {max(value[0] for value in config_keys) * 1000:.1f} ms over {len(config_keys)} keys")
        if profile:
            await open_config(root, profile=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(load_line())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keys", type=int, default=60)
    parser.add_argument("--profile", action="store_true")
    options = parser.parse_args()
    asyncio.run(main(options.runs, options.keys, options.profile))
