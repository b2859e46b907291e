"""Config screen keys as a user types them: quickly, on a busy machine.

Keys are sent in one burst (as a terminal delivers a fast typist's or a paste's keys), to
an app slowed down on purpose (every edit takes 30 ms to handle, as on a loaded 2-core
machine), and the tests assert what the form shows, where the focus is and what is saved.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from textual import events
from textual.widgets._footer import FooterKey

from engine.config.presets import load_preset
from engine.config.schema import load_config, save_config
from tests.datasets import write_image
from tui.app import make_app
from tui.screens.config import ConfigScreen

SIZE = (120, 40)


@pytest.fixture(autouse=True)
def user_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def workspace(tmp_path) -> Path:
    root = tmp_path / "ws"
    write_image(root / "img" / "5_city" / "a.png", (64, 64))
    config = load_preset("sd15-general")
    save_config(config, root / "loradeck.toml")
    return root


@pytest.fixture
def load(monkeypatch) -> str:
    """The app slowed down: every edit takes 30 ms to handle (the keys of a burst then
    arrive long before the app is done with the ones before them)."""
    handle = ConfigScreen.on_config_form_edited

    def slow(self, message):
        time.sleep(0.03)
        handle(self, message)

    monkeypatch.setattr(ConfigScreen, "on_config_form_edited", slow)
    return "slowed"


def burst(app, *keys: str) -> None:
    """Keys arriving together, faster than the app handles them (no waiting in between)."""
    names = {"slash": "/", "space": " "}
    for key in keys:
        character = key if len(key) == 1 else names.get(key)
        app.post_message(events.Key(key, character))


async def settled(pilot) -> None:
    for _ in range(40):
        await pilot.pause(0.05)
        if pilot.app._held_keys is None:
            break
    await pilot.pause(0.3)


def footer(app) -> list[str]:
    """What the footer offers: each key's description and each group's name ("Screens")."""
    return [str(widget.description if isinstance(widget, FooterKey) else widget.render())
            for widget in app.screen.query("FooterKey, FooterLabel")]


async def test_a_value_typed_right_after_a_jump_lands_in_that_field(workspace, load):
    app = make_app(workspace, start_screen="config")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.5)
        burst(app, "slash", *"max st", "enter", "end", "ctrl+u", "3", "0", "escape", "4")
        await settled(pilot)
        # the value reached Max steps, nothing else changed, and `4` (after escape) went to Runs
        assert app.current_mode == "runs"
        app.action_show("config")
        await pilot.pause(0.3)
        screen = app.screen
        assert isinstance(screen, ConfigScreen)
        assert screen.state.raw["training.max_steps"] == "30"
        changed = {key for key, raw in screen.state.raw.items() if raw != screen.state.saved_raw[key]}
        assert changed == {"training.max_steps"}
        assert screen.form.rows["training.max_steps"].message[0] == ""  # no "a value is required"


async def test_escape_leaves_the_field_and_then_screen_keys_work(workspace, load):
    app = make_app(workspace, start_screen="config")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.5)
        burst(app, "slash", *"optimizer arg", "enter", "end", "ctrl+u", *"weight_decay=0.1")
        await settled(pilot)
        screen = app.screen
        # editing: keys type into the field, and the footer says how to leave it
        assert "Leave field" in footer(app) and "Screens" not in footer(app) and "Quit" not in footer(app)
        burst(app, "escape", "slash", *"rank", "enter", "end", "ctrl+u", "1", "6", "escape")
        await settled(pilot)
        assert screen.state.raw["optimizer.optimizer_args"] == "weight_decay=0.1"  # no stray "/"
        assert screen.state.raw["network.rank"] == "16"
        assert app.focused is screen.form.rows["network.rank"]
        assert "Leave field" not in footer(app) and "Edit" in footer(app) and "Screens" in footer(app)
        await pilot.press("ctrl+s")
        await pilot.pause()
    saved = load_config(workspace / "loradeck.toml")
    assert saved.optimizer.optimizer_args == "weight_decay=0.1" and saved.network.rank == 16


async def test_a_choice_picked_in_a_burst_and_the_next_value_both_land(workspace, load):
    app = make_app(workspace, start_screen="config")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.5)
        # the optimizer list opens, two down, enter; then a jump to alpha and a value
        burst(app, "slash", *"optimizer", "enter", "enter", "down", "down", "enter",
              "slash", *"network.alpha", "enter", "end", "ctrl+u", "8", "escape")
        await settled(pilot)
        screen = app.screen
        assert screen.state.raw["optimizer.optimizer"] == "Adafactor"  # AdamW -> AdamW8bit -> Adafactor
        assert screen.state.raw["network.alpha"] == "8"
        assert "Adafactor ▾" in str(screen.form.rows["optimizer.optimizer"].render())  # what the line draws


async def test_tab_moves_on_without_dropping_the_last_keys(workspace, load):
    app = make_app(workspace, start_screen="config")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.5)
        burst(app, "slash", *"training.epochs", "enter", "end", "ctrl+u", "7", "tab", "enter", "end", "ctrl+u", "2", "escape")
        await settled(pilot)
        screen = app.screen
        lines = screen.form.shown_lines()
        epochs = screen.form.rows["training.epochs"]
        after = lines[lines.index(epochs) + 1]
        assert screen.state.raw["training.epochs"] == "7"
        assert screen.state.raw[after.key] == "2"
        assert app.focused is after


async def test_an_unknown_sample_prompt_flag_is_flagged_as_it_is_typed(workspace):
    app = make_app(workspace, start_screen="config")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.5)
        await pilot.press("slash", *"sample prompts", "enter")
        await pilot.press(*"a cat --q 3")
        await pilot.pause(0.3)
        screen = app.screen
        line = screen.form.rows["sampling.prompts"]
        text, kind = line.message
        assert kind == "warning" and "unknown flag --q" in text and "line 1" in text
        assert "unknown flag --q" in str(screen.query_one("#setting-help").visual)
        assert "ready" in str(screen.query_one("#config-status").visual)  # a warning, not a blocker
        await pilot.press("backspace", "backspace", "backspace", "backspace", "backspace", "backspace")
        await pilot.press(*"--s 20")
        await pilot.pause(0.3)
        assert line.message[0] == ""
