"""Kohya dataset folders: `img/<repeats>_<class tokens>/`, captions beside images.

    img/
      10_city photo/          10 repeats; "city photo" captions uncaptioned images
        0001.jpg
        0001.txt              caption: comma-separated tags (first line is used)
      3_archway/...

Image sizes come from file headers with the EXIF orientation applied (a phone photo
tagged "rotate 90" is portrait), so a 10,000-image dataset is read in seconds without
decoding pixels. Light module: PIL only.
"""
from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from engine.dataset.buckets import BucketAssigner, BucketRules
from engine.config.schema import TrainConfig, resolve_path
from engine.errors import LoradeckError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
QUARANTINE_DIR = "_quarantine"
# EXIF orientations 5-8 turn the image a quarter: width and height swap
_QUARTER_TURNS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112
_FOLDER_NAME = re.compile(r"^(\d+)_(.*)$")


def parse_folder_name(name: str) -> tuple[int, str] | None:
    """`10_city photo` -> (10, "city photo"); None when there is no `<repeats>_` prefix."""
    match = _FOLDER_NAME.match(name)
    if not match:
        return None
    return int(match.group(1)), match.group(2).strip()


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class ImageItem:
    path: Path
    caption: str
    caption_path: Path | None
    width: int
    height: int
    repeats: int
    folder: str
    class_tokens: str
    is_reg: bool = False
    bucket: tuple[int, int] = (0, 0)
    resized: tuple[int, int] | None = None  # no upscale: resized to this, then cropped to the bucket
    mask_path: Path | None = None  # its conditioning image: the loss mask (engine.train.masks)


@dataclass(frozen=True)
class FolderInfo:
    path: Path
    name: str
    repeats: int
    class_tokens: str
    images: int
    captioned: int
    is_reg: bool


@dataclass(frozen=True)
class DatasetProblem:
    path: Path
    code: str  # "bad_folder_name", "unreadable", "loose_image", "missing_folder", "empty"
    message: str


@dataclass
class Dataset:
    root: Path
    reg_root: Path | None
    items: list[ImageItem] = field(default_factory=list)
    folders: list[FolderInfo] = field(default_factory=list)
    problems: list[DatasetProblem] = field(default_factory=list)
    # held-out images (engine.dataset.folders.hold_out): never in `items`, never trained on
    validation_items: list[ImageItem] = field(default_factory=list)

    @property
    def train_items(self) -> list[ImageItem]:
        return [item for item in self.items if not item.is_reg]

    @property
    def reg_items(self) -> list[ImageItem]:
        return [item for item in self.items if item.is_reg]

    @property
    def unreadable(self) -> list[tuple[Path, str]]:
        return [(p.path, p.message) for p in self.problems if p.code == "unreadable"]

    def training_instances(self) -> list[ImageItem]:
        """One epoch's image instances: training images × repeats, plus regularisation
        images balanced to the same count (sd-scripts' rule: each reg image once with its
        repeats, then one more pass at a time until the counts match)."""
        instances: list[ImageItem] = []
        for item in self.train_items:
            instances.extend([item] * item.repeats)
        return instances + balanced_regularisation(self.reg_items, len(instances))

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """Per folder, how often each tag occurs, as sd-scripts counts for ss_tag_frequency:
        lower-cased, every occurrence (a tag twice in one caption counts twice)."""
        frequency: dict[str, dict[str, int]] = {}
        for item in self.train_items:
            counts = frequency.setdefault(item.folder, {})
            for tag in (t.strip().lower() for t in item.caption.split(",")):
                if tag:
                    counts[tag] = counts.get(tag, 0) + 1
        return frequency


def balanced_regularisation(reg_items: list[ImageItem], train_count: int) -> list[ImageItem]:
    if not reg_items or train_count == 0:
        return []
    repeats = [item.repeats for item in reg_items]
    total = 0
    first_pass = True
    while total < train_count:
        for index, item in enumerate(reg_items):
            if first_pass:
                total += item.repeats
            else:
                repeats[index] += 1
                total += 1
            if total >= train_count:
                break
        first_pass = False
    instances: list[ImageItem] = []
    for item, count in zip(reg_items, repeats):
        instances.extend([item] * count)
    return instances


def upright_size(path: Path) -> tuple[int, int]:
    """(width, height) as the trainer sees the image: EXIF orientation applied. Header only."""
    with Image.open(path) as image:
        width, height = image.size
        try:
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        except Exception:  # a damaged EXIF block must not hide the image's size
            orientation = 1
    if orientation in _QUARTER_TURNS:
        return height, width
    return width, height


def decode_caption(data: bytes) -> str:
    """Caption bytes as text, losing nothing: UTF-8 (with or without a BOM), else the
    Windows-1252 / Latin-1 that older tools write. Replacement characters would destroy
    the original bytes the first time an edited caption is written back."""
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")  # maps every byte, so it cannot fail


