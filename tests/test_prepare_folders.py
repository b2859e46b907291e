"""Preparing the folders: a flat folder of images and captions becomes the Kohya folder
(`loradeck prepare`, and the guided start then `p` in the app), repeats change in the app
and the plan follows. Files are linked or moved, never written over."""
from __future__ import annotations

import os

from engine.config.schema import load_config
from tests.datasets import write_caption, write_image
from tests.run_recordings import screen_text, wait_until
from tui.app import make_app
from tui.cli import main as loradeck


def flat_folder(root):
    source = root / "photos"
    for index in range(3):
        image = write_image(source / f"cat{index}.jpg", (96, 64))
        if index < 2:
            write_caption(image, f"a cat, pose {index}")
    return source


def test_prepare_links_images_and_captions_and_never_overwrites(tmp_path, capsys):
    source = flat_folder(tmp_path)
    image_dir = tmp_path / "ws" / "img"
    assert loradeck(["prepare", str(source), str(image_dir), "--subject", "ohwx", "--class", "cat",
                     "--repeats", "4"]) == 0
    folder = image_dir / "4_ohwx cat"
    assert sorted(path.name for path in folder.iterdir()) == ["cat0.jpg", "cat0.txt", "cat1.jpg", "cat1.txt", "cat2.jpg"]
    assert all(path.is_symlink() and path.resolve().parent == source.resolve() for path in folder.iterdir())
    assert "3 images and 2 captions" in capsys.readouterr().out
    # again: every name is taken, so nothing is touched and the command says so
    (source / "cat0.txt").write_text("changed")
    assert loradeck(["prepare", str(source), str(image_dir), "--subject", "ohwx", "--class", "cat",
                     "--repeats", "4", "--move"]) == 1
    assert "skipped cat0.jpg" in capsys.readouterr().err
    assert (source / "cat0.jpg").exists() and os.readlink(folder / "cat0.jpg") == str((source / "cat0.jpg").resolve())
    # bad input: one line, no traceback
    assert loradeck(["prepare", str(tmp_path / "nowhere"), str(image_dir), "--subject", "x"]) == 2
    assert "no such folder" in capsys.readouterr().err


async def test_guided_start_builds_the_kohya_folder_and_repeats_change_with_the_plan(tmp_path, monkeypatch):
    from tui.screens.folders import FoldersScreen, PrepareDialog

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    source = flat_folder(tmp_path)
    root = tmp_path / "fresh"
    root.mkdir()
    app = make_app(root)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        # the hub id suggested is one that exists (runwayml/... is gone from the hub)
        assert app.screen.query_one("#welcome-model").value == "stable-diffusion-v1-5/stable-diffusion-v1-5"
        images = app.screen.query_one("#welcome-images")
        images.value = str(source)  # a flat folder of images, not Kohya folders
        app.screen.query_one("#welcome-model").value = "/models/v1-5.safetensors"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, PrepareDialog), what="the prepare dialog")
        assert app.screen.query_one("#prepare-source").value == str(source.resolve())
        await pilot.press(*"ohwx", "enter", *"cat", "enter", "ctrl+u", "4", "enter")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, FoldersScreen), what="the folders")
        folders = app.screen
        await wait_until(pilot, lambda: "per epoch ·" in screen_text(app), what="the plan line")
        assert "4_ohwx cat" in screen_text(app) and "3 images × repeats = 12 per epoch" in screen_text(app)
        # + raises the repeats: the folder is renamed and the plan follows
        await pilot.press("plus")
        await wait_until(pilot, lambda: "= 15 per epoch" in screen_text(app), what="the new plan")
        assert [folder.name for folder in folders.folders] == ["5_ohwx cat"]
        assert (root / "img" / "5_ohwx cat" / "cat2.jpg").is_symlink() and (source / "cat2.jpg").is_file()
        await pilot.press("escape")
        assert not isinstance(app.screen, FoldersScreen)
    assert load_config(root / "loradeck.toml").dataset.image_dir == "img"


async def test_repeats_changed_from_the_config_screen_update_its_plan(tmp_path, monkeypatch):
    from engine.config.schema import config_from_dict, save_config
    from tui.screens.folders import FoldersScreen

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "ws"
    for index in range(3):
        write_caption(write_image(root / "img" / "4_ohwx cat" / f"{index}.png", (64, 64)), "ohwx cat")
    save_config(config_from_dict({"model": {"pretrained_model": "some/model"}}), root / "loradeck.toml")
    app = make_app(root, start_screen="config")
    async with app.run_test(size=(120, 40)) as pilot:
        panel = app.screen.plan_panel
        await wait_until(pilot, lambda: "4_ohwx cat: 3 × 4 = 12" in panel.plan_text(), what="the plan")
        await pilot.press("escape", "p")  # leave the field, then the folders
        await wait_until(pilot, lambda: isinstance(app.screen, FoldersScreen), what="the folders")
        await pilot.press("minus", "minus")
        await wait_until(pilot, lambda: "= 6 per epoch" in screen_text(app), what="2 repeats")
        await pilot.press("escape")
        await wait_until(pilot, lambda: "2_ohwx cat: 3 × 2 = 6" in panel.plan_text(), what="the config plan")
