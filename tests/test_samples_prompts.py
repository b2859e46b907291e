"""Sample prompts in the sd-scripts syntax: every flag, aliases, defaults, malformed lines."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.config.schema import SAMPLERS, TrainConfig, replace_setting
from engine.errors import LoradeckError
from engine.config.prompts import SAMPLER_LABELS, SamplePrompt, load_prompts, normalize_sampler, parse_prompts

ROOT = Path(__file__).resolve().parents[1]


def one(text: str, **kwargs) -> tuple[SamplePrompt, list[str]]:
    prompts, warnings = parse_prompts(text, **kwargs)
    assert len(prompts) == 1, (prompts, warnings)
    return prompts[0], warnings


def test_every_flag():
    prompt, warnings = one(
        "a photo of sks dog, park --n blurry, lowres --w 768 --h 640 --s 35 --l 6.5 --d 42 --ss ddim"
    )
    assert warnings == []
    assert prompt == SamplePrompt(
        prompt="a photo of sks dog, park",
        negative_prompt="blurry, lowres",
        width=768,
        height=640,
        steps=35,
        cfg=6.5,
        seed=42,
        seed_given=True,
        sampler="ddim",
        line=1,
        cfg_given=True,
    )


def test_defaults_and_random_seed_written_down():
    first, warnings = one("a cat")
    assert warnings == []
    assert (first.width, first.height, first.steps, first.cfg) == (512, 512, 30, 7.5)
    assert first.negative_prompt == "" and first.sampler == "euler_a"
    assert not first.seed_given and 0 <= first.seed < 2**32
    seeds = {one("a cat")[0].seed for _ in range(5)}
    assert len(seeds) > 1  # chosen at random each time the line is read


def test_default_sampler_comes_from_the_caller():
    prompt, _ = one("a cat", default_sampler="dpm++_2m")
    assert prompt.sampler == "dpm++_2m"


def test_flags_in_any_order_and_any_case():
    prompt, warnings = one("a cat --D 7 --SS k_euler --W 256 --n dark")
    assert warnings == []
    assert (prompt.seed, prompt.sampler, prompt.width, prompt.negative_prompt) == (7, "euler", 256, "dark")


def test_a_repeated_flag_keeps_the_last_value_like_sd_scripts():
    prompt, _ = one("a cat --s 10 --s 12")
    assert prompt.steps == 12


@pytest.mark.parametrize(
    "name, expected",
    [
        ("euler_a", "euler_a"),
        ("k_euler_a", "euler_a"),
        ("Euler a", "euler_a"),
        ("k_euler", "euler"),
        ("DDIM", "ddim"),
        ("dpmsolver++", "dpm++_2m"),
        ("dpmsolver", "dpm++_2m"),
        ("DPM++ 2M", "dpm++_2m"),
        ("dpmpp_2m", "dpm++_2m"),
        ("DPM++ 2M Karras", "dpm++_2m_karras"),
        ("dpmpp_2m_karras", "dpm++_2m_karras"),
        ("pndm", "pndm"),
        ("plms", "pndm"),
        ("heun", None),
        ("", None),
    ],
)
def test_sampler_names(name, expected):
    assert normalize_sampler(name) == expected


def test_every_sampler_has_an_a1111_label():
    assert set(SAMPLER_LABELS) == set(SAMPLERS)


def test_sizes_round_down_to_multiples_of_8_with_a_warning():
    prompt, warnings = one("a cat --w 500 --h 640")
    assert (prompt.width, prompt.height) == (496, 640)
    assert warnings == ["prompts line 1: --w 500 rounded down to 496 (a multiple of 8)"]


def test_sizes_and_steps_are_clamped():
    prompt, warnings = one("a cat --w 10 --h 99999 --s 0")
    assert (prompt.width, prompt.height, prompt.steps) == (64, 4096, 1)
    assert len(warnings) == 3 and all("prompts line 1" in w for w in warnings)
    prompt, _ = one("a cat --s 5000")
    assert prompt.steps == 1000


def test_comments_and_blank_lines_are_skipped_and_lines_numbered():
    prompts, warnings = parse_prompts("# heading\n\n   \na cat\n  # indented comment\na dog --d 3\n")
    assert [(p.prompt, p.line) for p in prompts] == [("a cat", 4), ("a dog", 6)]
    assert warnings == []


def test_unknown_flags_are_named_in_a_warning():
    prompt, warnings = one("a cat --cn control.png --d 5 --am 0.5", source="prompts.txt")
    assert prompt.seed == 5 and prompt.prompt == "a cat"
    assert len(warnings) == 2
    assert warnings[0].startswith("prompts.txt line 1: unknown flag --cn")
    assert warnings[1].startswith("prompts.txt line 1: unknown flag --am")


def test_guidance_flag_of_flux():
    """sd-scripts' --g: the guidance Flux.1 [dev] embeds, apart from --l (true CFG)."""
    prompt, warnings = one("a cat --g 4.5 --d 5")
    assert (prompt.guidance, prompt.cfg_given, warnings) == (4.5, False, [])
    prompt, _ = one("a cat --l 3 --g 2.5x")
    assert prompt.guidance == 2.5 and prompt.cfg == 3.0 and prompt.cfg_given
    assert one("a cat")[0].guidance is None
    _, warnings = one("a cat --g lots")
    assert warnings == ["prompts line 1: --g expects a number, got 'lots' (ignored)"]


