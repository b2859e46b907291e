"""ImagePreview: the one image widget every screen uses (captions, health, dashboard).

Set `preview.path` and the file is decoded, EXIF-transposed (unless `apply_exif` is
False, which shows the pixels the way a trainer that ignores EXIF sees them) and shrunk
to the widget's pixel size in a thread worker, so the UI never waits on a decode. The
picture is drawn with textual-image: Kitty graphics or Sixel where the terminal has them,
coloured half cells otherwise (also inside tmux), plain unicode when there is no terminal
(`tui.terminal_graphics` asks the terminal once and imports textual-image on first use).
`app.image_protocol` forces one: None/"auto", "kitty", "sixel", "halfcell", "unicode",
or "none" for the text line only.
`marked_row` (a pixel row of the file as stored, -1 for none) draws a red line across
the picture there, on the shown copy only: the health screen marks where damage starts.
`crop` (left, top, right, bottom as fractions of the upright picture, None for all of
it) shows a part of the picture at the widget's full size: the zoom of the image viewer.
A one-line label under the picture names the file, its pixel size and bytes; when no
picture can be drawn (undecodable file, textual-image missing) that text is all there is.

Decoded pictures are kept in a small shared cache, and `prefetch(paths)` fills it ahead
of time, so stepping to the next image of a list costs only the drawing.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from tui.workers import work
from textual.app import ComposeResult
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Static

from engine.run.format import format_bytes
from tui import terminal_graphics

# Never decode bigger than this: a full-screen Sixel on a 4K terminal is about this size.
MAX_DECODE_PIXELS = 1600
# Before the widget has a size, decode for a typical half-screen panel.
DEFAULT_DECODE_PIXELS = 1024
CACHE_SIZE = 8
MARK_COLOR = (255, 0, 0)
# The marker is this share of the shown height thick (at least 2 pixels), so that it
# survives the half-cell renderer's two pixel rows per terminal line.
MARK_THICKNESS = 0.01


@dataclass(frozen=True)
class DecodedImage:
    path: Path
    picture: Any  # PIL.Image.Image shrunk to the decode box, RGB, or None
    width: int  # upright pixel size of the file (after EXIF transpose when applied)
    height: int
    file_bytes: int
    orientation: int  # the EXIF Orientation tag, 1 when absent
    error: str = ""

    def describe(self) -> str:
        parts = [self.path.name]
        if self.width:
            parts.append(f"{self.width}×{self.height}")
        parts.append(format_bytes(self.file_bytes))
        if self.orientation not in (0, 1):
            parts.append(f"EXIF orientation {self.orientation}")
        if self.error:
            parts.append(self.error)
        return " · ".join(parts)


class _DecodeCache:
    """A small thread-safe LRU of decoded pictures shared by every ImagePreview."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[tuple, DecodedImage] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> DecodedImage | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple, item: DecodedImage) -> None:
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)


_cache = _DecodeCache(CACHE_SIZE)


Crop = tuple[float, float, float, float]


def _cache_key(path: Path, apply_exif: bool, box: tuple[int, int], crop: Crop | None = None) -> tuple | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    # mtime and size in the key: a file fixed on disk (health screen) is decoded again.
    return (str(path), apply_exif, box, crop, stat.st_mtime_ns, stat.st_size)


