"""Guided start for an empty or new workspace: images, base model, preset -> loradeck.toml.

The images may already be in Kohya folders (`<repeats>_<class>` subfolders), or be a flat
folder of images with captions: then the workspace gets its own `img/` and the folders
screen opens on that flat folder to build the Kohya folder (subject, class, repeats).
"""
from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from engine.config.schema import ConfigError, replace_setting, save_config, validate
from engine.config.workspace import Workspace
from engine.dataset.folders import parse_folder_name
from tui.screens.folders import flat_images
from tui.widgets.shared.key_footer import KeyFooter


class WelcomeScreen(ModalScreen["bool | Path"]):
    """Three questions, then the workspace exists: img/, loradeck.toml. Dismisses with
    True, False (skipped), or the flat folder of images to build a Kohya folder from."""

    CSS_PATH = "welcome.tcss"
    BINDINGS = [
        Binding("ctrl+s", "create", "Create workspace"),
        Binding("escape", "skip", "Skip"),
    ]

    def __init__(self, workspace: Workspace):
        super().__init__()
        self.workspace = workspace

    def compose(self) -> ComposeResult:
        from engine.config.presets import list_presets

        presets = list_presets()
        with Vertical(id="welcome-box"):
            yield Static(f"New workspace: {self.workspace.root}", id="welcome-title")
            yield Static(
                "Three answers and loradeck writes loradeck.toml here. Everything can be changed "
                "later on the config screen (3).",
                classes="hint",
            )
            yield Label("Where are the training images? (a folder of <repeats>_<class> subfolders, "
                        "or a flat folder of images: its Kohya folder is built next)")
            yield Input(value="img", id="welcome-images")
            yield Label("Base model: a diffusers folder, a .safetensors file, or a hub id")
            yield Input(value="stable-diffusion-v1-5/stable-diffusion-v1-5", id="welcome-model")
            yield Label("Start from preset")
            yield Select([(p.title, p.name) for p in presets], value=presets[0].name, allow_blank=False,
                         id="welcome-preset")
            yield Static("", id="welcome-error")
            yield Button("Create (ctrl+s)", id="welcome-create", variant="primary")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#welcome-images", Input).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "welcome-create":
            self.action_create()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.focus_next()

    def action_skip(self) -> None:
        self.dismiss(False)

    def action_create(self) -> None:
        from engine.config.presets import load_preset

        error = self.query_one("#welcome-error", Static)
        images = self.query_one("#welcome-images", Input).value.strip() or "img"
        model = self.query_one("#welcome-model", Input).value.strip()
        preset = self.query_one("#welcome-preset", Select).value
        config = load_preset(str(preset))
        config = replace_setting(config, "model.pretrained_model", model)
        config = replace_setting(config, "dataset.image_dir", images)
        config = replace_setting(config, "saving.output_name", f"{self.workspace.root.name}-v1")
        problems = validate(config)
        if problems:
            key, reason = problems[0]
            error.update(f"{key}: {reason}")
            return
        image_dir = Path(images).expanduser()
        image_dir = image_dir if image_dir.is_absolute() else self.workspace.root / image_dir
        flat = flat_images(image_dir) > 0 and not any(
            parse_folder_name(child.name) for child in image_dir.iterdir() if child.is_dir())
        if flat:  # images straight in the folder: the workspace's own img/ gets the Kohya folder
            config = replace_setting(config, "dataset.image_dir", "img")
            image_dir = self.workspace.root / "img"
        try:
            image_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.workspace.config_path)
        except (OSError, ConfigError) as failure:
            error.update(f"cannot create the workspace: {failure}")
            return
        self.dismiss(Path(images).expanduser().resolve() if flat else True)
