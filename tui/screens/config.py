"""Config screen (3): every training setting as a keyboard form, checked as you type,
with the run's numbers beside it before it starts.

    form (generated from engine.config.schema's schema)   | the focused setting: help, advice, limits
                                                    | plan: images × repeats, buckets, steps,
                                                    |       checkpoints, LoRA size, duration
    status: saved or not, problems, what blocks a start

The form's state lives in `tui.config_state.ConfigFormState`; widgets are mounted once
and only their values and messages change. Unsaved edits are kept as a draft under
`.loradeck/config_draft.json` and restored next time, so quitting never loses them.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from textual.actions import SkipAction
from textual.app import ComposeResult
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.timer import Timer
from textual.widgets import Input, Static, TextArea

from engine.config.schema import GROUPS, FieldSpec, replace_setting, resolve_path, save_config
from engine.errors import LoradeckError
from engine.run.naming import existing_run_names, run_folder_problem, suggest_names
from engine.config.presets import list_presets, load_preset
from engine.config.prompts import parse_prompts
from tui.config_state import MULTILINE, SELECT, SWITCH, ConfigFormState, editor_kind
from tui.widgets.config.form import ConfigForm, SettingLine
from tui.widgets.config.plan_panel import PlanPanel, RunSpeed, recent_speed
from tui.workers import work
from tui.widgets.shared.key_footer import KeyFooter

DRAFT_STATE = "config_draft"
DRAFT_DELAY_S = 0.5
START_PRESET = "sd15-general"
# what a preset does not replace: where the model, images and runs are, and the run's name
LOCATION_KEYS = (
    "model.pretrained_model", "model.vae", "model.v_parameterization", "model.clip_skip",
    "dataset.image_dir", "dataset.reg_dir", "sampling.prompts", "sampling.prompts_file",
    "saving.output_dir", "saving.output_name",
)
NAME_KEY = "saving.output_name"
PROMPTS_KEY = "sampling.prompts"


def _file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def allowed_values(spec: FieldSpec) -> str:
    """What a setting accepts, in words."""
    kind = editor_kind(spec)
    if kind == SWITCH:
        text = "on or off"
    elif kind == SELECT:
        text = "one of " + ", ".join(str(choice) for choice in spec.choices)
    elif spec.type in (int, float):
        text = "a whole number" if spec.type is int else "a number"
        if spec.minimum is not None and spec.maximum is not None:
            text += f" from {spec.minimum:g} to {spec.maximum:g}"
        elif spec.minimum is not None:
            text += f", at least {spec.minimum:g}"
        elif spec.maximum is not None:
            text += f", at most {spec.maximum:g}"
    elif spec.path:
        text = "a path (relative to the workspace folder)"
    elif kind == MULTILINE:
        text = "text, one entry per line"
    else:
        text = "text"
    if spec.optional:
        text += "; empty = unset"
    default = "empty" if spec.default in ("", None) else repr(spec.default) if isinstance(spec.default, str) else spec.default
    if isinstance(default, bool):
        default = "on" if default else "off"
    return f"{text} · default {default}"


class SettingsProvider(Provider):
    """`/` and the command palette: jump to any setting by label or key, fuzzily."""

    def _specs(self) -> list[FieldSpec]:
        screen = self.screen
        return list(screen.state.specs.values()) if isinstance(screen, ConfigScreen) else []

    async def discover(self) -> Hits:
        for spec in self._specs():
            yield DiscoveryHit(
                f"{spec.label} · {spec.key}", partial(self.screen.focus_setting, spec.key), help=spec.help
            )

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for spec in self._specs():
            text = f"{spec.label} · {spec.key}"
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), partial(self.screen.focus_setting, spec.key),
                          text=text, help=spec.help)


class ConfigScreen(Screen):
    CSS_PATH = "config.tcss"
    COMMANDS = {SettingsProvider}
    # Keys that move the focus are priority bindings: the app runs them as it reads them,
    # so the keys typed after them go where the user sees the focus (tui.key_order).
    BINDINGS = [
        Binding("slash", "jump", "Jump", priority=True),
        Binding("ctrl+g", "jump_anywhere", "Jump", priority=True),
        Binding("enter", "edit", "Edit", priority=True),
        Binding("escape", "leave_field", "Leave field", priority=True),
        Binding("space", "toggle", "Toggle", show=False, priority=True),
        Binding("tab", "step(1)", "Next setting", show=False, priority=True),
        Binding("shift+tab", "step(-1)", "Previous setting", show=False, priority=True),
        Binding("down", "arrow(1)", "Next setting", show=False, priority=True),
        Binding("up", "arrow(-1)", "Previous setting", show=False, priority=True),
        Binding("right", "choice(1)", "Next choice", show=False, priority=True),
        Binding("left", "choice(-1)", "Previous choice", show=False, priority=True),
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("ctrl+o", "open", "Import", priority=True),
        Binding("ctrl+n", "next_name", "Next name", show=False, priority=True),  # in `?` and the palette: 80 columns keep the main keys
        Binding("ctrl+t", "start", "Train", priority=True),
    ]

    class RunsScanned(Message):
        def __init__(self, names: set[str], speed: RunSpeed | None):
            super().__init__()
            self.names = names
            self.speed = speed

    class Imported(Message):
        def __init__(self, path: Path, result: Any):
            super().__init__()
            self.path = path
            self.result = result

    class Started(Message):
        def __init__(self, run_dir: Path):
            super().__init__()
            self.run_dir = run_dir

    class Failed(Message):
        """A background job (import, start) failed with a message for the user."""

        def __init__(self, title: str, reason: str):
            super().__init__()
            self.title = title
            self.reason = reason

    def __init__(self, workspace):
        super().__init__()
        self.workspace = workspace
        self.base_dir: Path = workspace.root
        self.state = ConfigFormState()
        self._notes = self._load_from_disk()
        self._restore_draft()
        self._run_names: set[str] = set()
        self._blockers: dict[str, str] = {}  # start-only problems: existing run folder, empty dataset
        self._focused_key: str | None = None
        self._draft_timer: Timer | None = None
        self._loaded_raw = dict(self.state.raw)  # what the screen opened with (file + draft)
        self._left = False
        self._prompt_check = (None, "")  # (prompts text, its warnings)

    # ---- loading

    def _load_from_disk(self) -> list[str]:
        """Fill the state from loradeck.toml (even an invalid one); notes for the user."""
        path = self.workspace.config_path
        self._disk_stamp = _file_stamp(path)
        if not path.exists():
            self.state.load(load_preset(START_PRESET), saved=False)
            return [f"No {path.name} yet: this is the {START_PRESET} preset. ctrl+s saves it, ctrl+o picks another."]
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            self.state.load(load_preset(START_PRESET), saved=False)
            return [f"{path}: cannot be read ({error}); showing the {START_PRESET} preset. Saving replaces the file."]
        return self.state.load_data(data, str(path))

    def _restore_draft(self) -> None:
        draft = self.workspace.load_state(DRAFT_STATE)
        if self.state.restore_draft(draft) and self.state.dirty:
            self._notes.append("Restored unsaved changes from last time. ctrl+s saves them; "
                               "ctrl+o → reload discards them.")

    # ---- layout

    def compose(self) -> ComposeResult:
        with Horizontal(id="config-main"):
            yield ConfigForm(self.state.specs.values(), self.state.raw, self.base_dir, id="config-form")
            with Vertical(id="config-side"):
                yield Static("", id="setting-help")
                yield PlanPanel(self.base_dir, id="plan-panel")
        yield Static("", id="config-status")
        yield KeyFooter()

    @property
    def form(self) -> ConfigForm:
        return self.query_one(ConfigForm)

    @property
    def plan_panel(self) -> PlanPanel:
        return self.query_one(PlanPanel)

    def on_mount(self) -> None:
        self.query_one("#setting-help").border_title = "Setting"
        self.plan_panel.border_title = "Plan"
        self.set_focus(self.form.shown_lines()[0])
        self.form.network_type = str(self.state.raw["network.type"])
        self._show_family()
        self._refresh_messages()
        self._render_help()
        # planning and the runs scan start once the screen is drawn (its first frame first)
        self.call_after_refresh(self.plan_panel.schedule, self.state.config, now=True)
        self.call_after_refresh(self._scan_runs)
        for note in self._notes:
            self.notify(note, title="Config", timeout=8)
        if self.state.dirty:
            self._schedule_draft()

    def on_screen_suspend(self) -> None:
        # a dialog of ours on top is not leaving; another screen (or mode) is
        self._left = not isinstance(self.app.screen, ModalScreen)

    def on_screen_resume(self) -> None:
        if _file_stamp(self.workspace.config_path) != self._disk_stamp:
            # written by the welcome screen, another loradeck or an editor
            if not self.state.dirty or self.state.raw == self._loaded_raw:
                self._reload()
            else:
                self.notify(f"{self.workspace.config_path.name} changed on disk; ctrl+o → reload shows it "
                            "(and drops your unsaved changes).", title="Config", severity="warning")
                self._disk_stamp = _file_stamp(self.workspace.config_path)
        if self._left:
            # images or captions may have changed on another screen
            self.plan_panel.rescan()
            self._scan_runs()
        self._left = False

    def on_unmount(self) -> None:
        if self._draft_timer is not None:
            self._draft_timer.stop()
            self._write_draft()

    # ---- editing

    def on_config_form_edited(self, message: ConfigForm.Edited) -> None:
        if self.state.set(message.key, message.raw):
            self._after_change([message.key])

    def on_config_form_field_focused(self, message: ConfigForm.FieldFocused) -> None:
        self._focused_key = message.key
        self._render_help()

    def _show_values(self, keys: list[str]) -> None:
        """Put state values into the editors of `keys` (after a preset, import or reload)."""
        for key in keys:
            self.form.set_raw(key, self.state.raw[key])
        self._after_change(keys)

    def _after_change(self, keys: list[str]) -> None:
        self.form.network_type = str(self.state.raw["network.type"])  # shows that type's settings only
        if {"model.pretrained_model", "model.family"} & set(keys):
            self._show_family()
        self._refresh_messages()
        if "saving.output_dir" in keys:
            self._scan_runs()
        self.plan_panel.schedule(self.state.config)
        self._schedule_draft()

    def _show_family(self) -> None:
        """Show the settings of the family the config trains only (Flux's for Flux, ...)."""
        from engine.errors import LoradeckError
        from engine.plan.training_plan import family_name_of

        try:
            self.form.family = family_name_of(self.state.config, self.base_dir)
        except LoradeckError:  # a model.family being typed: keep showing what was shown
            pass

    def _runs_dir(self) -> Path:
        return resolve_path(self.base_dir, self.state.config.saving.output_dir) or self.base_dir

    def _refresh_messages(self) -> None:
        """Inline reasons under every setting, the help panel and the status line."""
        problems = self.state.problems()
        self._blockers = self._start_blockers()
        warnings = self._warnings()
        form = self.form
        for key in self.state.specs:
            if key in problems:
                form.show_message(key, problems[key], "error")
            elif key in self._blockers:
                form.show_message(key, self._blockers[key], "error")
            elif key in warnings:
                form.show_message(key, warnings[key], "warning")
            elif key == NAME_KEY:
                saving = self.state.config.saving
                form.show_message(key, f"a new run folder: {Path(saving.output_dir) / saving.output_name} · "
                                  "ctrl+n suggests the next version", "hint")
            else:
                form.show_message(key, "")
        self._render_help(problems)
        self._render_status(problems)

    def _warnings(self) -> dict[str, str]:
        """What would not stop a run but would not do what was meant: sample prompts with
        flags the sampler ignores (`--q 3`), checked as they are typed."""
        raw = str(self.state.raw.get(PROMPTS_KEY, ""))
        if self._prompt_check[0] != raw:
            _prompts, found = parse_prompts(raw, default_sampler=self.state.config.sampling.sampler,
                                            source="sample prompts")
            self._prompt_check = (raw, "; ".join(found))
        return {PROMPTS_KEY: self._prompt_check[1]} if self._prompt_check[1] else {}

    def _start_blockers(self) -> dict[str, str]:
        blockers: dict[str, str] = {}
        name_problem = run_folder_problem(self.state.config.saving.output_name, self._runs_dir(), self._run_names)
        if name_problem:
            blockers[NAME_KEY] = name_problem
        panel = self.plan_panel
        if panel.is_current:
            if panel.error is not None:
                key, _, reason = panel.error.partition(": ")
                if key not in self.state.specs:  # a plan error naming no setting is the dataset's
                    key, reason = "dataset.image_dir", panel.error
                blockers[key] = reason
            elif panel.plan is not None and panel.plan.total_steps == 0:
                blockers["dataset.image_dir"] = ("no training images: put images in <repeats>_<class> "
                                                 "subfolders of the image folder")
        return blockers

    def _render_help(self, problems: dict[str, str] | None = None) -> None:
        help_panel = self.query_one("#setting-help", Static)
        key = self._focused_key
        if key is None:
            help_panel.update(
                "[$text-muted]tab / shift+tab move between settings, / jumps to one by name.\n"
                "Each setting's help and advice show here.[/]")
            return
        spec = self.state.specs[key]
        problems = self.state.problems() if problems is None else problems
        lines = [f"[b]{escape(spec.label)}[/b]  [$text-muted]{key} · {GROUPS[spec.group]}[/]", escape(spec.help)]
        if spec.advice:
            lines.append(f"[i]{escape(spec.advice)}[/i]")
        lines.append(f"[$text-muted]{escape(allowed_values(spec))}[/]")
        reason = problems.get(key) or self._blockers.get(key)
        if reason:
            lines.append(f"[$error]✗ {escape(reason)}[/]")
        elif key in self._warnings():
            lines.append(f"[$warning]! {escape(self._warnings()[key])}[/]")
        help_panel.update("\n".join(lines))

    def _render_status(self, problems: dict[str, str]) -> None:
        parts = [str(self.workspace.config_path.name)]
        parts.append("unsaved changes (kept as a draft)" if self.state.dirty else "saved")
        blockers = {**problems, **{k: v for k, v in self._blockers.items() if k not in problems}}
        if blockers:
            key, reason = next(iter(blockers.items()))
            more = f" (+{len(blockers) - 1} more)" if len(blockers) > 1 else ""
            parts.append(f"[$error]cannot train: {key}: {escape(reason)}{more}[/]")
        else:
            parts.append("[$success]ready: ctrl+t starts training[/]")
        status = self.query_one("#config-status", Static)
        status.update(" · ".join(parts))
        status.set_class(bool(blockers), "-blocked")

    def focus_setting(self, key: str) -> None:
        self.form.when_complete(lambda: self.form.focus_setting(key))

    # ---- where the keys go: a setting's line (screen keys work) or its editor (keys type)

    @property
    def editing(self) -> bool:
        """An editor has focus: keys type into it until escape."""
        return isinstance(self.focused, (Input, TextArea)) and self.form.line_of(self.focused) is not None

    def _focused_line(self) -> SettingLine | None:
        return self.form.line_of(self.focused)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # the footer shows what the keys do now: leave the field while editing, else edit it
        if action == "leave_field":
            return self.editing
        if action in ("edit", "jump"):
            return not self.editing
        if action == "jump_anywhere":
            return self.editing  # on a line, `/` does it (and says so)
        return True

    def action_edit(self) -> None:
        line = self._focused_line()
        if line is None or isinstance(self.focused, TextArea):
            raise SkipAction()  # enter in the prompts is a new line; elsewhere not ours
        if self.editing:
            self.action_leave_field()
        elif line.editable:
            line.start_editing()
        elif line.kind == SWITCH:
            line.toggle()
        else:
            self._open_choices(line)

    def action_toggle(self) -> None:
        line = self._focused_line()
        if line is None or self.editing:
            raise SkipAction()
        self.action_edit()

    def action_leave_field(self) -> None:
        line = self._focused_line()
        if line is None or not self.editing:
            raise SkipAction()
        line.stop_editing()
        self.set_focus(line)

    def action_step(self, step: int) -> None:
        if self._focused_line() is None:
            raise SkipAction()
        self.form.step(self.focused, step)

    def action_arrow(self, step: int) -> None:
        if self._focused_line() is None or isinstance(self.focused, TextArea):
            raise SkipAction()  # the arrows move the cursor in the prompts
        self.form.step(self.focused, step)

    def action_choice(self, step: int) -> None:
        line = self._focused_line()
        if line is None or self.editing or line.kind != SELECT:
            raise SkipAction()
        line.step_choice(step)

    def on_config_form_choices_requested(self, message: ConfigForm.ChoicesRequested) -> None:
        self._open_choices(self.form.rows[message.key])

    def _open_choices(self, line: SettingLine) -> None:
        from tui.screens.config_dialogs import ChoicesDialog

        def picked(value) -> None:
            self.set_focus(line)
            if value != line.raw:
                line._user_changed(value)

        ChoicesDialog.open(self.app, line.spec.label, list(line.spec.choices), line.raw, picked)

    # ---- plan and runs

    def on_plan_panel_planned(self, message: PlanPanel.Planned) -> None:
        self.call_after_refresh(self._refresh_messages)

    def on_plan_panel_failed(self, message: PlanPanel.Failed) -> None:
        self.call_after_refresh(self._refresh_messages)

    @work(thread=True, exclusive=True, group="config-runs")
    def _scan_runs(self) -> None:
        runs_dir = self._runs_dir()
        self.post_message(self.RunsScanned(existing_run_names(runs_dir), recent_speed(runs_dir)))

    def on_config_screen_runs_scanned(self, message: RunsScanned) -> None:
        self._run_names = message.names
        self.plan_panel.speed = message.speed
        self._refresh_messages()

    # ---- drafts

    def _schedule_draft(self) -> None:
        if self._draft_timer is not None:
            self._draft_timer.stop()
        self._draft_timer = self.set_timer(DRAFT_DELAY_S, self._write_draft)

    def _write_draft(self) -> None:
        self._draft_timer = None
        try:
            if self.state.dirty:
                self.workspace.save_state(DRAFT_STATE, self.state.draft())
            elif (self.workspace.state_dir / f"{DRAFT_STATE}.json").exists():
                self.workspace.save_state(DRAFT_STATE, {})
        except OSError as error:
            self.notify(f"Cannot keep a draft of unsaved changes: {error}", severity="warning")

    # ---- actions

    def action_jump(self) -> None:
        from tui.screens.config_dialogs import JumpDialog

        def open_dialog() -> None:
            specs = [line.spec for line in self.form.shown_lines()]
            JumpDialog.open(self.app, specs, lambda key: self.form.focus_setting(key, edit=True))

        if self.form.complete:
            open_dialog()
        else:  # just after the first frame: the keys typed meanwhile wait for the whole form
            self.app.hold_keys()
            self.form.when_complete(lambda: (open_dialog(), self.app.release_keys()))

    def action_jump_anywhere(self) -> None:
        self.action_jump()

    def action_save(self) -> bool:
        problems = self.state.problems()
        if problems:
            key, reason = next(iter(problems.items()))
            self.notify(f"{key}: {reason}", title=f"Not saved: {len(problems)} setting(s) to fix", severity="error")
            self.focus_setting(key)
            return False
        path = self.workspace.config_path
        try:
            save_config(self.state.config, path)
        except OSError as error:
            self.notify(f"{path}: {error}", title="Not saved", severity="error")
            return False
        self._disk_stamp = _file_stamp(path)
        self.state.mark_saved()
        if self._draft_timer is not None:
            self._draft_timer.stop()
        self._write_draft()
        self._refresh_messages()
        self.notify(f"Saved {path}", title="Config")
        return True

    def action_open(self) -> None:
        options = [(f"preset:{p.name}", f"Preset: {p.title} — {p.description}") for p in list_presets()]
        options.append(("kohya", "Import a Kohya GUI JSON config…"))
        options.append(("reload", f"Reload {self.workspace.config_path.name} from disk"))
        from tui.screens.config_dialogs import ChoiceDialog

        self.app.push_screen(
            ChoiceDialog("Start from", options,
                         "A preset keeps your base model, folders, prompts and output name."),
            self._opened,
        )

    def _opened(self, choice: str | None) -> None:
        if choice is None:
            return
        if choice.startswith("preset:"):
            name = choice.removeprefix("preset:")
            keep = tuple(key for key in LOCATION_KEYS
                         if self.state.values[key] != self.state.specs[key].default)
            changed = self.state.apply(load_preset(name), keep)
            self._show_values(changed)
            self.notify(f"{len(changed)} setting(s) changed; not saved yet (ctrl+s).", title=f"Preset {name}")
        elif choice == "kohya":
            from tui.screens.config_dialogs import PathDialog

            self.app.push_screen(PathDialog("Kohya GUI JSON config to import", self.base_dir), self._import_path)
        elif choice == "reload":
            if self.state.dirty:
                from tui.screens.confirm import ConfirmScreen

                self.app.push_screen(
                    ConfirmScreen(f"Drop the unsaved changes and reload {self.workspace.config_path.name}?"),
                    lambda yes: self._reload() if yes else None,
                )
            else:
                self._reload()

    def _reload(self) -> None:
        before = dict(self.state.raw)
        for note in self._load_from_disk():
            self.notify(note, title="Config", severity="warning")
        self._loaded_raw = dict(self.state.raw)
        self._show_values([key for key, raw in self.state.raw.items() if before.get(key) != raw])
        self._write_draft()

    def _import_path(self, text: str | None) -> None:
        if not text:
            return
        path = Path(text).expanduser()
        self._import_kohya(path if path.is_absolute() else self.base_dir / path)

    @work(thread=True, exclusive=True, group="config-import")
    def _import_kohya(self, path: Path) -> None:
        from engine.config.kohya_import import import_kohya_file

        try:
            result = import_kohya_file(path)
        except LoradeckError as error:
            self.post_message(self.Failed("Kohya import failed", str(error)))
        else:
            self.post_message(self.Imported(path, result))

    def on_config_screen_imported(self, message: Imported) -> None:
        result = message.result
        config = result.config
        for key in result.left_to_set:  # a preset: the model (and what else it leaves unset) stays as it is
            group, name = key.split(".")
            config = replace_setting(config, key, getattr(getattr(self.state.config, group), name))
        changed = self.state.apply(config)
        self._show_values(changed)
        lines = [f"{len(changed)} setting(s) changed; not saved yet (ctrl+s).",
                 f"{len(result.mapped)} Kohya key(s) mapped."]
        if result.ignored:
            shown = ", ".join(result.ignored[:8]) + (" …" if len(result.ignored) > 8 else "")
            lines.append(f"{len(result.ignored)} Kohya key(s) not used: {shown}")
        lines += result.notes
        self.notify("\n".join(lines), title=f"Imported {message.path.name}", timeout=10)

    def on_config_screen_failed(self, message: Failed) -> None:
        self.notify(message.reason, title=message.title, severity="error", timeout=10)
        self._refresh_messages()

    def action_next_name(self) -> None:
        self._run_names = existing_run_names(self._runs_dir())
        names = suggest_names(self.state.config.saving.output_name, self._run_names)
        from tui.screens.config_dialogs import ChoiceDialog

        options = [(names.new_images, f"{names.new_images}  — new images (next number)")]
        if names.new_settings != names.new_images:
            options.append((names.new_settings, f"{names.new_settings}  — same images, new settings (next letter)"))
        self.app.push_screen(ChoiceDialog("Output name for the next run", options), self._set_name)

    def _set_name(self, name: str | None) -> None:
        if name and self.state.set(NAME_KEY, name):
            self._show_values([NAME_KEY])

    def action_start(self) -> None:
        self._run_names = existing_run_names(self._runs_dir())
        self._refresh_messages()
        blockers = {**self.state.problems(), **self._blockers}
        if blockers:
            key, reason = next(iter(blockers.items()))
            label = self.state.specs[key].label
            self.notify(f"{label} ({key}): {reason}", title="Cannot start training", severity="error", timeout=10)
            self.focus_setting(key)
            return
        if not self.action_save():
            return
        self.query_one("#config-status", Static).update("starting the engine…")
        self._start_training(self.workspace.config_path)

    @work(thread=True, exclusive=True, group="config-start")
    def _start_training(self, config_path: Path) -> None:
        from engine.run.launch import start_training

        try:
            run_dir = start_training(config_path, detach=True)
        except (LoradeckError, OSError) as error:
            self.post_message(self.Failed("Training not started", str(error)))
        else:
            self.post_message(self.Started(Path(run_dir)))

    def on_config_screen_started(self, message: Started) -> None:
        from tui.screens.dashboard import DashboardScreen

        self._run_names.add(message.run_dir.name)
        self._refresh_messages()
        self.notify(f"Training started in {message.run_dir}", title="Config")
        # the dashboard goes on the runs screen's stack, so `4` and escape lead to the run
        # list. Not awaited: this screen's own queue must keep running while it is suspended.
        self.app.switch_mode("runs")
        self.app.push_screen(DashboardScreen(self.workspace, message.run_dir))
