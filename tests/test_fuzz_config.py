"""Property tests over mutated `loradeck.toml` files: `loradeck plan` answers every one with a
plan or one line (exit 1), never a traceback or a hang, and `loradeck train` refuses exactly
what `plan` refuses, with the same line, before a run folder takes the name.

Mutations start from a config that plans (tests/datasets.plannable_workspace): settings set
to values of any type and size (huge and negative integers, NaN, control characters, paths
to files, folders and nowhere), settings and sections removed or added, and the TOML text
itself cut, spliced and made non-UTF-8. Bounded and derandomized, so the suite stays
deterministic; a failure prints the config that broke it.
"""
from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config.schema import GROUPS, load_config, schema
from engine.errors import LoradeckError, one_line
from engine.run.launch import prepare_run
from engine.run.naming import run_folder_for
from tests.datasets import PLANNABLE_CONFIG, plannable_workspace
from tests.time_limit import time_limit
from tui.cli import main

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
KEYS = [spec.key for spec in schema()]
INTERESTING_TEXT = ["", " ", "\t", "\n", " x ", "x" * 300, "img", "model", "a-file", "nowhere", "someone/model",
                    "/", ".", "..", "~", "-1", "nan", "1e400", "512,768", "64x64", "0,0", "7", "a\x00b", "é ü 漢字",
                    "../img", "img/2_cat", "model/unet", "loradeck.toml", "runs", "(a:1.2), b", "--n x --w 0",
                    "x.ckpt", "x.safetensors", "loop", "loop/x", "fifo.txt", "scale_parameter=False relative_step=yes", "betas=0.9"]
INTERESTING_NUMBERS = [0, 1, -1, 2, 7, 8, 63, 64, 65, 1024, 100_000, 2**31, 2**32 - 1, 2**32, 2**53 + 1,
                       2**63 - 1, -2**63, 10**30, 0.5, -0.0, 1e-12, 1e308, float("inf"), float("-inf"), float("nan")]
VALUES = st.one_of(
    st.sampled_from(INTERESTING_NUMBERS),
    st.integers(min_value=-2**70, max_value=2**70),
    st.floats(),
    st.booleans(),
    st.sampled_from(INTERESTING_TEXT),
    st.text(max_size=30),
    st.lists(st.integers(min_value=-3, max_value=3), max_size=3),
    st.dictionaries(st.sampled_from(["a", "rank", "type"]), st.integers(min_value=0, max_value=9), max_size=2),
)


def allowed_values(key: str) -> st.SearchStrategy:
    """Values of the setting's own type within its own limits: these reach the rules between
    settings, the dataset scan and the plan's arithmetic, where type errors stop early."""
    spec = SPECS[key]
    if spec.choices:
        return st.sampled_from(spec.choices)
    if spec.type is bool:
        return st.booleans()
    if spec.type is int:
        low = -2**63 if spec.minimum is None else int(spec.minimum)
        high = 2**63 - 1 if spec.maximum is None else int(spec.maximum)
        return st.one_of(st.sampled_from([low, low + 1, high]), st.integers(low, high))
    if spec.type is float:
        low = -1e300 if spec.minimum is None else float(spec.minimum)
        high = 1e300 if spec.maximum is None else float(spec.maximum)
        return st.one_of(st.sampled_from([low, high]), st.floats(low, high, allow_nan=False))
    return st.one_of(st.sampled_from(INTERESTING_TEXT), st.text(max_size=12))


