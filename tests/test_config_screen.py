"""Config screen (3): keyboard edits, save/reload, inline problems, Kohya import, presets,
drafts, naming, and a plan panel that agrees with `loradeck plan`."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from engine.config.schema import dumps_config, load_config, replace_setting, save_config
from engine.run.events import EventWriter
from engine.dataset.folders import scan_dataset
from engine.plan.preflight import plan_with_warnings
from engine.config.presets import load_preset
import engine.run.launch as launch
from tests.datasets import write_caption, write_image
from tui.app import make_app
from tui.cli import main as loradeck
from tui.widgets.config.plan_panel import PLAN_DELAY_S

SIZE = (120, 40)


@pytest.fixture(autouse=True)
def user_config(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def workspace(tmp_path) -> Path:
    """Two folders with different repeats and aspect ratios, and the general preset."""
    root = tmp_path / "ws"
    city = root / "img" / "5_city"
    write_caption(write_image(city / "a.png", (64, 64)), "city, night")
    write_image(city / "b.png", (96, 64))
    write_image(city / "c.png", (64, 96))
    write_image(root / "img" / "2_arch" / "d.png", (80, 60))
    write_image(root / "img" / "2_arch" / "e.png", (60, 80))
    save_config(load_preset("sd15-general"), root / "loradeck.toml")
    return root


@pytest.fixture
def launches(monkeypatch) -> list[Path]:
    """A stand-in for engine.run.launch.start_training: records the config it was asked to train."""
    calls: list[Path] = []

    def start_training(config_path, *, detach=True, resume=None):
        calls.append(Path(config_path))
        config = load_config(config_path)
        run_dir = Path(config_path).parent / config.saving.output_dir / config.saving.output_name
        run_dir.mkdir(parents=True)
        return run_dir

    monkeypatch.setattr(launch, "start_training", start_training)
    return calls


# ---- helpers


async def settle(pilot) -> None:
    """Let the debounced plan and every worker finish."""
    await pilot.pause(PLAN_DELAY_S + 0.1)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def jump(pilot, query: str, key: str) -> None:
    """`/`, type part of a setting's name, enter: the setting's editor (text) or line has focus."""
    await pilot.press("escape")
    await pilot.press("slash")
    await pilot.press(*query)
    await pilot.press("enter")
    await pilot.pause()
    target = line(pilot.app, key)
    expected = target.editor if target.editable else target
    assert expected is not None and pilot.app.focused is expected, f"{query!r} did not reach {key}"


async def type_into(pilot, query: str, key: str, text: str) -> None:
    await jump(pilot, query, key)
    await pilot.press("end", "ctrl+u", *text)
    await pilot.pause()


def line(app, key: str):
    """The form's line of a setting (label, value and message in one widget)."""
    return app.screen.form.rows[key]


def shown(app, key: str):
    """The value the line of a setting holds (what it draws, and what its editor opens with)."""
    return line(app, key).raw


def row_message(app, key: str) -> str:
    return line(app, key).message[0]