def training_caption(path: Path) -> str | None:
    """The caption the trainer uses: the first non-empty line of a caption file ("" when it
    has none, None when there is no file). The whole text, with its stamp for safe editing,
    is `engine.dataset.caption_files.read_caption`."""
    try:
        text = decode_caption(path.read_bytes())
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def scan_dataset(config: TrainConfig, base_dir: str | Path) -> Dataset:
    """Every image of the training (and regularisation) folders, with caption and bucket."""
    validation_root = resolve_path(base_dir, config.validation.image_dir)
    if validation_root is not None and not validation_root.is_dir():
        raise LoradeckError(f"validation.image_dir: validation folder {validation_root} does not exist")
    assigner = BucketAssigner(BucketRules.from_config(config))
    toml_path = resolve_path(base_dir, config.dataset.dataset_config)
    if toml_path is not None:
        dataset = _scan_dataset_toml(config, toml_path, assigner,
                                     resolve_path(base_dir, config.dataset.dataset_config_base))
    else:
        root = resolve_path(base_dir, config.dataset.image_dir)
        if root is None or not root.is_dir():
            raise LoradeckError(f"dataset.image_dir: image folder {root} does not exist")
        reg_root = resolve_path(base_dir, config.dataset.reg_dir)
        if reg_root is not None and not reg_root.is_dir():
            raise LoradeckError(f"dataset.reg_dir: regularisation folder {reg_root} does not exist")
        dataset = Dataset(root=root, reg_root=reg_root)
        _scan_root(dataset, root, False, config.captions.caption_extension, assigner)
        if reg_root is not None:
            _scan_root(dataset, reg_root, True, config.captions.caption_extension, assigner)
    if validation_root is not None:
        dataset.validation_items = _scan_validation_folder(dataset, validation_root, config, assigner)
    elif config.validation.split_fraction:
        hold_out(dataset, config.validation.split_fraction, config.validation.seed)
    return dataset


def _scan_dataset_toml(config: TrainConfig, path: Path, assigner: BucketAssigner, base: Path | None) -> Dataset:
    """The subsets of a Kohya dataset TOML (engine.dataset.kohya_toml), each image folder
    with its own repeats, class tokens, caption extension and regularisation flag; relative
    image folders start from `base` (dataset.dataset_config_base), else the TOML's folder."""
    from engine.dataset.kohya_toml import config_differences, read_dataset_toml

    toml = read_dataset_toml(path, base=base)
    differences = config_differences(config, toml)
    if differences:
        raise LoradeckError(f"dataset.dataset_config: {differences[0]}; loradeck uses one value per run, "
                            "set the config to match")
    # the folder holding every subset: validation hold-outs are chosen by paths relative to it
    root = Path(os.path.commonpath([path.parent] + [subset.image_dir for subset in toml.subsets]))
    dataset = Dataset(root=root, reg_root=None)
    for subset in toml.subsets:
        if not subset.image_dir.is_dir():
            raise LoradeckError(f"{path}: image_dir {subset.image_dir} does not exist")
        extension = subset.caption_extension or config.captions.caption_extension
        first = len(dataset.items)
        _scan_folder(dataset, subset.image_dir, subset.num_repeats, subset.class_tokens, subset.is_reg,
                     extension, assigner)
        if subset.conditioning_data_dir is not None:
            if not config.training.masked_loss:
                raise LoradeckError(f"{path}: conditioning_data_dir {subset.conditioning_data_dir} is read for the "
                                    "masked loss only: turn on training.masked_loss, or remove it")
            dataset.items[first:] = _with_masks(dataset.items[first:], subset.conditioning_data_dir, path)
    return dataset


def _with_masks(items: list[ImageItem], folder: Path, toml: Path) -> list[ImageItem]:
    """Each image with its conditioning image (same name, any image extension), as
    sd-scripts pairs them: every image needs one, of its own size, and none is left over."""
    if not folder.is_dir():
        raise LoradeckError(f"{toml}: conditioning_data_dir {folder} does not exist")
    masks = {Path(name).stem: folder / name for name in sorted(os.listdir(folder))
             if is_image_file(name) and not name.startswith(".")}
    missing = [item.path.name for item in items if item.path.stem not in masks]
    if missing:
        raise LoradeckError(f"{folder}: no conditioning image for {len(missing)} image(s) of the subset "
                            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); each needs one of "
                            "the same name")
    extra = sorted(set(masks) - {item.path.stem for item in items})
    if extra:
        raise LoradeckError(f"{folder}: {len(extra)} conditioning image(s) with no image of the same name "
                            f"({', '.join(masks[stem].name for stem in extra[:3])})")
    paired = []
    for item in items:
        mask = masks[item.path.stem]
        try:
            size = upright_size(mask)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise LoradeckError(f"{mask}: cannot read the conditioning image ({error})") from None
        if size != (item.width, item.height):
            raise LoradeckError(f"{mask}: {size[0]}x{size[1]}, its image {item.path.name} {item.width}x{item.height}; "
                                "a conditioning image must have its image's size")
        paired.append(replace(item, mask_path=mask))
    return paired


