"""Caption editor: every image beside its tags, reviewed and fixed from the keyboard.

The list appears at once (file names only); captions are read and tags counted in a
worker, images decoded in the preview's worker with the next ones prefetched. Every
edit goes through engine.dataset.caption_edits: planned, checked against the file on disk
(changed since loaded -> the user is asked), written atomically, recorded for undo.
Auto-captioning runs as a subprocess in the job bar (tui/widgets/captions/caption_job.py).
"""
from __future__ import annotations

from collections import Counter

from rich.text import Text
from tui.workers import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from engine.dataset.caption_edits import CaptionSession, EditPlan, operation_for
from engine.dataset.caption_files import caption_folder_of
from engine.errors import LoradeckError
from engine.dataset.tags import (CLIP_TOKEN_WINDOW, approximate_clip_tokens, tag_frequency, tag_key,
                                 tags_past_window)
from engine.config.workspace import Workspace
from tui.widgets.captions.dialogs import AutoCaptionDialog, CaptionTextEditor, ConflictDialog, TagPrompt
from tui.widgets.captions.caption_job import CaptionJobBar, caption_command
from tui.widgets.captions.caption_list import CaptionFileList
from tui.widgets.shared.image_preview import ImagePreview
from tui.widgets.shared.key_footer import KeyFooter

FREQUENCY_SHOWN = 300
PREFETCH_AHEAD = 2
STATE_NAME = "captions"


class CaptionsLoaded(Message):
    """Every caption read and its tags counted (from the load worker)."""

    def __init__(self, session: CaptionSession, results: list, counts: Counter, generation: int) -> None:
        super().__init__()
        self.session = session
        self.results = results
        self.counts = counts
        self.generation = generation


# j/k share one footer entry so the footer fits; `?` lists each key
MOVE_KEYS = Binding.Group("Next/prev", compact=True)


