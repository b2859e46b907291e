"""KeyFooter: Textual's footer, fitted to any width (80x24 over SSH included).

Textual's footer lays the keys out in one row and cuts whatever passes the right edge,
often mid-word, and its docked palette key lets a character of the key beneath show
through at the edge. This one:

- pins `? Keys` to the right edge, so the key that lists every other key is always there
  (the palette, ctrl+p, is listed by `?` and stays one key away);
- leaves out, from the end, the keys that do not fit whole: a screen lists its most used
  keys first, and nothing is drawn half;
- is in the screen's first frame: Textual's footer composes empty and fills in two
  refreshes later (the screen's first frame had no keys), and composes its keys again
  whenever the screen reports its bindings, even when they are the same (tens of ms each
  on a dashboard that reports them at every state change). This one composes the
  screen's keys at once, fits them to the terminal's width before the first frame, and
  composes again only when the keys shown change.

Screens use it in place of `Footer`; the keys themselves stay ordinary bindings.
"""
from __future__ import annotations

from textual.app import ComposeResult
from textual.geometry import Size
from textual.widget import Widget
from textual.widgets import Footer
from textual.widgets._footer import FooterKey, FooterLabel, KeyGroup

PINNED_ACTION = "keys"  # the app's `?`
MEASURE = Size(200, 1)


class KeyFooter(Footer):
    DEFAULT_CSS = """
    KeyFooter FooterKey.-pinned {
        dock: right;
        padding: 0 0 0 1;
        margin: 0;
    }
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("compact", True)
        super().__init__(show_command_palette=False, **kwargs)
        self.set_reactive(Footer._bindings_ready, True)  # the screen's keys in the first compose
        self._composed_keys: tuple | None = None

    def compose(self) -> ComposeResult:
        self._composed_keys = self._shown_keys()
        for widget in super().compose():
            if isinstance(widget, FooterKey) and widget.action == PINNED_ACTION:
                widget.add_class("-pinned")
            yield widget

    def on_mount(self) -> None:
        super().on_mount()
        # the footer spans the terminal: fitted to its width now, so the first frame has
        # the keys that fit and no key cut in half (on_resize fits again when laid out)
        self.fit(self.app.size.width)

    def _shown_keys(self) -> tuple:
        """What the footer would show for the screen's bindings now."""
        return tuple((binding.key, binding.description, binding.action, binding.group, enabled)
                     for _node, binding, enabled, _tooltip in self.screen.active_bindings.values() if binding.show)

    def _items(self) -> list[list[Widget]]:
        """The footer's entries in order: a key, or a key group with its label."""
        items: list[list[Widget]] = []
        for child in self.children:
            if child.has_class("-pinned"):
                continue
            if isinstance(child, FooterLabel) and items and isinstance(items[-1][0], KeyGroup):
                items[-1].append(child)
            else:
                items.append([child])
        return items

    def fit(self, width: int | None = None) -> None:
        """Show the entries that fit whole beside the pinned key, in order, in `width`
        cells (the footer's own width by default)."""
        pinned = [child for child in self.children if child.has_class("-pinned")]
        room = (width or self.size.width) - sum(_width(child) for child in pinned)
        used, full = 0, False
        for item in self._items():
            width = sum(_width(widget) for widget in item)
            full = full or used + width - item[-1].styles.margin.right > room  # a last margin may be cut
            used += 0 if full else width
            for widget in item:
                widget.display = not full

    def on_resize(self) -> None:
        self.fit()

    async def recompose(self) -> None:
        if not self.is_attached or self._shown_keys() == self._composed_keys:
            return  # gone with its screen, or the same keys: nothing to compose again
        await super().recompose()
        # hidden until measured (no frame with a key cut in half), then fitted; once more a
        # moment later, when every key's compact style has surely been applied
        for item in self._items():
            for widget in item:
                widget.display = False
        self.call_after_refresh(self.fit)
        self.set_timer(0.2, self.fit)


def _width(widget: Widget) -> int:
    """Cells a footer entry takes, margins included, whether it is shown or not."""
    if isinstance(widget, KeyGroup):
        inner = sum(_width(child) for child in widget.children)
    else:
        inner = widget.get_content_width(MEASURE, MEASURE)
    return inner + widget.styles.gutter.width + widget.styles.margin.width
