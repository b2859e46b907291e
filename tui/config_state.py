"""The config form's state, kept apart from the widgets: what every editor holds, the
config those values make, and what is wrong with them.

An editor holds a *raw* value: the text of an Input or TextArea, the bool of a Switch,
the chosen value of a Select. Each raw value is parsed with its schema entry; a value
that does not parse keeps the last good one in the candidate config and is reported
with its reason. Problems are the parse errors, then `engine.config.schema.validate` (ranges,
choices and the rules between fields), first reason per setting.
"""
from __future__ import annotations

import math
from typing import Any

from engine.config.schema import (
    FieldSpec,
    TrainConfig,
    config_from_dict,
    migrate,
    schema,
    validate,
)
from engine.errors import ConfigError

SWITCH, SELECT, MULTILINE, TEXT = "switch", "select", "multiline", "text"


def editor_kind(spec: FieldSpec) -> str:
    if spec.type is bool:
        return SWITCH
    if spec.choices:
        return SELECT
    if spec.multiline:
        return MULTILINE
    return TEXT


def to_raw(spec: FieldSpec, value: Any) -> Any:
    """The editor value showing a setting's value."""
    kind = editor_kind(spec)
    if kind in (SWITCH, SELECT):
        return value
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def parse_raw(spec: FieldSpec, raw: Any) -> Any:
    """The setting value an editor holds. Raises ValueError with the reason."""
    kind = editor_kind(spec)
    if kind == SWITCH:
        if not isinstance(raw, bool):
            raise ValueError("expected on or off")
        return raw
    if kind == SELECT:
        if raw not in spec.choices:
            raise ValueError(f"{raw!r} is not one of: {', '.join(str(c) for c in spec.choices)}")
        return raw
    text = str(raw)
    if spec.type is str:
        return text
    text = text.strip().replace("_", "")
    if not text:
        if spec.optional:
            return None
        raise ValueError("a value is required")
    if spec.type is int:
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if not number.is_integer():
            raise ValueError(f"{text!r} is not a whole number")
        return int(number)
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


_GROUP_CLASSES = {name: type(group) for name, group in vars(TrainConfig()).items() if name != "version"}


class ConfigFormState:
    """Raw editor values, the candidate config and its problems. Never touches widgets."""

    def __init__(self, config: TrainConfig | None = None):
        self.specs: dict[str, FieldSpec] = {spec.key: spec for spec in schema()}
        self.raw: dict[str, Any] = {}
        self.values: dict[str, Any] = {}
        self.parse_errors: dict[str, str] = {}
        self.saved_raw: dict[str, Any] | None = None  # None: nothing saved yet
        self._config: TrainConfig | None = None
        self.load(config or TrainConfig(), saved=config is not None)

    # ---- loading

    def load(self, config: TrainConfig, *, saved: bool = True) -> None:
        """Show `config`; with `saved`, it is also what is on disk (not dirty)."""
        self.raw = {key: to_raw(spec, getattr(getattr(config, spec.group), spec.name))
                    for key, spec in self.specs.items()}
        self.values = {key: getattr(getattr(config, spec.group), spec.name) for key, spec in self.specs.items()}
        self.parse_errors = {}
        self._config = config
        self.saved_raw = dict(self.raw) if saved else None

    def load_data(self, data: dict[str, Any], source: str = "") -> list[str]:
        """Show TOML data that may not validate (a hand-edited file): every setting that fits
        its editor is shown, so the form can flag it. Returns notes on what was dropped."""
        try:
            config = config_from_dict(data, source)
        except ConfigError:
            config = None
        if config is not None:
            self.load(config)
            return []
        notes: list[str] = []
        try:
            data = migrate(data, source)
        except ConfigError as error:
            notes.append(str(error))
            data = {}
        self.load(TrainConfig(), saved=False)
        for group, values in data.items():
            if group == "version":
                continue
            if not isinstance(values, dict):
                notes.append(f"{group}: not a table of settings; ignored")
                continue
            for name, value in values.items():
                key = f"{group}.{name}"
                spec = self.specs.get(key)
                if spec is None:
                    notes.append(f"{key}: unknown setting; dropped")
                    continue
                kind = editor_kind(spec)
                fits = isinstance(value, bool) if kind == SWITCH else (
                    value in spec.choices if kind == SELECT else not isinstance(value, (dict, list)))
                if not fits:
                    notes.append(f"{key}: {value!r} cannot be shown; using {spec.default!r}")
                    continue
                self.set(key, to_raw(spec, value) if kind in (TEXT, MULTILINE) else value)
        self.saved_raw = dict(self.raw)
        return notes

    # ---- editing

    def set(self, key: str, raw: Any) -> bool:
        """Take an editor's new value. False when it did not change."""
        if self.raw.get(key) == raw and type(self.raw.get(key)) is type(raw):
            return False
        self.raw[key] = raw
        try:
            value = parse_raw(self.specs[key], raw)
        except ValueError as error:
            self.parse_errors[key] = str(error)
        else:
            self.parse_errors.pop(key, None)
            self.values[key] = value
        self._config = None
        return True

    def apply(self, config: TrainConfig, keep: tuple[str, ...] = ()) -> list[str]:
        """Show another config's values (a preset, an import), except the `keep` keys.
        Returns the keys whose editor value changed."""
        changed = []
        for key, spec in self.specs.items():
            if key in keep:
                continue
            raw = to_raw(spec, getattr(getattr(config, spec.group), spec.name))
            if self.set(key, raw):
                changed.append(key)
        return changed

    # ---- reading

    @property
    def config(self) -> TrainConfig:
        """The candidate config: every value that parsed (the last good one where not)."""
        if self._config is None:
            groups: dict[str, dict[str, Any]] = {name: {} for name in _GROUP_CLASSES}
            for key, value in self.values.items():
                spec = self.specs[key]
                groups[spec.group][spec.name] = value
            self._config = TrainConfig(**{name: _GROUP_CLASSES[name](**kwargs) for name, kwargs in groups.items()})
        return self._config

    def problems(self) -> dict[str, str]:
        """Setting key -> the first reason it is not allowed, in schema order."""
        found: dict[str, str] = dict(self.parse_errors)
        for key, reason in validate(self.config):
            found.setdefault(key, reason)
        return {key: found[key] for key in self.specs if key in found}

    @property
    def dirty(self) -> bool:
        return self.saved_raw != self.raw

    def mark_saved(self) -> None:
        self.saved_raw = dict(self.raw)

    # ---- drafts (unsaved edits kept across sessions)

    def draft(self) -> dict[str, Any]:
        return {"raw": dict(self.raw)}

    def restore_draft(self, draft: dict[str, Any]) -> list[str]:
        """Apply a saved draft; returns the keys it changed (unknown or ill-typed entries are skipped)."""
        changed = []
        raw = draft.get("raw")
        if not isinstance(raw, dict):
            return changed
        for key, value in raw.items():
            spec = self.specs.get(key)
            if spec is None:
                continue
            kind = editor_kind(spec)
            if kind == SWITCH and not isinstance(value, bool):
                continue
            if kind == SELECT and value not in spec.choices:
                continue
            if kind in (TEXT, MULTILINE) and not isinstance(value, str):
                continue
            if self.set(key, value):
                changed.append(key)
        return changed
