"""Sample prompts in the sd-scripts syntax: one prompt per line, flags after ` --`.

    # comment lines start with '#'
    a photo of sks dog, park --n blurry, lowres --w 768 --h 640 --s 35 --l 7.5 --d 42 --ss euler_a

Flags (case-insensitive, as in sd-scripts' `line_to_prompt_dict`): `--n` negative prompt,
`--w`/`--h` size in pixels (rounded down to a multiple of 8, as sd-scripts does), `--s`
steps, `--l` CFG scale, `--d` seed, `--ss` sampler, `--g` the guidance a guidance-distilled
model embeds (Flux.1 [dev]; sd-scripts' `guidance_scale`, 3.5 when not given, where `--l`
is true CFG with the negative prompt, off at its Flux default 1.0). A prompt without `--d` gets a random
seed, chosen here and carried in `SamplePrompt.seed` so it is written down with the image.
A flag glued to the value before it (`--w 768--h 640`, which sd-scripts reads as a width
only) is read as its own flag; a number with junk after it (`--w 768px`, `--d 123abc`) gives
its leading number, as sd-scripts' regular expressions do, with a warning. Anything else we
cannot use becomes a warning naming the line and the flag, never silence.

Light module: standard library only (the TUI's config form can check prompts with it).
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from engine.config.schema import SAMPLERS, TrainConfig, resolve_path
from engine.errors import LoradeckError

DEFAULT_WIDTH = 512
DEFAULT_HEIGHT = 512
DEFAULT_STEPS = 30
DEFAULT_CFG = 7.5

MIN_SIDE = 64  # sd-scripts' floor for sample sizes
MAX_SIDE = 4096  # a typo like --w 51200 would otherwise run the GPU out of memory mid-run
MAX_STEPS = 1000  # sd-scripts clamps steps to 1..1000
MAX_CFG = 100.0
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes any 64-bit value (ComfyUI seeds use them all)
RANDOM_SEED_LIMIT = 2**32  # chosen seeds stay in A1111's range so they can be typed back in

# Other spellings of our samplers, after lower-casing and turning spaces/hyphens into '_':
# sd-scripts' k_* names and dpmsolver++, A1111's labels, ComfyUI's dpmpp_* names.
SAMPLER_ALIASES = {
    "k_euler_a": "euler_a",
    "euler_ancestral": "euler_a",
    "k_euler": "euler",
    "dpmsolver++": "dpm++_2m",
    "dpmsolver": "dpm++_2m",  # sd-scripts' 2nd-order multistep DPM-Solver; ++ is its stabler form
    "dpm++2m": "dpm++_2m",
    "dpmpp_2m": "dpm++_2m",
    "k_dpmpp_2m": "dpm++_2m",
    "dpm++2m_karras": "dpm++_2m_karras",
    "dpmpp_2m_karras": "dpm++_2m_karras",
    "k_dpmpp_2m_karras": "dpm++_2m_karras",
    "plms": "pndm",
}

# How AUTOMATIC1111 names each sampler in its `parameters` text (PNDM with skipped
# Runge-Kutta steps, the SD default, is what A1111 calls PLMS).
SAMPLER_LABELS = {
    "euler_a": "Euler a",
    "euler": "Euler",
    "ddim": "DDIM",
    "dpm++_2m": "DPM++ 2M",
    "dpm++_2m_karras": "DPM++ 2M Karras",
    "pndm": "PLMS",
}

FLAGS = ("n", "w", "h", "s", "l", "d", "ss", "g")

# a flag glued to the value before it, as people type it: `--w 768--h 640`
_GLUED_FLAG = re.compile(r"--(?=(?:%s)(?:\s|$))" % "|".join(sorted(FLAGS, key=len, reverse=True)), re.IGNORECASE)
# a number followed by junk (`768px`, `123abc`); sd-scripts reads the leading digits
_LEADING_WHOLE = re.compile(r"(\d+)(?!\.\d)(\D.*)$")
_LEADING_NUMBER = re.compile(r"(\d+(?:\.\d+)?)(?![\d.])(.+)$")


@dataclass(frozen=True)
class SamplePrompt:
    """One line of the prompts, with every setting resolved."""

    prompt: str
    negative_prompt: str = ""
    width: int = DEFAULT_WIDTH
    height: int = DEFAULT_HEIGHT
    steps: int = DEFAULT_STEPS
    cfg: float = DEFAULT_CFG
    seed: int = 0
    seed_given: bool = True  # False: no --d on the line, `seed` was chosen at random
    sampler: str = "euler_a"  # one of engine.config.schema.SAMPLERS
    line: int = 0  # 1-based line number in its source
    guidance: float | None = None  # --g: embedded guidance (Flux.1 [dev]); None: the family's default
    cfg_given: bool = False  # whether --l was on the line (Flux runs true CFG only then; SD always uses cfg)

    @property
    def sampler_label(self) -> str:
        return SAMPLER_LABELS[self.sampler]


def normalize_sampler(name: str) -> str | None:
    """Our sampler name for any accepted spelling ('k_euler_a', 'DPM++ 2M Karras'), else None."""
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    key = SAMPLER_ALIASES.get(key, key)
    return key if key in SAMPLERS else None


def parse_prompts(
    text: str, *, default_sampler: str = "euler_a", source: str = "prompts"
) -> tuple[list[SamplePrompt], list[str]]:
    """Every prompt in `text` and the warnings about it (each names `source` and the line)."""
    chooser = random.SystemRandom()  # never the training's global RNG state
    prompts: list[SamplePrompt] = []
    warnings: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {number}"
        prompt = _parse_line(line, number, where, default_sampler, chooser, warnings)
        if prompt is not None:
            prompts.append(prompt)
    return prompts, warnings


def _parse_line(
    line: str, number: int, where: str, default_sampler: str, chooser: random.Random, warnings: list[str]
) -> SamplePrompt | None:
    # sd-scripts splits on " --"; the leading space lets a line start with a flag.
    text, *spaced = (" " + line).split(" --")
    text = text.strip()
    flags = [flag for part in spaced for flag in _GLUED_FLAG.split(part)]
    values: dict[str, object] = {}
    for flag in flags:
        name, _, value = flag.strip().partition(" ")
        name, value = name.lower(), value.strip()
        if not name:
            warnings.append(f"{where}: a bare '--' with no flag name (ignored)")
            continue
        if name not in FLAGS:
            known = ", ".join(f"--{f}" for f in FLAGS)
            warnings.append(f"{where}: unknown flag --{name} (ignored; known flags: {known})")
            continue
        if not value:
            warnings.append(f"{where}: --{name} needs a value (ignored)")
            continue
        parsed = _parse_value(name, value, where, default_sampler, warnings)
        if parsed is not None:
            values[name] = parsed
    if not text:
        warnings.append(f"{where}: no prompt text before the flags (line skipped)")
        return None
    seed = values.get("d")
    return SamplePrompt(
        prompt=text,
        negative_prompt=str(values.get("n", "")),
        width=int(values.get("w", DEFAULT_WIDTH)),  # type: ignore[arg-type]
        height=int(values.get("h", DEFAULT_HEIGHT)),  # type: ignore[arg-type]
        steps=int(values.get("s", DEFAULT_STEPS)),  # type: ignore[arg-type]
        cfg=float(values.get("l", DEFAULT_CFG)),  # type: ignore[arg-type]
        seed=int(seed) if seed is not None else chooser.randrange(RANDOM_SEED_LIMIT),  # type: ignore[arg-type]
        seed_given=seed is not None,
        sampler=str(values.get("ss", default_sampler)),
        line=number,
        guidance=values.get("g"),  # type: ignore[arg-type]
        cfg_given="l" in values,
    )


def _parse_value(
    name: str, value: str, where: str, default_sampler: str, warnings: list[str]
) -> object | None:
    """The flag's value, or None (with a warning) when it cannot be used."""
    if name == "n":
        return value
    if name == "ss":
        sampler = normalize_sampler(value)
        if sampler is None:
            warnings.append(
                f"{where}: unknown sampler {value!r} for --ss (using {default_sampler}; "
                f"known: {', '.join(SAMPLERS)})"
            )
        return sampler
    leading = (_LEADING_NUMBER if name in ("l", "g") else _LEADING_WHOLE).match(value)
    if leading:
        warnings.append(f"{where}: --{name} {value!r} is not a plain number; using its leading {leading.group(1)}")
        value = leading.group(1)
    if name in ("l", "g"):
        try:
            cfg = float(value)
        except ValueError:
            warnings.append(f"{where}: --{name} expects a number, got {value!r} (ignored)")
            return None
        if not math.isfinite(cfg) or not 0 <= cfg <= MAX_CFG:
            warnings.append(f"{where}: --{name} {value} is outside 0..{MAX_CFG:g} (ignored)")
            return None
        return cfg
    try:
        number = int(value)
    except ValueError:
        warnings.append(f"{where}: --{name} expects a whole number, got {value!r} (ignored)")
        return None
    if name in ("w", "h"):
        return _side(name, number, where, warnings)
    if name == "s":
        if not 1 <= number <= MAX_STEPS:
            clamped = min(max(number, 1), MAX_STEPS)
            warnings.append(f"{where}: --s {number} is outside 1..{MAX_STEPS}; using {clamped}")
            return clamped
        return number
    # name == "d"
    if not 0 <= number <= MAX_SEED:
        warnings.append(f"{where}: --d {number} is not a seed between 0 and 2^64-1 (ignored)")
        return None
    return number


