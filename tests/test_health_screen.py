"""The health screen driven by keys: scan, filter, quarantine, fix, rescan, undo."""
from __future__ import annotations

import pytest
from textual.widgets import DataTable, Static

from engine.config.schema import config_from_dict, save_config
from tests.health_corpus import end_marker_in_middle, exif_with_orientation, jpeg_bytes, picture, png_bytes
from tui.app import make_app
from tui.widgets.shared.image_preview import ImagePreview

SIZE = (120, 40)


@pytest.fixture(autouse=True)
def user_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def workspace(tmp_path):
    root = tmp_path / "ws"
    folder = root / "img" / "5_cat"
    folder.mkdir(parents=True)
    save_config(config_from_dict({"model": {"pretrained_model": "some/model"}}), root / "loradeck.toml")
    files = {
        "a.jpg": jpeg_bytes(picture(1)),
        "b.png": png_bytes(picture(2)),
        "broken1.jpg": end_marker_in_middle(jpeg_bytes(picture(3))),
        "broken2.png": png_bytes(picture(4))[:5000],
        "rot.jpg": jpeg_bytes(picture(5), exif=exif_with_orientation(6)),
        "nocap.jpg": jpeg_bytes(picture(6)),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
        if name != "nocap.jpg":
            (folder / name).with_suffix(".txt").write_text("a cat, sitting")
    return root


async def settle(pilot, condition, seconds: float = 15.0) -> None:
    for _ in range(int(seconds / 0.05)):
        await pilot.pause(0.05)
        if condition():
            return
    raise AssertionError("the screen did not settle")


def summary(screen) -> dict[str, int]:
    table = screen.query_one("#health-summary", DataTable)
    return {str(row.value): int(table.get_row(row)[2]) for row in table.rows}


def listed(screen) -> list[tuple[str, str]]:
    table = screen.query_one("#health-findings", DataTable)
    assert table.row_count == len(screen.shown)
    return [(item.code, item.path) for item in screen.shown]


def idle(screen) -> bool:
    return screen.report is not None and not screen.scanning and not any(
        worker.is_running for worker in screen.workers)


async def test_scan_filter_quarantine_fix_rescan_undo(workspace):
    img = workspace / "img"
    quarantine = img / "_quarantine" / "5_cat"
    app = make_app(workspace, start_screen="health")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await settle(pilot, lambda: idle(screen))
        assert summary(screen) == {"corrupt": 2, "exif_rotated": 1, "missing_caption": 1}
        assert "6 images" in str(screen.query_one("#health-status", Static).render())

        # filter by severity: only the two errors
        await pilot.press("s")
        assert screen.severity_filter == "error"
        assert listed(screen) == [("corrupt", "5_cat/broken1.jpg"), ("corrupt", "5_cat/broken2.png")]
        assert "2 of 4 findings" in str(screen.query_one("#health-filter", Static).render())

        # quarantine the selected one, after confirming: it and its caption move, the folder
        # is scanned again
        await pilot.press("x")
        await pilot.pause()
        await pilot.press("y")
        await settle(pilot, lambda: idle(screen) and summary(screen).get("corrupt") == 1)
        assert (quarantine / "broken1.jpg").exists() and (quarantine / "broken1.txt").exists()
        assert not (img / "5_cat" / "broken1.jpg").exists()
        assert listed(screen) == [("corrupt", "5_cat/broken2.png")]

        # quarantine every finding of the code, after confirming
        await pilot.press("X")
        await pilot.pause()
        await pilot.press("y")
        await settle(pilot, lambda: idle(screen) and "corrupt" not in summary(screen))
        assert (quarantine / "broken2.png").exists()
        assert listed(screen) == []

        # the rotated image: as stored beside as the trainer sees it; f bakes it upright
        await pilot.press("a", "c")
        assert screen.code_filter == "exif_rotated"
        assert listed(screen) == [("exif_rotated", "5_cat/rot.jpg")]
        stored = screen.query_one("#health-stored", ImagePreview)
        trainer = screen.query_one("#health-preview", ImagePreview)
        assert stored.display and stored.path == img / "5_cat" / "rot.jpg" and not stored.apply_exif
        assert trainer.path == img / "5_cat" / "rot.jpg" and trainer.apply_exif
        await pilot.press("f")
        await settle(pilot, lambda: idle(screen) and "exif_rotated" not in summary(screen))
        assert (quarantine / "rot.jpg").exists()
        assert screen.code_filter is None  # the code is gone, so is its filter

        # a rescan finds the same; undo brings everything back
        await pilot.press("r")
        await settle(pilot, lambda: idle(screen))
        assert summary(screen) == {"missing_caption": 1}
        for _action in range(3):  # the fix, the quarantine of all, the first quarantine
            await pilot.press("u")
            await settle(pilot, lambda: idle(screen) and not screen.workers)
            await pilot.pause(0.2)
        await settle(pilot, lambda: idle(screen) and summary(screen).get("corrupt") == 2)
        assert summary(screen) == {"corrupt": 2, "exif_rotated": 1, "missing_caption": 1}
        assert (img / "5_cat" / "broken1.txt").exists()


async def test_the_first_scan_fills_the_screen_in_as_it_goes(workspace, monkeypatch):
    """Before the report: the count, and each decoded image's own findings, listed and
    counted (and browsable); then the report's sorted list replaces them."""
    import threading

    import engine.health.scan as scan_module

    decoded_three = threading.Event()
    go_on = threading.Event()
    real = scan_module.inspect_files

    def held_after_three(paths, on_result, **options):
        count = 0

        def result(path, facts):
            nonlocal count
            on_result(path, facts)
            count += 1
            if count == 3:  # a.jpg, b.png, broken1.jpg (name order, one at a time)
                decoded_three.set()
                go_on.wait(30)

        return real(paths, result, **{**options, "workers": 1})

    monkeypatch.setattr(scan_module, "inspect_files", held_after_three)
    app = make_app(workspace, start_screen="health")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await settle(pilot, lambda: decoded_three.is_set() and screen.shown)
        assert screen.report is None and screen.scanning
        assert "Scanning 3/6 images" in str(screen.query_one("#health-status", Static).render())
        assert summary(screen) == {"corrupt": 1}
        assert listed(screen) == [("corrupt", "5_cat/broken1.jpg")]
        assert screen.query_one("#health-preview", ImagePreview).path == workspace / "img" / "5_cat" / "broken1.jpg"
        go_on.set()
        await settle(pilot, lambda: idle(screen))
        assert summary(screen) == {"corrupt": 2, "exif_rotated": 1, "missing_caption": 1}
        assert [path for _code, path in listed(screen)] == [
            "5_cat/broken1.jpg", "5_cat/broken2.png", "5_cat/rot.jpg", "5_cat/nocap.jpg"]


async def test_missing_image_folder_is_explained(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    save_config(config_from_dict({"model": {"pretrained_model": "some/model"}}), root / "loradeck.toml")
    app = make_app(root, start_screen="health")
    async with app.run_test(size=SIZE) as pilot:
        status = ""
        for _ in range(50):  # the check starts just after the first frame
            await pilot.pause(0.1)
            status = str(app.screen.query_one("#health-status", Static).render())
            if "No image folder" in status:
                break
        assert "No image folder" in status
        await pilot.press("x")  # nothing to act on: a notice, no crash
        await pilot.pause()


async def test_preview_of_a_silently_damaged_jpeg_marks_the_damaged_row(tmp_path):
    from tests.health_corpus import damage_scan, photo
    from tui.widgets.shared.image_preview import MARK_COLOR

    root = tmp_path / "ws"
    folder = root / "img" / "5_cat"
    folder.mkdir(parents=True)
    save_config(config_from_dict({"model": {"pretrained_model": "some/model"}}), root / "loradeck.toml")
    (folder / "damaged.jpg").write_bytes(damage_scan(jpeg_bytes(photo(0)), "zeroed", 0.25))
    (folder / "damaged.txt").write_text("a cat")
    before = (folder / "damaged.jpg").read_bytes()
    app = make_app(root, start_screen="health")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await settle(pilot, lambda: idle(screen))
        assert listed(screen) == [("corrupt", "5_cat/damaged.jpg")]
        (item,) = screen.report.findings
        assert item.damaged_row > 0 and f"row {item.damaged_row} " in item.message
        assert f"row {item.damaged_row} " in str(screen.query_one("#health-message", Static).render())
        preview = screen.query_one("#health-preview", ImagePreview)
        assert preview.marked_row == item.damaged_row
        await settle(pilot, lambda: preview._picture_widget is not None)
        shown = preview._picture_widget.image
        y = item.damaged_row * shown.height // 480
        assert shown.getpixel((shown.width // 2, y)) == MARK_COLOR
        assert shown.getpixel((shown.width // 2, y - 8)) != MARK_COLOR  # a line, not a fill
    assert (folder / "damaged.jpg").read_bytes() == before  # drawn on a copy only


async def test_quarantine_asks_the_cursor_stays_and_undo_takes_back_one_action_at_a_time(workspace):
    from engine.dataset.quarantine import read_manifest
    from tui.screens.confirm import ConfirmScreen

    img = workspace / "img"
    app = make_app(workspace, start_screen="health")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await settle(pilot, lambda: idle(screen))
        assert [path for _code, path in listed(screen)] == [
            "5_cat/broken1.jpg", "5_cat/broken2.png", "5_cat/rot.jpg", "5_cat/nocap.jpg"]

        async def quarantine_selected(answer: str) -> None:
            await pilot.press("x")
            await pilot.pause()
            assert isinstance(app.screen, ConfirmScreen)
            assert screen._selected().path in str(app.screen.question)  # it names the file
            await pilot.press(answer)
            await settle(pilot, lambda: idle(screen))

        # x asks first; "no" moves nothing
        await pilot.press("down")
        await quarantine_selected("n")
        assert (img / "5_cat" / "broken2.png").exists() and not read_manifest(img)

        # "yes" moves it; the cursor stays on its row (now the next finding), not row 1
        await quarantine_selected("y")
        await settle(pilot, lambda: idle(screen) and len(screen.shown) == 3)
        assert not (img / "5_cat" / "broken2.png").exists()
        assert screen._selected().path == "5_cat/rot.jpg"
        # the selected finding's message is readable whole under the table
        message = str(screen.query_one("#health-message", Static).render())
        assert "5_cat/rot.jpg" in message and screen._selected().message[-20:] in message.replace("\n", " ")

        await pilot.press("down")
        await quarantine_selected("y")
        await settle(pilot, lambda: idle(screen) and len(screen.shown) == 2)
        assert not (img / "5_cat" / "nocap.jpg").exists()
        assert screen._selected().path == "5_cat/rot.jpg"  # the last row went: the cursor stays last
        assert sorted({entry.action for entry in read_manifest(img)}) == [1, 2]

        # u takes back the newest action only, then the one before, then says there is none
        await pilot.press("u")
        await settle(pilot, lambda: idle(screen) and len(screen.shown) == 3)
        assert (img / "5_cat" / "nocap.jpg").exists() and not (img / "5_cat" / "broken2.png").exists()
        assert [entry.path for entry in read_manifest(img)] == ["5_cat/broken2.png", "5_cat/broken2.txt"]
        await pilot.press("u")
        await settle(pilot, lambda: idle(screen) and len(screen.shown) == 4)
        assert (img / "5_cat" / "broken2.png").exists() and read_manifest(img) == []
        notices = []
        app.notify = lambda message, **kw: notices.append(message)
        await pilot.press("u")
        await settle(pilot, lambda: idle(screen) and notices)
        assert "nothing to undo" in notices[0]

        footer = screen_footer(app)
        for key in ("r Rescan", "xX Quarantine", "u Undo", "? Keys", "q Quit"):
            assert key in footer


def screen_footer(app) -> str:
    return app.screen._compositor.render_strips()[-1].text
