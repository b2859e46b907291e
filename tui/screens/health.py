"""Dataset health: what would break or spoil training, and the keys to fix it.

A summary by code (enter filters the list to that code), the findings (filter by code
with c, by severity with s), and the selected image: for an EXIF-rotated one, as
stored beside as the trainer sees it. The scan runs engine.health.scan in a thread worker
(which spreads the decoding over every core and reads its cache), posting progress;
fixes and quarantine moves run in a worker too, then the folder is scanned again.

The screen is drawn before any scan code is imported. The first scan then fills it in
as it goes: the count of images as soon as their names are listed, and each image's own
findings (corrupt, rotated, uncaptioned...) as it is decoded, so a big dataset can be
browsed while it is scanned; the dataset-wide ones (duplicates, blur, folders) and the
sorted list come with the finished report. Everything about the scan, its import and the
config it reads included, happens in the worker thread, never in the UI's.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text
from tui.workers import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import DataTable, ProgressBar, Static
from textual.worker import Worker, WorkerState, get_current_worker

from engine.errors import LoradeckError
from engine.health.report import CHECKS, ERROR, INFO, SEVERITIES, WARNING, Finding, ScanReport, display
from engine.config.workspace import Workspace
from tui.screens.confirm import ConfirmScreen
from tui.widgets.shared.image_preview import ImagePreview
from tui.widgets.shared.key_footer import KeyFooter

if TYPE_CHECKING:
    from engine.health.scan import ScanTarget

SEVERITY_COLORS = {ERROR: "error", WARNING: "warning", INFO: "text-muted"}


class ScanStarted(Message):
    def __init__(self, root: Path, config_problem: str) -> None:
        super().__init__()
        self.root, self.config_problem = root, config_problem


class ScanProgress(Message):
    """Images done of all, and the images' own findings so far: `found[:found_count]`
    (a list the worker only appends to)."""

    def __init__(self, done: int, total: int, found: list[Finding], found_count: int) -> None:
        super().__init__()
        self.done, self.total = done, total
        self.found, self.found_count = found, found_count

    def can_replace(self, message: Message) -> bool:
        # A warm scan reports thousands of files at once; only the newest count matters.
        return isinstance(message, ScanProgress)


class ScanFinished(Message):
    def __init__(self, report: ScanReport | None, seconds: float, problem: str = "") -> None:
        super().__init__()
        self.report, self.seconds, self.problem = report, seconds, problem


class FixesDone(Message):
    def __init__(self, lines: list[str], severity: str = "information") -> None:
        super().__init__()
        self.lines, self.severity = lines, severity


FILTER_STATE = "health_filters"
FIRST_SCAN_DELAY_S = 0.1  # after the first frame has reached the terminal

FILTER_KEYS = Binding.Group("Filter", compact=True)
FIX_KEYS = Binding.Group("Fix", compact=True)
QUARANTINE_KEYS = Binding.Group("Quarantine", compact=True)

# The findings table: code and path as wide as they need up to a share of the width, the
# message takes the rest (it is also shown whole under the table).
CODE_WIDTH = 16
PATH_SHARE = 0.4
MIN_MESSAGE_WIDTH = 20


def finding_column_widths(width: int, longest_code: int, longest_path: int) -> tuple[int, int, int]:
    """(code, path, message) widths for a findings table `width` cells wide (each column
    also takes a cell of padding on both sides)."""
    room = max(0, width - 2 * 3 - 1)  # padding of three columns, one cell for the scrollbar's edge
    code = min(CODE_WIDTH, max(4, longest_code))
    path = max(8, min(longest_path, int((room - code) * PATH_SHARE)))
    return code, path, max(MIN_MESSAGE_WIDTH, room - code - path)


def shorten_path(path: str, width: int) -> str:
    """The end of a path (its file name matters most) in `width` cells."""
    return path if len(path) <= width else "…" + path[-(width - 1):]


class HealthScreen(Screen):
    CSS_PATH = "health.tcss"
    # one footer entry per group of keys so the footer fits 80 columns; `?` lists each key
    BINDINGS = [
        Binding("r", "rescan", "Rescan"),
        Binding("c", "cycle_code", "By code", group=FILTER_KEYS),
        Binding("s", "cycle_severity", "By severity", group=FILTER_KEYS),
        Binding("a", "clear_filters", "Show all", group=FILTER_KEYS),
        Binding("f", "fix", "Fix", group=FIX_KEYS),
        Binding("F", "fix_all", "Fix all", group=FIX_KEYS),
        Binding("x", "quarantine", "Quarantine", group=QUARANTINE_KEYS),
        Binding("X", "quarantine_all", "Quarantine all", group=QUARANTINE_KEYS),
        Binding("u", "undo", "Undo"),
    ]

    code_filter: reactive[str | None] = reactive(None)
    severity_filter: reactive[str | None] = reactive(None)

    def __init__(self, workspace: Workspace):
        super().__init__()
        self.workspace = workspace
        self.report: ScanReport | None = None
        self.scanning = False
        self.shown: list[Finding] = []  # the findings table's rows, in order
        self.found: list[Finding] = []  # until the first report: the images' own findings so far
        self._scanned_root: Path | None = None  # the image folder the scan under way reads
        remembered = workspace.load_state(FILTER_STATE)  # the filters of last time
        self.set_reactive(HealthScreen.code_filter, remembered.get("code"))
        self.set_reactive(HealthScreen.severity_filter, remembered.get("severity"))

    def compose(self) -> ComposeResult:
        with Horizontal(id="health-top"):
            yield Static("", id="health-status")
            yield ProgressBar(id="health-progress", show_eta=False)
        with Horizontal(id="health-body"):
            with Vertical(id="health-left"):
                yield DataTable(id="health-summary", cursor_type="row", zebra_stripes=True)
                yield Static("", id="health-filter")
                yield DataTable(id="health-findings", cursor_type="row", zebra_stripes=True)
                # the selected finding whole: the table's message column is cut to fit
                yield Static("", id="health-message")
            with Vertical(id="health-right"):
                yield Static("As stored (what tools that ignore EXIF see)", id="health-stored-title")
                yield ImagePreview(id="health-stored", apply_exif=False)
                yield Static("As the trainer sees it", id="health-preview-title")
                yield ImagePreview(id="health-preview")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#health-summary", DataTable).add_columns("Severity", "Code", "Count", "What")
        self._show_exif_pair(False)
        self.query_one("#health-findings").focus()
        # severity colours are baked into the table cells: repaint them in the new theme
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self._repaint_tables())
        # the scan starts once the screen is drawn: its first frame need not share the CPU
        # (nor wait for the decoders' import or the config), and already says what is coming
        self._set_status("Scanning …")
        self.call_after_refresh(self._start_first_scan)

    def _start_first_scan(self) -> None:
        self.set_timer(FIRST_SCAN_DELAY_S, self.action_rescan)

    def _repaint_tables(self) -> None:
        if self.report is not None:
            self._fill_summary()
            self._fill_findings()

    # ---- scanning

    def _target(self) -> ScanTarget:
        from engine.health.scan import target_for_workspace  # numpy and the decoders: not before the first frame

        return target_for_workspace(self.workspace)  # read each time: the config may have changed

    def action_rescan(self) -> None:
        self.scanning = True  # the progress bar shows with the first count (not pulsing before it)
        self._scan()

    @work(thread=True, exclusive=True, group="health-scan")
    def _scan(self) -> None:
        from engine.health.workers import start_workers_early

        # the decoding processes import the checks on another core while this thread
        # imports the scan (numpy, the decoders) and lists the files
        start_workers_early()
        from engine.health.scan import ScanCancelled, scan

        worker = get_current_worker()
        started = time.monotonic()
        target = self._target()
        if not target.root.is_dir():
            self.post_message(ScanFinished(None, 0.0, f"No image folder at {target.root}: create it, "
                                                      "or set dataset.image_dir in Config (3)"))
            return
        self.post_message(ScanStarted(target.root, target.config_problem))
        found: list[Finding] = []

        def progress(done: int, total: int) -> None:
            self.post_message(ScanProgress(done, total, found, len(found)))

        try:
            report = scan(target, progress=progress, should_stop=lambda: worker.is_cancelled,
                          on_file=lambda _path, findings: found.extend(findings))
        except ScanCancelled:
            return
        except LoradeckError as error:
            self.post_message(ScanFinished(None, 0.0, str(error)))
            return
        self.post_message(ScanFinished(report, time.monotonic() - started))

    def on_scan_started(self, message: ScanStarted) -> None:
        self._scanned_root = message.root
        if message.config_problem and not self.report:
            self.notify(message.config_problem, title="Config not used", severity="warning")
        self._set_status(f"Scanning {message.root} …")

    def on_scan_progress(self, message: ScanProgress) -> None:
        self.query_one("#health-progress", ProgressBar).update(total=max(message.total, 1), progress=message.done)
        self.query_one("#health-top").add_class("-scanning")
        self._set_status(f"Scanning {message.done}/{message.total} images …")
        if self.report is None and message.found_count > len(self.found):
            self._show_found(message.found[len(self.found):message.found_count])

    def _show_found(self, new: list[Finding]) -> None:
        """The first scan's findings so far: the summary counts them, the list gets the new
        ones at its end (in the order found; sorted when the report comes)."""
        self.found.extend(new)
        self._fill_summary()
        table = self.query_one("#health-findings", DataTable)
        if not table.columns:
            self._fill_findings()
            return
        _code_width, path_width, _message_width = self._column_widths
        for item in new:
            if self.code_filter in (None, item.code) and self.severity_filter in (None, item.severity):
                table.add_row(self._severity_text(item.code, item.severity),
                              shorten_path(display(item.path), path_width), display(item.message),
                              key=str(len(self.shown)))
                self.shown.append(item)
        self._show_filter_line()
        if len(self.shown) == len(new):  # the first rows: show the selected one
            self._show_selected()

    def on_scan_finished(self, message: ScanFinished) -> None:
        self.scanning = False
        self.query_one("#health-top").remove_class("-scanning")
        if message.report is None:
            self._set_status(message.problem)
            return
        self.report = message.report
        self.found = []
        counts = {severity: sum(1 for item in self.report.findings if item.severity == severity)
                  for severity in SEVERITIES}
        verdict = "no problems found" if not self.report.findings else (
            f"{counts[ERROR]} errors · {counts[WARNING]} warnings · {counts[INFO]} notes")
        self._set_status(f"{self.report.root} · {self.report.images} images · {verdict} · "
                         f"scanned in {message.seconds:.1f} s")
        if self.code_filter is not None and self.code_filter not in self.report.summary:
            self.code_filter = None
        self._fill_summary()
        self._fill_findings()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        # the app shows the failure and keeps it (tui/workers.py); the screen stops scanning
        if event.state == WorkerState.ERROR and event.worker.group in ("health-scan", "health-fix"):
            self.scanning = False
            self.query_one("#health-top").remove_class("-scanning")

    def _set_status(self, text: str) -> None:
        self.query_one("#health-status", Static).update(text)

    # ---- tables

    def _severity_text(self, text: str, severity: str) -> Text:
        color = self.app.theme_variables.get(SEVERITY_COLORS[severity], "")
        return Text(text, style=color)

    def _findings(self) -> list[Finding]:
        """The report's findings, or, while the first scan runs, those found so far."""
        return self.report.findings if self.report is not None else self.found

    def _summary(self) -> dict[str, int]:
        return (self.report or ScanReport(Path(), 0, self.found)).summary

    def _fill_summary(self) -> None:
        table = self.query_one("#health-summary", DataTable)
        table.clear()
        for code, count in self._summary().items():
            check = CHECKS[code]
            table.add_row(self._severity_text(check.severity, check.severity), code, str(count), check.title, key=code)

    def _fill_findings(self) -> None:
        table = self.query_one("#health-findings", DataTable)
        keep, keep_row = self._selected(), table.cursor_row
        findings = self._findings()
        order = {severity: index for index, severity in enumerate(SEVERITIES)}
        self.shown = sorted(
            (item for item in findings
             if self.code_filter in (None, item.code) and self.severity_filter in (None, item.severity)),
            key=lambda item: (order[item.severity], item.code, item.path),
        )
        self._fill_findings_table()
        # The cursor stays where the user was: on the same finding, or, when that one is
        # gone (fixed, quarantined), on the row that took its place.
        if keep in self.shown:
            table.move_cursor(row=self.shown.index(keep), scroll=True)
        elif self.shown and keep_row > 0:
            table.move_cursor(row=min(keep_row, len(self.shown) - 1), scroll=True)
        self._show_filter_line()
        self._show_selected()

    def _show_filter_line(self) -> None:
        code = self.code_filter or "every code"
        severity = self.severity_filter or "every severity"
        self.query_one("#health-filter", Static).update(
            f"{len(self.shown)} of {len(self._findings())} findings · {code} · {severity}   (c code · s severity · a all)")

    def _fill_findings_table(self) -> None:
        """The rows of `shown`, the columns sized to the table's width (severity is the
        code's colour; the summary names it)."""
        table = self.query_one("#health-findings", DataTable)
        row = table.cursor_row
        table.clear(columns=True)
        # while the first scan fills the list in, the code column is as wide as any code
        # (its rows come later) and the path takes its share
        scanning = self.report is None
        self._column_widths = code_width, path_width, message_width = finding_column_widths(
            table.size.width or 80,
            CODE_WIDTH if scanning else max((len(item.code) for item in self.shown), default=4),
            10_000 if scanning else max((len(display(item.path)) for item in self.shown), default=4))
        table.add_column("Code", width=code_width)
        table.add_column("Path", width=path_width)
        table.add_column("Message", width=message_width)
        self._table_width = table.size.width
        for index, item in enumerate(self.shown):
            table.add_row(self._severity_text(item.code, item.severity), shorten_path(display(item.path), path_width),
                          display(item.message), key=str(index))
        if self.shown and row > 0:
            table.move_cursor(row=min(row, len(self.shown) - 1))

    def on_resize(self) -> None:
        # the columns follow the width (a terminal resized, a pane split)
        if self.report is not None or self.found:
            self.call_after_refresh(self._refit_findings)

    def _refit_findings(self) -> None:
        table = self.query_one("#health-findings", DataTable)
        if table.size.width != getattr(self, "_table_width", None):
            self._fill_findings_table()

    def watch_code_filter(self) -> None:
        if self.is_mounted:
            self._fill_findings()
            self._remember_filters()

    def watch_severity_filter(self) -> None:
        if self.is_mounted:
            self._fill_findings()
            self._remember_filters()

    def _remember_filters(self) -> None:
        try:
            self.workspace.save_state(FILTER_STATE, {"code": self.code_filter, "severity": self.severity_filter})
        except OSError:
            pass  # a read-only workspace is still scanned; the filters are just not kept

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "health-summary":
            self.code_filter = str(event.row_key.value)
            self.query_one("#health-findings").focus()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "health-findings":
            self._show_selected()

    # ---- the selected finding

    def _selected(self) -> Finding | None:
        table = self.query_one("#health-findings", DataTable)
        if not self.shown or table.cursor_row < 0 or table.cursor_row >= len(self.shown):
            return None
        return self.shown[table.cursor_row]

    def _show_selected(self) -> None:
        item = self._selected()
        message = self.query_one("#health-message", Static)
        preview = self.query_one("#health-preview", ImagePreview)
        stored = self.query_one("#health-stored", ImagePreview)
        root = self.report.root if self.report is not None else self._scanned_root
        if item is None or root is None:
            message.update("")
            preview.marked_row = -1
            preview.path = stored.path = None
            self._show_exif_pair(False)
            return
        path = root / item.path
        is_image = path.is_file() and item.code != "orphan_caption"
        message.update(Text.assemble((f"{item.code}  ", "bold"), display(item.path), ("  (x quarantines, u undoes)", "dim")
                                     if item.code != "bad_folder_name" else "", "\n", display(item.message)))
        self._show_exif_pair(item.code == "exif_rotated")
        preview.marked_row = item.damaged_row
        preview.path = path if is_image else None
        stored.path = path if is_image and item.code == "exif_rotated" else None

    def _show_exif_pair(self, pair: bool) -> None:
        self.query_one("#health-stored").display = pair
        self.query_one("#health-stored-title").display = pair
        title = "As the trainer sees it" if pair else "Preview"
        self.query_one("#health-preview-title", Static).update(title)

    # ---- filters

    def action_cycle_code(self) -> None:
        codes = [None, *self._summary()]
        index = codes.index(self.code_filter) if self.code_filter in codes else 0
        self.code_filter = codes[(index + 1) % len(codes)]

    def action_cycle_severity(self) -> None:
        choices = [None, *SEVERITIES]
        self.severity_filter = choices[(choices.index(self.severity_filter) + 1) % len(choices)]

    def action_clear_filters(self) -> None:
        self.code_filter = None
        self.severity_filter = None

    # ---- fixes and the quarantine

    def _findings_of_selected_code(self) -> list[Finding]:
        item = self._selected()
        if item is None or self.report is None:
            return []
        return [other for other in self.report.findings if other.code == item.code]

    def action_fix(self) -> None:
        item = self._selected()
        if item is None:
            self.notify("No finding selected")
        elif item.code != "exif_rotated":
            self.notify(f"{item.code}: no automatic fix; x moves the file to the quarantine")
        else:
            self._apply("fix", [item])

    def action_fix_all(self) -> None:
        findings = [item for item in (self.report.findings if self.report else []) if item.code == "exif_rotated"]
        if not findings:
            self.notify("Only exif_rotated findings have an automatic fix, and there are none")
            return
        self._confirm(f"Bake the EXIF orientation into {len(findings)} images?\n"
                      "Originals are kept in _quarantine/; u undoes.", "fix", findings)

    def action_quarantine(self) -> None:
        item = self._selected()
        if item is None:
            self.notify("No finding selected")
        elif item.code == "bad_folder_name":
            self.notify(f"{item.path}: folders are not moved; rename it to <repeats>_{item.path}, or p (image "
                        "folders) builds a Kohya folder from it")
        else:
            caption = " (and its caption)" if item.code != "orphan_caption" else ""
            self._confirm(f"Move {item.path}{caption} to _quarantine/?\n{item.code}: {item.message}\n"
                          "u undoes.", "quarantine", [item])

    def action_quarantine_all(self) -> None:
        findings = self._findings_of_selected_code()
        if not findings:
            self.notify("No finding selected")
        elif findings[0].code == "bad_folder_name":
            self.notify("Folders are not moved; rename them to <repeats>_<name>")
        else:
            files = f"{len(findings)} files" if len(findings) > 1 else "the file"
            self._confirm(f"Move {files} with {findings[0].code} (and captions) to _quarantine/?\n"
                          "u undoes.", "quarantine", findings)

    def _confirm(self, question: str, kind: str, findings: list[Finding]) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self._apply(kind, findings)

        self.app.push_screen(ConfirmScreen(question), answered)

    def action_undo(self) -> None:
        """Take back the newest fix or quarantine (u again: the one before)."""
        self._apply("undo_last", [])

    def _apply(self, kind: str, findings: list[Finding]) -> None:
        if self.report is None:
            self.notify("Wait for the scan to finish")
            return
        self._fix_worker(kind, self.report.root, findings, self._target().settings.caption_extension)

    @work(thread=True, exclusive=True, group="health-fix")
    def _fix_worker(self, kind: str, root: Path, findings: list[Finding], caption_extension: str) -> None:
        from engine.health.actions import apply_action

        lines, failed = apply_action(kind, root, findings, caption_extension)
        self.post_message(FixesDone(lines, "warning" if failed else "information"))

    def on_fixes_done(self, message: FixesDone) -> None:
        shown = message.lines[:6] + ([f"… and {len(message.lines) - 6} more"] if len(message.lines) > 6 else [])
        self.notify("\n".join(shown) or "Nothing to do", severity=message.severity)
        self.action_rescan()
