"""The health scan on a hostile file system: links that loop or lead nowhere, named pipes
called x.png, folders and captions nobody may read, names that are not UTF-8, empty and
cut files. Each ends as a finding or a skipped line of `loradeck scan`: never a
traceback, never a hang, and every path it reports leads back to the file.

Permissions are checked as an ordinary user sees them: as root (CI is root) the test
drops its effective user id while the scan runs, since root reads everything.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.health.image_checks import inspect_image
from engine.health.report import CHECKS
from tests.health_corpus import jpeg_bytes, picture, png_bytes
from tui.cli import main as loradeck

NOBODY = 65534
TIMEOUT = 30  # seconds: a scan of a dozen small files takes well under one


@pytest.fixture
def dataset():
    """An image folder an unprivileged user can read and write (tmp_path is private)."""
    base = Path(tempfile.mkdtemp(prefix="loradeck-oddities-"))
    base.chmod(0o777)
    yield base
    _remove(base)


def _remove(base: Path) -> None:
    for folder, _subfolders, _files in os.walk(base):
        os.chmod(folder, 0o777)  # so a non-root owner can delete what it locked
    shutil.rmtree(base)


@pytest.fixture(scope="module", autouse=True)
def everything_imported():
    """One scan first, as the user running the tests: `nobody` may not read the Python
    installation (under /root here), so nothing may be imported for the first time
    while the scan runs as nobody."""
    base = Path(tempfile.mkdtemp(prefix="loradeck-oddities-"))
    put_image(base / "10_subject" / "a.png")
    (base / "10_subject" / "a.txt").write_bytes(b"caf\xe9")  # Windows-1252: its codec is imported lazily
    (base / "10_subject" / "b.jpg").write_bytes(PHOTO)
    scan_command(str(base), "--json")
    scan_command(str(base))
    _remove(base)


@contextlib.contextmanager
def unprivileged():
    """Run the body as `nobody` when this process is root, so modes 000 mean what they say."""
    if os.geteuid() != 0:
        yield
        return
    try:
        os.setegid(NOBODY)
        os.seteuid(NOBODY)
    except PermissionError:  # root without CAP_SETUID (some containers): modes mean nothing
        os.setegid(0)
        pytest.skip("running as root without the right to drop privileges")
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def finishes(function, *args, fifos=()):
    """function(*args) in a thread, failing the test (not hanging it) after TIMEOUT seconds.
    A reader stuck on one of `fifos` is released by opening its write end once."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = function(*args)
        except BaseException as error:  # the test reports it: a traceback is the failure
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    if thread.is_alive():
        for fifo in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(TIMEOUT)
        pytest.fail(f"still running after {TIMEOUT} s: blocked reading a named pipe")
    if "error" in outcome:
        raise AssertionError(f"raised {outcome['error']!r} instead of reporting it") from outcome["error"]
    return outcome["value"]


