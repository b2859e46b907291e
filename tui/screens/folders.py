"""FoldersScreen (`p`): the workspace's Kohya folders, their repeats, and building one.

Each `<repeats>_<name>` folder of the image folder with its images and repeats; `+`/`-`
(or `r` to type it) changes the selected folder's repeats by renaming it, and the plan
line under the table (images × repeats, steps per epoch, total steps: make_plan, in a
worker) follows. `n` builds a new Kohya folder from a flat folder of images with their
captions (engine.dataset.prepare: linked or moved, never over a file). The config
screen's plan panel reads the folders again when it is shown next.
"""
from __future__ import annotations

from pathlib import Path

from tui.workers import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Input, Label, Select, Static

from engine.config.workspace import Workspace
from engine.dataset.folders import is_image_file, parse_folder_name
from engine.errors import LoradeckError
from engine.run.next_steps import shown_path
from tui.widgets.captions.dialogs import TagPrompt
from tui.widgets.shared.key_footer import KeyFooter


def flat_images(folder: Path) -> int:
    """Images directly in `folder` (a flat folder, not yet in Kohya subfolders)."""
    try:
        return sum(1 for entry in folder.iterdir() if entry.is_file() and is_image_file(entry.name))
    except OSError:
        return 0


REPEAT_KEYS = Binding.Group("Repeats", compact=True)


