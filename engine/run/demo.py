"""The demo workspace: a generated dataset, a tiny model and a config, all offline.

Three subject folders with different repeats and aspect ratios, captions, two
EXIF-rotated photos (stored sideways with an Orientation tag, as phones do) and an
`incoming/` folder the trainer does not use (no repeats prefix) holding two damaged files,
so the health screen has something real to show. Drawing uses Pillow only; the tiny
model is built by `engine.model.tiny` (imported when needed).
"""
from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image, ImageDraw

from engine.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from engine.config.schema import config_from_dict, save_config
from engine.config.workspace import Workspace
from engine.run.next_steps import DEMO_STATE

DEMO_PROMPTS = (
    "sunset lake, orange sky, calm water --w 96 --h 64 --d 1 --s 8\n"
    "night city, skyscrapers, lit windows --w 64 --h 96 --d 2 --s 8\n"
)

# folder -> (repeats, size, how many, caption tags)
SUBJECTS = {
    "3_sunset lake": (3, (192, 128), 6, "sunset lake, orange sky, calm water"),
    "2_night city": (2, (128, 192), 5, "night city, skyscrapers, lit windows"),
    "2_red flower": (2, (160, 160), 4, "red flower, green leaves, close-up"),
}


def _sunset(size: tuple[int, int], rng: random.Random) -> Image.Image:
    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    horizon = int(height * rng.uniform(0.5, 0.65))
    for y in range(horizon):
        t = y / horizon
        draw.line([(0, y), (width, y)], fill=(255, int(80 + 120 * t), int(40 + 60 * t)))
    for y in range(horizon, height):
        t = (y - horizon) / max(1, height - horizon)
        draw.line([(0, y), (width, y)], fill=(int(30 + 40 * t), int(40 + 50 * t), int(120 - 40 * t)))
    radius = rng.randint(10, 18)
    cx = rng.randint(radius, width - radius)
    draw.ellipse([cx - radius, horizon - radius, cx + radius, horizon + radius // 2], fill=(255, 230, 120))
    return image


def _city(size: tuple[int, int], rng: random.Random) -> Image.Image:
    width, height = size
    image = Image.new("RGB", size, (12, 14, 40))
    draw = ImageDraw.Draw(image)
    x = 0
    while x < width:
        building_width = rng.randint(14, 30)
        top = rng.randint(height // 4, height - 30)
        draw.rectangle([x, top, x + building_width, height], fill=(rng.randint(30, 60),) * 3)
        for wy in range(top + 4, height - 4, 8):
            for wx in range(x + 3, x + building_width - 3, 6):
                if rng.random() < 0.5:
                    draw.rectangle([wx, wy, wx + 2, wy + 3], fill=(250, 220, 110))
        x += building_width + rng.randint(1, 4)
    return image


def _flower(size: tuple[int, int], rng: random.Random) -> Image.Image:
    width, height = size
    image = Image.new("RGB", size, (40, rng.randint(110, 150), 50))
    draw = ImageDraw.Draw(image)
    cx, cy = width // 2 + rng.randint(-10, 10), height // 2 + rng.randint(-10, 10)
    for angle in range(6):
        dx = [0, 22, 22, 0, -22, -22][angle]
        dy = [-25, -12, 12, 25, 12, -12][angle]
        draw.ellipse([cx + dx - 14, cy + dy - 14, cx + dx + 14, cy + dy + 14], fill=(210, 20, 40))
    draw.ellipse([cx - 10, cy - 10, cx + 10, cy + 10], fill=(250, 210, 40))
    return image


PAINTERS = {"3_sunset lake": _sunset, "2_night city": _city, "2_red flower": _flower}


def _save_rotated_jpeg(image: Image.Image, path: Path) -> None:
    """Store the pixels sideways with Orientation 6 ("rotate 90 CW to view"), like a phone."""
    stored = image.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    with atomic_path(path) as temporary:
        stored.save(temporary, "JPEG", quality=92, exif=exif.tobytes())


def _damaged_jpeg(image: Image.Image) -> bytes:
    """A JPEG with garbage in its entropy-coded data: Pillow decodes it without complaint."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    data = bytearray(buffer.getvalue())
    start = data.find(b"\xff\xda") + 20
    for offset in range(start, start + 200, 7):
        data[offset] = 0x55 if data[offset] != 0xFF else 0x00
    return bytes(data)


def _truncated_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    data = buffer.getvalue()
    return data[: len(data) // 2]


def write_demo_dataset(image_dir: Path, seed: int = 7) -> None:
    rng = random.Random(seed)
    for folder, (_repeats, size, count, caption) in SUBJECTS.items():
        target = image_dir / folder
        target.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image = PAINTERS[folder](size, rng)
            stem = target / f"{folder.split('_', 1)[1].replace(' ', '-')}-{index:02}"
            if folder == "3_sunset lake" and index < 2:
                _save_rotated_jpeg(image, stem.with_suffix(".jpg"))
            else:
                with atomic_path(stem.with_suffix(".png")) as temporary:
                    image.save(temporary, "PNG")
            if index != count - 1:  # the last image of each folder trains on its class tokens
                atomic_write_text(stem.with_suffix(".txt"), caption + "\n")
    incoming = image_dir / "incoming"
    incoming.mkdir(exist_ok=True)
    atomic_write_bytes(incoming / "upload-01.jpg", _damaged_jpeg(_city((128, 128), rng)))
    atomic_write_bytes(incoming / "upload-02.png", _truncated_png(_flower((128, 128), rng)))


def demo_config(epochs: int = 4):
    return config_from_dict(
        {
            "model": {"pretrained_model": "model"},
            "dataset": {
                "image_dir": "img",
                "resolution": "128,128",
                "min_bucket_resolution": 64,
                "max_bucket_resolution": 256,
                "bucket_step": 32,
            },
            "captions": {"shuffle_caption": True, "keep_tokens": 1},
            "network": {"rank": 8, "alpha": 4.0},
            "optimizer": {"optimizer": "AdamW", "learning_rate": 1e-3, "lr_scheduler": "cosine", "lr_warmup_steps": 4},
            "training": {"batch_size": 2, "epochs": epochs, "seed": 42},
            "precision": {"mixed_precision": "no", "save_precision": "fp16", "dataloader_workers": 0},
            "sampling": {"prompts": DEMO_PROMPTS, "every_n_epochs": 1, "at_start": True, "sampler": "euler_a"},
            "saving": {"output_name": "demo-v1", "save_every_n_epochs": 1},
            "logging": {"log_every_n_steps": 1},
        },
        "demo",
    )


def create_demo_workspace(root: str | Path, *, epochs: int = 4) -> Workspace:
    """Write (or refresh) the demo workspace under `root`; returns it."""
    workspace = Workspace.at(root)
    workspace.root.mkdir(parents=True, exist_ok=True)
    image_dir = workspace.root / "img"
    if not image_dir.exists():
        write_demo_dataset(image_dir)
    model_dir = workspace.root / "model"
    if not (model_dir / "model_index.json").exists():
        from engine.model.tiny import make_tiny_model

        make_tiny_model(model_dir)
    save_config(demo_config(epochs), workspace.config_path)
    workspace.save_state(DEMO_STATE, {"demo": True})  # the end of a run points at the demo's problems
    return workspace


def next_demo_run_name(workspace: Workspace) -> str:
    """demo-v1, demo-v2, ... : the demo never overwrites an earlier run."""
    index = 1
    while (workspace.runs_dir / f"demo-v{index}").exists():
        index += 1
    return f"demo-v{index}"


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.run.demo DIR [--epochs N]`: create the demo workspace, print its config path.

    The TUI runs this in a subprocess so that the app process never imports torch.
    """
    import argparse

    from engine.library_noise import silence_library_noise

    silence_library_noise()
    parser = argparse.ArgumentParser(prog="python -m engine.run.demo")
    parser.add_argument("dir", type=Path)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)
    workspace = create_demo_workspace(args.dir, epochs=args.epochs)
    print(workspace.config_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
