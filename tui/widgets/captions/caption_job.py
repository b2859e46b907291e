"""The auto-caption job bar: runs `loradeck caption ... --progress-json` (as `python -m tui.cli`) as a
subprocess (the TUI never imports torch), reads its JSON progress lines in a thread
worker and shows a progress bar. Posts `Progress` (merged when they come fast) and
`Finished`; the screen decides what to reload. A failed job's reason stays in the bar (in
the error colour) until the next job starts: a toast alone is gone before it is read."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.text import Text
from tui.workers import work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import ProgressBar, Static

from engine.run.events import CAPTION_DONE, CAPTION_PROGRESS, CAPTION_START, ERROR, parse_line


def caption_command(root: Path, choice: dict, caption_extension: str) -> list[str]:
    """The engine command for the settings of the auto-caption dialog."""
    import shlex

    command = [sys.executable, "-m", "tui.cli", "caption", str(root), "--model", choice["model"],
               "--mode", choice["mode"], "--caption-extension", caption_extension, "--progress-json"]
    if choice.get("kind") and choice["kind"] != "auto":
        command += ["--kind", choice["kind"]]
    if choice.get("prefix"):
        command += ["--prefix", choice["prefix"]]
    if choice.get("suffix"):
        command += ["--suffix", choice["suffix"]]
    return command + shlex.split(choice.get("extra") or "")  # ValueError on an unclosed quote


class CaptionJobBar(Horizontal):
    DEFAULT_CSS = """
    CaptionJobBar {
        display: none;
        height: 1;
        padding: 0 1;
        background: $panel;
    }
    CaptionJobBar.-running, CaptionJobBar.-failed {
        display: block;
    }
    CaptionJobBar.-failed > ProgressBar {
        display: none;
    }
    CaptionJobBar.-failed > Static {
        color: $error;
        padding-left: 0;
    }
    CaptionJobBar > ProgressBar {
        width: auto;
    }
    CaptionJobBar > Static {
        width: 1fr;
        padding-left: 2;
        color: $text-muted;
    }
    """

    running: reactive[bool] = reactive(False)

    class Progress(Message):
        def __init__(self, done: int, total: int, path: str) -> None:
            super().__init__()
            self.done, self.total, self.path = done, total, path

        def can_replace(self, message: Message) -> bool:
            # A fast tagger emits hundreds of lines a second; only the newest matters.
            return isinstance(message, CaptionJobBar.Progress)

    class Finished(Message):
        def __init__(self, status: int, summary: str) -> None:
            super().__init__()
            self.status, self.summary = status, summary

    def __init__(self, *, id: str | None = None):
        super().__init__(id=id)
        self._process: subprocess.Popen | None = None

    def compose(self) -> ComposeResult:
        yield ProgressBar(show_eta=True)
        yield Static("")

    def watch_running(self, running: bool) -> None:
        self.set_class(running, "-running")

    def start(self, command: list[str]) -> None:
        self.remove_class("-failed")
        self.running = True
        self.query_one(ProgressBar).update(total=None, progress=0)
        self.query_one(Static).update("starting…")
        self._run(command)

    def stop(self) -> bool:
        """Ask the captioner to end (it stops between batches); False when none runs."""
        process = self._process
        if process is None or process.poll() is not None:
            return False
        process.terminate()
        return True

    def on_unmount(self) -> None:
        self.stop()

    @work(thread=True, exclusive=True, group="caption-job")
    def _run(self, command: list[str]) -> None:
        try:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, text=True, bufsize=1)
        except OSError as error:
            self.post_message(self.Finished(1, f"cannot start the captioner: {error}"))
            return
        self._process = process
        last_line, summary = "", ""
        for line in process.stdout:
            line = line.strip()
            event = parse_line(line) if line.startswith("{") else None
            if event is None:
                last_line = line or last_line  # a library's log line; the last explains a failure
                continue
            kind = event["type"]
            if kind == CAPTION_PROGRESS:
                self.post_message(self.Progress(event["done"], event["total"], event.get("path", "")))
            elif kind == CAPTION_START:
                self.post_message(self.Progress(0, 0, f"{event.get('model', '')} loaded"))
            elif kind == CAPTION_DONE:
                summary = (f"auto-caption: {event['written']:,} written, {event['skipped']:,} skipped, "
                           f"{event['failed']:,} failed")
            elif kind == ERROR:
                last_line = event.get("message", "")
        status = process.wait()
        self._process = None
        if status != 0 and not summary:
            summary = f"auto-caption failed: {last_line or f'exit status {status}'}"
        self.post_message(self.Finished(status, summary))

    def on_caption_job_bar_progress(self, message: Progress) -> None:
        # total 0: the model is loading and the count is not known yet
        self.query_one(ProgressBar).update(total=message.total or None, progress=message.done)
        self.query_one(Static).update(Text(f"{message.done:,}/{message.total:,} {message.path}"))

    def on_caption_job_bar_finished(self, message: Finished) -> None:
        self.running = False
        if message.status != 0:
            self.query_one(Static).update(Text(f"{message.summary} · c tries again"))
            self.add_class("-failed")
