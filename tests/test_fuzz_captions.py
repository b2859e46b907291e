"""Property tests over caption texts: parsing gives back every byte, an edit touches only its
tag, and `loradeck tags` on caption files of any bytes (not UTF-8, a BOM, NUL, CRLF, lone
brackets and backslashes) either edits them losing no tag or says why in one line; never a
traceback or a hang. Bounded and derandomized, so the suite stays deterministic.
"""
from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.dataset.caption_files import read_caption
from engine.dataset.folders import decode_caption
from engine.dataset.tags import caption_keys, parse_caption, parse_tag, tag_key
from tests.time_limit import time_limit
from tui.cli import main

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
FUZZ_COMMAND = settings(FUZZ, max_examples=60)  # each runs `loradeck tags`, fsyncs included
# Pieces captions are made of, weighted towards what breaks parsers.
PIECES = st.sampled_from(list("ab ,()[]:|\\\n\t\r.1-_") + ["|||", ", ", "\x00", "é", "\ufeff", "\u2028", "\x85",
                                                           "(a:1.2)", "\\(", "\\)", "BREAK", "  "])
TEXTS = st.one_of(st.lists(PIECES, max_size=30).map("".join), st.text(max_size=60))
NAMES = st.lists(st.sampled_from(list("abcxy _-.1é") + ["\\(", "\\)"]), min_size=1, max_size=8).map("".join).filter(
    lambda name: tag_key(name))  # a tag is not only spaces (`tags --add " "` is a usage error)
TAGS = st.one_of(NAMES, NAMES.map(lambda n: f"({n}:1.2)"), NAMES.map(lambda n: f"({n})"),
                 NAMES.map(lambda n: f"[{n}]"))
CAPTION_BYTES = st.one_of(
    TEXTS.map(lambda text: text.encode("utf-8")),
    TEXTS.map(lambda text: b"\xef\xbb\xbf" + text.encode("utf-8")),  # a BOM
    TEXTS.map(lambda text: text.encode("utf-16")),  # not UTF-8 at all
    st.binary(max_size=80),
    st.just(b"a, b" * 2000),  # one long line
)


@FUZZ
@given(text=TEXTS)
def test_any_caption_text_parses_back_to_every_byte(text):
    assert parse_caption(text).render() == text


@FUZZ
@given(text=TEXTS, tag=TAGS)
def test_adding_or_removing_a_tag_touches_no_other_tag(text, tag):
    before = caption_keys(text)
    key = tag_key(parse_tag(tag).name)
    added = parse_caption(text).add(tag).render()
    assert key in caption_keys(added) and before <= caption_keys(added), added
    removed = parse_caption(text).remove(tag).render()
    assert key not in caption_keys(removed) and before - {key} <= caption_keys(removed), removed


def run(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), time_limit(30):
        status = main(argv)
    return status, err.getvalue()


def assert_ok_or_one_line(status: int, err: str) -> None:
    assert "Traceback" not in err
    if status:
        lines = err.strip().splitlines()
        assert status in (1, 2) and len(lines) == 1 and lines[0].startswith("loradeck tags: "), err


@FUZZ_COMMAND
@given(captions=st.lists(CAPTION_BYTES, min_size=1, max_size=2), tag=TAGS)
def test_tags_add_on_caption_files_of_any_bytes_loses_no_tag(captions, tag):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for index, data in enumerate(captions):
            (root / f"{index}.png").write_bytes(b"not read")
            (root / f"{index}.txt").write_bytes(data)
        status, err = run(["tags", str(root), f"--add={tag}"])  # a tag may start with "-"
        assert_ok_or_one_line(status, err)
        assert status == 0, err
        for index, data in enumerate(captions):
            text, _stamp = read_caption(root / f"{index}.txt")
            keys = caption_keys(text)
            # a second byte-order mark after the first reads back as one: it is no tag
            before = caption_keys(decode_caption(data).lstrip("\ufeff"))
            assert tag_key(parse_tag(tag).name) in keys and before <= keys, text


OPERATIONS = st.sampled_from(["--add", "--remove", "--replace", "--move-first", "--filter"])


@FUZZ_COMMAND
@given(caption=CAPTION_BYTES, operation=OPERATIONS, value=st.one_of(TEXTS, TAGS, st.just("a=b"), st.just("=")))
def test_any_tags_command_value_is_done_or_one_line(caption, operation, value):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "0.png").write_bytes(b"not read")
        (root / "0.txt").write_bytes(caption)
        argv = ["tags", str(root), "--stats", f"--filter={value}"] if operation == "--filter" else \
            ["tags", str(root), f"{operation}={value}"]
        assert_ok_or_one_line(*run(argv))
