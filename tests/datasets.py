"""Small generated datasets for tests (Kohya layout), shared by several test files."""
from __future__ import annotations

from pathlib import Path

from PIL import Image


def write_image(path: Path, size: tuple[int, int], *, color=(120, 80, 200), orientation: int | None = None,
                fmt: str | None = None) -> Path:
    """A solid-colour image with a diagonal stripe; optional EXIF Orientation tag."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    for i in range(min(size)):
        image.putpixel((i, i), (255, 255, 255))
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    image.save(path, format=fmt, **kwargs)
    return path


def write_caption(image: Path, text: str, extension: str = ".txt") -> Path:
    caption = image.with_suffix(extension)
    caption.write_text(text, encoding="utf-8")
    return caption


def plan_dataset(root: Path) -> Path:
    """The dataset behind the hand-computed plan numbers in test_plan.py.

    img/10_city photo: 512x512, 768x512, 512x768 (one captioned)
    img/3_archway:     640x480, and a 640x480 JPEG tagged "rotate 90" (upright 480x640)
    img/misc:          a folder without the repeats prefix (reported, not used)
    reg/1_person:      two 512x512 images
    """
    city = root / "img" / "10_city photo"
    write_caption(write_image(city / "a.png", (512, 512)), "city, street, night")
    write_image(city / "b.png", (768, 512))
    write_image(city / "c.png", (512, 768))
    archway = root / "img" / "3_archway"
    write_image(archway / "d.png", (640, 480))
    write_image(archway / "e.jpg", (640, 480), orientation=6)
    write_image(root / "img" / "misc" / "f.png", (512, 512))
    for name in ("r1.png", "r2.png"):
        write_image(root / "reg" / "1_person" / name, (512, 512), color=(10, 10, 10))
    return root


MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "engine" / "model" / "assets" / "sd15"
PLANNABLE_CONFIG = """\
[model]
pretrained_model = "model"
[dataset]
image_dir = "img"
resolution = "64"
min_bucket_resolution = 64
max_bucket_resolution = 128
bucket_step = 64
[network]
rank = 4
alpha = 4.0
[training]
epochs = 2
seed = 7
[sampling]
prompts = "a cat"
"""


def plannable_workspace(root: Path) -> Path:
    """A workspace `loradeck plan` and the checks before a run accept, loading nothing:
    `model/` holds the SD1.5 layout's configs only (no weights), `img/2_cat/` two captioned
    64x64 images, `loradeck.toml` PLANNABLE_CONFIG; plus `a-file` to put where a folder belongs."""
    import shutil

    shutil.copytree(MODEL_CONFIGS, root / "model")
    for index in range(2):
        write_caption(write_image(root / "img" / "2_cat" / f"{index}.png", (64, 64)), "cat")
    (root / "a-file").write_text("in the way")
    (root / "loradeck.toml").write_text(PLANNABLE_CONFIG)
    return root
