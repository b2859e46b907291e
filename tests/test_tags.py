"""Tag parsing and editing, caption files, the editing session and `loradeck tags`."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engine.dataset.caption_edits import CaptionSession, operation_for, parse_filter
from engine.dataset.caption_files import (
    REVIEW_FILE,
    CaptionChanged,
    ReviewMarks,
    caption_folder_of,
    list_caption_files,
    read_caption,
    write_caption,
)
from engine.errors import UsageError
from engine.dataset.tags import (
    CLIP_TOKEN_WINDOW,
    approximate_clip_tokens,
    parse_caption,
    parse_tag,
    tag_frequency,
    tags_past_window,
)
from tui.cli import main as loradeck

ROUND_TRIP = [
    "",
    "\n",
    "a, b, c\n",
    "a,b,c",
    "  spaced ,  tags  ,here  \r\n",
    "ohwx ||| (red hair:1.2), smile, city",
    "ohwx, |||, x",
    "(a, b:1.2), yuuki \\(sao\\), [c], ((d)), (e:0.8)",
    "a photo of a man sitting on a bench",
    "trailing comma, ",
    "(unbalanced, tag",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_parse_then_render_gives_back_every_byte(text):
    assert parse_caption(text).render() == text


def test_weights_and_names():
    assert [(t.name, t.weight) for t in parse_caption("(red hair:1.2), [dim], ((double)), plain").tags] == [
        ("red hair", 1.2), ("dim", 0.9091), ("double", 1.21), ("plain", 1.0)]
    assert parse_tag("(sitting").name == "(sitting"  # not a weight
    assert parse_tag("yuuki \\(sao\\)").key == "yuuki (sao)"


def test_edits_keep_order_weights_and_spacing():
    caption = parse_caption("ohwx, city, (arch:1.2), street\n")
    assert caption.replace("arch", "archway").render() == "ohwx, city, (archway:1.2), street\n"
    assert caption.replace("city", "alley").render() == "ohwx, alley, (arch:1.2), street\n"
    assert caption.replace("arch", "(gate:0.7)").render() == "ohwx, city, (gate:0.7), street\n"
    assert caption.remove("arch").render() == "ohwx, city, street\n"  # weighted ones too
    assert caption.add("canal").render() == "ohwx, city, (arch:1.2), street, canal\n"
    assert caption.add("city") is caption  # already there: nothing changes
    assert caption.move("street", -1).render() == "ohwx, city, street, (arch:1.2)\n"
    assert parse_caption("a,b,c").add("d").render() == "a,b,c,d"  # tight commas stay tight
    assert caption.replace("city", "street").render() == "ohwx, street, (arch:1.2)\n"  # merged


def test_move_first_respects_the_keep_tokens_prefix():
    assert parse_caption("ohwx, a, b, c").move_first("c", keep_tokens=1).render() == "ohwx, c, a, b"
    assert parse_caption("ohwx, a, b, c").move_first("c").render() == "c, ohwx, a, b"
    assert parse_caption("ohwx ||| a, b, c").move_first("c").render() == "ohwx ||| c, a, b"
    assert parse_caption("x, ohwx ||| a").move_first("ohwx").render() == "ohwx, x ||| a"
    assert parse_caption("ohwx ||| a").remove("ohwx").render() == "||| a"


def test_dedupe_keeps_the_first():
    assert parse_caption("a, b, (a:1.3), c, b").dedupe().render() == "a, b, c"


def test_frequency_counts_each_caption_once():
    counts = tag_frequency(["a, b, a", "(b:1.2), c", ""])
    assert counts == {"a": 1, "b": 2, "c": 1}


def test_token_count_and_window():
    assert approximate_clip_tokens("a photo, of a man") == 6
    assert approximate_clip_tokens("(red hair:1.2)") == 8  # ( red hair : 1 . 2 )
    long = ", ".join(f"tag{i}" for i in range(40))
    caption = parse_caption(long)
    assert approximate_clip_tokens(long) > CLIP_TOKEN_WINDOW
    cut = tags_past_window(caption)
    assert 0 < cut < len(caption.tags)
    assert tags_past_window(caption, counter=lambda text: 0) == len(caption.tags)  # commas alone fit


# ---- caption files


def make_dataset(root: Path) -> Path:
    folder = root / "img" / "10_city"
    folder.mkdir(parents=True)
    for name in ("img10.png", "img2.png", "img1.jpg", "photo.webp", "notes.md"):
        (folder / name).write_bytes(b"x")
    (folder / "img1.txt").write_bytes(b"ohwx, city, (arch:1.2)\n")
    (folder / "img2.txt").write_bytes(b"ohwx,alley,canal")
    (folder / "img10.txt").write_bytes(b"")
    (folder / "_quarantine").mkdir()
    (folder / "_quarantine" / "bad.png").write_bytes(b"x")
    (root / "img" / ".hidden").mkdir()
    (root / "img" / ".hidden" / "x.png").write_bytes(b"x")
    return root / "img"


def test_listing_is_natural_and_skips_quarantine(tmp_path):
    root = make_dataset(tmp_path)
    files = list_caption_files(root)
    assert [item.relative for item in files] == [
        "10_city/img1.jpg", "10_city/img2.png", "10_city/img10.png", "10_city/photo.webp"]
    assert [item.has_caption for item in files] == [True, True, True, False]
    assert files[0].caption == root / "10_city" / "img1.txt"


def test_write_refuses_a_caption_changed_on_disk(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"one")
    text, stamp = read_caption(path)
    path.write_bytes(b"changed by another program")
    with pytest.raises(CaptionChanged):
        write_caption(path, "mine", stamp)
    assert path.read_bytes() == b"changed by another program"
    new_stamp = write_caption(path, "mine", "any")
    assert path.read_bytes() == b"mine" and read_caption(path) == ("mine", new_stamp)
    assert read_caption(tmp_path / "missing.txt") == (None, None)
    assert write_caption(tmp_path / "new.txt", "x", None) is not None  # expected absent: fine


def test_review_marks_live_beside_the_dataset(tmp_path):
    root = make_dataset(tmp_path)
    before = {path: path.read_bytes() for path in root.rglob("*.txt")}
    marks = ReviewMarks(root)
    marks.set("10_city/img1.jpg")
    assert json.loads((root / REVIEW_FILE).read_text()) == {"version": 1, "reviewed": ["10_city/img1.jpg"]}
    assert "10_city/img1.jpg" in ReviewMarks(root)
    assert {path: path.read_bytes() for path in root.rglob("*.txt")} == before
    marks.set("10_city/img1.jpg", False)
    assert len(ReviewMarks(root)) == 0


def test_workspace_caption_settings_are_read_even_from_an_unfinished_config(tmp_path):
    (tmp_path / "loradeck.toml").write_text(
        'version = 1\n[dataset]\nimage_dir = "pictures"\n[captions]\ncaption_extension = ".caption"\n'
        'keep_tokens = 2\n[model]\npretrained_model = ""\n')
    folder = caption_folder_of(tmp_path)
    assert (folder.root, folder.caption_extension, folder.keep_tokens) == (tmp_path / "pictures", ".caption", 2)
    assert caption_folder_of(tmp_path / "pictures").root == tmp_path / "pictures"


# ---- the editing session


def test_filters(tmp_path):
    session = CaptionSession(make_dataset(tmp_path))
    names = lambda query: [session.entries[i].file.image.name for i in session.matching(query)]  # noqa: E731
    assert names("tag:city") == ["img1.jpg"]
    assert names("tag:ohwx, -tag:city") == ["img2.png"]
    assert names("is:uncaptioned") == ["img10.png", "photo.webp"]
    assert names("text:CANAL") == ["img2.png"]
    assert names("photo") == ["photo.webp"]  # plain words match the path too
    session.set_reviewed(0)
    assert names("is:unreviewed, is:captioned") == ["img2.png"]
    with pytest.raises(UsageError):
        parse_filter("is:whatever")


def test_bulk_edit_undo_redo_and_conflicts(tmp_path):
    root = make_dataset(tmp_path)
    folder = root / "10_city"
    session = CaptionSession(root)
    everything = session.matching("")
    label, operation = operation_for("add", "canal")
    plan = session.plan_operation(everything, label, operation)
    # img2 has canal already; img10 is empty and photo has no file: both get one
    assert [session.entries[c.index].file.image.name for c in plan.changes] == [
        "img1.jpg", "img10.png", "photo.webp"]
    session.commit(plan)
    assert (folder / "img1.txt").read_bytes() == b"ohwx, city, (arch:1.2), canal\n"
    assert (folder / "img10.txt").read_bytes() == b"canal"
    assert (folder / "photo.txt").read_bytes() == b"canal"
    assert session.frequency()["canal"] == 4

    session.commit_undo(session.plan_undo())
    assert (folder / "img1.txt").read_bytes() == b"ohwx, city, (arch:1.2)\n"
    assert (folder / "img10.txt").read_bytes() == b""
    assert not (folder / "photo.txt").exists()  # undo puts back "no caption file"
    assert session.frequency()["canal"] == 1

    session.commit_redo(session.plan_redo())
    assert (folder / "photo.txt").read_bytes() == b"canal"

    # Someone else edits img1.txt: undo asks instead of overwriting it
    (folder / "img1.txt").write_bytes(b"edited elsewhere\n")
    os.utime(folder / "img1.txt", ns=(1, 1))
    plan = session.plan_undo()
    assert plan.conflicts == [0]
    session.commit_undo(plan, overwrite_conflicts=False)
    assert (folder / "img1.txt").read_bytes() == b"edited elsewhere\n"
    assert session.entries[0].text == "edited elsewhere\n"  # re-read, shown as on disk
    assert not (folder / "photo.txt").exists()


def test_raw_text_edit(tmp_path):
    session = CaptionSession(make_dataset(tmp_path))
    assert session.plan_text(0, "ohwx, city, (arch:1.2)\n").empty
    session.commit(session.plan_text(0, "new words\n"))
    assert (tmp_path / "img" / "10_city" / "img1.txt").read_bytes() == b"new words\n"


# ---- `loradeck tags`


def test_cli_tags_edits_only_the_filtered_captions(tmp_path, capsys):
    root = make_dataset(tmp_path)
    folder = root / "10_city"
    assert loradeck(["tags", str(root), "--add", "canal, bridge", "--filter", "tag:ohwx"]) == 0
    assert "add canal, bridge: changed 2 of 2 of 4 captions" in capsys.readouterr().out
    assert (folder / "img1.txt").read_bytes() == b"ohwx, city, (arch:1.2), canal, bridge\n"
    assert (folder / "img2.txt").read_bytes() == b"ohwx,alley,canal,bridge"
    assert (folder / "img10.txt").read_bytes() == b""
    assert not (folder / "photo.txt").exists()

    assert loradeck(["tags", str(root), "--replace", "arch=archway"]) == 0
    assert (folder / "img1.txt").read_bytes() == b"ohwx, city, (archway:1.2), canal, bridge\n"
    assert loradeck(["tags", str(root), "--move-first", "bridge", "--keep-tokens", "1"]) == 0
    assert (folder / "img2.txt").read_bytes() == b"ohwx,bridge,alley,canal"
    assert loradeck(["tags", str(root), "--remove", "bridge", "--dry-run"]) == 0
    assert (folder / "img2.txt").read_bytes() == b"ohwx,bridge,alley,canal"
    capsys.readouterr()

    assert loradeck(["tags", str(root), "--stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["tags"]["ohwx"] == 2 and stats["uncaptioned"] == 2 and stats["images"] == 4


def test_cli_tags_bad_input_is_one_line(tmp_path, capsys):
    root = make_dataset(tmp_path)
    assert loradeck(["tags", str(root), "--replace", "no-equals-sign"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_non_utf8_captions_keep_every_character(tmp_path):
    """A Latin-1 caption from an old tool is read without replacement characters, so an
    edit writes the same words back (as UTF-8) instead of destroying them."""
    from engine.dataset.caption_files import read_caption
    from engine.dataset.folders import decode_caption

    path = tmp_path / "a.txt"
    path.write_bytes("café, piñata, ©".encode("latin-1"))
    text, _stamp = read_caption(path)
    assert text == "café, piñata, ©"
    assert decode_caption("naïve".encode("utf-8")) == "naïve"
    assert decode_caption("\ufeffbom, tag".encode("utf-8")) == "bom, tag"
    assert decode_caption(bytes([0x81, 0x8d])) == "\x81\x8d"  # cp1252 holes fall back to Latin-1
