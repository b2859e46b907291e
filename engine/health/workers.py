"""Running the per-image checks on every core.

    inspect_files(paths, on_result, workers=None)   # on_result(path, ImageFacts) as each finishes

A process pool sized to the cores this process may run on (`available_cores`: the CPU
affinity, so `taskset` and container limits count), fed a few files per task. Workers
read and decode each file themselves: only paths go out and small `ImageFacts` come
back. `loradeck scan` (one thread) forks its workers, which start at once with the
checks imported; the TUI (threads) uses a forkserver. A decoder that crashes a worker
costs one file, reported as corrupt, not the scan.
"""
from __future__ import annotations

import importlib
import multiprocessing
import os
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable

from engine.health.image_checks import MAX_PIXELS, ImageFacts, inspect_image


def available_cores() -> int:
    """The cores this process may use (its CPU affinity), not all the machine has."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def inspect_batch(paths: list[str], max_pixels: int) -> list[ImageFacts]:
    """Worker-process entry point: one task inspects a few files to amortise the round trip."""
    return [inspect_image(path, max_pixels) for path in paths]


def _pool_context():
    methods = multiprocessing.get_all_start_methods()
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        # A process with one thread (`loradeck scan`) forks safely on Linux (macOS's
        # system libraries do not survive a fork), and a forked worker starts at once
        # with everything already imported. imagehash's phash imports scipy.fftpack on
        # first use: once here, not once per worker.
        importlib.import_module("scipy.fftpack")
        return multiprocessing.get_context("fork")
    # Never fork a process that runs threads (the TUI does): a forkserver that has
    # imported the checks once hands out workers in milliseconds.
    if "forkserver" in methods:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["engine.health.image_checks", "scipy.fftpack"])
    else:
        context = multiprocessing.get_context("spawn")
    _start_helper_processes(context)
    return context


def _start_helper_processes(context) -> None:
    """Start multiprocessing's resource tracker (and forkserver) with a usable stderr.

    Inside the TUI, Textual has replaced sys.stderr with an object whose fileno() is
    -1; the resource tracker hands that number to its child, and starting it fails.
    What the helpers could print would only garble the screen, so they get /dev/null.
    """
    from multiprocessing import resource_tracker

    try:
        usable = sys.stderr.fileno() >= 0
    except Exception:  # no fileno at all: multiprocessing copes with that itself
        usable = True
    if usable:
        return
    saved = sys.stderr
    with open(os.devnull, "w") as quiet:
        sys.stderr = quiet
        try:
            resource_tracker.ensure_running()
            if context.get_start_method() == "forkserver":
                from multiprocessing import forkserver

                forkserver.ensure_running()
        finally:
            sys.stderr = saved


def inspect_files(
    paths: list[str],
    on_result: Callable[[str, ImageFacts], None],
    *,
    max_pixels: int = MAX_PIXELS,
    workers: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Inspect every path, calling `on_result` as results arrive (in any order).

    Returns False when `should_stop` asked to stop early. Small batches run in this
    process: starting workers costs more than decoding a handful of files.
    """
    workers = workers or available_cores()
    if workers <= 1 or len(paths) < 4 * workers:
        for path in paths:
            if should_stop():
                return False
            on_result(path, inspect_image(path, max_pixels))
        return True
    remaining = list(paths)
    while remaining:
        done = _inspect_in_pool(remaining, on_result, max_pixels, workers, should_stop)
        if done is None:
            return False
        remaining = [path for path in remaining if path not in done]
        if remaining:
            # A decoder crashed a worker. The culprit is among the first files not done
            # (tasks are handed out in order, at most one queued beyond one per worker):
            # those go one at a time through a single worker, so the file that crashes
            # it again is known and reported, not retried. The rest go back to the pool.
            window = remaining[: (workers + 1) * _chunk_size(len(remaining), workers)]
            _isolate_crash(window, on_result, max_pixels, done)
            remaining = [path for path in remaining if path not in done]
    return True


def _chunk_size(count: int, workers: int) -> int:
    # Small tasks: a cancelled scan waits only for the few files already handed out.
    return max(1, min(8, count // (workers * 8)))


def _chunks(paths: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(paths), size):
        yield paths[start:start + size]


def _inspect_in_pool(paths, on_result, max_pixels, workers, should_stop) -> set[str] | None:
    """Returns the paths done (all unless a worker died), or None when stopped."""
    done: set[str] = set()
    chunk = _chunk_size(len(paths), workers)
    pool = ProcessPoolExecutor(workers, mp_context=_pool_context())
    try:
        futures = {pool.submit(inspect_batch, part, max_pixels): part for part in _chunks(paths, chunk)}
        for future in as_completed(futures):
            if should_stop():
                return None
            try:
                results = future.result()
            except BrokenProcessPool:
                return done
            for path, facts in zip(futures[future], results):
                on_result(path, facts)
                done.add(path)
        return done
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _isolate_crash(paths, on_result, max_pixels, done: set[str]) -> None:
    pool = ProcessPoolExecutor(1, mp_context=_pool_context())
    try:
        try:
            pool.submit(os.getpid).result()
        except BrokenProcessPool:
            # Workers cannot start at all (e.g. a script without a __main__ guard): that
            # says nothing about the files, so decode them here instead.
            for path in paths:
                on_result(path, inspect_image(path, max_pixels))
                done.add(path)
            return
        for path in paths:
            try:
                facts = pool.submit(inspect_image, path, max_pixels).result()
            except BrokenProcessPool:
                facts = ImageFacts(error_code="corrupt", error="the image decoder crashed on this file")
                on_result(path, facts)
                done.add(path)
                return  # this pool is dead; the caller starts a fresh one for the rest
            on_result(path, facts)
            done.add(path)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