class CaptionsScreen(Screen):
    CSS_PATH = "captions.tcss"
    # The footer has room for the review loop; the other keys are named in the panel
    # headings beside what they act on (and all are listed by `?`).
    BINDINGS = [
        # most used first: at 80 columns the footer shows what fits, `?` lists them all
        Binding("j", "step(1)", "Next", group=MOVE_KEYS),
        Binding("k", "step(-1)", "Prev", group=MOVE_KEYS),
        Binding("space", "accept", "Accept"),
        Binding("a", "add_tag", "Add"),
        Binding("x", "remove_tag", "Remove"),
        Binding("slash", "focus_filter", "Filter"),
        Binding("ctrl+z", "undo", "Undo"),
        Binding("c", "auto_caption", "Caption"),
        Binding("C", "stop_job", "Stop captioning"),
        Binding("e", "edit_raw", "Edit"),
        Binding("b", "bulk", "Bulk"),
        Binding("n", "next_unreviewed", "Unreviewed"),
        Binding("left_square_bracket", "move_tag(-1)", "Tag up", show=False),
        Binding("right_square_bracket", "move_tag(1)", "Tag down", show=False),
        Binding("f", "move_tag_first", "Tag first", show=False),
        Binding("u", "toggle_filter('is:unreviewed')", "Only unreviewed", show=False),
        Binding("U", "toggle_filter('is:uncaptioned')", "Only uncaptioned", show=False),
        Binding("t", "focus_frequency", "Tag counts", show=False),
        Binding("ctrl+y", "redo", "Redo", show=False),
        Binding("ctrl+r", "rescan", "Read the folder again", show=False),
        Binding("z", "zoom", "Zoom the image", show=False),
    ]

    def __init__(self, workspace: Workspace):
        super().__init__()
        self.workspace = workspace
        self.session: CaptionSession | None = None
        self.keep_tokens = 0
        self.caption_extension = ".txt"
        self.filter_text = ""
        self._generation = 0  # bumps on every edit: a late frequency count is stale
        self._shown_relative: str | None = None  # remembered for the next visit

    # ---- layout

    def compose(self) -> ComposeResult:
        with Horizontal(id="captions-body"):
            with Vertical(id="captions-left"):
                yield Input(placeholder="/ filter: tag:x, -tag:y, text:z, is:…", id="captions-filter")
                yield CaptionFileList(id="captions-files")
                yield Static("", id="captions-count")
            with Vertical(id="captions-center"):
                yield ImagePreview(id="captions-image")
            with Vertical(id="captions-right"):
                yield Static("", id="captions-title")
                yield Label("tab: tags · x remove · [ ] move · f first", classes="captions-keys")
                yield OptionList(id="captions-tags")
                yield Static("", id="captions-raw")
                yield Label("t: dataset tags · enter filters · u/U only unreviewed/uncaptioned · ^y redo",
                            id="captions-frequency-title", classes="captions-keys")
                yield OptionList(id="captions-frequency")
        yield CaptionJobBar(id="captions-job")
        yield KeyFooter()

    def on_mount(self) -> None:
        self._open()

    def on_screen_resume(self) -> None:
        # The config screen may have pointed the workspace at another image folder.
        if self.session is not None and caption_folder_of(self.workspace.root).root != self.session.root:
            self._open()

    def action_rescan(self) -> None:
        self._open()
        self.notify("Folder read again (undo history starts over)")

    def _open(self) -> None:
        folder = caption_folder_of(self.workspace.root)
        self.keep_tokens, self.caption_extension = folder.keep_tokens, folder.caption_extension
        self.filter_text = ""
        self.query_one("#captions-filter", Input).value = ""
        self.query_one("#captions-frequency", OptionList).clear_options()
        try:
            self.session = CaptionSession(folder.root, self.caption_extension)
        except LoradeckError as error:
            self.session = None
            self.files.show_rows(None, [], 0)
            # focus the (empty) list: else the filter input takes focus and swallows 1-4
            self.files.focus()
            self.query_one("#captions-count", Static).update(
                f"{error} · set dataset.image_dir on the config screen (3)")
            return
        start = self._remembered_row()
        self.files.show_rows(self.session, list(range(len(self.session))), start)
        self.files.focus()
        self._update_count()
        self._generation += 1
        # Read every caption after the first paint: the list shows first.
        self.call_after_refresh(self._load_captions, self._generation)

    def _remembered_row(self) -> int:
        relative = self._shown_relative or self.workspace.load_state(STATE_NAME).get("current")
        if not relative or self.session is None:
            return 0
        for index, entry in enumerate(self.session.entries):
            if entry.relative == relative:
                return index
        return 0

    def on_unmount(self) -> None:
        if self._shown_relative is not None:
            state = self.workspace.load_state(STATE_NAME)
            state["current"] = self._shown_relative
            try:
                self.workspace.save_state(STATE_NAME, state)
            except OSError:
                pass  # a read-only workspace can still be reviewed

    # ---- background caption load

    @work(thread=True, exclusive=True, group="captions-load")
    def _load_captions(self, generation: int) -> None:
        session = self.session
        if session is None:
            return
        results = session.read_all()
        if get_current_worker().is_cancelled:
            return
        counts = tag_frequency(text or "" for text, _stamp in results)
        self.post_message(CaptionsLoaded(session, results, counts, generation))

    def on_captions_loaded(self, message: CaptionsLoaded) -> None:
        if message.session is not self.session:
            return  # read for a folder no longer open
        self.session.accept_read(message.results)
        # Edits made while the worker counted make its numbers stale: count again.
        if message.generation == self._generation:
            self.session.take_frequency(message.counts)
        self._update_frequency()
        self._update_count()
        self.query_one(CaptionFileList).refresh()

    # ---- the current image

    @property
    def files(self) -> CaptionFileList:
        return self.query_one(CaptionFileList)

    @property
    def current_index(self) -> int | None:
        return self.files.current_index

    def on_caption_file_list_cursor_moved(self, message: CaptionFileList.CursorMoved) -> None:
        self._show_current()
        rows = self.files.rows
        ahead = [self.session.entries[rows[row]].file.image
                 for row in range(message.row + 1, min(len(rows), message.row + 1 + PREFETCH_AHEAD))]
        if message.row > 0:
            ahead.append(self.session.entries[rows[message.row - 1]].file.image)
        self.query_one(ImagePreview).prefetch(ahead)

    def _show_current(self, tag_highlight: int | str | None = None) -> None:
        """Show the current image and caption; `tag_highlight` is the tag row (or the
        name of the tag) to highlight, by default the row highlighted before."""
        index = self.current_index
        title = self.query_one("#captions-title", Static)
        tags = self.query_one("#captions-tags", OptionList)
        raw = self.query_one("#captions-raw", Static)
        preview = self.query_one(ImagePreview)
        if index is None:
            title.update("no image matches the filter" if self.session and len(self.session) else "no images")
            tags.clear_options()
            raw.update("")
            preview.path = None
            return
        if self.session.refresh_from_disk(index):
            self.notify(f"{self.session.entries[index].relative}: changed on disk, reloaded")
        entry = self.session.entries[index]
        self._shown_relative = entry.relative
        caption = entry.caption
        text = entry.text or ""
        tokens = approximate_clip_tokens(text)
        reviewed = "✓ reviewed" if self.session.is_reviewed(index) else "not reviewed"
        title.update(Text.assemble(
            (entry.relative, "bold"), "\n",
            f"{reviewed} · {len(caption.tags)} tags · ≈{tokens}/{CLIP_TOKEN_WINDOW} tokens",
            (" · past the window", "bold") if tokens > CLIP_TOKEN_WINDOW else "",
        ))
        past = tags_past_window(caption)
        kept = caption.kept(self.keep_tokens)
        if isinstance(tag_highlight, str):
            tag_highlight = max(0, caption.index(tag_highlight))
        previous = tags.highlighted if tag_highlight is None else tag_highlight
        tags.clear_options()
        # the keep_tokens prefix (never shuffled) in bold, tags past the CLIP window struck
        tags.add_options(
            Option(Text(tag.raw, style="dim strike" if position >= past else "bold" if position < kept else ""))
            for position, tag in enumerate(caption.tags)
        )
        if caption.tags:
            tags.highlighted = min(previous or 0, len(caption.tags) - 1)
        raw.update(Text(text.strip()) if entry.text is not None else Text("(no caption file)", style="italic"))
        preview.path = entry.file.image

    def _update_count(self) -> None:
        if self.session is None:
            return
        total = len(self.session)
        shown = len(self.files.rows)
        reviewed = len(self.session.marks)
        where = f"{shown:,} of {total:,}" if self.filter_text else f"{total:,} images"
        self.query_one("#captions-count", Static).update(f"{where} · {reviewed:,} reviewed")

    def _update_frequency(self) -> None:
        if self.session is None or not self.session.frequency_ready:
            return
        panel = self.query_one("#captions-frequency", OptionList)
        highlighted = panel.highlighted
        panel.clear_options()
        panel.add_options(
            Option(Text.assemble((f"{count:>6} ", "dim"), tag), id=tag)
            for tag, count in self.session.frequency().most_common(FREQUENCY_SHOWN)
        )
        if panel.option_count:
            panel.highlighted = min(highlighted or 0, panel.option_count - 1)

    def _schedule_frequency_update(self) -> None:
        # A burst of edits (holding x) redraws the count panel once.
        timer = getattr(self, "_frequency_timer", None)
        if timer is not None:
            timer.stop()
        self._frequency_timer = self.set_timer(0.25, self._update_frequency)

    def _highlighted_tag(self) -> tuple[int, str] | None:
        index = self.current_index
        tags = self.query_one("#captions-tags", OptionList)
        if index is None or tags.highlighted is None:
            return None
        caption = self.session.entries[index].caption
        if tags.highlighted >= len(caption.tags):
            return None
        return tags.highlighted, caption.tags[tags.highlighted].name

    def _suggestions(self) -> list[tuple[str, int]]:
        if self.session is None:
            return []
        if not self.session.frequency_ready:
            return []
        return self.session.frequency().most_common()

    # ---- navigation

    def action_step(self, step: int) -> None:
        self.files.cursor += step

    def action_next_unreviewed(self) -> None:
        if self.session is None or not self.files.rows:
            return
        rows = self.files.rows
        start = self.files.cursor
        for offset in range(1, len(rows) + 1):
            row = (start + offset) % len(rows)
            if not self.session.is_reviewed(rows[row]):
                self.files.cursor = row
                return
        self.notify("Every image in the list is reviewed")

    def action_accept(self) -> None:
        index = self.current_index
        if index is None:
            return
        self.session.set_reviewed(index, True)
        self.files.refresh_index(index)
        self._update_count()
        if self.files.cursor < len(self.files.rows) - 1:
            self.files.cursor += 1
        else:
            self._show_current()

    # ---- filter

    def action_focus_filter(self) -> None:
        self.query_one("#captions-filter", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "captions-filter":
            self._apply_filter(event.value)
            self.files.focus()

    def on_key(self, event) -> None:
        if event.key == "escape" and self.focused is self.query_one("#captions-filter", Input):
            self.files.focus()
            event.stop()

    def action_toggle_filter(self, term: str) -> None:
        terms = [piece.strip() for piece in self.filter_text.split(",") if piece.strip()]
        terms = [piece for piece in terms if piece != term] if term in terms else terms + [term]
        self._apply_filter(", ".join(terms))

    def _apply_filter(self, text: str) -> None:
        if self.session is None:
            return
        try:
            rows = self.session.matching(text)
        except LoradeckError as error:
            self.notify(str(error), severity="error")
            return
        self.filter_text = text.strip()
        self.query_one("#captions-filter", Input).value = self.filter_text
        current = self.current_index
        cursor = rows.index(current) if current in rows else 0
        self.files.show_rows(self.session, rows, cursor)
        self._update_count()

    def action_focus_frequency(self) -> None:
        self.query_one("#captions-frequency", OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option_list.id == "captions-frequency" and event.option.id:
            self._apply_filter(f"tag:{event.option.id}")
            self.files.focus()

    # ---- edits of the current caption

    def action_add_tag(self) -> None:
        index = self.current_index
        if index is None:
            return
        name = self.session.entries[index].relative

        def add(value: str | None) -> None:
            if value:
                label, operation = operation_for("add", value)
                self._run_plan(self.session.plan_operation([index], label, operation))

        self.app.push_screen(TagPrompt(f"Add a tag to {name}", "↓↑ choose · tab completes · enter adds",
                                       self._suggestions(), exclude=self.session.entries[index].keys), add)

    def action_remove_tag(self) -> None:
        chosen = self._highlighted_tag()
        if chosen is None:
            return
        label, operation = operation_for("remove", chosen[1])
        self._run_plan(self.session.plan_operation([self.current_index], label, operation),
                       tag_highlight=chosen[0])

    def action_move_tag(self, step: int) -> None:
        chosen = self._highlighted_tag()
        if chosen is None:
            return
        _position, name = chosen
        plan = self.session.plan_operation([self.current_index], f"move {name}",
                                           lambda caption: caption.move(name, step))
        self._run_plan(plan, tag_highlight=name)

    def action_move_tag_first(self) -> None:
        chosen = self._highlighted_tag()
        if chosen is None:
            return
        label, operation = operation_for("move-first", chosen[1], self.keep_tokens)
        self._run_plan(self.session.plan_operation([self.current_index], label, operation),
                       tag_highlight=chosen[1])

    def action_edit_raw(self) -> None:
        index = self.current_index
        if index is None:
            return
        entry = self.session.entries[index]
        original = entry.text or ""
        body = original.rstrip()
        ending = original[len(body):]

        def save(text: str | None) -> None:
            if text is None:
                return
            # The editor shows the caption without its final newline; put it back.
            new_text = text if text != text.rstrip() else text + ending
            self._run_plan(self.session.plan_text(index, new_text))

        self.app.push_screen(CaptionTextEditor(f"Caption of {entry.relative} · ctrl+s saves", body), save)

    def action_bulk(self) -> None:
        if self.session is None or not self.files.rows:
            return
        rows = list(self.files.rows)
        count = len(rows)
        scope = f"the {count:,} images in the filter" if self.filter_text else f"all {count:,} images"

        def bulk(value: str | None) -> None:
            if not value:
                return
            try:
                action, argument = _bulk_action(value)
                label, operation = operation_for(action, argument, self.keep_tokens)
            except LoradeckError as error:
                self.notify(str(error), severity="error")
                return
            self._run_plan(self.session.plan_operation(rows, f"{label} on {count:,} images", operation))

        self.app.push_screen(TagPrompt(
            f"Bulk edit {scope}",
            "+tag adds · -tag removes · old=new replaces · ^tag moves first · enter applies",
            self._suggestions()), bulk)

    # ---- writing, conflicts, undo

    def _run_plan(self, plan: EditPlan | None, kind: str = "edit", tag_highlight: int | str | None = None) -> None:
        if plan is None:
            self.notify(f"Nothing to {kind}")
            return
        if plan.empty:
            self.notify(f"{plan.label}: nothing changes")
            return
        if not plan.conflicts:
            self._write(plan, False, kind, tag_highlight)
            return
        names = [self.session.entries[index].relative for index in plan.conflicts]

        def answer(choice: str | None) -> None:
            if choice in ("overwrite", "keep"):
                self._write(plan, choice == "overwrite", kind, tag_highlight)
            else:
                self._show_current()

        self.app.push_screen(ConflictDialog(names, plan.label), answer)

    def _write(self, plan: EditPlan, overwrite: bool, kind: str, tag_highlight: int | str | None) -> None:
        commit = {"edit": self.session.commit, "undo": self.session.commit_undo,
                  "redo": self.session.commit_redo}[kind]
        index = self.current_index
        before = self.session.entries[index].caption if index is not None else None
        highlighted = self._highlighted_tag()  # (row, name) before the edit
        try:
            written = commit(plan, overwrite)
        except LoradeckError as error:
            self.notify(str(error), severity="error")
            self._show_current()
            return
        self._generation += 1
        skipped = len(plan.changes) - len(written)
        verb = {"edit": "", "undo": "undone: ", "redo": "redone: "}[kind]
        message = f"{verb}{plan.label}"
        if len(plan.changes) > 1 or skipped:
            message += f" · {len(written):,} file{'s' if len(written) != 1 else ''} written"
        if skipped:
            message += f", {skipped:,} kept as on disk"
        self.notify(message, timeout=3)
        if before is not None:
            after = self.session.entries[index].caption
            if kind != "edit" and tag_highlight is None:  # the tag the undone edit touched
                tag_highlight = changed_tag(before, after, tag_key(highlighted[1]) if highlighted else None)
            self._warn_prefix(before, after)
        self._show_current(tag_highlight)
        self.files.refresh()
        self._schedule_frequency_update()

    def _warn_prefix(self, before, after) -> None:
        """Tell the user when an edit changed the tags caption shuffling keeps in front."""
        kept_before = [tag.raw for tag in before.tags[: before.kept(self.keep_tokens)]]
        kept_after = [tag.raw for tag in after.tags[: after.kept(self.keep_tokens)]]
        if kept_before != kept_after and (kept_before or kept_after):
            self.notify(f"The kept prefix (keep_tokens {self.keep_tokens}: never shuffled, in bold) is now "
                        f"{', '.join(kept_after) or 'empty'}; it was {', '.join(kept_before) or 'empty'}. "
                        "ctrl+z undoes.", title="keep_tokens prefix changed", severity="warning", timeout=8)

    def action_zoom(self) -> None:
        """The current image on the whole terminal, with zoom and pan."""
        index = self.current_index
        if index is not None:
            from tui.screens.image_view import ImageViewScreen

            entry = self.session.entries[index]
            self.app.push_screen(ImageViewScreen(entry.file.image, entry.relative))

    def action_undo(self) -> None:
        if self.session is not None:
            self._run_plan(self.session.plan_undo(), "undo")

    def action_redo(self) -> None:
        if self.session is not None:
            self._run_plan(self.session.plan_redo(), "redo")

    # ---- auto-caption job

    @property
    def job(self) -> CaptionJobBar:
        return self.query_one(CaptionJobBar)

    @property
    def job_running(self) -> bool:
        return self.job.running

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action in ("stop_job", "auto_caption"):
            running = self.is_mounted and self.job_running
            return running if action == "stop_job" else not running
        return True

    def action_auto_caption(self) -> None:
        if self.session is None or self.job_running:
            return
        settings = self.workspace.load_state("autocaption")

        def start(choice: dict | None) -> None:
            if not choice:
                return
            self.workspace.save_state("autocaption", choice)
            try:
                command = caption_command(self.session.root, choice, self.caption_extension)
            except ValueError as error:
                self.notify(f"more options: {error}", severity="error")
                return
            self.job.start(command)
            self.refresh_bindings()

        self.app.push_screen(AutoCaptionDialog(str(self.session.root), settings), start)

    def on_caption_job_bar_progress(self, message: CaptionJobBar.Progress) -> None:
        index = self.current_index
        if index is not None and message.path == self.session.entries[index].relative:
            self._show_current()  # the caption on screen was just written: show it

    def on_caption_job_bar_finished(self, message: CaptionJobBar.Finished) -> None:
        self.refresh_bindings()
        self.notify(message.summary, severity="information" if message.status == 0 else "error", timeout=8)
        # The captioner wrote files behind our back: take every changed one from disk.
        if self.session is not None:
            for index in range(len(self.session)):
                self.session.refresh_from_disk(index)
            self._generation += 1
            self._show_current()
            self.files.refresh()
            self._schedule_frequency_update()

    def action_stop_job(self) -> None:
        if self.job.stop():
            self.notify("Stopping auto-caption…")


def _bulk_action(value: str) -> tuple[str, str]:
    """`+tag` add, `-tag` remove, `^tag` move first, `old=new` replace."""
    value = value.strip()
    if value.startswith("+"):
        return "add", value[1:]
    if value.startswith("-"):
        return "remove", value[1:]
    if value.startswith("^"):
        return "move-first", value[1:]
    if "=" in value:
        return "replace", value
    raise LoradeckError(f"bulk `{value}`: start with + (add), - (remove), ^ (move first) or write old=new")


def changed_tag(before, after, highlighted: str | None = None) -> int | str | None:
    """Where the tag cursor goes after an undo or redo: on the tag it brought back or moved
    (its name), at the place of the one it took away (a row), else where it was (None).
    Two neighbours swapped are both "moved": the cursor stays with the one it was on."""
    before_keys, after_keys = before.keys(), after.keys()
    added = [tag.name for tag in after.tags if tag.key not in before_keys]
    if added:
        return added[0]
    removed = [position for position, key in enumerate(before_keys) if key not in after_keys]
    if removed:
        return min(removed[0], max(0, len(after_keys) - 1))
    if before_keys == after_keys:
        return None
    # the tags whose move alone explains the new order
    moved = [key for key in before_keys
             if [k for k in before_keys if k != key] == [k for k in after_keys if k != key]]
    if not moved:  # several tags moved (a bulk edit): the one that moved farthest
        moved = [max(before_keys, key=lambda key: abs(after_keys.index(key) - before_keys.index(key)))]
    chosen = highlighted if highlighted in moved else moved[0]
    return after.tags[after_keys.index(chosen)].name
