"""`loradeck import-kohya` on bad input: a wrong type, Infinity, NaN, a path where a switch
belongs, a deeply nested file: one line naming the key, never a traceback, never a hang.
The Hypothesis tests (bounded examples) throw Kohya-GUI-shaped JSON at the command."""
from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config.kohya_keys import NOT_BUILT, SIMPLE_KEYS
from engine.config.kohya_import import SPECIAL_KEYS
from engine.config.schema import config_from_dict
from tui.cli import main

GUI = Path(__file__).parent / "fixtures" / "kohya_gui"
SHIPPED = sorted([*GUI.glob("presets/lora/*.json"), *GUI.glob("test/config/*.json")])
BASE = {"LoRA_type": "Standard", "pretrained_model_name_or_path": "x", "network_dim": 8, "network_alpha": 8}


def run_import(text: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `loradeck import-kohya` on a JSON text."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kohya.json"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(["import-kohya", str(path)])
    return status, out.getvalue(), err.getvalue()


def assert_one_line_refusal(text: str, *words: str) -> str:
    status, out, err = run_import(text)
    assert status == 1 and out == "", err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, err
    return err


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN", "1e999"])
def test_infinity_and_nan_are_refused_in_one_line(literal):
    assert_one_line_refusal(json.dumps(BASE)[:-1] + f', "network_dim": {literal}}}', "network_dim")
    assert_one_line_refusal(json.dumps(BASE)[:-1] + f', "learning_rate": {literal}}}', "learning_rate", "finite")


def test_a_path_where_a_switch_belongs_is_refused_in_one_line():
    for key in ("sdxl", "v2", "cache_latents", "enable_bucket", "network_train_unet_only", "flux1_checkbox"):
        assert_one_line_refusal(json.dumps({**BASE, key: "/models/sdxl.safetensors"}), key, "not true or false")


def test_deeply_nested_json_is_refused_in_one_line():
    assert_one_line_refusal('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested")
    assert_one_line_refusal(json.dumps({**BASE, "additional_parameters": 1, "x": [[[[[[[[[[[[]]]]]]]]]]]]} | {
        "deep": json.loads("[" * 60 + "]" * 60)}), "nested")


def test_wrong_types_are_refused_not_taken_as_true():
    assert_one_line_refusal(json.dumps({**BASE, "xformers": {"on": True}}), "xformers", "an object")
    assert_one_line_refusal(json.dumps({**BASE, "lr_warmup": True}), "lr_warmup", "true where a number belongs")
    assert_one_line_refusal(json.dumps({**BASE, "network_dim": [8]}), "network_dim", "a list")
    assert_one_line_refusal(json.dumps({**BASE, "scale_weight_norms": {"x": 1}}), "scale_weight_norms")
    assert_one_line_refusal(json.dumps({**BASE, "output_name": True}), "output_name")
    assert_one_line_refusal(json.dumps({**BASE, "additional_parameters": '--lr_scheduler_type "Cosine'}),
                            "additional_parameters")
    assert_one_line_refusal(json.dumps({**BASE, "xformers": "fast"}), "xformers")
    # the GUI's own test configs carry "min_timestep": false: read as 0, as the GUI reads it
    status, _, err = run_import(json.dumps({**BASE, "min_timestep": False}))
    assert status == 0, err


def test_not_a_config_is_refused_in_one_line():
    assert_one_line_refusal("[1, 2]", "expected an object")
    assert_one_line_refusal('{"cats": 3}', "not a Kohya GUI config")
    assert_one_line_refusal("{ nope", "not a Kohya JSON config")
    assert_one_line_refusal((GUI / "test/config/meta-1_lat.json").read_text(), "fine-tuning metadata file")


# ------------------------------------------------------------------ property tests

KEYS = sorted({*SIMPLE_KEYS, *SPECIAL_KEYS, *NOT_BUILT})
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["", "0", "1", "True", "false", "64.0", "512,768", "xformers", "sdpa", "Standard",
                     "LyCORIS/iA3", "LyCORIS/DyLoRA", "Flux1", "AdamW", "DAdaptAdam", "cosine", "Multires",
                     "./test/img", "~nobody/x", "C:\\\\x", "--max_grad_norm=0 --network_train_unet_only",
                     "betas=0.9,0.99", "\x00", "T_max=10"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                           max_size=3), max_leaves=6)
gui_configs = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), values, max_size=12)


def check_property(data: dict) -> None:
    """A one-line error, or a TOML a partial config reads back; never a traceback."""
    status, out, err = run_import(json.dumps(data))
    assert "Traceback" not in err
    assert status in (0, 1), err
    if status == 1:
        assert out == "" and len(err.strip().splitlines()) == 1, err
    else:
        config_from_dict(tomllib.loads(out), partial=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gui_configs)
def test_any_gui_shaped_json_gives_one_line_or_a_config(data):
    check_property(data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SHIPPED), st.dictionaries(st.sampled_from(KEYS), values, max_size=4))
def test_a_shipped_config_with_keys_changed_gives_one_line_or_a_config(path, changes):
    check_property({**json.loads(path.read_text()), **changes})
