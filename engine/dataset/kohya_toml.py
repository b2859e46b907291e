"""Kohya dataset TOML files (sd-scripts' `--dataset_config`), read so that the same images
train with the same repeats:

    [general]
    shuffle_caption = true
    caption_extension = ".txt"
    keep_tokens = 1

    [[datasets]]
    resolution = 512            # or [768, 512]
    batch_size = 2

      [[datasets.subsets]]
      image_dir = "/data/city"  # the images themselves, not <repeats>_ folders
      num_repeats = 10
      class_tokens = "cty city" # the caption of an image without a caption file

      [[datasets.subsets]]
      image_dir = "/data/reg"
      is_reg = true
      num_repeats = 1

A value is looked up in the subset, then its dataset, then `[general]`, as sd-scripts does.
Each subset keeps its own image folder, repeats, class tokens, caption extension,
regularisation flag and conditioning folder (`conditioning_data_dir`: the images' loss
masks, by file name, for `training.masked_loss`). The other settings (resolution, batch size, buckets, caption shuffle,
keep tokens, augmentation) are one per run in loradeck: they must agree across subsets
and with the config (`loradeck import-kohya` copies them into the config); a difference
is refused in one line rather than trained differently from sd-scripts.

Light module: standard library only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from engine.errors import LoradeckError

# TOML key -> our setting, for the settings loradeck has once per run
RUN_SETTINGS = {
    "resolution": "dataset.resolution",
    "enable_bucket": "dataset.enable_buckets",
    "min_bucket_reso": "dataset.min_bucket_resolution",
    "max_bucket_reso": "dataset.max_bucket_resolution",
    "bucket_reso_steps": "dataset.bucket_step",
    "bucket_no_upscale": "dataset.bucket_no_upscale",
    "batch_size": "training.batch_size",
    "shuffle_caption": "captions.shuffle_caption",
    "keep_tokens": "captions.keep_tokens",
    "caption_dropout_rate": "captions.caption_dropout_rate",
    "caption_tag_dropout_rate": "captions.caption_tag_dropout_rate",
    "caption_dropout_every_n_epochs": "captions.caption_dropout_every_n_epochs",
    "keep_tokens_separator": "captions.keep_tokens_separator",
    "flip_aug": "augmentation.flip",
    "color_aug": "augmentation.color",
    "random_crop": "augmentation.random_crop",
    "alpha_mask": "dataset.alpha_mask",
}
SUBSET_KEYS = {"image_dir", "num_repeats", "class_tokens", "caption_extension", "is_reg", "name",
               "conditioning_data_dir"}


@dataclass(frozen=True)
class Subset:
    image_dir: Path
    num_repeats: int
    class_tokens: str
    caption_extension: str | None  # None: the config's captions.caption_extension
    is_reg: bool
    conditioning_data_dir: Path | None = None  # the images' loss masks, by file name (training.masked_loss)


@dataclass(frozen=True)
class DatasetToml:
    path: Path
    subsets: list[Subset]
    settings: dict[str, Any]  # our setting -> the value the TOML gives it


def _run_value(key: str, value: Any) -> Any:
    if key == "resolution":
        if isinstance(value, list) and len(value) == 2:
            return f"{value[0]},{value[1]}"
        return f"{value},{value}" if isinstance(value, int) else value
    return value


def relative_path(base: Path, text: str) -> Path:
    """`text` under `base` (an absolute `text` as it is). A Windows-style relative path
    (`.\\test\\img`, as the Kohya GUI's own test files have) that does not exist is tried
    with forward slashes."""
    path = expanded(text)
    if path.is_absolute():
        return path
    joined = base / path
    if "\\" in text and not exists(joined):
        return base / Path(text.replace("\\", "/"))
    return joined


def expanded(text: str) -> Path:
    """`~/x` under the home folder; `~nobody/x` of a user that does not exist stays as it is
    (Path.expanduser raises RuntimeError there)."""
    try:
        return Path(text).expanduser()
    except RuntimeError:
        return Path(text)


def exists(path: Path) -> bool:
    """Path.exists() that says False, not ValueError, for a name with a NUL in it."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def read_dataset_toml(path: str | Path, *, base: Path | None = None) -> DatasetToml:
    """The subsets and per-run settings of a Kohya dataset TOML; a relative image_dir starts
    from `base` (default: the TOML's folder). Raises LoradeckError."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LoradeckError(f"dataset.dataset_config: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise LoradeckError(f"dataset.dataset_config: cannot read {path} ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise LoradeckError(f"{path}: not valid TOML ({error})") from None
    general = data.get("general", {})
    datasets = data.get("datasets", [])
    if not isinstance(general, dict) or not isinstance(datasets, list) or not datasets:
        raise LoradeckError(f"{path}: a Kohya dataset config needs at least one [[datasets]] table")
    subsets: list[Subset] = []
    settings: dict[str, Any] = {}
    for dataset_index, dataset in enumerate(datasets, start=1):
        entries = dataset.get("subsets", []) if isinstance(dataset, dict) else []
        if not entries:
            raise LoradeckError(f"{path}: [[datasets]] number {dataset_index} has no [[datasets.subsets]]")
        for subset_index, subset in enumerate(entries, start=1):
            where = f"{path}: datasets {dataset_index}, subset {subset_index}"
            known = SUBSET_KEYS | set(RUN_SETTINGS)
            for scope in (general, dataset, subset):
                unknown = sorted(set(scope) - known - {"subsets"})
                if unknown:
                    raise LoradeckError(f"{where}: {', '.join(unknown)} cannot be trained by loradeck "
                                        f"(it reads {', '.join(sorted(known))})")

            def lookup(key: str, default: Any = None) -> Any:
                for scope in (subset, dataset, general):
                    if key in scope:
                        return scope[key]
                return default

            if "image_dir" not in subset:
                raise LoradeckError(f"{where}: image_dir is missing")
            image_dir = relative_path(base or path.parent, str(subset["image_dir"]))
            repeats = lookup("num_repeats", 1)
            if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 0:
                raise LoradeckError(f"{where}: num_repeats must be a whole number, got {repeats!r}")
            extension = lookup("caption_extension")
            masks = subset.get("conditioning_data_dir")
            subsets.append(Subset(image_dir, repeats, str(lookup("class_tokens", "") or ""),
                                  str(extension) if extension is not None else None, bool(lookup("is_reg", False)),
                                  relative_path(base or path.parent, str(masks)) if masks else None))
            for key, setting in RUN_SETTINGS.items():
                value = lookup(key)
                if value is None:
                    continue
                value = _run_value(key, value)
                if setting in settings and settings[setting] != value:
                    raise LoradeckError(f"{where}: {key} = {value!r} differs from {settings[setting]!r} in another "
                                        "subset; loradeck uses one value per run")
                settings[setting] = value
    return DatasetToml(path, subsets, settings)


def config_differences(config, toml: DatasetToml) -> list[str]:
    """Each per-run setting the TOML gives a value other than the config's, as one line."""
    from engine.config.schema import parse_resolution

    toml_keys = {setting: key for key, setting in RUN_SETTINGS.items()}
    differences = []
    for setting, value in toml.settings.items():
        group, name = setting.split(".")
        ours = getattr(getattr(config, group), name)
        if setting == "dataset.resolution":
            try:
                same = parse_resolution(ours) == parse_resolution(value)
            except ValueError:
                same = False
        else:
            same = ours == value
        if not same:
            differences.append(f"{toml.path.name} sets {toml_keys[setting]} = {value!r} but {setting} is {ours!r}")
    return differences