@pytest.mark.parametrize(
    "line, message",
    [
        ("a cat --w wide", "--w expects a whole number, got 'wide'"),
        ("a cat --h 6.5", "--h expects a whole number, got '6.5'"),
        ("a cat --s many", "--s expects a whole number"),
        ("a cat --d -4", "--d -4 is not a seed"),
        ("a cat --d lucky", "--d expects a whole number"),
        ("a cat --l high", "--l expects a number, got 'high'"),
        ("a cat --l nan", "--l nan is outside"),
        ("a cat --l -1", "--l -1 is outside"),
        ("a cat --n", "--n needs a value"),
        ("a cat --ss heun", "unknown sampler 'heun' for --ss (using euler_a"),
        ("a cat -- --d 1", "a bare '--' with no flag name"),
    ],
)
def test_malformed_flag_values_warn_and_fall_back(line, message):
    prompt, warnings = one(line)
    assert prompt.prompt == "a cat"
    assert len(warnings) == 1 and message in warnings[0], warnings
    default = SamplePrompt(prompt="a cat")
    assert (prompt.width, prompt.height, prompt.steps, prompt.cfg, prompt.sampler, prompt.negative_prompt) == (
        default.width, default.height, default.steps, default.cfg, default.sampler, default.negative_prompt
    )


def test_a_line_without_prompt_text_is_skipped_with_a_warning():
    prompts, warnings = parse_prompts("--w 512 --d 1\na dog\n")
    assert [p.prompt for p in prompts] == ["a dog"]
    assert warnings == ["prompts line 1: no prompt text before the flags (line skipped)"]


def test_double_dash_inside_a_word_is_prompt_text():
    # sd-scripts splits on " --" only, so "--" glued to a word belongs to the prompt
    prompt, warnings = one("a cat--like dog --d 2")
    assert prompt.prompt == "a cat--like dog" and warnings == []


def test_load_prompts_inline_and_from_a_file_reread_each_time(tmp_path):
    config = replace_setting(TrainConfig(), "sampling.prompts", "a cat --d 1\na dog --d 2")
    prompts, warnings = load_prompts(config, tmp_path)
    assert [p.prompt for p in prompts] == ["a cat", "a dog"] and warnings == []

    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("a house --w 256 --ss ddim\n", encoding="utf-8")
    config = replace_setting(TrainConfig(), "sampling.prompts_file", "prompts.txt")
    config = replace_setting(config, "sampling.sampler", "euler")
    prompts, _ = load_prompts(config, tmp_path)
    assert [(p.prompt, p.width, p.sampler) for p in prompts] == [("a house", 256, "ddim")]
    prompts_file.write_text("a tree\na car --bogus 1\n", encoding="utf-8")
    prompts, warnings = load_prompts(config, tmp_path)
    assert [(p.prompt, p.sampler) for p in prompts] == [("a tree", "euler"), ("a car", "euler")]
    assert warnings[0].startswith("prompts.txt line 2: unknown flag --bogus")


def test_load_prompts_names_an_unreadable_file(tmp_path):
    config = replace_setting(TrainConfig(), "sampling.prompts_file", "missing.txt")
    with pytest.raises(LoradeckError, match="missing.txt: prompts file not found"):
        load_prompts(config, tmp_path)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    config = replace_setting(TrainConfig(), "sampling.prompts_file", "latin1.txt")
    with pytest.raises(LoradeckError, match="not UTF-8"):
        load_prompts(config, tmp_path)
    (tmp_path / "p.toml").write_text("[[prompt]]\n")
    config = replace_setting(TrainConfig(), "sampling.prompts_file", "p.toml")
    with pytest.raises(LoradeckError, match="one prompt per line"):
        load_prompts(config, tmp_path)


def test_prompts_module_is_light():
    code = "import engine.config.prompts, sys; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    loaded = set(out.stdout.split())
    assert not loaded & {"torch", "diffusers", "transformers", "peft", "accelerate", "PIL"}


def test_a_flag_glued_to_the_value_before_it_is_read():
    # the hand-written guide this project replaces types `--w 768--h 640`
    prompt, warnings = one("a city street --w 768--h 640 --n blurry--d 7")
    assert (prompt.width, prompt.height, prompt.negative_prompt, prompt.seed) == (768, 640, "blurry", 7)
    assert warnings == []
    prompt, warnings = one("a cat --n ugly--looking, low--detail --d 3")
    assert prompt.negative_prompt == "ugly--looking, low--detail" and warnings == []


@pytest.mark.parametrize("line, field, value, message", [
    ("a cat --w 768px", "width", 768, "--w '768px' is not a plain number; using its leading 768"),
    ("a cat --d 123abc", "seed", 123, "--d '123abc' is not a plain number; using its leading 123"),
    ("a cat --s 30steps", "steps", 30, "using its leading 30"),
    ("a cat --l 7.5x", "cfg", 7.5, "using its leading 7.5"),
])
def test_a_number_with_junk_gives_its_leading_number_with_a_warning(line, field, value, message):
    prompt, warnings = one(line)
    assert getattr(prompt, field) == value
    assert len(warnings) == 1 and message in warnings[0], warnings