def scan_command(*argv: str, fifos=()) -> tuple[int, str, str]:
    """`loradeck scan ARGV` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()

    def run():
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return loradeck(["scan", *argv])

    status = finishes(run, fifos=fifos)
    return status, out.getvalue(), err.getvalue()


def json_scan(folder: Path, *options: str, fifos=()) -> tuple[int, dict]:
    status, out, _err = scan_command(str(folder), "--json", *options, fifos=fifos)
    out.encode("utf-8")  # strict: what a pipe or a file receives is valid UTF-8
    return status, json.loads(out)


# What the small test pictures get besides what a case is about.
INCIDENTAL = ("low_resolution", "duplicate", "near_duplicate")


def codes(document: dict) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for item in document["findings"]:
        if item["code"] not in INCIDENTAL:
            found.setdefault(item["path"], set()).add(item["code"])
    return found


def messages(document: dict) -> dict[tuple[str, str], str]:
    return {(item["path"], item["code"]): item["message"] for item in document["findings"]}


IMAGE = png_bytes(picture(1, (64, 64)))
PHOTO = jpeg_bytes(picture(2, (64, 64)))


def put_image(path: Path, caption: str | None = "a photo") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(IMAGE)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")


# ---- each case


def test_links_that_loop_or_lead_nowhere_are_findings_or_skipped(dataset):
    subject = dataset / "10_subject"
    put_image(subject / "fine.png")
    (subject / "self.png").symlink_to("self.png")
    (subject / "gone.jpg").symlink_to("missing.jpg")
    (subject / "captioned.png").write_bytes(IMAGE)
    (subject / "captioned.txt").symlink_to("captioned.txt")
    (subject / "loop").symlink_to("loop")
    (subject / "up").symlink_to("..")  # a folder link back up: walked once, not forever

    status, document = json_scan(dataset)

    assert status == 1
    assert codes(document) == {
        "10_subject/self.png": {"unreadable"}, "10_subject/gone.jpg": {"unreadable"},
        "10_subject/captioned.png": {"unreadable_caption"},
    }
    found = messages(document)
    assert found[("10_subject/self.png", "unreadable")] == "a symbolic link that loops (it leads back to itself)"
    assert found[("10_subject/gone.jpg", "unreadable")] == "a symbolic link to missing.jpg, which does not exist"
    assert "captioned.txt cannot be read: a symbolic link that loops" in found[("10_subject/captioned.png",
                                                                             "unreadable_caption")]
    assert document["skipped"] == [{"path": "10_subject/loop", "reason": "a symbolic link that loops (it leads back to itself)"}]
    assert document["images"] == 4
    status, out, err = scan_command(str(dataset))
    assert "skipped" in out and "10_subject/loop" in out and not err.strip()


def test_named_pipes_are_never_opened(dataset):
    subject = dataset / "10_subject"
    put_image(subject / "fine.png")
    put_image(subject / "piped_caption.png", caption=None)
    fifos = [subject / "x.png", subject / "piped_caption.txt", subject / "orphan.txt"]
    for fifo in fifos:
        os.mkfifo(fifo)

    status, document = json_scan(dataset, fifos=fifos)

    assert status == 1
    assert codes(document) == {
        "10_subject/x.png": {"unreadable"}, "10_subject/piped_caption.png": {"unreadable_caption"},
        "10_subject/orphan.txt": {"orphan_caption"},
    }
    assert messages(document)[("10_subject/x.png", "unreadable")] == (
        "a named pipe (FIFO), not a file: the trainer cannot read it")
    # A pipe put in a file's place after the folder was listed is not waited on either.
    facts = finishes(inspect_image, subject / "x.png", fifos=fifos)
    assert facts.error_code == "unreadable" and "named pipe" in facts.error
    # The quarantine moves files only, and says so for the pipe instead of skipping it.
    status, _out, err = scan_command(str(dataset), "--quarantine", fifos=fifos)
    assert status == 1 and stat.S_ISFIFO(os.lstat(subject / "x.png").st_mode)
    assert "not moved: 10_subject/x.png is not a file (a named pipe (FIFO)" in err
    assert (dataset / "_quarantine" / "10_subject" / "piped_caption.png").is_file()


def test_unreadable_folders_captions_and_images_are_findings(dataset):
    put_image(dataset / "10_subject" / "fine.png")
    put_image(dataset / "10_subject" / "locked_caption.png")
    (dataset / "10_subject" / "locked_caption.txt").chmod(0)
    put_image(dataset / "10_subject" / "locked_image.png")
    (dataset / "10_subject" / "locked_image.png").chmod(0)
    put_image(dataset / "10_locked" / "inside.png")
    (dataset / "10_locked").chmod(0)

    with unprivileged():
        status, document = json_scan(dataset, "--workers", "1")
        status_of_root, _out, err = scan_command(str(dataset / "10_locked"))

    assert status == 1
    assert codes(document) == {
        "10_locked": {"unreadable_folder"}, "10_subject/locked_caption.png": {"unreadable_caption"},
        "10_subject/locked_image.png": {"unreadable"},
    }
    found = messages(document)
    assert found[("10_subject/locked_caption.png", "unreadable_caption")] == (
        "locked_caption.txt cannot be read: Permission denied")  # not "empty"
    assert found[("10_locked", "unreadable_folder")].startswith("cannot read the folder: Permission denied")
    assert status_of_root == 1 and err.strip().endswith("cannot read the folder: Permission denied")
    assert len(err.strip().splitlines()) == 1


def test_names_that_are_not_utf8_map_back_to_their_files(dataset):
    odd = os.fsdecode(b"0bad\xe9\xff.png")  # sorts first: the copy after it names it
    (dataset / odd).write_bytes(IMAGE)
    (dataset / "copy.png").write_bytes(IMAGE)
    (dataset / "copy.txt").write_text("a photo", encoding="utf-8")
    (dataset / "new\nline.png").write_bytes(png_bytes(picture(3, (64, 64))))

    status, document = json_scan(dataset)

    assert status == 0
    found = {item["path"]: item for item in document["findings"]}
    assert set(found) == {odd, "copy.png", "new\nline.png"}
    assert found[odd]["path_bytes"] == b"0bad\xe9\xff.png".hex()
    for item in document["findings"]:
        exact = bytes.fromhex(item["path_bytes"]) if "path_bytes" in item else item["path"].encode()
        assert os.path.lexists(os.fsencode(dataset) + b"/" + exact)
        assert os.fsencode(item["path"]) == exact
    assert found["copy.png"]["message"] == f"same pixels as {odd}"
    assert "path_bytes" not in found["copy.png"]

    _status, out, _err = scan_command(str(dataset))
    out.encode("utf-8")
    lines = out.splitlines()
    assert any(line.startswith("warning  missing_caption") and "0bad\\xe9\\xff.png" in line for line in lines)
    assert any("new\\nline.png" in line for line in lines)
    assert not any(line.startswith("line.png") for line in lines)


# ---- every oddity at once, drawn by Hypothesis


KINDS = ("image", "photo", "empty", "cut_image", "cut_photo", "noise", "fifo", "self_link", "dangling_link",
         "link_to_image", "locked_file", "folder", "locked_folder")
EXTENSIONS = (".png", ".jpg", ".JPEG", ".webp", ".bmp", ".txt", ".gif", "")

plain_names = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="/\x00"), min_size=1, max_size=40)
byte_names = st.binary(min_size=1, max_size=40).filter(lambda name: b"/" not in name and b"\x00" not in name)
names = st.one_of(plain_names, byte_names.map(os.fsdecode), st.just("n" * 240))
entries = st.lists(
    st.tuples(names, st.sampled_from(EXTENSIONS), st.sampled_from(KINDS), st.integers(1, 200)),
    min_size=1, max_size=8, unique_by=lambda entry: (entry[0] + entry[1]).lower(),
)


def make(path: Path, kind: str, cut: int) -> None:
    if kind in ("image", "photo", "cut_image", "cut_photo", "locked_file"):
        data = PHOTO if kind.endswith("photo") else IMAGE
        path.write_bytes(data[: len(data) * cut // 200] if kind.startswith("cut") else data)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "noise":
        path.write_bytes(os.urandom(cut))
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "self_link":
        path.symlink_to(path.name)
    elif kind == "dangling_link":
        path.symlink_to("nowhere")
    elif kind == "link_to_image":
        path.symlink_to(path.parent / "anchor.png")
    else:  # a folder, with an image in it
        path.mkdir()
        put_image(path / "inside.png")
    if kind in ("locked_file", "locked_folder"):
        path.chmod(0)


def reported_paths_lead_to_files(base: Path, document: dict) -> None:
    for item in document["findings"] + document.get("skipped", []):
        exact = bytes.fromhex(item["path_bytes"]) if "path_bytes" in item else item["path"].encode("utf-8")
        assert os.path.lexists(os.fsencode(base) + b"/" + exact), item


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(drawn=entries, nested=st.booleans())
def test_any_mix_of_oddities_gives_findings_and_never_a_traceback_or_a_hang(drawn, nested):
    base = Path(tempfile.mkdtemp(prefix="loradeck-oddities-"))
    try:
        base.chmod(0o777)
        folder = base / "10_subject" if nested else base
        folder.mkdir(exist_ok=True)
        put_image(folder / "anchor.png")
        made = {}
        for name, extension, kind, cut in drawn:
            path = folder / (name + extension)
            if name in (".", "..") or path.name in ("anchor.png", "anchor.txt") or len(os.fsencode(path.name)) > 255:
                continue
            make(path, kind, cut)
            made[path.relative_to(base).as_posix()] = kind
        fifos = [base / relative for relative, kind in made.items() if kind == "fifo"]
        # One process: decoding workers would be forked from a forkserver started as root.
        with unprivileged():
            status, document = json_scan(base, "--workers", "1", fifos=fifos)
            text_status, out, err = scan_command(str(base), "--workers", "1", fifos=fifos)
        reported_paths_lead_to_files(base, document)
    finally:
        _remove(base)

    assert status in (0, 1) and text_status == status and err == ""
    out.encode("utf-8")
    found = codes(document)
    for item in document["findings"]:
        assert item["code"] in CHECKS and item["severity"] == CHECKS[item["code"]].severity
    for relative, kind in made.items():
        name = relative.rsplit("/", 1)[-1]
        if kind in ("fifo", "self_link", "dangling_link", "locked_file") and name.lower().endswith(IMAGE_NAMES):
            assert found.get(relative) == {"unreadable"}, (relative, kind, document)
        if kind == "locked_folder" and not name.startswith(".") and name != "_quarantine":
            assert found.get(relative) == {"unreadable_folder"}, (relative, document)


IMAGE_NAMES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