def _side(name: str, pixels: int, where: str, warnings: list[str]) -> int:
    clamped = min(max(pixels, MIN_SIDE), MAX_SIDE)
    if clamped != pixels:
        warnings.append(f"{where}: --{name} {pixels} is outside {MIN_SIDE}..{MAX_SIDE}; using {clamped}")
    rounded = clamped - clamped % 8  # the VAE works on 8-pixel blocks
    if rounded != clamped:
        warnings.append(f"{where}: --{name} {clamped} rounded down to {rounded} (a multiple of 8)")
    return rounded


def prompts_source(config: TrainConfig, base_dir: str | Path) -> Path | None:
    """The prompts file a config names (resolved against `base_dir`), or None for inline prompts."""
    return resolve_path(base_dir, config.sampling.prompts_file)


def load_prompts(config: TrainConfig, base_dir: str | Path) -> tuple[list[SamplePrompt], list[str]]:
    """The config's sample prompts: inline `sampling.prompts` or `sampling.prompts_file`.

    The file is read on every call, so a user can edit it while a run is going.
    Raises LoradeckError when the file cannot be read.
    """
    default_sampler = config.sampling.sampler
    path = prompts_source(config, base_dir)
    if path is None:
        return parse_prompts(config.sampling.prompts, default_sampler=default_sampler, source="sampling.prompts")
    return read_prompts_file(path, default_sampler=default_sampler)


def read_prompts_file(path: Path, *, default_sampler: str, setting: str = "sampling.prompts_file"
                      ) -> tuple[list[SamplePrompt], list[str]]:
    """The prompts in a text file of one prompt per line; `setting` names where the path
    came from in the errors. Raises LoradeckError when the file cannot be read."""
    if path.suffix.lower() in (".toml", ".json"):
        raise LoradeckError(
            f"{path}: {setting} must be a text file with one prompt per line "
            "(the TOML/JSON prompt formats of sd-scripts are not read)"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LoradeckError(f"{path}: prompts file not found ({setting})") from None
    except IsADirectoryError:
        raise LoradeckError(f"{path}: is a folder, not a prompts file ({setting})") from None
    except UnicodeDecodeError:
        raise LoradeckError(f"{path}: prompts file is not UTF-8 text ({setting})") from None
    except OSError as error:
        raise LoradeckError(f"{path}: cannot read the prompts file: {error.strerror}") from None
    return parse_prompts(text, default_sampler=default_sampler, source=path.name)
