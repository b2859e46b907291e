"""The app shell: screens by key and palette, themes remembered, keys screen, guided start,
failed background work."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from engine.config.schema import load_config, save_config, config_from_dict
from tui.app import SCREENS, make_app
from tui.themes import load_settings, load_themes

SIZE = (120, 40)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def user_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg"


@pytest.fixture
def workspace(tmp_path):
    root = tmp_path / "ws"
    (root / "img" / "2_thing").mkdir(parents=True)
    save_config(config_from_dict({"model": {"pretrained_model": "some/model"}}), root / "loradeck.toml")
    return root


def test_shipped_themes_load():
    themes, problems = load_themes()
    names = {theme.name for theme in themes}
    assert {"loradeck-dark", "loradeck-light", "high-contrast", "tmux-256"} <= names
    assert problems == []


async def test_every_screen_is_one_key_away(workspace):
    app = make_app(workspace, start_screen="health")
    async with app.run_test(size=SIZE) as pilot:
        for mode, (_module, class_name, key, _title) in SCREENS.items():
            await pilot.press("escape")
            app.set_focus(None)
            await pilot.press(key)
            await pilot.pause()
            assert app.current_mode == mode
            assert type(app.screen).__name__ == class_name
    # the last screen is remembered for this workspace
    again = make_app(workspace)
    assert again.start_screen == "runs"


@pytest.mark.slow
async def test_every_screen_is_in_the_palette(workspace):
    app = make_app(workspace, start_screen="health")
    async with app.run_test(size=SIZE) as pilot:
        for title, mode in [("Captions", "captions"), ("Config", "config"), ("Runs", "runs"), ("Health", "health")]:
            await pilot.press("ctrl+p")
            await pilot.pause()
            await pilot.press(*f"go to {title.lower()}")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await pilot.pause(0.2)
            assert app.current_mode == mode, title


async def test_theme_switch_is_remembered(workspace, user_config):
    app = make_app(workspace, start_screen="health")
    async with app.run_test(size=SIZE) as pilot:
        assert app.theme == "loradeck-dark"
        await pilot.press("ctrl+p")
        await pilot.press(*"theme: tmux-256")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert app.theme == "tmux-256"
    assert load_settings()["theme"] == "tmux-256"
    again = make_app(workspace, start_screen="health")
    async with again.run_test(size=SIZE):
        assert again.theme == "tmux-256"


async def test_user_theme_files_are_picked_up(workspace, user_config):
    themes_dir = user_config / "loradeck" / "themes"
    themes_dir.mkdir(parents=True)
    (themes_dir / "mine.toml").write_text('name = "mine"\nprimary = "#ff00ff"\ndark = true\n')
    (themes_dir / "broken.toml").write_text('name = "broken"\nprimary = 3\nbogus = 1\n')
    app = make_app(workspace, start_screen="health", theme="mine")
    async with app.run_test(size=SIZE):
        assert app.theme == "mine"
        assert [p.path.name for p in app.theme_problems] == ["broken.toml"]


async def keys_screen_rows(pilot) -> list[tuple[str, str]]:
    """Open `?` from the current screen; its (key, action) rows."""
    from textual.widgets import DataTable

    pilot.app.set_focus(None)
    await pilot.press("question_mark")
    await pilot.pause()
    table = pilot.app.screen.query_one(DataTable)
    return [(str(table.get_row_at(i)[0]), str(table.get_row_at(i)[1])) for i in range(table.row_count)]


async def test_keys_screen_lists_bindings(workspace):
    app = make_app(workspace, start_screen="health")
    async with app.run_test(size=SIZE) as pilot:
        actions = {action for _key, action in await keys_screen_rows(pilot)}
        assert {"Health", "Captions", "Config", "Runs", "Quit"} <= actions
        await pilot.press("escape")
        assert type(app.screen).__name__ == "HealthScreen"


async def test_guided_start_writes_a_valid_workspace(tmp_path):
    root = tmp_path / "fresh"
    root.mkdir()
    app = make_app(root)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert type(app.screen).__name__ == "WelcomeScreen"
        images = app.screen.query_one("#welcome-images")
        images.value = ""
        await pilot.click("#welcome-images")
        await pilot.press(*"pictures", "enter")
        model = app.screen.query_one("#welcome-model")
        model.value = ""
        model.focus()
        await pilot.press(*"/models/v1-5.safetensors")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert type(app.screen).__name__ != "WelcomeScreen"
    config = load_config(root / "loradeck.toml")
    assert config.model.pretrained_model == "/models/v1-5.safetensors"
    assert config.dataset.image_dir == "pictures"
    assert (root / "pictures").is_dir()
    assert config.saving.output_name == "fresh-v1"


async def test_health_filters_are_remembered_per_workspace(workspace):
    from tests.datasets import write_image

    write_image(workspace / "img" / "2_thing" / "a.png", (256, 256))
    (workspace / "img" / "loose").mkdir()
    app = make_app(workspace, start_screen="health")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        for _ in range(100):
            if screen.report is not None:
                break
            await pilot.pause(0.05)
        app.set_focus(None)
        await pilot.press("c")
        await pilot.pause()
        chosen = screen.code_filter
        assert chosen in screen.report.summary
    again = make_app(workspace, start_screen="health")
    async with again.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert again.screen.code_filter == chosen


def _footer_keys(screen) -> dict[str, object]:
    return {key.key: key for key in screen.query("FooterKey")}


async def test_footer_keeps_keys_and_quit_visible_at_120_columns(workspace):
    # the four screen keys share one footer entry, so `?` and `q` are not cut off
    app = make_app(workspace, start_screen="health")
    async with app.run_test(size=SIZE) as pilot:
        for key in ("1", "3", "4"):
            app.set_focus(None)
            await pilot.press(key)
            await pilot.pause()
            keys = _footer_keys(app.screen)
            for wanted in ("question_mark", "q"):
                assert wanted in keys, (key, sorted(keys))
                assert keys[wanted].region.right <= SIZE[0], (key, wanted, keys[wanted].region)
            assert {"1", "2", "3", "4"} <= set(keys)


async def test_keys_screen_names_each_key_of_a_footer_group(workspace):
    app = make_app(workspace, start_screen="health")
    async with app.run_test(size=SIZE) as pilot:
        rows = {action: key for key, action in await keys_screen_rows(pilot)}
        assert rows["Fix"] == "f" and rows["Fix all"] == "F"
        assert rows["Quarantine"] == "x" and rows["Quarantine all"] == "X"
        assert rows["Health"] == "1" and rows["Runs"] == "4"


async def test_guided_start_fits_80x24_with_its_keys_in_a_footer(tmp_path):
    root = tmp_path / "fresh"
    root.mkdir()
    app = make_app(root)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert type(screen).__name__ == "WelcomeScreen"
        assert {"ctrl+s", "escape"} <= set(_footer_keys(screen))
        box = screen.query_one("#welcome-box")
        assert box.region.bottom <= 23  # above the footer
        button = screen.query_one("#welcome-create")
        button.focus()
        await pilot.pause()
        assert box.region.contains_region(button.region)


async def test_captions_without_an_image_folder_leave_the_screen_keys_working(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    save_config(config_from_dict({"model": {"pretrained_model": "some/model"}}), root / "loradeck.toml")
    app = make_app(root, start_screen="captions")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert type(app.screen).__name__ == "CaptionsScreen"
        assert app.screen.query_one("#captions-filter").value == ""
        await pilot.press("3")
        await pilot.pause()
        assert app.current_mode == "config"


async def test_health_severity_colours_follow_a_theme_switch(workspace):
    from tests.datasets import write_image
    from textual.widgets import DataTable

    write_image(workspace / "img" / "2_thing" / "a.png", (512, 512))  # no caption: a warning
    app = make_app(workspace, start_screen="health", theme="loradeck-dark")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        table = screen.query_one("#health-findings", DataTable)
        for _ in range(100):
            await pilot.pause(0.05)
            if table.row_count:
                break
        assert table.row_count
        app.theme = "loradeck-light"
        await pilot.pause()
        severity = table.get_row_at(0)[0]  # the code, in its severity's colour
        assert str(severity) == "missing_caption"
        wanted = app.theme_variables["warning"]
        assert wanted.lower() in str(severity.style).lower()


# ---- a background worker that fails never closes the app (tui/workers.py)


@pytest.mark.slow
async def test_a_worker_that_raises_leaves_the_app_up_and_the_error_in_the_notices(workspace, monkeypatch):
    import tui.screens.config as config_screen

    def unreadable_runs(runs_dir):
        raise PermissionError(13, "Permission denied", str(runs_dir))

    monkeypatch.setattr(config_screen, "existing_run_names", unreadable_runs)
    app = make_app(workspace, start_screen="config")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.3)
        await app.workers.wait_for_complete()
        await pilot.pause()
        expected = f"PermissionError: [Errno 13] Permission denied: '{workspace / 'runs'}'"
        assert app.is_running
        assert [notice.text for notice in app.notices] == [expected]
        assert app.notices[-1].level == "error" and "unreadable_runs" in app.notices[-1].detail
        assert [str(note.message) for note in app._notifications] == [expected]  # shown, in one line
        # the app still answers keys, and the notices can be read again from the palette
        await pilot.press("4")
        await pilot.pause()
        assert app.current_mode == "runs"
        await pilot.press("ctrl+p", *"notices")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause()
        assert expected in str(app.screen.query_one("#explain-text").visual)


def test_every_worker_of_the_app_reports_its_failures():
    # Textual's own @work closes the app on an error: tui/ takes `work` from tui.workers
    offenders = []
    for path in sorted((ROOT / "tui").rglob("*.py")):
        if path.name == "workers.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "textual" and \
                    any(alias.name == "work" for alias in node.names):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