def decode_image(path: Path, apply_exif: bool, box: tuple[int, int], crop: Crop | None = None) -> DecodedImage:
    """Open, optionally EXIF-transpose, optionally crop (fractions of the upright picture)
    and shrink one image to fit `box` pixels.

    Never raises for a bad file: the error is carried in the result so the widget can
    show it as text.
    """
    key = _cache_key(path, apply_exif, box, crop)
    if key is not None:
        cached = _cache.get(key)
        if cached is not None:
            return cached
    try:
        file_bytes = path.stat().st_size
    except OSError as error:
        return DecodedImage(path, None, 0, 0, 0, 1, f"cannot read: {error.strerror or error}")
    try:
        from PIL import Image, ImageOps

        with Image.open(path) as opened:
            orientation = int(opened.getexif().get(0x0112, 1) or 1)
            full_width, full_height = opened.size  # before draft() shrinks it
            if apply_exif and orientation in (5, 6, 7, 8):
                full_width, full_height = full_height, full_width
            # JPEG draft decodes at 1/2, 1/4 or 1/8 scale: a 24 MP photo in a few ms.
            # The square box keeps enough pixels whichever way EXIF turns it; a crop
            # needs as many more as it magnifies.
            magnify = 1.0 if crop is None else 1.0 / max(1e-3, min(crop[2] - crop[0], crop[3] - crop[1]))
            side = int(max(box) * magnify)
            opened.draft("RGB", (side, side))
            picture = ImageOps.exif_transpose(opened) if apply_exif else opened
            picture.load()
            if opened.mode in ("RGBA", "LA", "PA") or (opened.mode == "P" and "transparency" in opened.info):
                rgba = picture.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
                picture = Image.alpha_composite(background, rgba)
            picture = picture.convert("RGB")
            if crop is not None:
                left, top, right, bottom = crop
                picture = picture.crop((int(left * picture.width), int(top * picture.height),
                                        max(1, round(right * picture.width)), max(1, round(bottom * picture.height))))
            picture.thumbnail(box, Image.Resampling.BILINEAR)
        result = DecodedImage(path, picture, full_width, full_height, file_bytes, orientation)
    except Exception as error:  # any decoder failure is shown, not raised
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        result = DecodedImage(path, None, 0, 0, file_bytes, 1, f"cannot decode: {message}")
    if key is not None:
        _cache.put(key, result)
    return result