class FoldersScreen(Screen):
    DEFAULT_CSS = """
    FoldersScreen { layout: vertical; }
    FoldersScreen #folders-title { height: 1; padding: 0 1; background: $panel; }
    FoldersScreen #folders-table { height: 1fr; }
    FoldersScreen #folders-plan { height: auto; padding: 0 1; border-top: hkey $panel; }
    """

    BINDINGS = [
        Binding("escape", "close", "Back"),
        Binding("plus,equals_sign", "repeats(1)", "More repeats", group=REPEAT_KEYS),
        Binding("minus", "repeats(-1)", "Fewer repeats", group=REPEAT_KEYS),
        Binding("r", "type_repeats", "Type repeats"),
        Binding("n", "prepare", "New from a flat folder"),
    ]

    class Planned(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, workspace: Workspace, *, source: Path | None = None) -> None:
        super().__init__()
        self.workspace = workspace
        self.source = source  # a flat folder to offer at once (the guided start)
        self.folders: list[Path] = []

    def compose(self) -> ComposeResult:
        yield Static(f"Kohya folders in {shown_path(self.workspace.image_dir, self.workspace.root)}/ "
                     "(<repeats>_<subject> <class>)", id="folders-title", markup=False)
        yield DataTable(id="folders-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="folders-plan", markup=False)
        yield KeyFooter()

    def on_mount(self) -> None:
        self._fill()
        self.query_one(DataTable).focus()
        if self.source is not None:
            self.action_prepare()

    # ---- the table and the plan

    def _fill(self, select: str | None = None) -> None:
        table = self.query_one(DataTable)
        row = table.cursor_row
        table.clear(columns=True)
        image_dir = self.workspace.image_dir
        try:
            children = sorted(child for child in image_dir.iterdir() if child.is_dir() and not child.name.startswith(("_", ".")))
        except OSError:
            children = []
        self.folders = [child for child in children if parse_folder_name(child.name)]
        table.add_column("folder", width=max([6] + [len(folder.name) for folder in self.folders]))
        table.add_columns("repeats", "images", "per epoch")
        for folder in self.folders:
            repeats, _name = parse_folder_name(folder.name)
            images = flat_images(folder)
            table.add_row(folder.name, str(repeats), str(images), str(images * repeats), key=folder.name)
        names = [folder.name for folder in self.folders]
        if select in names:
            table.move_cursor(row=names.index(select))
        elif names:
            table.move_cursor(row=min(max(row, 0), len(names) - 1))
        others = [child.name for child in children if child not in self.folders]
        if not self.folders:
            self._show_plan("No <repeats>_<name> folders yet: n builds one from a flat folder of images.")
        else:
            self._show_plan("planning…" + (f"  ({', '.join(others)}: no <repeats>_ prefix, not trained)" if others else ""))
            self._plan()

    def _show_plan(self, text: str) -> None:
        self.query_one("#folders-plan", Static).update(text)

    @work(thread=True, exclusive=True, group="folders-plan")
    def _plan(self) -> None:
        from engine.config.schema import TrainConfig, load_config, replace_setting
        from engine.plan.training_plan import make_plan

        try:
            config = load_config(self.workspace.config_path)
        except LoradeckError:  # no config or a broken one: the default settings on these folders
            config = replace_setting(TrainConfig(), "dataset.image_dir", str(self.workspace.image_dir))
        try:
            plan = make_plan(config, self.workspace.root)
        except LoradeckError as error:
            self.post_message(self.Planned(str(error)))
            return
        self.post_message(self.Planned(
            f"{plan.images} images × repeats = {plan.image_repeats} per epoch · {plan.steps_per_epoch} steps per "
            f"epoch (batch {plan.batch_size}) · {plan.epochs} epochs = {plan.total_steps} steps"))

    def on_folders_screen_planned(self, message: Planned) -> None:
        self._show_plan(message.text)

    def selected(self) -> Path | None:
        table = self.query_one(DataTable)
        if not self.folders or table.cursor_row is None or table.cursor_row >= len(self.folders):
            return None
        return self.folders[table.cursor_row]

    # ---- repeats

    def _set_repeats(self, repeats: int) -> None:
        from engine.dataset.prepare import set_repeats

        folder = self.selected()
        if folder is None:
            return
        try:
            renamed = set_repeats(folder, repeats)
        except LoradeckError as error:
            self.notify(str(error), severity="error")
            return
        self._fill(select=renamed.name)

    def action_repeats(self, step: int) -> None:
        folder = self.selected()
        if folder is not None:
            self._set_repeats(max(1, parse_folder_name(folder.name)[0] + step))

    def action_type_repeats(self) -> None:
        folder = self.selected()
        if folder is None:
            return

        def typed(value: str | None) -> None:
            if value is None:
                return
            try:
                self._set_repeats(int(value))
            except ValueError:
                self.notify(f"repeats: {value!r} is not a whole number", severity="error")

        self.app.push_screen(TagPrompt(f"Repeats of {folder.name}", "a whole number of 1 or more · enter sets it",
                                       [], value=str(parse_folder_name(folder.name)[0])), typed)

    # ---- a new Kohya folder

    def action_prepare(self) -> None:
        def made(folder: str | None) -> None:
            self.source = None
            if folder:
                self._fill(select=folder)

        self.app.push_screen(PrepareDialog(self.workspace, self.source), made)

    def action_close(self) -> None:
        self.dismiss()


class PrepareDialog(ModalScreen[str | None]):
    """Source folder, subject, class, repeats, link or move; ctrl+s builds the folder."""

    DEFAULT_CSS = """
    PrepareDialog { align: center middle; background: $background 60%; }
    PrepareDialog #prepare-box { width: 76; max-width: 100%; height: auto; max-height: 100%;
                                 padding: 0 1; background: $panel; border: tall $accent; }
    PrepareDialog #prepare-error { color: $error; height: auto; }
    PrepareDialog #prepare-title { text-style: bold; margin-bottom: 1; }
    PrepareDialog Label { color: $text-muted; }
    PrepareDialog Input, PrepareDialog Select { margin-bottom: 1; }
    """
    BINDINGS = [
        Binding("ctrl+s", "build", "Build the folder"),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, workspace: Workspace, source: Path | None = None) -> None:
        super().__init__()
        self.workspace = workspace
        self.source = source

    def compose(self) -> ComposeResult:
        # one line per field (compact inputs): the dialog fits an 80x24 terminal
        with Vertical(id="prepare-box"):
            yield Label("A Kohya folder from a flat folder of images (captions beside them)", id="prepare-title")
            yield Label("Flat folder of images")
            yield Input(str(self.source or ""), placeholder="~/photos/cat", id="prepare-source", compact=True)
            yield Label("Subject (the trigger word)")
            yield Input("", placeholder="ohwx", id="prepare-subject", compact=True)
            yield Label("Class")
            yield Input("", placeholder="cat", id="prepare-class", compact=True)
            yield Label("Repeats per epoch")
            yield Input("10", id="prepare-repeats", compact=True)
            yield Select([("link the files (the flat folder stays as it is)", "link"),
                          ("move the files", "move")], value="link", allow_blank=False, id="prepare-mode",
                         compact=True)
            yield Static("", id="prepare-error")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#prepare-subject" if self.source else "#prepare-source", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.focus_next()

    def action_build(self) -> None:
        from engine.dataset.prepare import prepare_folder

        value = {name: self.query_one(f"#prepare-{name}", Input).value.strip()
                 for name in ("source", "subject", "class", "repeats")}
        error = self.query_one("#prepare-error", Static)
        try:
            repeats = int(value["repeats"])
        except ValueError:
            error.update(f"repeats: {value['repeats']!r} is not a whole number")
            return
        source = Path(value["source"]).expanduser()
        if not source.is_absolute():
            source = self.workspace.root / source
        try:
            prepared = prepare_folder(source, self.workspace.image_dir, subject=value["subject"],
                                      class_name=value["class"], repeats=repeats,
                                      mode=str(self.query_one("#prepare-mode", Select).value),
                                      caption_extension=str(self.workspace.setting("captions.caption_extension") or ".txt"))
        except LoradeckError as failure:
            error.update(str(failure))
            return
        self.notify(prepared.summary(), title="Kohya folder", severity="warning" if prepared.skipped else "information")
        self.dismiss(prepared.folder.name)

    def action_cancel(self) -> None:
        self.dismiss(None)
