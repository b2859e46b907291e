"""The caption editor driven by real key presses; every caption file checked byte for byte."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from engine.config.schema import TrainConfig, save_config
from tui.app import make_app

CAPTIONS = {
    "img1.png": b"ohwx, city, (arch:1.2)\n",
    "img2.png": b"ohwx,alley,canal",
    "img3.png": b"street, night\n",
    "img4.png": None,  # no caption file
    "img5.png": b"ohwx, city, street\n",
}


@pytest.fixture
def workspace(tmp_path) -> Path:
    save_config(TrainConfig(), tmp_path / "loradeck.toml")
    folder = tmp_path / "img" / "10_city"
    folder.mkdir(parents=True)
    for number, (name, caption) in enumerate(CAPTIONS.items()):
        Image.new("RGB", (24 + number, 16), (40 * number, 90, 160)).save(folder / name)
        if caption is not None:
            (folder / name).with_suffix(".txt").write_bytes(caption)
    return tmp_path


def caption_files(workspace: Path) -> dict[str, bytes | None]:
    folder = workspace / "img" / "10_city"
    return {name: (folder / name).with_suffix(".txt").read_bytes()
            if (folder / name).with_suffix(".txt").exists() else None for name in CAPTIONS}


def expect(workspace: Path, **changed: bytes | None) -> None:
    """Every caption file is as it started, except the ones named (img1=b"...")."""
    wanted = dict(CAPTIONS)
    wanted.update({f"{name}.png": value for name, value in changed.items()})
    assert caption_files(workspace) == wanted


async def type_text(pilot, text: str) -> None:
    await pilot.press(*["space" if char == " " else char for char in text])


async def open_captions(workspace: Path):
    app = make_app(workspace, start_screen="captions", image_protocol="unicode")
    return app


async def settle(pilot) -> None:
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def test_tag_edits_raw_edit_and_undo(workspace):
    app = await open_captions(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert "10_city/img1.png" in str(screen.query_one("#captions-title").render())

        # add a tag with autocomplete: "can" + tab completes to the dataset's "canal"
        await pilot.press("a")
        await type_text(pilot, "can")
        await pilot.press("tab", "enter")
        await settle(pilot)
        expect(workspace, img1=b"ohwx, city, (arch:1.2), canal\n")

        # into the tag list: second tag (city) removed, then (arch:1.2) moved first
        await pilot.press("tab", "down", "x")
        await settle(pilot)
        expect(workspace, img1=b"ohwx, (arch:1.2), canal\n")
        await pilot.press("f")
        await settle(pilot)
        expect(workspace, img1=b"(arch:1.2), ohwx, canal\n")
        await pilot.press("right_square_bracket")
        await settle(pilot)
        expect(workspace, img1=b"ohwx, (arch:1.2), canal\n")

        # raw edit: the final newline comes back after the edit
        await pilot.press("e")
        await type_text(pilot, ", sunset")
        await pilot.press("ctrl+s")
        await settle(pilot)
        expect(workspace, img1=b"ohwx, (arch:1.2), canal, sunset\n")

        # next image: add a tag there too, keeping its tight commas
        await pilot.press("j", "a")
        await type_text(pilot, "bridge")
        await pilot.press("enter")
        await settle(pilot)
        expect(workspace, img1=b"ohwx, (arch:1.2), canal, sunset\n", img2=b"ohwx,alley,canal,bridge")

        # undo everything, step by step, then redo one
        await pilot.press("ctrl+z")
        await settle(pilot)
        expect(workspace, img1=b"ohwx, (arch:1.2), canal, sunset\n")
        for _ in range(4):
            await pilot.press("ctrl+z")
        await settle(pilot)
        expect(workspace, img1=b"ohwx, city, (arch:1.2), canal\n")
        await pilot.press("ctrl+z")
        await settle(pilot)
        expect(workspace)
        await pilot.press("ctrl+y")
        await settle(pilot)
        expect(workspace, img1=b"ohwx, city, (arch:1.2), canal\n")


async def test_bulk_replace_on_a_filter_then_undo(workspace):
    folder = workspace / "img" / "10_city"
    old = 1_000_000_000
    for name in CAPTIONS:
        if CAPTIONS[name] is not None:
            os.utime(folder / name.replace(".png", ".txt"), ns=(old, old))
    app = await open_captions(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("slash")
        await type_text(pilot, "tag:ohwx, -tag:alley")
        await pilot.press("enter")
        await settle(pilot)
        assert "2 of 5" in str(app.screen.query_one("#captions-count").render())

        await pilot.press("b")
        await type_text(pilot, "city=town")
        await pilot.press("enter")
        await settle(pilot)
        expect(workspace, img1=b"ohwx, town, (arch:1.2)\n", img5=b"ohwx, town, street\n")

        await pilot.press("b")
        await type_text(pilot, "+canal")
        await pilot.press("enter")
        await settle(pilot)
        expect(workspace, img1=b"ohwx, town, (arch:1.2), canal\n", img5=b"ohwx, town, street, canal\n")
        # files outside the filter were not even rewritten
        for name in ("img2.txt", "img3.txt"):
            assert (folder / name).stat().st_mtime_ns == old
        assert not (folder / "img4.txt").exists()

        await pilot.press("ctrl+z")
        await settle(pilot)
        expect(workspace, img1=b"ohwx, town, (arch:1.2)\n", img5=b"ohwx, town, street\n")
        await pilot.press("ctrl+z")
        await settle(pilot)
        expect(workspace)


async def test_changed_on_disk_asks_before_writing(workspace):
    folder = workspace / "img" / "10_city"
    app = await open_captions(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        (folder / "img1.txt").write_bytes(b"written by another tool\n")
        os.utime(folder / "img1.txt", ns=(1, 1))
        await pilot.press("a")
        await type_text(pilot, "canal")
        await pilot.press("enter")
        await settle(pilot)
        assert type(app.screen).__name__ == "ConflictDialog"
        await pilot.press("k")  # keep what is on disk
        await settle(pilot)
        expect(workspace, img1=b"written by another tool\n")
        assert "written by another tool" in str(app.screen.query_one("#captions-raw").render())

        # now the editor holds the disk version: the next edit goes through
        await pilot.press("a")
        await type_text(pilot, "canal")
        await pilot.press("enter")
        await settle(pilot)
        expect(workspace, img1=b"written by another tool, canal\n")

        (folder / "img1.txt").write_bytes(b"again\n")
        os.utime(folder / "img1.txt", ns=(2, 2))
        await pilot.press("ctrl+z")
        await settle(pilot)
        await pilot.press("o")  # overwrite: the undo wins
        await settle(pilot)
        expect(workspace, img1=b"written by another tool\n")


async def test_review_marks_next_unreviewed_and_filters(workspace):
    app = await open_captions(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("space", "space")  # accept img1 and img2
        await settle(pilot)
        marks = json.loads((workspace / "img" / ".loradeck-reviewed.json").read_text())
        assert marks["reviewed"] == ["10_city/img1.png", "10_city/img2.png"]
        expect(workspace)  # review marks never touch a caption

        await pilot.press("k", "k", "n")
        await settle(pilot)
        assert "img3.png" in str(app.screen.query_one("#captions-title").render())

        await pilot.press("U")  # only uncaptioned
        await settle(pilot)
        files = app.screen.query_one("#captions-files")
        assert [app.screen.session.entries[i].file.image.name for i in files.rows] == ["img4.png"]
        await pilot.press("U", "u")  # back to everything, then only unreviewed
        await settle(pilot)
        assert [app.screen.session.entries[i].file.image.name for i in files.rows] == [
            "img3.png", "img4.png", "img5.png"]

        # the tag panel: the most frequent tag (ohwx, 3 captions) filters the list
        await pilot.press("u", "t", "enter")
        await settle(pilot)
        assert [app.screen.session.entries[i].file.image.name for i in files.rows] == [
            "img1.png", "img2.png", "img5.png"]


async def test_auto_caption_job_runs_in_the_background(workspace, tmp_path_factory):
    from tests.test_captioners import make_tiny_tagger

    tagger = make_tiny_tagger(tmp_path_factory.mktemp("models") / "tagger")
    Image.new("RGB", (16, 16), (255, 0, 0)).save(workspace / "img" / "10_city" / "red.png")
    app = await open_captions(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("c")
        await type_text(pilot, str(tagger))
        await pilot.press("tab", "tab", "tab")  # kind, mode, prefix
        await type_text(pilot, "ohwx")
        await pilot.press("ctrl+s")
        # the job runs in a subprocess; its end is announced
        for _ in range(300):
            await pilot.pause(0.1)
            if any("auto-caption" in str(note.message) for note in app._notifications):
                break
        assert [str(note.message) for note in app._notifications][-1] == \
            "auto-caption: 2 written, 4 skipped, 0 failed"
        assert not app.screen.job_running
        folder = workspace / "img" / "10_city"
        # skip mode: only the two images without a caption got one
        assert (folder / "red.txt").read_bytes() == b"ohwx, red hair, watermark, ^_^\n"
        assert (folder / "img4.txt").exists()
        for name, caption in CAPTIONS.items():
            if caption is not None:
                assert (folder / name).with_suffix(".txt").read_bytes() == caption
        counts = str(app.screen.query_one("#captions-frequency").get_option_at_index(0).prompt)
        assert "ohwx" in counts


async def test_image_preview_decodes_in_the_background_and_says_what_it_shows(tmp_path):
    """The shared widget (health screen, dashboard): EXIF on or off, text when it cannot draw."""
    from textual.app import App

    from tui.widgets.shared.image_preview import ImagePreview

    sideways = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = sideways.getexif()
    exif[0x0112] = 6
    sideways.save(tmp_path / "phone.jpg", exif=exif.tobytes())
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")

    class Viewer(App):
        image_protocol = "halfcell"

        def compose(self):
            yield ImagePreview(tmp_path / "phone.jpg")

    app = Viewer()
    async with app.run_test(size=(80, 30)) as pilot:
        preview = app.query_one(ImagePreview)
        label = app.query_one("#image-preview-label")
        await settle(pilot)
        size = (tmp_path / "phone.jpg").stat().st_size
        assert str(label.render()) == f"phone.jpg · 20×40 · {size} B · EXIF orientation 6"
        assert type(preview._picture_widget).__name__ == "HalfcellImage"
        preview.apply_exif = False  # as a trainer that ignores EXIF sees it
        await settle(pilot)
        assert str(label.render()).startswith("phone.jpg · 40×20")
        preview.path = tmp_path / "broken.png"
        await settle(pilot)
        assert preview._picture_widget is None
        message = str(app.query_one("#image-preview-message").render())
        assert message.startswith("broken.png\n15 B\ncannot decode")
        preview.path = None
        await settle(pilot)
        assert str(label.render()) == ""


async def test_tag_cursor_follows_undo_and_redo_prefix_moves_warn_and_the_image_zooms(tmp_path):
    from tui.screens.image_view import ImageViewScreen

    from engine.config.schema import replace_setting

    save_config(replace_setting(TrainConfig(), "captions.keep_tokens", 1), tmp_path / "loradeck.toml")
    folder = tmp_path / "img" / "10_city"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 48), (200, 90, 40)).save(folder / "a.png")
    caption = folder / "a.txt"
    caption.write_text("ohwx, city, arch, street\n")
    app = make_app(tmp_path, start_screen="captions", image_protocol="halfcell")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = app.screen
        tags = screen.query_one("#captions-tags")

        def cursor_tag() -> str:
            return screen.session.entries[screen.current_index].caption.tags[tags.highlighted].name

        await pilot.press("tab", "down", "down")
        assert cursor_tag() == "arch"
        await pilot.press("f")  # first, but after the kept prefix (keep_tokens 1)
        await settle(pilot)
        assert caption.read_text() == "ohwx, arch, city, street\n" and cursor_tag() == "arch"
        # undo and redo leave the cursor on the tag they moved: the next x is not a surprise
        await pilot.press("ctrl+z")
        await settle(pilot)
        assert caption.read_text() == "ohwx, city, arch, street\n" and cursor_tag() == "arch"
        await pilot.press("ctrl+y")
        await settle(pilot)
        assert caption.read_text() == "ohwx, arch, city, street\n" and cursor_tag() == "arch"
        await pilot.press("x")
        await settle(pilot)
        await pilot.press("ctrl+z")  # the removed tag comes back under the cursor
        await settle(pilot)
        assert caption.read_text() == "ohwx, arch, city, street\n" and cursor_tag() == "arch"

        # moving a tag in front of the kept prefix warns
        app._notifications.clear()
        await pilot.press("left_square_bracket")
        await settle(pilot)
        assert caption.read_text() == "arch, ohwx, city, street\n"
        warnings = [n for n in app._notifications if n.severity == "warning"]
        assert warnings and "is now arch; it was ohwx" in warnings[0].message

        # z: the image on the whole terminal, zoomed in and out
        await pilot.press("z")
        await pilot.pause()
        assert isinstance(app.screen, ImageViewScreen) and app.screen.path == folder / "a.png"
        await pilot.press("plus", "plus", "right")
        preview = app.screen.query_one("#image-view")
        assert app.screen.zoom == 4 and preview.crop is not None and preview.crop[0] > 0.375
        await settle(pilot)
        assert preview._picture_widget is not None
        await pilot.press("0", "escape")
        assert app.screen is screen
