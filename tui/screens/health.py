"""Dataset health: what would break or spoil training, and the keys to fix it.

A summary by code (enter filters the list to that code), the findings (filter by code
with c, by severity with s), and the selected image: for an EXIF-rotated one, as
stored beside as the trainer sees it. The scan runs engine.health.scan in a thread worker
(which spreads the decoding over every core and reads its cache), posting progress;
fixes and quarantine moves run in a worker too, then the folder is scanned again.
"""
from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import DataTable, Footer, ProgressBar, Static
from textual.worker import Worker, WorkerState, get_current_worker

from engine.errors import LoradeckError
from engine.health.report import CHECKS, ERROR, INFO, SEVERITIES, WARNING, Finding, ScanReport, display
from engine.health.scan import ScanCancelled, ScanTarget, scan, target_for_workspace
from engine.config.workspace import Workspace
from tui.screens.confirm import ConfirmScreen
from tui.widgets.shared.image_preview import ImagePreview

SEVERITY_COLORS = {ERROR: "error", WARNING: "warning", INFO: "text-muted"}


class ScanProgress(Message):
    def __init__(self, done: int, total: int) -> None:
        super().__init__()
        self.done, self.total = done, total

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

FIX_KEYS = Binding.Group("Fix", compact=True)
QUARANTINE_KEYS = Binding.Group("Quarantine", compact=True)


class HealthScreen(Screen):
    CSS_PATH = "health.tcss"
    BINDINGS = [
        Binding("r", "rescan", "Rescan"),
        Binding("c", "cycle_code", "By code"),
        Binding("s", "cycle_severity", "By severity"),
        Binding("a", "clear_filters", "Show all"),
        # one footer entry per one/all pair so the footer fits; `?` lists each key
        Binding("f", "fix", "Fix", group=FIX_KEYS),
        Binding("F", "fix_all", "Fix all", group=FIX_KEYS),
        Binding("x", "quarantine", "Quarantine", group=QUARANTINE_KEYS),
        Binding("X", "quarantine_all", "Quarantine all", group=QUARANTINE_KEYS),
        Binding("u", "undo_quarantine", "Undo"),
    ]

    code_filter: reactive[str | None] = reactive(None)
    severity_filter: reactive[str | None] = reactive(None)

    def __init__(self, workspace: Workspace):
        super().__init__()
        self.workspace = workspace
        self.report: ScanReport | None = None
        self.scanning = False
        self.shown: list[Finding] = []  # the findings table's rows, in order
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
            with Vertical(id="health-right"):
                yield Static("As stored (what tools that ignore EXIF see)", id="health-stored-title")
                yield ImagePreview(id="health-stored", apply_exif=False)
                yield Static("As the trainer sees it", id="health-preview-title")
                yield ImagePreview(id="health-preview")
                yield Static("", id="health-message")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#health-summary", DataTable).add_columns("Severity", "Code", "Count", "What")
        self.query_one("#health-findings", DataTable).add_columns("Severity", "Code", "Path", "Message")
        self._show_exif_pair(False)
        self.query_one("#health-findings").focus()
        # severity colours are baked into the table cells: repaint them in the new theme
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self._repaint_tables())
        self.action_rescan()

    def _repaint_tables(self) -> None:
        if self.report is not None:
            self._fill_summary()
            self._fill_findings()

    # ---- scanning

    def _target(self) -> ScanTarget:
        return target_for_workspace(self.workspace)  # read each time: the config may have changed

    def action_rescan(self) -> None:
        target = self._target()
        if not target.root.is_dir():
            self._set_status(f"No image folder at {target.root}: create it, or set dataset.image_dir in Config (3)")
            return
        if target.config_problem and not self.report:
            self.notify(target.config_problem, title="Config not used", severity="warning")
        self.scanning = True
        self.query_one("#health-top").add_class("-scanning")
        self._set_status(f"Scanning {target.root} …")
        self._scan(target)

    @work(thread=True, exclusive=True, group="health-scan")
    def _scan(self, target: ScanTarget) -> None:
        worker = get_current_worker()
        started = time.monotonic()
        try:
            report = scan(target, progress=lambda done, total: self.post_message(ScanProgress(done, total)),
                          should_stop=lambda: worker.is_cancelled)
        except ScanCancelled:
            return
        except LoradeckError as error:
            self.post_message(ScanFinished(None, 0.0, str(error)))
            return
        self.post_message(ScanFinished(report, time.monotonic() - started))

    def on_scan_progress(self, message: ScanProgress) -> None:
        self.query_one("#health-progress", ProgressBar).update(total=max(message.total, 1), progress=message.done)
        self._set_status(f"Scanning {message.done}/{message.total} images …")

    def on_scan_finished(self, message: ScanFinished) -> None:
        self.scanning = False
        self.query_one("#health-top").remove_class("-scanning")
        if message.report is None:
            self._set_status(message.problem)
            return
        self.report = message.report
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
        # The one place worker failures surface: a bug must not pass silently.
        if event.state == WorkerState.ERROR and event.worker.group in ("health-scan", "health-fix"):
            self.scanning = False
            self.query_one("#health-top").remove_class("-scanning")
            self.notify(f"{event.worker.error}", title="Health check failed", severity="error")

    def _set_status(self, text: str) -> None:
        self.query_one("#health-status", Static).update(text)

    # ---- tables

    def _severity_text(self, severity: str) -> Text:
        color = self.app.theme_variables.get(SEVERITY_COLORS[severity], "")
        return Text(severity, style=color)

    def _fill_summary(self) -> None:
        table = self.query_one("#health-summary", DataTable)
        table.clear()
        for code, count in (self.report.summary if self.report else {}).items():
            check = CHECKS[code]
            table.add_row(self._severity_text(check.severity), code, str(count), check.title, key=code)

    def _fill_findings(self) -> None:
        table = self.query_one("#health-findings", DataTable)
        keep = self._selected()
        table.clear()
        findings = self.report.findings if self.report else []
        order = {severity: index for index, severity in enumerate(SEVERITIES)}
        self.shown = sorted(
            (item for item in findings
             if self.code_filter in (None, item.code) and self.severity_filter in (None, item.severity)),
            key=lambda item: (order[item.severity], item.code, item.path),
        )
        for index, item in enumerate(self.shown):
            table.add_row(self._severity_text(item.severity), item.code, display(item.path), display(item.message),
                          key=str(index))
        if keep in self.shown:
            table.move_cursor(row=self.shown.index(keep))
        code = self.code_filter or "every code"
        severity = self.severity_filter or "every severity"
        self.query_one("#health-filter", Static).update(
            f"{len(self.shown)} of {len(findings)} findings · {code} · {severity}   (c code · s severity · a all)")
        self._show_selected()

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
        if item is None or self.report is None:
            message.update("")
            preview.marked_row = -1
            preview.path = stored.path = None
            self._show_exif_pair(False)
            return
        path = self.report.root / item.path
        is_image = path.is_file() and item.code != "orphan_caption"
        message.update(Text.assemble((f"{item.code}  ", "bold"), display(item.path), "\n", display(item.message)))
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
        codes = [None, *(self.report.summary if self.report else {})]
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
            self.notify(f"{item.path}: folders are not moved; rename it to <repeats>_{item.path}")
        else:
            self._apply("quarantine", [item])

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

    def action_undo_quarantine(self) -> None:
        self._apply("undo", [])

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