def held_out_count(images: int, fraction: float) -> int:
    """How many of `images` training images a split of `fraction` holds out: rounded, at
    least one when the fraction is set, and never the last training image."""
    if not fraction or images < 2:
        return 0
    return min(images - 1, max(1, round(images * fraction)))


def hold_out(dataset: Dataset, fraction: float, seed: int) -> None:
    """Move a seeded `fraction` of the training images to `validation_items`.

    The choice depends only on the seed and the images' paths relative to the image
    folder (sorted), so the same dataset and seed always hold out the same images, on any
    machine and whatever the scan order.
    """
    train = sorted(dataset.train_items, key=lambda item: item.path.relative_to(dataset.root).as_posix())
    count = held_out_count(len(train), fraction)
    if not count:
        return
    chosen = {item.path for item in random.Random(f"validation-split:{seed}").sample(train, count)}
    dataset.validation_items = [item for item in train if item.path in chosen]
    dataset.items = [item for item in dataset.items if item.path not in chosen]
    # folder counts are of the images trained on, as the plan and the LoRA's metadata say
    folders = []
    for folder in dataset.folders:
        gone = [item for item in dataset.validation_items if item.path.parent == folder.path]
        captioned = sum(1 for item in gone if item.caption_path is not None)
        folders.append(replace(folder, images=folder.images - len(gone), captioned=folder.captioned - captioned))
    dataset.folders = folders


def _scan_validation_folder(dataset: Dataset, root: Path, config: TrainConfig,
                            assigner: BucketAssigner) -> list[ImageItem]:
    """The images of a validation folder: `<repeats>_<class>` subfolders like the training
    folder (repeats do not matter), or images directly inside it. Unreadable ones are
    listed in the dataset's problems so the trainer refuses them up front."""
    scratch = Dataset(root=root, reg_root=None)
    extension = config.captions.caption_extension
    _scan_root(scratch, root, False, extension, assigner)
    if any(problem.code == "loose_image" for problem in scratch.problems):
        _scan_folder(scratch, root, 1, "", False, extension, assigner)
    dataset.problems.extend(problem for problem in scratch.problems if problem.code == "unreadable")
    return scratch.items


def _scan_root(dataset: Dataset, root: Path, is_reg: bool, caption_ext: str, assigner: BucketAssigner) -> None:
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    for entry in entries:
        if entry.is_file() and is_image_file(entry.name) and not entry.name.startswith("."):
            dataset.problems.append(
                DatasetProblem(
                    Path(entry.path),
                    "loose_image",
                    f"{entry.path}: images must be in a <repeats>_<class> subfolder of {root}; not used",
                )
            )
    for entry in entries:
        if not entry.is_dir() or entry.name.startswith(".") or entry.name == QUARANTINE_DIR:
            continue
        parsed = parse_folder_name(entry.name)
        if parsed is None:
            dataset.problems.append(
                DatasetProblem(
                    Path(entry.path),
                    "bad_folder_name",
                    f"{entry.path}: folder name has no <repeats>_ prefix (e.g. '10_{entry.name}'); its images are not used",
                )
            )
            continue
        repeats, class_tokens = parsed
        _scan_folder(dataset, Path(entry.path), repeats, class_tokens, is_reg, caption_ext, assigner)


def _scan_folder(dataset, folder: Path, repeats: int, class_tokens: str, is_reg: bool,
                 caption_ext: str, assigner: BucketAssigner) -> None:
    # dotfiles (macOS `._x.jpg` resource forks, editors' temp files) are never images
    names = sorted(entry.name for entry in os.scandir(folder) if entry.is_file() and not entry.name.startswith("."))
    present = set(names)
    images = captioned = 0
    for name in names:
        if not is_image_file(name):
            continue
        path = folder / name
        try:
            width, height = upright_size(path)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
            dataset.problems.append(DatasetProblem(path, "unreadable", f"{path}: cannot read image ({error})"))
            continue
        except Image.DecompressionBombError as error:
            dataset.problems.append(DatasetProblem(path, "unreadable", f"{path}: {error}"))
            continue
        caption_name = Path(name).stem + caption_ext
        caption_path = folder / caption_name if caption_name in present else None
        caption = training_caption(caption_path) if caption_path else None
        if caption:
            captioned += 1
        images += 1
        dataset.items.append(
            ImageItem(
                path=path,
                caption=caption or class_tokens,
                caption_path=caption_path,
                width=width,
                height=height,
                repeats=repeats,
                folder=folder.name,
                class_tokens=class_tokens,
                is_reg=is_reg,
                bucket=assigner.bucket_for(width, height),
                resized=assigner.resized_size(width, height),
            )
        )
    if repeats == 0:
        dataset.problems.append(DatasetProblem(folder, "zero_repeats", f"{folder}: 0 repeats; its images are not used"))
    dataset.folders.append(FolderInfo(folder, folder.name, repeats, class_tokens, images, captioned, is_reg))
