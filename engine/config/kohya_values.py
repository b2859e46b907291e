"""Values of a Kohya GUI JSON config, read as the GUI saves them, refusing wrong types.

The GUI stores numbers as strings (`"0.0001"`, `"64.0"`), empty strings for unset values,
and switches as `true` / `"True"`. Every converter returns UNSET for an empty value and
raises ValueError, with what is wrong in words, for a value of the wrong type: a dict or a
list where a number, a switch or a text belongs, `Infinity` / `NaN`, a path where a switch
belongs, `true` where a number belongs. (`false` where a number belongs is read as 0: the
GUI's own `test/config` files carry `"min_timestep": false`.)

Light module: standard library only.
"""
from __future__ import annotations

import math
from typing import Any

UNSET: Any = type("Unset", (), {"__repr__": lambda self: "UNSET"})()


def shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def shown_error(error: BaseException) -> str:
    """An exception's message cut to one short line (json's errors can quote a whole line)."""
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= 120 else line[:117] + "..."


def _scalar(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        kind = "an object" if isinstance(value, dict) else "a list"
        raise ValueError(f"{kind} ({shown(value)}) where a single value belongs")
    return value


def text(value: Any) -> Any:
    """A string setting (a path, a name, prompts); numbers are taken as their text."""
    value = _scalar(value)
    if value is None:
        return UNSET
    if isinstance(value, bool):
        raise ValueError(f"{value!r} where a text belongs")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} where a text belongs")
    value = value.strip() if isinstance(value, str) else str(value)
    if "\x00" in value:
        raise ValueError(f"{shown(value)} holds a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{shown(value)} is not valid Unicode text") from None
    return value if value else UNSET


def number(value: Any) -> Any:
    """A number, from a JSON number or its text; `false` is 0 (see the module's docstring)."""
    value = _scalar(value)
    if value is None or value is False:
        return UNSET if value is None else 0.0
    if value is True:
        raise ValueError("true where a number belongs")
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped:
            return UNSET
        try:
            value = float(stripped)
        except ValueError:
            raise ValueError(f"{shown(value)} is not a number") from None
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{shown(value)} is too large") from None
    except (TypeError, ValueError):
        raise ValueError(f"{shown(value)} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{shown(value)} is not a finite number")
    return value


def integer(value: Any) -> Any:
    """A whole number (`"64.0"` is 64)."""
    result = number(value)
    if result is UNSET:
        return UNSET
    if result != int(result):
        raise ValueError(f"{shown(value)} is not a whole number")
    return int(result)


def flag(value: Any) -> Any:
    """A switch: true/false, or their text ("True", "1", "yes", "off", ...)."""
    value = _scalar(value)
    if isinstance(value, bool):
        return value
    if value is None:
        return UNSET
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    lowered = str(value).strip().lower()
    if not lowered:
        return UNSET
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off", "none"):
        return False
    raise ValueError(f"{shown(value)} is not true or false")


def optional_rate(value: Any) -> Any:
    """Kohya leaves a per-model LR empty or 0 to mean "use the learning rate"."""
    result = number(value)
    return UNSET if result is UNSET or result == 0 else result


def choice(value: Any) -> Any:
    """A GUI drop-down's text (a scheduler, an optimizer, a sampler name)."""
    result = text(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(f"{shown(value)} where a name belongs")
    return result
