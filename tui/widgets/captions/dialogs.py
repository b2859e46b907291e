"""Dialogs of the caption editor: tag prompt with autocomplete, raw caption editor,
on-disk conflict question, auto-caption settings. Each is a ModalScreen that dismisses
with its answer; the screen decides what to do with it."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, Select, Static, TextArea
from textual.widgets.option_list import Option
from tui.widgets.shared.key_footer import KeyFooter

SUGGESTION_COUNT = 8
OPERATOR_CHARS = "+-^"


def completion_target(text: str) -> tuple[str, str]:
    """Split prompt text into the part kept and the tag being typed.

    "canal" -> ("", "canal"); "+can" -> ("+", "can"); "city=al" -> ("city=", "al").
    """
    if "=" in text:
        head, _, fragment = text.partition("=")
        return head + "=", fragment
    if text[:1] in OPERATOR_CHARS:
        return text[:1], text[1:]
    return "", text


def matching_tags(fragment: str, tags: list[tuple[str, int]], limit: int = SUGGESTION_COUNT) -> list[tuple[str, int]]:
    """Tags starting with the fragment first, then tags containing it; by frequency."""
    needle = fragment.strip().lower()
    if not needle:
        return tags[:limit]
    starts, contains = [], []
    for tag, count in tags:
        lowered = tag.lower()
        if lowered == needle:
            continue
        if lowered.startswith(needle):
            starts.append((tag, count))
        elif needle in lowered:
            contains.append((tag, count))
        if len(starts) >= limit:
            break
    return (starts + contains)[:limit]


class TagPrompt(ModalScreen[str | None]):
    """One line of input with tag suggestions from the dataset.

    ↓/↑ choose a suggestion, tab puts it in the line, enter accepts (the chosen
    suggestion when one is chosen, else the typed text), escape cancels.
    """

    CSS_PATH = "dialogs.tcss"
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("down", "suggestion(1)", "Next suggestion", show=False),
        Binding("up", "suggestion(-1)", "Previous suggestion", show=False),
        Binding("tab", "complete", "Complete"),
    ]
    # No priority bindings here: a priority enter runs before keys typed just ahead
    # of it are delivered, and those would then land on the screen underneath.

    def __init__(self, title: str, hint: str, tags: list[tuple[str, int]], value: str = "",
                 exclude: set[str] = frozenset()):
        super().__init__()
        self.title_text = title
        self.hint = hint
        # Suggesting a tag the caption already has would only add nothing.
        self.tags = [(tag, count) for tag, count in tags if tag not in exclude]
        self.initial = value
        self._chosen = False  # the user moved into the suggestion list

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="tag-prompt"):
            yield Label(self.title_text, id="dialog-title")
            yield Static(self.hint, id="dialog-hint")
            yield Input(self.initial, id="prompt-input")
            yield OptionList(id="prompt-suggestions")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one(Input).focus()
        self._update_suggestions(self.initial)

    def on_input_changed(self, event: Input.Changed) -> None:
        self._chosen = False
        self._update_suggestions(event.value)

    def _update_suggestions(self, value: str) -> None:
        _head, fragment = completion_target(value)
        suggestions = self.query_one("#prompt-suggestions", OptionList)
        suggestions.clear_options()
        suggestions.add_options(Option(Text.assemble(tag, (f"  {count}", "dim")), id=tag)
                                for tag, count in matching_tags(fragment, self.tags))
        suggestions.display = suggestions.option_count > 0
        suggestions.highlighted = None

    def _highlighted_tag(self) -> str | None:
        suggestions = self.query_one("#prompt-suggestions", OptionList)
        option = suggestions.highlighted_option
        return option.id if option is not None else None

    def action_suggestion(self, step: int) -> None:
        suggestions = self.query_one("#prompt-suggestions", OptionList)
        if not suggestions.option_count:
            return
        if suggestions.highlighted is None:
            suggestions.highlighted = 0 if step > 0 else suggestions.option_count - 1
        else:
            suggestions.highlighted = (suggestions.highlighted + step) % suggestions.option_count
        self._chosen = True

    def _completed(self, tag: str) -> str:
        head, _fragment = completion_target(self.query_one(Input).value)
        return head + tag

    def action_complete(self) -> None:
        tag = self._highlighted_tag()
        if tag is None:
            suggestions = self.query_one("#prompt-suggestions", OptionList)
            if not suggestions.option_count:
                return
            tag = suggestions.get_option_at_index(0).id
        prompt = self.query_one(Input)
        prompt.value = self._completed(tag)
        prompt.cursor_position = len(prompt.value)

    def action_accept(self) -> None:
        tag = self._highlighted_tag() if self._chosen else None
        value = self._completed(tag) if tag else self.query_one(Input).value
        self.dismiss(value.strip() or None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_accept()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self._completed(event.option.id or ""))

    def action_cancel(self) -> None:
        self.dismiss(None)


class CaptionTextEditor(ModalScreen[str | None]):
    """Edit the whole caption text; ctrl+s saves, escape cancels."""

    CSS_PATH = "dialogs.tcss"
    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, title: str, text: str):
        super().__init__()
        self.title_text = title
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="caption-editor"):
            yield Label(self.title_text, id="dialog-title")
            yield TextArea(self.text, id="caption-text", soft_wrap=True, show_line_numbers=False)
        yield KeyFooter()

    def on_mount(self) -> None:
        area = self.query_one(TextArea)
        area.focus()
        area.move_cursor(area.document.end)

    def action_save(self) -> None:
        self.dismiss(self.query_one(TextArea).text)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConflictDialog(ModalScreen[str]):
    """Files changed on disk since loaded: overwrite them, keep the disk version, or cancel."""

    CSS_PATH = "dialogs.tcss"
    BINDINGS = [
        Binding("o", "answer('overwrite')", "Overwrite with my edit"),
        Binding("k", "answer('keep')", "Keep the disk version"),
        Binding("escape", "answer('cancel')", "Cancel"),
    ]

    def __init__(self, names: list[str], action: str):
        super().__init__()
        self.names = names
        self.action_label = action

    def compose(self) -> ComposeResult:
        shown = "\n".join(f"  {name}" for name in self.names[:6])
        more = f"\n  … and {len(self.names) - 6} more" if len(self.names) > 6 else ""
        count = len(self.names)
        with Vertical(id="dialog", classes="conflict"):
            yield Label(f"{count} caption file{'s' if count != 1 else ''} changed on disk since loaded",
                        id="dialog-title")
            yield Static(f"{shown}{more}\n\n{self.action_label}: overwrite them (o), keep what is on "
                         "disk for these files (k), or cancel (escape)?", id="dialog-hint")
        yield KeyFooter()

    def action_answer(self, answer: str) -> None:
        self.dismiss(answer)


CAPTIONER_KINDS = [("auto (from the model)", "auto"), ("BLIP", "blip"), ("Florence-2", "florence2"),
                   ("WD14 tagger (ONNX)", "wd14")]
EXISTING_MODES = [("skip captioned images", "skip"), ("append new tags", "append"),
                  ("overwrite captions", "overwrite")]


class AutoCaptionDialog(ModalScreen[dict | None]):
    """Settings of an auto-caption job; ctrl+s starts it."""

    CSS_PATH = "dialogs.tcss"
    BINDINGS = [
        Binding("ctrl+s", "start", "Start"),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, folder: str, settings: dict):
        super().__init__()
        self.folder = folder
        self.settings = settings

    def compose(self) -> ComposeResult:
        value = self.settings.get
        with Vertical(id="dialog", classes="autocaption"):
            yield Label(f"Auto-caption {self.folder}", id="dialog-title")
            yield Static("Model: a local folder or a hub id, e.g. SmilingWolf/wd-vit-tagger-v3, "
                         "Salesforce/blip-image-captioning-large, florence-community/Florence-2-large",
                         id="dialog-hint")
            yield Input(value("model", ""), placeholder="model folder or hub id", id="auto-model")
            with Horizontal(classes="dialog-row"):
                yield Select(CAPTIONER_KINDS, value=value("kind", "auto"), allow_blank=False, id="auto-kind")
                yield Select(EXISTING_MODES, value=value("mode", "skip"), allow_blank=False, id="auto-mode")
            with Horizontal(classes="dialog-row"):
                yield Input(value("prefix", ""), placeholder="prefix / trigger word", id="auto-prefix")
                yield Input(value("suffix", ""), placeholder="suffix", id="auto-suffix")
            yield Input(value("extra", ""), placeholder="more options, e.g. --general-threshold 0.4 "
                        "--undesired-tags 'text, watermark'", id="auto-extra")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#auto-model", Input).focus()

    def action_start(self) -> None:
        model = self.query_one("#auto-model", Input).value.strip()
        if not model:
            self.notify("Give a model folder or hub id", severity="warning")
            return
        self.dismiss({
            "model": model,
            "kind": self.query_one("#auto-kind", Select).value,
            "mode": self.query_one("#auto-mode", Select).value,
            "prefix": self.query_one("#auto-prefix", Input).value,
            "suffix": self.query_one("#auto-suffix", Input).value,
            "extra": self.query_one("#auto-extra", Input).value,
        })

    def on_input_submitted(self, _event: Input.Submitted) -> None:
        self.action_start()

    def action_cancel(self) -> None:
        self.dismiss(None)