SPECS = {spec.key: spec for spec in schema()}
ALLOWED = st.sampled_from(KEYS).flatmap(lambda key: st.tuples(st.just("set"), st.just(key), allowed_values(key)))
MUTATIONS = st.one_of(
    ALLOWED,
    ALLOWED,
    st.tuples(st.just("set"), st.sampled_from(KEYS), VALUES),
    st.tuples(st.just("delete"), st.sampled_from(KEYS), st.none()),
    st.tuples(st.just("unknown setting"), st.sampled_from([*GROUPS, "bogus"]), st.text(min_size=1, max_size=8)),
    st.tuples(st.just("replace section"), st.sampled_from(list(GROUPS)), VALUES),
    st.tuples(st.just("version"), st.none(), VALUES),
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    import os

    root = plannable_workspace(tmp_path_factory.mktemp("fuzz-config") / "ws")
    (root / "loop").symlink_to("loop")
    os.mkfifo(root / "fifo.txt")  # read by mistake, it would block forever
    return root


def mutated(mutations: list[tuple]) -> dict:
    data = tomllib.loads(PLANNABLE_CONFIG)
    for kind, where, value in mutations:
        if kind == "set":
            group, name = where.split(".")
            if isinstance(data.get(group), dict):
                data[group][name] = value
            else:
                data[group] = {name: value}
        elif kind == "delete":
            group, name = where.split(".")
            if isinstance(data.get(group), dict):
                data[group].pop(name, None)
        elif kind == "unknown setting":
            data.setdefault(where, {})
            if isinstance(data[where], dict):
                data[where][value] = 1
        elif kind == "replace section":
            data[where] = value
        else:
            data["version"] = value
    return data


def plan(config: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), time_limit(30):
        status = main(["plan", str(config)])
    return status, out.getvalue(), err.getvalue()


def assert_plan_or_one_line(status: int, out: str, err: str) -> str:
    """The one error line ("" for a plan)."""
    assert "Traceback" not in out + err
    if status == 0:
        assert "Total steps" in out and err == ""
        return ""
    assert status == 1, (status, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loradeck plan: "), err
    return lines[0].removeprefix("loradeck plan: ")


def assert_train_agrees(config: Path, workspace: Path, refusal: str) -> None:
    """`train` refuses what `plan` refused, with the same line, and starts what it planned."""
    if not refusal and not run_folder_for(load_config(config), workspace).is_relative_to(workspace):
        return  # a run folder outside the test's workspace: never made from a test
    try:
        with time_limit(30):
            run = prepare_run(config)
    except LoradeckError as error:
        assert one_line(str(error)) == refusal, f"plan said {refusal!r}"
        return
    try:
        assert refusal == "", f"plan refused ({refusal}) what train starts"
        assert run.path.is_relative_to(workspace)
    finally:
        shutil.rmtree(run.path)


@FUZZ
@given(mutations=st.lists(MUTATIONS, min_size=1, max_size=3))
def test_a_mutated_config_is_a_plan_or_one_line_and_train_agrees(workspace, mutations):
    config = workspace / "fuzz.toml"
    config.write_text(tomli_w.dumps(mutated(mutations)))
    refusal = assert_plan_or_one_line(*plan(config))
    assert_train_agrees(config, workspace, refusal)


CUTS = st.one_of(
    st.tuples(st.just("truncate"), st.integers(min_value=0, max_value=400), st.just(b"")),
    st.tuples(st.just("insert"), st.integers(min_value=0, max_value=400),
              st.sampled_from([b"[", b"]", b"=", b'"', b"'", b"\n", b"\\", b"#", b"\xff", b"\xc3", b"\x00", b"{",
                               b"[[model]]\n", b"version = 99\n", b"[model]\n", b"x = [1, 2\n"])),
    st.tuples(st.just("duplicate line"), st.integers(min_value=0, max_value=30), st.just(b"")),
)


def cut(text: bytes, edits: list[tuple]) -> bytes:
    for kind, position, piece in edits:
        if kind == "truncate":
            text = text[:position]
        elif kind == "insert":
            text = text[:position] + piece + text[position:]
        else:
            lines = text.split(b"\n")
            if lines:
                index = position % len(lines)
                lines.insert(index, lines[index])
            text = b"\n".join(lines)
    return text


@FUZZ
@given(edits=st.lists(CUTS, min_size=1, max_size=3))
def test_a_damaged_config_file_is_a_plan_or_one_line(workspace, edits):
    config = workspace / "damaged.toml"
    config.write_bytes(cut(PLANNABLE_CONFIG.encode(), edits))
    refusal = assert_plan_or_one_line(*plan(config))
    assert_train_agrees(config, workspace, refusal)
