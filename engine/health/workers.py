"""Running the per-image checks on every core.

    inspect_files(paths, on_result, workers=None)   # on_result(path, ImageFacts) as each finishes
    start_workers_early()                           # in a threaded process: the forkserver now

A process pool sized to the cores this process may run on (`available_cores`: the CPU
affinity, so `taskset` and container limits count), fed a few files per task (one each
to begin with, so the first results come after one decode). `paths` may be a generator:
the pool starts with its first paths while the caller is still finding the rest. Workers
read and decode each file themselves: only paths go out and small `ImageFacts` come
back. `loradeck scan` (one thread) forks its workers, which start at once with the
checks imported; the TUI (threads) uses a forkserver, which imports the checks once in
its own process (`start_workers_early` starts it before this process has imported the
scan). A decoder that crashes a worker costs one file, reported as corrupt, not the scan.
This module imports the checks (numpy, the decoders) only where it runs them.
"""
from __future__ import annotations

import importlib
import itertools
import multiprocessing
import os
import queue
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from engine.health.report import MAX_PIXELS

if TYPE_CHECKING:
    from engine.health.image_checks import ImageFacts

CHECKS_MODULE = "engine.health.image_checks"


def available_cores() -> int:
    """The cores this process may use (its CPU affinity), not all the machine has."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def inspect_batch(paths: list[str], max_pixels: int) -> list[ImageFacts]:
    """Worker-process entry point: one task inspects a few files to amortise the round trip."""
    from engine.health.image_checks import inspect_image

    return [inspect_image(path, max_pixels) for path in paths]


def start_workers_early() -> None:
    """In a process that runs threads (the TUI), start the decoding workers' forkserver
    now: it imports the checks in its own process, on another core, while this one goes
    on (imports the scan, lists the files), so the first decode does not wait for that."""
    if threading.active_count() > 1 and "forkserver" in multiprocessing.get_all_start_methods():
        from multiprocessing import forkserver

        _pool_context()
        forkserver.ensure_running()


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
        context.set_forkserver_preload([CHECKS_MODULE, "scipy.fftpack"])
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
    paths: Iterable[str],
    on_result: Callable[[str, ImageFacts], None],
    *,
    max_pixels: int = MAX_PIXELS,
    workers: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    expected: int | None = None,
) -> bool:
    """Inspect every path, calling `on_result` as results arrive (in any order).

    Returns False when `should_stop` asked to stop early. Small batches run in this
    process: starting workers costs more than decoding a handful of files. `expected`
    (how many paths there may be, for a generator) sizes the tasks.
    """
    workers = workers or available_cores()
    pending = iter(paths)
    first = list(itertools.islice(pending, 4 * workers))
    if workers <= 1 or len(first) < 4 * workers:
        from engine.health.image_checks import inspect_image

        for path in itertools.chain(first, pending):
            if should_stop():
                return False
            on_result(path, inspect_image(path, max_pixels))
        return True
    expected = max(expected or 0, len(first))
    remaining: Iterator[str] = itertools.chain(first, pending)
    while True:
        submitted: list[str] = []
        done = _inspect_in_pool(remaining, submitted, expected, on_result, max_pixels, workers, should_stop)
        if done is None:
            return False
        # what a crashed pool left: the paths handed out but not done, then those it never got
        left = [path for path in submitted if path not in done] + list(remaining)
        if not left:
            return True
        # A decoder crashed a worker. The culprit is among the first files not done
        # (tasks are handed out in order, at most one queued beyond one per worker):
        # those go one at a time through a single worker, so the file that crashes
        # it again is known and reported, not retried. The rest go back to the pool.
        expected = len(left)
        window = left[: (workers + 1) * _chunk_size(expected, workers)]
        _isolate_crash(window, on_result, max_pixels, done)
        remaining = iter([path for path in left if path not in done])


def _chunk_size(count: int, workers: int) -> int:
    # Small tasks: a cancelled scan waits only for the few files already handed out.
    return max(1, min(8, count // (workers * 8)))


def _chunks(paths: Iterator[str], size: int, singles: int) -> Iterator[list[str]]:
    """`singles` tasks of one path (each worker's first result comes after one decode),
    then tasks of `size`."""
    for path in itertools.islice(paths, singles):
        yield [path]
    while part := list(itertools.islice(paths, size)):
        yield part


def _inspect_in_pool(paths, submitted, expected, on_result, max_pixels, workers, should_stop) -> set[str] | None:
    """Returns the paths done (all of `submitted` unless a worker died), or None when
    stopped. `submitted` gets every path handed to the pool, in order. Results are
    handled as they come, also while paths are still being handed out."""
    done: set[str] = set()
    finished: queue.SimpleQueue = queue.SimpleQueue()  # futures, as the pool completes them
    pool = ProcessPoolExecutor(workers, mp_context=_pool_context())

    handled = 0

    def handle(future) -> bool:
        """False when the pool broke (a worker died)."""
        nonlocal handled
        handled += 1
        try:
            results = future.result()
        except BrokenProcessPool:
            return False
        for path, facts in zip(parts[future], results):
            on_result(path, facts)
            done.add(path)
        return True

    try:
        parts = {}
        try:
            for part in _chunks(paths, _chunk_size(expected, workers), workers):
                submitted.extend(part)
                future = pool.submit(inspect_batch, part, max_pixels)
                parts[future] = part
                future.add_done_callback(finished.put)
                while not finished.empty():
                    if should_stop():
                        return None
                    if not handle(finished.get()):
                        return done
        except BrokenProcessPool:
            pass  # a worker died while paths were handed out: what it left is the caller's
        while handled < len(parts):
            if should_stop():
                return None
            if not handle(finished.get()):
                return done
        return done
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _isolate_crash(paths, on_result, max_pixels, done: set[str]) -> None:
    from engine.health.image_checks import ImageFacts, inspect_image

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
