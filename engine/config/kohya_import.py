"""Read Kohya GUI JSON configs as they are saved in the wild, and train what the GUI trains.

The GUI stores numbers as strings (`"0.0001"`, `"64.0"`), empty strings for unset values,
`"xformers": "xformers"` or `true`, `max_resolution` as `"512,650"`, and warm-up as a
percentage (engine.config.kohya_values reads them, refusing wrong types in one line). It
passes sd-scripts only the values that are not 0, empty or false, so sd-scripts' own
default stands in for those (`max_grad_norm` 0 clips at 1.0); its `additional_parameters`
go on sd-scripts' command line after the config and win over it. The import follows both.

Every key is mapped, noted, or listed as having no effect (engine.config.kohya_keys); a
preset without a base model imports as a partial config (`left_to_set`); a network type or
model family loradeck cannot train fails with one line naming it.

Light module.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.config import kohya_values as value
from engine.config.kohya_keys import (
    OTHER_FAMILY_KEYS,
    FAMILY_SWITCHES,
    GUI_PASSES,
    LYCORIS_OPTIONS,
    METADATA_KEYS,
    NETWORK_KEYS,
    NO_EFFECT,
    NOT_BUILT,
    OTHER_TABS,
    PATH_KEYS,
    SD_SCRIPTS_DEFAULTS,
    SIMPLE_KEYS,
    TEXTUAL_INVERSION_KEYS,
)
from engine.config.kohya_paths import WINDOWS_ABSOLUTE, GuiFolder, find_gui_folder, is_absolute
from engine.config.prompts import normalize_sampler
from engine.config.schema import (
    BUCKET_STEPS,
    CONFIG_VERSION,
    OPTIMIZERS,
    PARTIAL_SETTINGS,
    RANDOM_SEED,
    SCHEDULERS,
    TORCH_SCHEDULERS,
    NetworkSettings,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    parse_resolution,
    field_spec,
    schema,
)
from engine.errors import ConfigError, LoradeckError
from engine.model.families import FAMILIES

UNSET = value.UNSET
# a family's kohya_values are read by the type of the setting they fill
VALUE_CONVERTERS = {str: value.text, int: value.integer, float: value.number, bool: value.flag}
GUI_DEFAULT_STEPS = 1600  # the GUI's max_train_steps when a config has none, and sd-scripts' default
# a JSON nested deeper than this is no GUI config (the GUI's are flat); json itself would
# raise RecursionError on a few thousand levels
MAX_NESTING = 50

# the GUI's noise types: it keeps both types' values and passes sd-scripts the chosen one's
NOISE_TYPE_KEYS = {
    "original": ("noise_offset", "adaptive_noise_scale", "noise_offset_random_strength"),
    "multires": ("multires_noise_iterations", "multires_noise_discount"),
}

# the GUI's LoRA_type -> our network.type (a LyCORIS/LoCon with dora_wd is DoRA)
NETWORK_TYPES = {
    "standard": "lora", "": "lora", "kohya locon": "locon", "locon": "locon", "lycoris/locon": "locon",
    "lycoris/loha": "loha", "lycoris/lokr": "lokr", "kohya loha": "loha", "kohya lokr": "lokr",
    "lycoris/ia3": "ia3", "lycoris/diag-oft": "diag-oft", "lycoris/dylora": "dylora", "lycoris/glora": "glora",
    "flux1": "lora",
}
# the GUI's types loradeck does not train, and why, in words
REFUSED_TYPES = {
    "flux1 oft": "a Flux.1 OFT network",
    "lycoris/native fine-tuning": "a full fine-tune, not a LoRA",
    "hunyuanimage-2.1": "a HunyuanImage LoRA", "anima": "an Anima LoRA", "lumina": "a Lumina LoRA",
    "kohya dylora": "sd-scripts' own DyLoRA (LyCORIS/DyLoRA is trained)",
    "lora-fa": "LoRA-FA (a frozen down matrix)", "lycoris/boft": "LyCORIS' butterfly OFT (Diag-OFT is trained)",
}
TRAINED_TYPES = ("Standard, Kohya LoCon, LyCORIS/LoCon (dora_wd: DoRA), LyCORIS/LoHa, LyCORIS/LoKr, LyCORIS/iA3, "
                 "LyCORIS/Diag-OFT, LyCORIS/DyLoRA and LyCORIS/GLoRA, for SD 1.x, SD 2.x and SDXL; Flux1 for Flux.1")

# sd-scripts' option names (additional_parameters) that the GUI's JSON calls otherwise
SD_SCRIPTS_NAMES = {"optimizer_type": "optimizer", "resolution": "max_resolution", "network_weights": "lora_network_weights"}

# keys handled by hand below
# each family's GUI keys (engine.model.family: kohya_flags, kohya_settings, kohya_notes, kohya_values,
# kohya_not_built): "v2", "sdxl", "flux1_checkbox", "t5xxl", ...
FAMILY_KEYS = frozenset(key for family in FAMILIES for key in family.kohya_keys)
SPECIAL_KEYS = frozenset({
    "LoRA_type", *FAMILY_KEYS, "max_resolution", "xformers", "cache_latents", "optimizer", "lr_scheduler", "lr_warmup",
    "stop_text_encoder_training", "stop_text_encoder_training_pct", "max_train_epochs", "max_train_steps",
    "sample_sampler", "network_train_unet_only", "network_train_text_encoder_only", "noise_offset_type",
    "dora_wd", "LyCORIS_preset", "bucket_reso_steps",
    "max_grad_norm", "min_bucket_reso", "max_bucket_reso", "clip_skip", "network_alpha", "caption_extension",
    "seed", "lr_scheduler_num_cycles", "lr_scheduler_type", "lr_scheduler_args", "save_precision",
    "additional_parameters", *PATH_KEYS, *NETWORK_KEYS, *LYCORIS_OPTIONS, "max_timestep",
    *METADATA_KEYS,
})

# the keys only the GUI's LoRA tab writes; a config without any came from another tab
LORA_KEYS = ("LoRA_type", "network_dim", "network_alpha")


@dataclass
class KohyaImport:
    """The imported config and the report `loradeck import-kohya` prints: `mapped` as
    (Kohya key, loradeck setting) pairs, `notes` what was changed and why, `off` the keys
    that change training but are off in this config (as loradeck trains), `ignored` the keys
    with no effect on training, `left_to_set` what a partial config (a preset) still needs."""

    config: TrainConfig
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    mapped: list[tuple[str, str]] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)  # Kohya keys left empty: loradeck's default kept
    off: list[str] = field(default_factory=list)
    left_to_set: list[str] = field(default_factory=list)

    def report(self) -> list[str]:
        """What was mapped (with the value it got), changed and why, and ignored; one line each."""
        values = config_to_dict(self.config)
        lines = [f"mapped {len(self.mapped)} keys:"]
        for kohya_key, setting in self.mapped:
            group, name = setting.split(".")
            lines.append(f"  {kohya_key} -> {setting} = {values.get(group, {}).get(name, '(unset)')!r}")
        if self.empty:
            lines.append(f"kept loradeck's default for {len(self.empty)} empty keys: {', '.join(self.empty)}")
        lines.append(f"changed {len(self.notes)}:" if self.notes else "changed nothing")
        lines += [f"  {note}" for note in self.notes]
        if self.off:
            lines.append(f"off here, as loradeck trains: {', '.join(self.off)}")
        lines.append(f"ignored {len(self.ignored)} keys (no effect on training): {', '.join(self.ignored)}"
                     if self.ignored else "ignored nothing")
        if self.left_to_set:
            lines.append(f"left to set: {', '.join(self.left_to_set)} (a preset has no base model: "
                         "import-kohya --model PATH, or set it in the config)")
        return lines


def import_kohya_file(path: str | Path, *, model: str = "", kohya_dir: str | Path | None = None) -> KohyaImport:
    """The Kohya GUI config in a JSON file; `model` fills in (or replaces) the base model,
    `kohya_dir` is the GUI's folder (found from the JSON's folder when not given)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LoradeckError(f"{path}: no such file") from None
    except OSError as error:  # a folder, no permission, an I/O error
        raise LoradeckError(f"{path}: cannot read ({error.strerror or error})") from None
    except RecursionError:
        raise LoradeckError(f"{path}: not a Kohya JSON config (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise LoradeckError(f"{path}: not a Kohya JSON config ({value.shown_error(error)})") from None
    if not isinstance(data, dict):
        raise LoradeckError(f"{path}: not a Kohya JSON config (expected an object)")
    return import_kohya(data, source=str(path), json_folder=path.parent, model=model,
                        kohya_dir=Path(kohya_dir) if kohya_dir else None)


def import_kohya(data: dict[str, Any], source: str = "", *, json_folder: str | Path | None = None, model: str = "",
                 kohya_dir: Path | None = None) -> KohyaImport:
    where = f"{source}: " if source else ""
    _check_shape(data, where)
    data, notes, command_line = _with_additional_parameters(data, where)
    network_type = _network_type(data, where)
    gui = find_gui_folder(data, Path(json_folder) if json_folder is not None else None, kohya_dir)
    reader = _Reader(data, where, notes, command_line)

    for key in data:
        reader.classify(key)
    reader.paths(gui, model)
    reader.special_keys(gui)
    reader.steps(gui)
    _network_settings(reader, network_type)
    reader.dataset_toml(gui)
    reader.metadata()
    return reader.build(source)


def _depth(item: Any, limit: int) -> int:
    """How deeply `item` nests, counting no further than `limit` (no recursion)."""
    deepest, stack = 0, [(item, 0)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest >= limit:
            return deepest
        children = current.values() if isinstance(current, dict) else current if isinstance(current, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _check_shape(data: dict[str, Any], where: str) -> None:
    """Refuse what is no GUI config at all: a fine-tuning metadata file, a deeply nested object."""
    if _depth(data, MAX_NESTING) >= MAX_NESTING:
        raise LoradeckError(f"{where}not a Kohya JSON config (nested more than {MAX_NESTING} levels)")
    known = SPECIAL_KEYS | set(SIMPLE_KEYS) | set(NOT_BUILT) | NO_EFFECT | OTHER_TABS | OTHER_FAMILY_KEYS
    if data and not any(key in known for key in data):
        if all(isinstance(item, dict) and ("caption" in item or "tags" in item) for item in data.values()):
            raise LoradeckError(f"{where}a fine-tuning metadata file (image -> caption, sd-scripts' in_json), not a "
                                "Kohya GUI config")
        raise LoradeckError(f"{where}not a Kohya GUI config (none of its keys is one the GUI saves)")


def _with_additional_parameters(data: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str], set[str]]:
    """The config with `additional_parameters` applied (and the notes and keys they set): the
    GUI puts them on sd-scripts' command line after the config file, where they win over it."""
    try:
        text = value.text(data.get("additional_parameters"))
    except ValueError as error:
        raise LoradeckError(f"{where}additional_parameters: {error}") from None
    if text is UNSET:
        return data, [], set()
    try:
        tokens = shlex.split(text)
    except ValueError as error:
        raise LoradeckError(f"{where}additional_parameters: {error} in {text!r}") from None
    options: dict[str, list[str]] = {}
    current = None
    for token in tokens:
        if token.startswith("--"):
            name, _, inline = token[2:].partition("=")
            current = SD_SCRIPTS_NAMES.get(name, name)
            options[current] = [inline] if inline else []
        elif current is not None:
            options[current].append(token)
        else:
            raise LoradeckError(f"{where}additional_parameters: {token!r} is no --option")
    merged, notes = dict(data), []
    for name, values in options.items():
        if name in NO_EFFECT:
            continue
        known = name in SPECIAL_KEYS or name in SIMPLE_KEYS or name in NOT_BUILT
        if not known:
            notes.append(f"additional_parameters --{name} not used: loradeck has no setting for it")
            continue
        merged[name] = " ".join(values) if values else True
        notes.append(f"additional_parameters --{name}{' ' + ' '.join(values) if values else ''}: applied over the "
                     "config, as sd-scripts reads its command line")
    return merged, notes, set(options)


def _network_type(data: dict[str, Any], where: str) -> str:
    for switch, family in FAMILY_SWITCHES.items():
        try:
            on = value.flag(data.get(switch))
        except ValueError as error:
            raise LoradeckError(f"{where}{switch}: {error}") from None
        if on is True:
            raise LoradeckError(f"{where}{switch} is on: a {family} config; loradeck trains LoRAs of SD 1.x, SD 2.x "
                                "and SDXL")
    try:
        gui_type = value.text(data.get("LoRA_type", "Standard"))
    except ValueError as error:
        raise LoradeckError(f"{where}LoRA_type: {error}") from None
    gui_type = "" if gui_type is UNSET else gui_type
    lowered = gui_type.lower()
    if lowered in REFUSED_TYPES:
        raise LoradeckError(f"{where}LoRA_type {gui_type!r} is {REFUSED_TYPES[lowered]}, which loradeck does not "
                            f"train; it trains {TRAINED_TYPES}")
    if lowered not in NETWORK_TYPES:
        raise LoradeckError(f"{where}LoRA_type {gui_type!r} cannot be trained by loradeck (it trains {TRAINED_TYPES}); "
                            "choose one of those in the Kohya GUI or train it there")
    return gui_type


class _Reader:
    """The settings built from one config, with the report's lists; one method per part."""

    def __init__(self, data: dict[str, Any], where: str, notes: list[str], command_line: set[str]):
        self.data, self.where, self.notes = data, where, notes
        self.command_line = command_line  # keys given on sd-scripts' command line: passed even when 0
        self.settings: dict[str, dict[str, Any]] = {}
        self.mapped: dict[str, str] = {}  # our setting -> the Kohya key it came from (the last one wins)
        self.empty: list[str] = []
        self.ignored: list[str] = []
        self.off: list[str] = []
        self.unknown: list[str] = []
        noise_type = self.convert("noise_offset_type", value.choice, default="Original")
        noise_type = "original" if noise_type is UNSET else noise_type.lower()
        if noise_type not in NOISE_TYPE_KEYS:
            raise LoradeckError(f"{where}noise_offset_type {data['noise_offset_type']!r} is not Original or Multires")
        self.noise_type = noise_type
        # the family the GUI's checkboxes choose (its own keys are read by _family, not classify)
        self.family = next((family for family in FAMILIES if any(self.is_on(key) for key in family.kohya_flags)), None)

    # ---- small helpers

    def convert(self, key: str, converter: Callable[[Any], Any], default: Any = None) -> Any:
        """The key's value through `converter`, UNSET when absent; a wrong type is one line."""
        if key not in self.data and default is None:
            return UNSET
        try:
            return converter(self.data.get(key, default))
        except ValueError as error:
            raise LoradeckError(f"{self.where}{key}: {error}") from None

    def put(self, setting: str, result: Any, kohya_key: str) -> None:
        if result is UNSET:
            self.empty.append(kohya_key)
            return
        group, name = setting.split(".")
        self.settings.setdefault(group, {})[name] = result
        self.mapped.pop(setting, None)
        self.mapped[setting] = kohya_key

    def get(self, setting: str, default: Any = None) -> Any:
        group, name = setting.split(".")
        return self.settings.get(group, {}).get(name, default)

    def one_of(self, key: str, allowed: tuple[str, ...]) -> Any:
        """The key's choice, which must be one of `allowed` (UNSET when empty)."""
        chosen = self.convert(key, value.choice)
        if chosen is not UNSET and chosen not in allowed:
            raise LoradeckError(f"{self.where}{key} {chosen!r} is not supported; loradeck builds {', '.join(allowed)}")
        return chosen

    def is_on(self, key: str) -> bool:
        return self.convert(key, value.flag) is True

    # ---- the parts

    def classify(self, key: str) -> None:
        """One key of the config: copied, noted when it changes training and is on, or ignored."""
        unused_noise = {k for kind, keys in NOISE_TYPE_KEYS.items() if kind != self.noise_type for k in keys}
        if key in unused_noise:
            if self.convert(key, value.number if key != "noise_offset_random_strength" else value.flag) not in (
                    UNSET, 0, False):
                self.notes.append(f"{key} not used: noise_offset_type is {self.noise_type.title()}, as in the GUI")
            return
        if self.family is not None and key in self.family.kohya_keys:
            if key in self.family.kohya_not_built:
                self._not_built(key, self.family.kohya_not_built[key])
            return  # the family's own key: _family reads it
        if key in SIMPLE_KEYS:
            setting, converter = SIMPLE_KEYS[key]
            self.put(setting, self.convert(key, converter), key)
        elif key in NOT_BUILT:
            self._not_built(key)
        elif key in NO_EFFECT or key in OTHER_FAMILY_KEYS or key in OTHER_TABS:
            self.ignored.append(key)
        elif key not in SPECIAL_KEYS:
            self.unknown.append(key)

    def _not_built(self, key: str, table: tuple[tuple, str] | None = None) -> None:
        off_values, what = table or NOT_BUILT[key]
        raw = self.data[key]
        if isinstance(raw, (dict, list)):
            raise LoradeckError(f"{self.where}{key}: {value.shown(raw)} where a single value belongs")
        if raw in (None, "") or raw in off_values or _same_number(raw, off_values):
            self.off.append(key)
        else:
            self.notes.append(f"{key} {raw!r} not trained: loradeck trains without {what}")

    def paths(self, gui: GuiFolder, model: str) -> None:
        """The config's paths, relative ones read from the GUI's folder; `model` wins."""
        relative_kept = []
        for key, setting in PATH_KEYS.items():
            text = self.convert(key, value.text)
            if text is UNSET:
                if key in self.data:
                    self.empty.append(key)
                continue
            if WINDOWS_ABSOLUTE.match(text):
                self.notes.append(f"{key} {text!r} is a Windows path: set {setting} to where it is on this machine")
            elif gui.path is None and not is_absolute(text) and key != "pretrained_model_name_or_path":
                relative_kept.append(f"{key} {text}")
            may_be_hub_id = key in ("pretrained_model_name_or_path", "vae")
            self.put(setting, gui.resolve(text, must_exist=may_be_hub_id), key)
        if gui.path is not None:
            self.notes.append(gui.note())
        elif relative_kept:
            self.notes.append(f"relative paths kept as written ({', '.join(relative_kept)}): the GUI reads them from "
                              "its own folder, not found at or above the JSON's folder; --kohya-dir sets it")
        if model:
            self.put("model.pretrained_model", model, "--model")
        if self.get("dataset.dataset_config") and gui.path is not None:
            self.put("dataset.dataset_config_base", str(gui.path), "dataset_config")

    def dataset_toml(self, gui: GuiFolder) -> None:
        """sd-scripts takes the images, and the batch size, resolution, bucket, caption and
        augmentation settings, from the dataset TOML when there is one; so does the import."""
        from engine.dataset.kohya_toml import RUN_SETTINGS, read_dataset_toml

        toml_path = self.get("dataset.dataset_config")
        if not toml_path:
            return
        path, base = Path(toml_path), gui.path
        try:
            toml = read_dataset_toml(path, base=base)
        except LoradeckError as error:
            self.notes.append(f"dataset_config not read, its settings not copied: {error}")
            return
        toml_keys = {setting: key for key, setting in RUN_SETTINGS.items()}
        for setting, setting_value in toml.settings.items():
            self.put(setting, setting_value, f"dataset_config {toml_keys[setting]}")
        images = sum(1 for subset in toml.subsets if not subset.is_reg)
        copied = f"; copied {', '.join(toml_keys[s] for s in toml.settings)} from it" if toml.settings else ""
        self.notes.append(f"dataset_config {path.name}: {len(toml.subsets)} subsets ({images} of training images) "
                          f"define the images, not train_data_dir / reg_data_dir{copied}")

    def special_keys(self, gui: GuiFolder) -> None:
        """The keys that need more than a copy."""
        data, put = self.data, self.put
        if "bucket_reso_steps" in data:
            step = self.convert("bucket_reso_steps", value.integer)
            if step is not UNSET and step not in BUCKET_STEPS:
                self.notes.append(f"bucket_reso_steps {step} -> 64: loradeck's bucket step is one of "
                                  f"{', '.join(map(str, BUCKET_STEPS))} (64 is sd-scripts' default)")
                step = 64
            put("dataset.bucket_step", step, "bucket_reso_steps")
        self._sd_scripts_defaults()
        self._family(gui)
        if "max_resolution" in data:
            text = self.convert("max_resolution", value.text)
            if text is not UNSET:
                put("dataset.resolution", _resolution(text.replace(" ", ""), self), "max_resolution")
        self._attention()
        if "cache_latents" in data:
            cache = self.convert("cache_latents", value.flag)
            to_disk = self.convert("cache_latents_to_disk", value.flag)
            if cache is not UNSET:
                put("precision.cache_latents", ("disk" if to_disk is True else "memory") if cache else "none",
                    "cache_latents")
        self._optimizer()
        self._schedule()
        self._captions()
        if "sample_sampler" in data:
            sampler = self.convert("sample_sampler", value.choice)
            if sampler is not UNSET:
                ours = normalize_sampler(sampler)
                if ours is None:
                    self.notes.append(f"sample_sampler {sampler!r} has no equivalent; using euler_a")
                else:
                    put("sampling.sampler", ours, "sample_sampler")
        if "save_precision" in data:
            precision = self.convert("save_precision", value.choice)
            put("precision.save_precision", "float" if precision is UNSET else precision, "save_precision")
        self._which_models()
        if self.convert("seed", value.integer) == 0:
            put("training.seed", RANDOM_SEED, "seed")
            self.notes.append("seed 0 means a random seed in the GUI: training.seed = -1, drawn when the run starts "
                              "and written into the run's config.toml and run_start event")
        elif "seed" in data:
            put("training.seed", self.convert("seed", value.integer), "seed")
        self._text_encoder_stop()

    def _family(self, gui: GuiFolder) -> None:
        """The GUI's model checkboxes ("v2", "sdxl", "flux1_checkbox"): each family's own keys and
        notes; its own files (Flux.1's ae, clip_l, t5xxl) read from the GUI's folder, as the
        config's other relative paths."""
        chosen = self.family
        if chosen is not None:
            flag = next(key for key in chosen.kohya_flags if self.is_on(key))
            self.put("model.family", chosen.name, flag)
            for key, setting in chosen.kohya_settings.items():
                if self.is_on(key):
                    self.put(setting, True, key)
            for key, setting in chosen.kohya_values.items():
                if key in self.data:
                    spec = field_spec(setting)
                    result = self.convert(key, VALUE_CONVERTERS[spec.type])
                    self.put(setting, gui.resolve(result) if spec.path and isinstance(result, str) else result, key)
            self.notes.extend(note for key, note in chosen.kohya_notes.items() if self.is_on(key))
        for key in FAMILY_KEYS:  # another family's switch and settings, off here
            if key in self.data and (chosen is None or key not in chosen.kohya_keys):
                if any(key in family.kohya_flags or key in family.kohya_settings or key in family.kohya_notes
                       for family in FAMILIES):
                    self.convert(key, value.flag)  # a path where a switch belongs is still refused
                if key not in NOT_BUILT:  # those are noted by classify when on
                    self.ignored.append(key)

    def _sd_scripts_defaults(self) -> None:
        """Values the GUI leaves out when they are 0: sd-scripts' default applies."""
        targets = {"max_grad_norm": "optimizer.max_grad_norm", "min_bucket_reso": "dataset.min_bucket_resolution",
                   "max_bucket_reso": "dataset.max_bucket_resolution", "clip_skip": "model.clip_skip",
                   "network_alpha": "network.alpha", "max_timestep": "training.max_timestep"}
        converters = {"min_bucket_reso": value.integer, "max_bucket_reso": value.integer, "clip_skip": value.integer,
                      "max_timestep": value.integer}
        for key, setting in targets.items():
            if key not in self.data:
                continue
            number = self.convert(key, converters.get(key, value.number))
            if number == 0 and key not in self.command_line:
                default = SD_SCRIPTS_DEFAULTS[key]
                if key in ("max_grad_norm", "network_alpha"):
                    self.notes.append(f"{key} 0 -> {default:g}: the GUI does not pass a 0 to sd-scripts, whose "
                                      f"default {default:g} applies")
                number = type(number)(default)
            self.put(setting, number, key)

    def _attention(self) -> None:
        key = "xformers" if "xformers" in self.data else "sdpa" if "sdpa" in self.data else None
        if key is None:
            return
        raw = self.data[key]
        if isinstance(raw, bool):
            kind = "xformers" if raw and key == "xformers" else "sdpa"
        else:
            text = self.convert(key, value.choice)
            if text is UNSET:
                return
            kind = {"xformers": "xformers", "true": key, "sdpa": "sdpa", "none": "sdpa", "false": "sdpa"}.get(
                text.lower())
            if kind is None:
                raise LoradeckError(f"{self.where}{key}: {text!r} is not xformers, sdpa or none")
        self.put("precision.attention", kind, key)

    def _optimizer(self) -> None:
        optimizer = self.convert("optimizer", value.choice)
        if optimizer is UNSET:
            return
        names = {name.lower(): name for name in OPTIMIZERS}
        names["dadaptation"] = "DAdaptAdamPreprint"  # sd-scripts' alias
        match = names.get(optimizer.lower())
        if match is None:
            raise LoradeckError(f"{self.where}optimizer {optimizer!r} is not supported; loradeck trains with "
                                f"{', '.join(OPTIMIZERS)}")
        self.put("optimizer.optimizer", match, "optimizer")

    def _schedule(self) -> None:
        data, put = self.data, self.put
        scheduler = self.one_of("lr_scheduler", SCHEDULERS)
        if scheduler is not UNSET:
            put("optimizer.lr_scheduler", scheduler, "lr_scheduler")
        # "" sends the number of epochs, as the GUI does
        cycles = self.convert("lr_scheduler_num_cycles", value.integer)
        if cycles is UNSET and "lr_scheduler_num_cycles" in data:
            cycles = self.convert("epoch", value.integer)
        if cycles is not UNSET:
            put("optimizer.lr_scheduler_num_cycles", max(cycles, 1), "lr_scheduler_num_cycles")
        scheduler_class = self.one_of("lr_scheduler_type", TORCH_SCHEDULERS)
        arguments = self.convert("lr_scheduler_args", value.text)
        if scheduler_class is not UNSET:
            put("optimizer.lr_scheduler_type", scheduler_class, "lr_scheduler_type")
            put("optimizer.lr_scheduler_args", "" if arguments is UNSET else arguments.replace('"', ""),
                "lr_scheduler_args")
        elif arguments is not UNSET:
            self.notes.append(f"lr_scheduler_args {arguments!r} not used: they go to a scheduler class "
                              "(lr_scheduler_type), and none is set")
        percent = self.convert("lr_warmup", value.number)
        if percent is not UNSET and percent > 0:
            if self.get("optimizer.lr_warmup_steps"):
                self.notes.append(f"lr_warmup {percent:g}% not used: lr_warmup_steps wins, as in the GUI")
            elif scheduler_class is not UNSET:
                self.notes.append(f"lr_warmup {percent:g}% not used: sd-scripts refuses a warm-up with a scheduler "
                                  "class")
            else:
                put("optimizer.lr_warmup_percent", percent, "lr_warmup")
        if scheduler_class is not UNSET and self.get("optimizer.lr_warmup_steps"):
            self.notes.append("lr_warmup_steps not used: sd-scripts refuses a warm-up with a scheduler class")
            put("optimizer.lr_warmup_steps", 0, "lr_warmup_steps")

    def _captions(self) -> None:
        if "caption_extension" in self.data:
            extension = self.convert("caption_extension", value.text)
            if extension is UNSET:
                extension = ".caption"
                self.notes.append("caption_extension empty -> .caption: the GUI passes nothing and sd-scripts reads "
                                  ".caption files")
            self.put("captions.caption_extension", extension, "caption_extension")

    def _which_models(self) -> None:
        """The GUI (and sd-scripts) read a zero rate for one model, beside a rate for the other,
        as "do not train this one" rather than "use the learning rate"."""
        put = self.put
        unet_rate = self.convert("unet_lr", value.number)
        text_rate = self.convert("text_encoder_lr", value.number)
        if text_rate == 0 and unet_rate is not UNSET and unet_rate > 0:
            put("network.train_text_encoder", False, "text_encoder_lr")
            self.notes.append("text_encoder_lr is 0 with unet_lr set: training the U-Net only, as the GUI does")
        if unet_rate == 0 and text_rate is not UNSET and text_rate > 0:
            put("network.train_unet", False, "unet_lr")
            self.notes.append("unet_lr is 0 with text_encoder_lr set: training the text encoder only, as the GUI does")
        if self.is_on("network_train_unet_only"):
            put("network.train_text_encoder", False, "network_train_unet_only")
        if self.is_on("network_train_text_encoder_only"):
            put("network.train_unet", False, "network_train_text_encoder_only")

    def _text_encoder_stop(self) -> None:
        key = "stop_text_encoder_training_pct" if "stop_text_encoder_training_pct" in self.data \
            else "stop_text_encoder_training"
        percent = self.convert(key, value.number)
        if percent is not UNSET and percent > 0:
            self.notes.append(f"{key} {percent:g}% not used: the GUI's LoRA tab does not pass it to sd-scripts "
                              "(\"not yet supported. Ignoring\"), so the text encoder trains to the end there too")
        elif percent is not UNSET:
            self.off.append(key)

    def steps(self, gui: GuiFolder) -> None:
        """How long sd-scripts trains what the GUI passes it: max_train_epochs when set (it wins),
        else max_train_steps, else the GUI's own count (the plan computes it from the images)."""
        put = self.put
        epochs = self.convert("max_train_epochs", value.integer)
        steps = self.convert("max_train_steps", value.integer)
        if epochs is not UNSET and epochs > 0:
            put("training.epochs", epochs, "max_train_epochs")  # sd-scripts: it overrides max_train_steps
            put("training.max_steps", 0, "max_train_epochs")
        elif self.data.get("max_train_steps") is None:
            put("training.max_steps", GUI_DEFAULT_STEPS, "max_train_steps")
            self.notes.append(f"no max_train_steps: the GUI keeps its default {GUI_DEFAULT_STEPS} and trains that "
                              "many steps")
        elif steps is not UNSET and steps > 0:
            put("training.max_steps", steps, "max_train_steps")
        elif self.get("dataset.dataset_config"):
            put("training.max_steps", GUI_DEFAULT_STEPS, "max_train_steps")
            self.notes.append(f"max_train_steps 0 with a dataset_config: the GUI passes no step count and sd-scripts "
                              f"trains its default {GUI_DEFAULT_STEPS} steps")
        else:
            put("training.gui_step_count", True, "max_train_steps")
            if self.get("training.epochs") is None:
                put("training.epochs", 1, "epoch")  # the GUI's default epoch
            self.notes.append("max_train_steps 0: the GUI passes sd-scripts ceil(images × repeats / batch / "
                              "accumulation × epoch, × 2 with regularisation) steps, without buckets: "
                              "training.gui_step_count = true (`loradeck plan` shows the count)")

    def metadata(self) -> None:
        for key, setting in METADATA_KEYS.items():
            if key in self.data:
                self.put(setting, self.convert(key, value.text), key)

    # ---- the result

    def build(self, source: str) -> KohyaImport:
        where, data = self.where, self.data
        if self.unknown:
            self.notes.append(f"unknown key(s), not used: {', '.join(sorted(self.unknown))}")
        if not any(key in data for key in LORA_KEYS):
            defaults = NetworkSettings()
            textual_inversion = any(key in data for key in TEXTUAL_INVERSION_KEYS)
            self.notes.append(
                ("a Textual Inversion config (token_string, init_word): loradeck trains a LoRA with its dataset and "
                 "optimizer, not an embedding; " if textual_inversion else
                 f"no LoRA settings ({', '.join(LORA_KEYS)}): a DreamBooth or fine-tuning tab config? ")
                + f"loradeck trains a LoRA of rank {defaults.rank} / alpha {defaults.alpha:g} (its defaults)"
            )
        self.settings["version"] = CONFIG_VERSION  # type: ignore[assignment]
        try:
            config = config_from_dict(self.settings, source, partial=True)
        except ConfigError as error:
            raise LoradeckError(f"{where}after import, {error.field}: {error.reason}") from None
        left = [key for key in PARTIAL_SETTINGS if not _setting_of(config, key).strip()]
        return KohyaImport(config=config, ignored=sorted(set(self.ignored)), notes=self.notes,
                           mapped=[(kohya_key, setting) for setting, kohya_key in self.mapped.items()],
                           empty=sorted(set(self.empty)), off=sorted(set(self.off)), left_to_set=left)


def _setting_of(config: TrainConfig, key: str) -> Any:
    group, name = key.split(".")
    return getattr(getattr(config, group), name)


def _same_number(raw: Any, off_values: tuple) -> bool:
    """"0", "0.0", 1.0 and 1 are the same off value."""
    try:
        number = value.number(raw)
    except ValueError:
        return False
    return number is not UNSET and any(
        isinstance(off, (int, float)) and not isinstance(off, bool) and number == off for off in off_values)


def _network_settings(reader: _Reader, gui_type: str) -> None:
    """network.type from LoRA_type (and dora_wd), and the type's own settings."""
    data, put, notes = reader.data, reader.put, reader.notes
    kind = NETWORK_TYPES[gui_type.lower()]
    passed = GUI_PASSES[gui_type.lower()]
    for key in (*NETWORK_KEYS, *LYCORIS_OPTIONS, "dora_wd", "LyCORIS_preset"):
        if key in data and key not in passed:
            reader.ignored.append(key)  # the GUI keeps it for every type, and does not pass it for this one
    dora = "dora_wd" in passed and reader.is_on("dora_wd")
    if dora and kind == "locon" and gui_type.lower() in ("lycoris/locon", "locon"):
        kind = "dora"
        put("network.dora_layout", "output", "dora_wd")
        notes.append("dora_wd: DoRA with its magnitude per output, as LyCORIS trains it for the GUI; AUTOMATIC1111 "
                     "and ComfyUI render that layout wrongly, network.dora_layout = \"input\" renders exactly in both")
    elif dora:
        notes.append(f"dora_wd not used: loradeck builds DoRA on LyCORIS/LoCon only, not {gui_type or 'Standard'}")
    elif "dora_wd" in passed and "dora_wd" in data:
        reader.off.append("dora_wd")
    if kind != "lora":
        put("network.type", kind, "LoRA_type" if kind != "dora" else "LoRA_type + dora_wd")
    fields = {spec.key: spec for spec in schema()}
    tucker_on = False  # use_cp and use_tucker both mean it; either one on turns it on
    for key, (setting, converter) in NETWORK_KEYS.items():
        if key not in data or key not in passed:
            continue
        result = reader.convert(key, converter)
        if fields[setting].applies_to(kind):
            if setting == "network.use_tucker":
                if tucker_on:
                    continue
                tucker_on = result is True
            put(setting, result, key)
        elif result not in (UNSET, 0, False, -1, "") and key == "scale_weight_norms":
            reader.off.append(key)  # LyCORIS' apply_max_norm does nothing for this type: the GUI's run is unscaled
            notes.append(f"scale_weight_norms {data[key]!r}: LyCORIS has no max norm for {kind}, so the GUI trains "
                         "without one too")
        elif result not in (UNSET, 0, False, -1, ""):
            notes.append(f"{key} {data[key]!r} not used: {kind} has no {setting}")
        else:
            reader.off.append(key)
    if kind == "dylora" and "unit" in data:
        rank, block = reader.get("network.rank", NetworkSettings().rank), reader.get("network.block_size", 4)
        if block and rank % block:
            raise LoradeckError(f"{reader.where}network_dim {rank} is not a multiple of unit {block}: LyCORIS' DyLoRA "
                                "refuses it too")
    preset = reader.convert("LyCORIS_preset", value.text) if "LyCORIS_preset" in passed else UNSET
    if preset not in (UNSET, "full"):
        notes.append(f"LyCORIS_preset {preset!r} not built: loradeck adapts the layers of LyCORIS' full preset")
    elif preset == "full":
        reader.off.append("LyCORIS_preset")
    for key, default in LYCORIS_OPTIONS.items():
        if key not in data or key not in passed:
            continue
        if data[key] not in (default, "", None, str(default)):
            notes.append(f"{key} {data[key]!r} not used: loradeck builds {kind} without it")
        else:
            reader.off.append(key)


def _resolution(text: str, reader: _Reader) -> str:
    """Without buckets the resolution is the training size, whose sides the VAE needs in
    multiples of 8: snap to the nearest ones (the GUI's own `512,650` preset) and say so."""
    if reader.get("dataset.enable_buckets", True) is False:
        try:
            width, height = parse_resolution(text)
        except (ValueError, OverflowError):
            return text  # the schema names the problem
        snapped = tuple(max(8, round(side / 8) * 8) for side in (width, height))
        if snapped != (width, height):
            result = f"{snapped[0]},{snapped[1]}"
            reader.notes.append(f"max_resolution {text} -> {result}: with buckets off the sides must be multiples "
                                "of 8 (snapped to the nearest)")
            return result
    return text
