"""Extra optimizer arguments (`optimizer.optimizer_args`): read as sd-scripts reads them, and
checked against the optimizer's real constructor when the config is read, not first at
training start.

sd-scripts takes `--optimizer_args key=value key=value`, splits each on `=` and reads the
value with `ast.literal_eval`, so `betas=0.9,0.99` is the tuple (0.9, 0.99) just as
`betas=(0.9,0.99)` is. We do the same, and also accept what people type beside it
(`false`, `(0.9, 0.99)` with a space).

`ACCEPTED_ARGUMENTS` holds, per optimizer, each keyword its constructor takes with the
constructor's own default; the kind of a default (true/false, a number, a pair of numbers)
is the kind of value the argument accepts. tests/test_config_optimizer_args.py checks this
table against the real constructors' signatures, so this light module never imports torch.
"""
from __future__ import annotations

import ast
import math
import shlex
from typing import Any

_INFINITY = math.inf

# optimizer -> {argument: the constructor's default}; `params` and `lr` are set by loradeck
ACCEPTED_ARGUMENTS: dict[str, dict[str, Any]] = {
    "AdamW": {  # torch.optim.AdamW
        "betas": (0.9, 0.999), "eps": 1e-08, "weight_decay": 0.01, "amsgrad": False,
        "maximize": False, "foreach": None, "capturable": False, "differentiable": False, "fused": None,
    },
    "AdamW8bit": {  # bitsandbytes.optim.AdamW8bit
        "betas": (0.9, 0.999), "eps": 1e-08, "weight_decay": 0.01, "amsgrad": False,
        "optim_bits": 32, "args": None, "min_8bit_size": 4096, "percentile_clipping": 100,
        "block_wise": True, "is_paged": False,
    },
    "Adafactor": {  # transformers.optimization.Adafactor
        "eps": (1e-30, 0.001), "clip_threshold": 1.0, "decay_rate": -0.8, "beta1": None,
        "weight_decay": 0.0, "scale_parameter": True, "relative_step": True, "warmup_init": False,
    },
    "Prodigy": {  # prodigyopt.Prodigy
        "betas": (0.9, 0.999), "beta3": None, "eps": 1e-08, "weight_decay": 0, "decouple": True,
        "use_bias_correction": False, "safeguard_warmup": False, "d0": 1e-06, "d_coef": 1.0,
        "growth_rate": _INFINITY, "fsdp_in_use": False, "slice_p": 1,
    },
    "Lion": {  # lion_pytorch.Lion
        "betas": (0.9, 0.99), "weight_decay": 0.0, "use_triton": False, "decoupled_weight_decay": False,
    },
    # the dadaptation package (DAdaptAdamPreprint and DAdaptAdanIP from dadaptation.experimental)
    "DAdaptAdam": {
        "betas": (0.9, 0.999), "eps": 1e-08, "weight_decay": 0, "log_every": 0, "decouple": False,
        "use_bias_correction": False, "d0": 1e-06, "growth_rate": _INFINITY, "fsdp_in_use": False,
    },
    "DAdaptAdaGrad": {
        "momentum": 0, "log_every": 0, "weight_decay": 0.0, "eps": 1e-06, "d0": 1e-06, "growth_rate": _INFINITY,
    },
    "DAdaptAdan": {
        "betas": (0.98, 0.92, 0.99), "eps": 1e-08, "weight_decay": 0.02, "no_prox": False, "log_every": 0,
        "d0": 1e-06, "growth_rate": _INFINITY,
    },
    "DAdaptAdanIP": {
        "betas": (0.98, 0.92, 0.99), "eps": 1e-08, "weight_decay": 0.02, "no_prox": False, "log_every": 0,
        "d0": 1e-06, "growth_rate": _INFINITY,
    },
    "DAdaptLion": {
        "betas": (0.9, 0.99), "weight_decay": 0.0, "log_every": 0, "d0": 1e-06, "fsdp_in_use": False,
    },
    "DAdaptSGD": {
        "momentum": 0.0, "weight_decay": 0, "log_every": 0, "d0": 1e-06, "growth_rate": _INFINITY,
        "fsdp_in_use": False,
    },
    "DAdaptAdamPreprint": {
        "betas": (0.9, 0.999), "eps": 1e-08, "weight_decay": 0, "log_every": 0, "decouple": False, "d0": 1e-06,
        "growth_rate": _INFINITY, "fsdp_in_use": False,
    },
    "SGD": {  # torch.optim.SGD
        "momentum": 0, "dampening": 0, "weight_decay": 0, "nesterov": False,
        "maximize": False, "foreach": None, "differentiable": False, "fused": None,
    },
}


def _value(text: str) -> Any:
    """One value as sd-scripts reads it (a Python literal), or plain text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    return text.strip("\"'")


def parse_optimizer_args(text: str) -> dict[str, Any]:
    """`scale_parameter=False betas=0.9,0.99 weight_decay=0.01` -> keyword arguments.

    Raises ValueError for a token that is not `name=value`."""
    result: dict[str, Any] = {}
    # `betas=(0.9, 0.99)`: a space after a comma stays inside the value
    for token in shlex.split(text.replace(",", " , ").replace(" , ", ",")):
        if "=" not in token:
            raise ValueError(f"'{token}' is not key=value")
        key, value = token.split("=", 1)
        if not key.isidentifier():
            raise ValueError(f"'{key}' is not an argument name")
        result[key] = _value(value)
    return result


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _value_problem(name: str, default: Any, value: Any) -> str | None:
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"{name} takes True or False, got {value!r}"
    if isinstance(default, tuple):
        if isinstance(value, (tuple, list)) and len(value) == len(default) and all(_is_number(v) for v in value):
            return None
        example = ",".join(f"{v:g}" for v in default)
        return f"{name} takes {len(default)} numbers such as {example}, got {value!r}"
    if default is None:  # an optional number or switch
        ok = value is None or isinstance(value, bool) or _is_number(value)
        return None if ok else f"{name} takes a number, True/False or None, got {value!r}"
    return None if _is_number(value) else f"{name} takes a number, got {value!r}"


def optimizer_args_problem(optimizer: str, text: str) -> str | None:
    """Why `text` cannot be passed to `optimizer`, or None when the constructor takes it."""
    try:
        arguments = parse_optimizer_args(text)
    except ValueError as error:
        return f"{error}; write key=value pairs separated by spaces"
    accepted = ACCEPTED_ARGUMENTS.get(optimizer)
    if accepted is None:
        return None
    for name, value in arguments.items():
        if name == "lr":
            return "lr is set by the learning rate settings, not in optimizer args"
        if name not in accepted:
            return f"{optimizer} takes no argument {name!r}; it takes {', '.join(accepted)}"
        problem = _value_problem(name, accepted[name], value)
        if problem:
            return problem
    return None