class ImagePreview(Widget):
    """Shows one image file; set `path` (None clears it) and `apply_exif`."""

    DEFAULT_CSS = """
    ImagePreview {
        layout: vertical;
        height: 1fr;
        width: 1fr;
    }
    ImagePreview > #image-preview-area {
        height: 1fr;
        width: 1fr;
        align: center middle;
    }
    ImagePreview #image-preview-picture {
        width: auto;
        height: auto;
    }
    ImagePreview > #image-preview-label {
        height: 1;
        width: 1fr;
        color: $text-muted;
        text-align: center;
    }
    ImagePreview #image-preview-message {
        width: 1fr;
        height: auto;
        color: $text-muted;
        text-align: center;
    }
    """

    path: reactive[Path | None] = reactive(None)
    apply_exif: reactive[bool] = reactive(True)
    marked_row: reactive[int] = reactive(-1)
    crop: reactive[Crop | None] = reactive(None)

    class Decoded(Message):
        """A decode finished (posted by the worker)."""

        def __init__(self, generation: int, result: DecodedImage) -> None:
            super().__init__()
            self.generation = generation
            self.result = result

    def __init__(self, path: Path | None = None, *, apply_exif: bool = True,
                 name: str | None = None, id: str | None = None, classes: str | None = None):
        super().__init__(name=name, id=id, classes=classes)
        self._generation = 0
        self._picture_widget: Widget | None = None
        self._ready = False  # decode only once laid out, so the decode box is known
        self.set_reactive(ImagePreview.apply_exif, apply_exif)
        self.set_reactive(ImagePreview.path, Path(path) if path is not None else None)

    def compose(self) -> ComposeResult:
        from textual.containers import Container

        with Container(id="image-preview-area"):
            yield Static("", id="image-preview-message")
        yield Static("", id="image-preview-label")

    def on_mount(self) -> None:
        self.call_after_refresh(self._first_decode)

    def _first_decode(self) -> None:
        self._ready = True
        self._start_decode()

    def on_resize(self) -> None:
        # A bigger panel deserves a sharper decode; the cache keys on the box.
        self._start_decode()

    # ---- public API beside the reactives

    @property
    def protocol(self) -> str | None:
        return getattr(self.app, "image_protocol", None)

    def prefetch(self, paths: Iterable[Path]) -> None:
        """Decode these files into the shared cache in the background (next images)."""
        paths = [Path(p) for p in paths if p is not None]
        if paths:
            self._prefetch_worker(paths, self.apply_exif, self._decode_box())

    # ---- reactives

    def watch_path(self, _old: Path | None, _new: Path | None) -> None:
        self._start_decode()

    def watch_apply_exif(self, _old: bool, _new: bool) -> None:
        self._start_decode()

    def watch_marked_row(self, _old: int, _new: int) -> None:
        self._start_decode()

    def watch_crop(self, _old: Crop | None, _new: Crop | None) -> None:
        self._start_decode()

    # ---- decoding

    def _decode_box(self) -> tuple[int, int]:
        """The widget's picture area in pixels (what the renderer would scale to)."""
        columns, rows = self.content_size.width, max(self.content_size.height - 1, 0)
        if columns <= 0 or rows <= 0:
            return (DEFAULT_DECODE_PIXELS, DEFAULT_DECODE_PIXELS)
        cell_width, cell_height = terminal_graphics.cell_size()
        return (min(MAX_DECODE_PIXELS, max(64, columns * cell_width)),
                min(MAX_DECODE_PIXELS, max(64, rows * cell_height)))

    def _start_decode(self) -> None:
        if not self._ready:
            return
        self._generation += 1
        if self.path is None:
            self._show_nothing()
            return
        path = Path(self.path)
        box = self._decode_box()
        key = _cache_key(path, self.apply_exif, box, self.crop)
        cached = _cache.get(key) if key is not None else None
        if cached is not None:
            # Already decoded (prefetched): draw now, no worker round trip.
            self._show(cached)
            return
        self.query_one("#image-preview-label", Static).update(f"{path.name} · loading…")
        self._decode_worker(self._generation, path, self.apply_exif, box, self.crop)

    @work(thread=True, exclusive=True, group="image-preview-decode")
    def _decode_worker(self, generation: int, path: Path, apply_exif: bool, box: tuple[int, int],
                       crop: Crop | None) -> None:
        result = decode_image(path, apply_exif, box, crop)
        if self.protocol != "none":
            terminal_graphics.image_widgets()  # its first import here, not in the UI's thread
        self.post_message(self.Decoded(generation, result))

    @work(thread=True, exclusive=True, group="image-preview-prefetch")
    def _prefetch_worker(self, paths: list[Path], apply_exif: bool, box: tuple[int, int]) -> None:
        from textual.worker import get_current_worker

        worker = get_current_worker()
        for path in paths:
            if worker.is_cancelled:
                return
            decode_image(path, apply_exif, box)

    def on_image_preview_decoded(self, message: Decoded) -> None:
        message.stop()
        if message.generation != self._generation:
            return  # the user has moved on; a newer decode is on its way
        self._show(message.result)

    # ---- drawing

    def _show_nothing(self) -> None:
        self._remove_picture()
        self.query_one("#image-preview-message", Static).update("")
        self.query_one("#image-preview-message", Static).display = True
        self.query_one("#image-preview-label", Static).update("")

    def _show(self, result: DecodedImage) -> None:
        label = self.query_one("#image-preview-label", Static)
        message = self.query_one("#image-preview-message", Static)
        label.update(result.describe())
        widget_class = terminal_graphics.widget_class(self.protocol)
        if result.picture is None or widget_class is None:
            self._remove_picture()
            message.display = True
            reason = result.error or "no image protocol available"
            message.update(f"{result.path.name}\n{format_bytes(result.file_bytes)}\n{reason}")
            return
        message.display = False
        picture = marked(result, self.marked_row, self.apply_exif) if self.crop is None else result.picture
        if self._picture_widget is not None and type(self._picture_widget) is widget_class:
            self._picture_widget.image = picture
            return
        self._remove_picture()
        try:
            self._picture_widget = widget_class(picture, id="image-preview-picture")
        except Exception as error:  # a protocol that cannot start: text instead
            self._picture_widget = None
            message.display = True
            message.update(f"{result.path.name}\n{format_bytes(result.file_bytes)}\ncannot draw: {error}")
            return
        self.query_one("#image-preview-area").mount(self._picture_widget)

    def _remove_picture(self) -> None:
        if self._picture_widget is not None:
            self._picture_widget.remove()
            self._picture_widget = None


def marked(result: DecodedImage, row: int, apply_exif: bool):
    """The shown picture, with a line at pixel `row` of the stored file when row >= 0.

    Drawn on a copy: the cached decode stays clean. Rows move with the EXIF transpose;
    for a quarter turn they become columns, so no line is drawn then."""
    picture = result.picture
    turned = apply_exif and result.orientation in (5, 6, 7, 8)
    if row < 0 or picture is None or turned or result.height <= 0:
        return picture
    from PIL import ImageDraw

    y = row * picture.height // result.height
    if apply_exif and result.orientation in (3, 4):
        y = picture.height - 1 - y
    thickness = max(2, round(picture.height * MARK_THICKNESS))
    copy = picture.copy()
    ImageDraw.Draw(copy).rectangle((0, y, copy.width - 1, min(copy.height - 1, y + thickness - 1)), fill=MARK_COLOR)
    return copy