def plan_json(config_path: Path) -> dict:
    """`loradeck plan CONFIG --json`, as a user would run it."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert loradeck(["plan", str(config_path), "--json"]) == 0
    return json.loads(out.getvalue())


def notifications(app) -> str:
    return "\n".join(f"{n.title}: {n.message}" for n in app._notifications)


# ---- tests


@pytest.mark.slow
async def test_keyboard_edits_save_and_reload_to_identical_toml(workspace):
    path = workspace / "loradeck.toml"
    app = make_app(workspace, start_screen="config")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await type_into(pilot, "rank", "network.rank", "48")
        await type_into(pilot, "network.alpha", "network.alpha", "24")
        await type_into(pilot, "resolution", "dataset.resolution", "640,512")
        await jump(pilot, "optimizer", "optimizer.optimizer")
        await pilot.press("enter", "down", "down", "enter")  # AdamW -> AdamW8bit -> Adafactor
        await jump(pilot, "flip", "augmentation.flip")
        await pilot.press("space")
        await jump(pilot, "sample prompts", "sampling.prompts")
        await pilot.press(*"a city at night")
        await pilot.press("ctrl+s")
        await pilot.pause()
        before = app.screen.state.config
        assert not app.screen.state.dirty
    config = load_config(path)
    assert config.network.rank == 48 and config.network.alpha == 24.0
    assert config.dataset.resolution == "640,512"
    assert config.optimizer.optimizer == "Adafactor"
    assert config.augmentation.flip is True
    assert config.sampling.prompts == "a city at night"
    saved = path.read_text()
    assert saved == dumps_config(config)

    again = make_app(workspace, start_screen="config")
    async with again.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert again.screen.state.config == before and not again.screen.state.dirty
        assert shown(again, "network.rank") == "48"
        assert shown(again, "optimizer.optimizer") == "Adafactor"
        assert shown(again, "sampling.prompts") == "a city at night"
        await pilot.press("ctrl+s")
        await pilot.pause()
    assert path.read_text() == saved


@pytest.mark.slow
async def test_invalid_values_are_flagged_inline_and_block_start(workspace, launches):
    path = workspace / "loradeck.toml"
    before = path.read_text()
    app = make_app(workspace, start_screen="config")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await type_into(pilot, "network.alpha", "network.alpha", "64")
        await type_into(pilot, "training.epochs", "training.epochs", "ten")
        form = app.screen.form
        assert form.rows["network.alpha"].has_class("-invalid")
        assert "alpha 64 is above rank 32" in row_message(app, "network.alpha")
        assert "'ten' is not a whole number" in row_message(app, "training.epochs")
        # the focused setting's help panel names the reason too
        assert "not a whole number" in str(app.screen.query_one("#setting-help").visual)

        await pilot.press("ctrl+t")
        await pilot.pause()
        assert launches == []
        assert "Cannot start training" in notifications(app)
        assert "alpha 64 is above rank 32" in notifications(app)
        assert app.focused is line(app, "network.alpha")  # taken to the first problem
        assert "cannot train: network.alpha" in str(app.screen.query_one("#config-status").visual)

        await pilot.press("ctrl+s")  # an invalid config is not saved either
        await pilot.pause()
        assert path.read_text() == before

        await type_into(pilot, "network.alpha", "network.alpha", "16")
        await type_into(pilot, "training.epochs", "training.epochs", "3")
        assert not form.rows["network.alpha"].has_class("-invalid")
        assert row_message(app, "training.epochs") == ""


async def test_kohya_json_import_fills_the_form(workspace):
    kohya = {
        "LoRA_type": "Standard",
        "pretrained_model_name_or_path": "/models/v1-5-pruned-emaonly.safetensors",
        "train_data_dir": str(workspace / "img"),
        "network_dim": "64.0",
        "network_alpha": "56.0",
        "optimizer": "Adafactor",
        "optimizer_args": "scale_parameter=False relative_step=False warmup_init=False",
        "learning_rate": "0.0001",
        "max_resolution": "512,650",
        "train_batch_size": 2,
        "epoch": "4",
        "max_train_epochs": "4",  # sd-scripts trains 4 epochs (without it the GUI's count of steps decides)
        "output_name": "city-v2",
        "xformers": "xformers",
        "mixed_precision": "bf16",
        "logging_dir": "/home/me/log",
    }
    (workspace / "kohya.json").write_text(json.dumps(kohya))
    app = make_app(workspace, start_screen="config")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+o")
        await pilot.pause()
        await pilot.press("end", "up", "enter")  # "Import a Kohya GUI JSON config…"
        await pilot.pause()
        await pilot.press(*"kohya.json", "enter")
        await settle(pilot)
        assert shown(app, "model.pretrained_model") == "/models/v1-5-pruned-emaonly.safetensors"
        assert shown(app, "network.rank") == "64"
        assert shown(app, "network.alpha") == "56.0"
        assert shown(app, "optimizer.optimizer") == "Adafactor"
        assert shown(app, "optimizer.optimizer_args") == kohya["optimizer_args"]
        assert shown(app, "dataset.resolution") == "512,650"
        assert shown(app, "training.epochs") == "4"
        assert shown(app, "saving.output_name") == "city-v2"
        assert shown(app, "precision.attention") == "xformers"
        assert app.screen.state.dirty
        assert "logging_dir" in notifications(app)  # the keys it did not use are listed
        assert app.screen.plan_panel.plan.epochs == 4


async def test_kohya_preset_import_keeps_the_base_model(workspace):
    """A GUI preset has no base model: importing it over the form keeps the model set there."""
    import shutil

    preset = Path(__file__).parent / "fixtures" / "kohya_gui" / "presets" / "lora" / "sd15 - LoKr v2.0.json"
    shutil.copy(preset, workspace / "preset.json")
    app = make_app(workspace, start_screen="config")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        model = shown(app, "model.pretrained_model")
        assert model
        await pilot.press("ctrl+o")
        await pilot.pause()
        await pilot.press("end", "up", "enter")  # "Import a Kohya GUI JSON config…"
        await pilot.pause()
        await pilot.press(*"preset.json", "enter")
        await settle(pilot)
        assert shown(app, "model.pretrained_model") == model
        assert shown(app, "network.type") == "lokr" and shown(app, "network.factor") == "6"
        assert app.screen.state.dirty


@pytest.mark.slow
async def test_plan_panel_equals_loradeck_plan(workspace):
    path = workspace / "loradeck.toml"
    # a previous run on this machine gives the speed for the estimate
    run = workspace / "runs" / "city-v1"
    with EventWriter(run, fsync=False) as events:
        events.emit("run_start", run_name="city-v1", plan={"total_steps": 4, "epochs": 1})
        for step, speed in enumerate((1.0, 2.0, 2.0, 2.0), start=1):
            events.emit("step", step=step, epoch=1, loss=0.1, steps_per_s=speed)

    app = make_app(workspace, start_screen="config")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        panel = app.screen.plan_panel
        assert panel.plan.as_json() == plan_json(path)
        assert panel.plan.image_repeats == 3 * 5 + 2 * 2
        assert len(panel.plan.buckets) >= 3

        await type_into(pilot, "batch size", "training.batch_size", "3")
        await type_into(pilot, "gradient accumulation", "training.gradient_accumulation_steps", "2")
        await type_into(pilot, "save every n epochs", "saving.save_every_n_epochs", "3")
        await settle(pilot)
        await pilot.press("ctrl+s")
        await pilot.pause()
        plan = panel.plan
        assert plan.as_json() == plan_json(path)
        config = load_config(path)
        assert plan.as_json() == plan_with_warnings(config, workspace, scan_dataset(config, workspace)).as_json()

        text = panel.plan_text()
        assert " 5_city: 3 × 5 = 15" in text
        assert " 2_arch: 2 × 2 = 4" in text
        assert f"Steps per epoch {plan.steps_per_epoch}" in text
        assert f"Total steps {plan.total_steps}" in text
        assert f"Checkpoints {len(plan.checkpoints)}:" in text
        for bucket in plan.buckets:
            assert f"{bucket.width}×{bucket.height}: {bucket.count} images, {bucket.batches} batches" in text
        assert "LoRA file 36.1 MiB" in text
        assert f"VRAM ≈{plan.vram_estimate.total_gb:.1f} GiB" in text
        expected = plan.total_steps / 2.0  # the median speed of city-v1
        assert f"Estimated {int(expected // 60)}m {round(expected % 60):02d}s" in text or \
            f"Estimated {round(expected)}s" in text
        assert "city-v1 on this machine" in text


async def test_preset_replaces_settings_but_keeps_model_and_folders(workspace):
    path = workspace / "loradeck.toml"
    config = replace_setting(load_config(path), "model.pretrained_model", "/models/mine.safetensors")
    save_config(config, path)
    app = make_app(workspace, start_screen="config")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+o")
        await pilot.pause()
        await pilot.press("down", "down", "down", "enter")  # the fourth preset: seed workflow
        await settle(pilot)
        assert shown(app, "optimizer.optimizer") == "Adafactor"
        assert shown(app, "network.rank") == "64"
        assert shown(app, "network.alpha") == "56.0"
        assert shown(app, "model.pretrained_model") == "/models/mine.safetensors"
        assert app.screen.plan_panel.planned_config.network.rank == 64
        await pilot.press("ctrl+s")
        await pilot.pause()
    saved = load_config(path)
    assert saved.optimizer.optimizer_args == load_preset("seed-workflow").optimizer.optimizer_args
    assert saved.model.pretrained_model == "/models/mine.safetensors"


@pytest.mark.slow
async def test_unsaved_changes_survive_quit_as_a_draft(workspace):
    path = workspace / "loradeck.toml"
    before = path.read_text()
    app = make_app(workspace, start_screen="config")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await type_into(pilot, "rank", "network.rank", "40")
        await type_into(pilot, "training.epochs", "training.epochs", "1x")  # even an invalid value is kept
        await pilot.press("escape", "q")
        await pilot.pause()
    assert path.read_text() == before

    again = make_app(workspace, start_screen="config")
    async with again.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert shown(again, "network.rank") == "40"
        assert shown(again, "training.epochs") == "1x"
        assert again.screen.state.dirty
        assert "Restored unsaved changes" in notifications(again)
        await type_into(pilot, "training.epochs", "training.epochs", "12")
        await pilot.press("ctrl+s")
        await pilot.pause()
    assert load_config(path).network.rank == 40
    assert json.loads((workspace / ".loradeck" / "config_draft.json").read_text()) == {}


async def test_start_refuses_an_existing_run_then_trains_under_the_suggested_name(workspace, launches):
    (workspace / "runs" / "lora-v1").mkdir(parents=True)  # the preset's output name
    app = make_app(workspace, start_screen="config")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert "already exists" in row_message(app, "saving.output_name")
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert launches == []
        assert app.focused is line(app, "saving.output_name")

        await pilot.press("ctrl+n")
        await pilot.pause()
        await pilot.press("enter")  # lora-v2: new images
        await pilot.pause()
        assert shown(app, "saving.output_name") == "lora-v2"
        assert "a new run folder" in row_message(app, "saving.output_name")
        await pilot.press("ctrl+t")
        # not settle(): the dashboard's followers run until the app exits
        for _ in range(50):
            await pilot.pause(0.1)
            if type(app.screen).__name__ == "DashboardScreen":
                break
        assert launches == [workspace / "loradeck.toml"]
        assert load_config(workspace / "loradeck.toml").saving.output_name == "lora-v2"
        assert "Training started" in notifications(app)
        assert app.current_mode == "runs"
        assert type(app.screen).__name__ == "DashboardScreen"
        assert app.screen.run.path == (workspace / "runs" / "lora-v2").resolve()


async def test_a_broken_config_file_is_shown_with_its_problems(workspace):
    path = workspace / "loradeck.toml"
    path.write_text(path.read_text().replace("alpha = 16.0", "alpha = 99.0").replace("rank = 32", "rank = 32\nwidth = 3"))
    app = make_app(workspace, start_screen="config")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert shown(app, "network.alpha") == "99.0"
        assert "above rank" in row_message(app, "network.alpha")
        assert "network.width: unknown setting" in notifications(app)


async def test_a_config_written_while_away_is_shown(tmp_path):
    """A new workspace: the welcome screen writes loradeck.toml over the config screen."""
    root = tmp_path / "new"
    write_image(root / "img" / "3_thing" / "a.png", (64, 64))
    app = make_app(root, start_screen="config")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert type(app.screen).__name__ == "WelcomeScreen"
        save_config(load_preset("seed-workflow"), root / "loradeck.toml")
        await pilot.press("escape")
        await settle(pilot)
        assert type(app.screen).__name__ == "ConfigScreen"
        assert shown(app, "network.rank") == "64"
        assert not app.screen.state.dirty


async def test_a_missing_image_folder_is_flagged_and_blocks_start(workspace, launches):
    app = make_app(workspace, start_screen="config")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await type_into(pilot, "image folder", "dataset.image_dir", "pictures")
        await settle(pilot)
        assert "image folder" in row_message(app, "dataset.image_dir")
        assert "does not exist" in row_message(app, "dataset.image_dir")
        assert "does not exist" in app.screen.plan_panel.plan_text()
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert launches == []
        assert app.focused is line(app, "dataset.image_dir")


def row_shown(app):
    """Whether a setting's row is shown on the app's config screen, by key."""
    return lambda key: app.screen.form.rows[key].display


@pytest.mark.slow
async def test_network_type_shows_only_its_settings_with_advice(workspace):
    path = workspace / "loradeck.toml"
    app = make_app(workspace, start_screen="config")
    displayed = row_shown(app)

    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        # standard LoRA: its dropouts and the starting file; no conv or LoKr settings
        assert displayed("network.network_dropout") and displayed("network.rank_dropout") and displayed("network.network_weights")
        assert not displayed("network.conv_dim") and not displayed("network.factor") and not displayed("network.use_tucker")
        await jump(pilot, "network type", "network.type")
        assert "locon adds the convolutions" in str(app.screen.query_one("#setting-help").visual)
        await pilot.press("enter", "down", "down", "enter")  # lora -> locon -> loha
        await pilot.pause()
        assert app.screen.state.config.network.type == "loha"
        assert displayed("network.conv_dim") and displayed("network.conv_alpha") and displayed("network.use_tucker")
        assert not displayed("network.factor") and not displayed("network.network_dropout")
        await type_into(pilot, "conv rank", "network.conv_dim", "4")
        await type_into(pilot, "conv alpha", "network.conv_alpha", "2")
        await jump(pilot, "network type", "network.type")
        await pilot.press("enter", "down", "enter")  # loha -> lokr
        await pilot.pause()
        assert displayed("network.factor") and not displayed("network.network_dropout")
        await type_into(pilot, "lokr factor", "network.factor", "8")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert not app.screen.state.dirty
    network = load_config(path).network
    assert (network.type, network.conv_dim, network.conv_alpha, network.factor) == ("lokr", 4, 2.0, 8)
    plan = plan_json(path)
    assert plan["lora_parameters"] > 0


async def test_processes_setting_plans_each_ones_share_and_ctrl_t_starts_torchrun(workspace, monkeypatch):
    import os
    import subprocess

    from engine.plan.training_plan import make_plan

    commands = []

    class Started:
        pid = os.getpid()  # stands in for the engine: alive while the test runs

    def popen(command, **_):
        commands.append(command)
        return Started()

    monkeypatch.setattr(subprocess, "Popen", popen)
    one_process = make_plan(load_config(workspace / "loradeck.toml"), workspace)
    app = make_app(workspace, start_screen="config")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert shown(app, "training.processes") == "1"
        await type_into(pilot, "processes", "training.processes", "2")
        await settle(pilot)
        text = app.screen.plan_panel.plan_text()
        assert f"× 2 processes = {2 * one_process.effective_batch}" in text
        assert f"Steps per epoch {-(-one_process.batches_per_epoch // 2)}" in text
        await pilot.press("ctrl+t")
        for _ in range(50):
            await pilot.pause(0.1)
            if type(app.screen).__name__ == "DashboardScreen":
                break
        assert type(app.screen).__name__ == "DashboardScreen"
    assert load_config(workspace / "loradeck.toml").training.processes == 2
    (command,) = commands
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert command[5:] == ["-m", "engine.train.process", str(workspace.resolve() / "runs" / "lora-v1")]
async def test_flux_settings_show_only_for_flux(workspace):
    """Flux.1's settings ([flux], its files, fp8 and block swap) appear once the model is Flux,
    as the network types' settings appear for their type; saved from the form."""
    path = workspace / "loradeck.toml"
    app = make_app(workspace, start_screen="config")
    shown = row_shown(app)

    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert not shown("flux.timestep_sampling") and not shown("precision.fp8_base") and not shown("model.t5xxl")
        assert not app.screen.query_one("#group-flux").display
        await jump(pilot, "model family", "model.family")
        choices = list(app.screen.form.rows["model.family"].spec.choices)
        await pilot.press("enter", *["down"] * (choices.index("flux") - choices.index("auto")), "enter")
        await pilot.pause()
        assert app.screen.state.config.model.family == "flux"
        assert shown("flux.timestep_sampling") and shown("precision.fp8_base") and shown("model.t5xxl")
        assert app.screen.query_one("#group-flux").display and shown("optimizer.text_encoder_2_lr")
        await type_into(pilot, "discrete flow shift", "flux.discrete_flow_shift", "2.5")
        await pilot.press("ctrl+s")
        await pilot.pause()
    config = load_config(path)
    assert (config.model.family, config.flux.discrete_flow_shift) == ("flux", 2.5)
