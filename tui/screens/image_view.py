"""ImageViewScreen: one image on the whole terminal, with zoom and pan (as taggui's viewer).

`+`/`-` zoom in and out (up to 16×), the arrow keys or h/j/k/l pan, `0` shows the whole
picture again, escape closes. The zoomed part is decoded at the screen's full pixel size
(ImagePreview's `crop`), so a detail is sharp, not a blown-up thumbnail.
"""
from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Static

from tui.widgets.shared.image_preview import Crop, ImagePreview
from tui.widgets.shared.key_footer import KeyFooter

MAX_ZOOM = 16
PAN_SHARE = 0.25  # of the visible part, per key press


def crop_for(zoom: int, center: tuple[float, float]) -> tuple[Crop | None, tuple[float, float]]:
    """The crop of a view at `zoom` around `center`, and the center moved inside the picture."""
    if zoom <= 1:
        return None, (0.5, 0.5)
    half = 0.5 / zoom
    x = min(1 - half, max(half, center[0]))
    y = min(1 - half, max(half, center[1]))
    return (x - half, y - half, x + half, y + half), (x, y)


class ImageViewScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    ImageViewScreen {
        background: $background;
        layout: vertical;
    }
    ImageViewScreen #image-view-title {
        height: 1;
        padding: 0 1;
        background: $panel;
    }
    ImageViewScreen ImagePreview {
        height: 1fr;
    }
    """

    BINDINGS = [
        Binding("escape,q,z", "dismiss", "Close"),
        Binding("plus,equals_sign", "zoom(2)", "Zoom in"),
        Binding("minus", "zoom(0.5)", "Zoom out"),
        Binding("0", "zoom(0)", "Whole picture"),
        Binding("left,h", "pan(-1, 0)", "Pan", show=False),
        Binding("right,l", "pan(1, 0)", "Pan", show=False),
        Binding("up,k", "pan(0, -1)", "Pan", show=False),
        Binding("down,j", "pan(0, 1)", "Pan", show=False),
    ]

    def __init__(self, path: Path, title: str = "", *, apply_exif: bool = True) -> None:
        super().__init__()
        self.path = Path(path)
        self.title_text = title or self.path.name
        self.apply_exif = apply_exif
        self.zoom = 1
        self.center = (0.5, 0.5)

    def compose(self) -> ComposeResult:
        yield Static("", id="image-view-title", markup=False)
        yield ImagePreview(self.path, apply_exif=self.apply_exif, id="image-view")
        yield KeyFooter()

    def on_mount(self) -> None:
        self._show()

    def _show(self) -> None:
        crop, self.center = crop_for(self.zoom, self.center)
        self.query_one(ImagePreview).crop = crop
        where = "" if crop is None else f" · {self.zoom}× around {self.center[0]:.0%}, {self.center[1]:.0%}"
        self.query_one("#image-view-title", Static).update(
            f"{self.title_text}{where} · + - zoom · arrows pan · 0 whole · esc closes")

    def action_zoom(self, factor: float) -> None:
        self.zoom = 1 if factor == 0 else int(min(MAX_ZOOM, max(1, self.zoom * factor)))
        self._show()

    def action_pan(self, dx: int, dy: int) -> None:
        if self.zoom > 1:
            step = PAN_SHARE / self.zoom
            self.center = (self.center[0] + dx * step, self.center[1] + dy * step)
            self._show()
