"""Dataset health end to end: a generated corpus with every case, the exact codes each
file gets, the cache, `loradeck scan` (JSON and exit statuses), the EXIF fix, the
quarantine and its undo, and a fuzz run that must never crash."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import engine.health.scan as health
from engine.config.schema import config_from_dict, save_config
from engine.health.exif_fix import estimate_jpeg_quality, fix_orientation
from engine.health.report import CHECKS, ScanSettings
from engine.health.scan import scan, target_for
from engine.health.image_checks import inspect_image
from engine.health.findings import low_resolution_message
from engine.dataset.quarantine import read_manifest, undo_quarantine
from tests.health_corpus import (
    SILENT_JPEG_DAMAGE, SUBJECT, build_corpus, jpeg_bytes, picture, png_bytes, write_fuzzed_files,
)
from tui.cli import main as loradeck


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "ws"
    expected = build_corpus(root)
    return root, expected


@pytest.fixture
def workspace(corpus, tmp_path):
    """A private copy of the corpus for tests that change files."""
    source, expected = corpus
    return shutil.copytree(source, tmp_path / "ws", ignore=shutil.ignore_patterns(".loradeck")), expected


def codes_by_path(report) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for item in report.findings:
        found.setdefault(item.path, set()).add(item.code)
    return found


def file_digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and ".loradeck" not in path.parts and path.name != "manifest.json"
    }


# ---- every case gets exactly its codes


def test_every_file_gets_exactly_its_expected_codes(workspace):
    root, expected = workspace
    report = scan(target_for(root), workers=2)  # the process pool path
    found = codes_by_path(report)
    wanted = {path: codes for path, codes in expected.items() if codes}
    assert found == wanted
    clean = [path for path, codes in expected.items() if not codes]
    assert clean and not set(clean) & set(found)
    assert report.images == sum(1 for path in expected if "." in path and not path.endswith(".txt"))
    for item in report.findings:
        assert item.severity == CHECKS[item.code].severity
        assert item.message and "\n" not in item.message


def test_silent_jpeg_damage_is_silent_in_pillow_but_found(corpus):
    root, _expected = corpus
    for name in SILENT_JPEG_DAMAGE:
        path = root / "img" / SUBJECT / name
        with Image.open(path) as image:
            image.load()  # Pillow decodes it without complaint: the trainer would too
        facts = inspect_image(path)
        assert facts.error_code == "corrupt" and facts.error.startswith("libjpeg: Corrupt JPEG data")


def test_in_process_scan_agrees_with_the_pool(workspace):
    root, expected = workspace
    report = scan(target_for(root), workers=1)
    assert codes_by_path(report) == {path: codes for path, codes in expected.items() if codes}


def test_messages_name_the_relation(corpus):
    root, _expected = corpus
    report = scan(target_for(root), workers=1)
    messages = {(item.path, item.code): item.message for item in report.findings}
    assert messages[(f"{SUBJECT}/dup_same_bytes.png", "duplicate")] == f"same pixels as {SUBJECT}/dup_original.png"
    assert messages[(f"{SUBJECT}/dup_zz_near.jpg", "near_duplicate")].startswith(f"looks like {SUBJECT}/dup_original.png")
    assert "EXIF Orientation 6 (rotated 90° clockwise)" in messages[(f"{SUBJECT}/orientation_6.jpg", "exif_rotated")]
    assert "the content is PNG but the name says .jpg" in messages[(f"{SUBJECT}/unreadable_png_named.jpg", "unreadable")]
    assert "the trainer skips 1 image" in messages[("misc", "bad_folder_name")]


def test_low_resolution_follows_the_config(tmp_path):
    buckets = ScanSettings(resolution=(768, 768), min_bucket_side=320)
    assert low_resolution_message((700, 700), buckets)  # fewer pixels than 768x768
    assert low_resolution_message((2000, 300), buckets)  # a side below the smallest bucket
    assert not low_resolution_message((1024, 768), buckets)
    cropped = ScanSettings(resolution=(512, 512), enable_buckets=False)
    assert low_resolution_message((1024, 500), cropped)
    assert not low_resolution_message((512, 512), cropped)
    # a workspace's config is what the scan uses
    workspace = tmp_path / "ws"
    (workspace / "img" / "1_x").mkdir(parents=True)
    save_config(config_from_dict({"model": {"pretrained_model": "some/model"}, "dataset": {"resolution": "1024"},
                                  "captions": {"caption_extension": ".caption"}}), workspace / "loradeck.toml")
    image = workspace / "img" / "1_x" / "a.png"
    image.write_bytes(png_bytes(picture(7)))
    image.with_suffix(".caption").write_text("a photo")
    report = scan(target_for(workspace), workers=1)
    assert codes_by_path(report) == {"1_x/a.png": {"low_resolution"}}


# ---- cache


def test_unchanged_files_are_not_decoded_again(workspace, monkeypatch):
    root, _expected = workspace
    first = scan(target_for(root), workers=1)
    assert (root / ".loradeck" / "health-cache.json").is_file()
    decoded: list[str] = []
    real = health.inspect_files

    def counting(paths, on_result, **options):
        paths = list(paths)  # the scan hands over a generator (it stats each file on the way)
        decoded.extend(paths)
        return real(paths, on_result, **options)

    monkeypatch.setattr(health, "inspect_files", counting)
    assert scan(target_for(root), workers=1).findings == first.findings
    assert decoded == []
    touched = root / "img" / SUBJECT / "clean_a.jpg"
    touched.write_bytes(touched.read_bytes() + b"")  # same bytes, new mtime
    scan(target_for(root), workers=1)
    assert decoded == [str(touched)]


def test_a_decoder_that_kills_its_worker_costs_that_file_only(tmp_path, monkeypatch):
    """The pool is fed while the scan still stats the files; a file whose decode kills
    its worker process is reported corrupt, and every other file is inspected as usual."""
    import multiprocessing
    import os

    import engine.health.image_checks as checks
    import engine.health.workers as workers

    folder = tmp_path / "img" / "1_cat"
    folder.mkdir(parents=True)
    for index in range(9):  # the pool starts at 8 files (4 per worker)
        (folder / f"{index:02d}.jpg").write_bytes(jpeg_bytes(picture(index)))
        (folder / f"{index:02d}.txt").write_text("a cat", encoding="utf-8")
    real = checks.inspect_image

    def dies_on_one_file(path, max_pixels):
        if path.endswith("05.jpg"):
            os._exit(1)  # what a decoder's segfault does to the worker
        return real(path, max_pixels)

    dies_on_one_file.__module__, dies_on_one_file.__qualname__ = checks.__name__, "inspect_image"  # pickled by name
    monkeypatch.setattr(checks, "inspect_image", dies_on_one_file)
    # forked workers run this process's stand-in decoder
    monkeypatch.setattr(workers, "_pool_context", lambda: multiprocessing.get_context("fork"))
    report = scan(target_for(tmp_path), workers=2)
    assert report.images == 9
    corrupt = [item for item in report.findings if item.code == "corrupt"]
    assert [(item.path, item.message) for item in corrupt] == [
        ("1_cat/05.jpg", "the image decoder crashed on this file")]


DATASET_WIDE = {"duplicate", "near_duplicate", "blurry", "orphan_caption", "bad_folder_name", "unreadable_folder"}


@pytest.mark.parametrize("cached", [False, True])
def test_each_images_own_findings_stream_before_the_report(workspace, cached):
    """What the app's first screen fills in while a scan runs: each image once, with its
    decode and caption findings, each progress call after the images it counts."""
    root, _expected = workspace
    if cached:
        scan(target_for(root), workers=2)
    streamed: dict[str, list] = {}
    progress: list[tuple[int, int]] = []

    def on_file(path, findings):
        assert path not in streamed
        streamed[path] = findings

    def on_progress(done, total):
        assert len(streamed) == done
        progress.append((done, total))

    report = scan(target_for(root), workers=2, progress=on_progress, on_file=on_file)
    assert len(streamed) == report.images and progress[-1] == (report.images, report.images)
    own = [item for items in streamed.values() for item in items]
    assert len(own) == len(set(own))
    assert set(own) == {item for item in report.findings if item.code not in DATASET_WIDE}
    assert any(item.code == "missing_caption" for item in own) and any(item.code == "corrupt" for item in own)


def test_bare_folder_keeps_its_cache_in_the_folder(tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jpeg_bytes(picture(1)))
    (folder / "sub").mkdir()  # not a Kohya layout: no folder finding
    report = scan(target_for(folder), workers=1)
    assert codes_by_path(report) == {"a.jpg": {"missing_caption"}}
    assert (folder / ".loradeck-scan-cache").is_file()
    assert scan(target_for(folder), workers=1).images == 1


# ---- the command


def test_scan_command_json_and_exit_status(corpus, capsys):
    root, expected = corpus
    status = loradeck(["scan", str(root / "img"), "--json"])
    document = json.loads(capsys.readouterr().out)
    assert status == 1
    assert set(document) == {"root", "images", "findings", "summary"}
    assert document["root"] == str((root / "img").resolve())
    assert all(set(item) == {"path", "code", "severity", "message"} for item in document["findings"])
    assert document["summary"]["exif_rotated"] == 8
    assert sum(document["summary"].values()) == len(document["findings"])
    assert {item["path"] for item in document["findings"]} == {p for p, codes in expected.items() if codes}


def test_scan_command_clean_folder_and_bad_usage(tmp_path, capsys):
    folder = tmp_path / "clean"
    folder.mkdir()
    image = folder / "a.png"
    image.write_bytes(png_bytes(picture(3)))
    image.with_suffix(".txt").write_text("a photo")
    assert loradeck(["scan", str(folder)]) == 0
    assert "no problems found" in capsys.readouterr().out
    assert loradeck(["scan", str(tmp_path / "missing")]) == 2
    assert loradeck(["scan", str(folder), "--quarantine", "--undo-quarantine"]) == 2
    assert "cannot be combined" in capsys.readouterr().err


# ---- fixes


def test_estimate_jpeg_quality():
    for quality in (40, 75, 90, 95):
        with Image.open(io.BytesIO(jpeg_bytes(picture(1, (64, 64)), quality=quality))) as image:
            assert estimate_jpeg_quality(image.quantization) == quality


@pytest.mark.parametrize("orientation", range(2, 9))
def test_fix_exif_bakes_every_orientation(workspace, orientation):
    root, _expected = workspace
    img = root / "img"
    relative = f"{SUBJECT}/orientation_{orientation}.jpg"
    original_bytes = (img / relative).read_bytes()
    with Image.open(img / relative) as original:
        upright = np.asarray(ImageOps.exif_transpose(original), dtype=np.int16)
        tables, icc = original.quantization, original.info.get("icc_profile")
    fixed = fix_orientation(img, relative)
    assert fixed.original == f"_quarantine/{relative}"
    assert (img / fixed.original).read_bytes() == original_bytes
    with Image.open(img / relative) as result:
        assert result.getexif().get(0x0112) is None
        pixels = np.asarray(result, dtype=np.int16)
        assert pixels.shape == upright.shape
        assert np.abs(pixels - upright).mean() < 3  # one more JPEG generation, same tables
        assert result.quantization == tables
        assert result.info.get("icc_profile") == icc
    assert "exif_rotated" not in codes_by_path(scan(target_for(root), workers=1)).get(relative, set())
    undo_quarantine(img)
    assert (img / relative).read_bytes() == original_bytes


def test_fix_exif_png_is_lossless(workspace):
    root, _expected = workspace
    img = root / "img"
    relative = f"{SUBJECT}/orientation_6.png"
    with Image.open(img / relative) as original:
        upright = np.asarray(ImageOps.exif_transpose(original))
    fix_orientation(img, relative)
    with Image.open(img / relative) as result:
        assert np.array_equal(np.asarray(result), upright)
        assert result.getexif().get(0x0112) is None


def test_cli_fix_quarantine_and_undo_lose_nothing(workspace, capsys):
    root, expected = workspace
    img = root / "img"
    before = file_digests(img)
    status = loradeck(["scan", str(root), "--fix-exif", "--quarantine", "--json"])
    report = json.loads(capsys.readouterr().out)
    # only the folder error is left: a folder is renamed by its owner, never moved
    assert status == 1
    assert [item["code"] for item in report["findings"] if item["severity"] == "error"] == ["bad_folder_name"]
    assert "exif_rotated" not in report["summary"]
    quarantine = img / "_quarantine"
    for path, codes in expected.items():
        if codes & {"corrupt", "unreadable", "too_large"}:
            assert not (img / path).exists() and (quarantine / path).exists(), path
    assert not (img / SUBJECT / "corrupt_truncated.txt").exists()  # captions travel along
    assert (quarantine / SUBJECT / "corrupt_truncated.txt").exists()
    kinds = {entry.kind for entry in read_manifest(img)}
    assert kinds == {"moved", "original"}
    # every byte of every original is still somewhere: nothing was deleted
    assert set(before.values()) <= set(file_digests(img).values())
    assert loradeck(["scan", str(img), "--undo-quarantine"]) == 1
    assert file_digests(img) == before
    assert read_manifest(img) == []


def test_quarantined_files_are_not_scanned_and_names_never_collide(workspace):
    root, _expected = workspace
    img = root / "img"
    from engine.dataset.quarantine import quarantine_files

    relative = f"{SUBJECT}/corrupt_empty.jpg"
    quarantine_files(img, [(relative, "corrupt")], ".txt")
    (img / relative).write_bytes(b"")  # the same broken file turns up again
    quarantine_files(img, [(relative, "corrupt")], ".txt")
    stored = sorted(entry.stored for entry in read_manifest(img))
    assert stored == [f"_quarantine/{SUBJECT}/corrupt_empty (2).jpg", f"_quarantine/{SUBJECT}/corrupt_empty.jpg",
                      f"_quarantine/{SUBJECT}/corrupt_empty.txt"]
    paths = {item.path for item in scan(target_for(root), workers=1).findings}
    assert not any(path.startswith("_quarantine") for path in paths)


def test_undo_leaves_a_file_edited_after_the_fix(workspace):
    root, _expected = workspace
    img = root / "img"
    relative = f"{SUBJECT}/orientation_8.jpg"
    fix_orientation(img, relative)
    (img / relative).write_bytes(jpeg_bytes(picture(99)))  # the user edits the fixed file
    result = undo_quarantine(img)
    assert result.restored == [] and result.skipped[0][0] == relative
    assert (img / "_quarantine" / relative).exists()


def test_undo_last_action_is_a_stack_and_reads_old_manifests(workspace):
    from engine.dataset.quarantine import undo_last_action

    root, _expected = workspace
    img = root / "img"
    fix_orientation(img, f"{SUBJECT}/orientation_8.jpg")  # action 1
    edited = f"{SUBJECT}/orientation_6.jpg"
    fix_orientation(img, edited)  # action 2
    (img / edited).write_bytes(jpeg_bytes(picture(98)))  # edited since: cannot go back
    result = undo_last_action(img)
    assert result.restored == [] and result.skipped[0][0] == edited and result.actions_left == 1
    # what could not go back stays in the quarantine, off the stack: the next undo takes action 1
    result = undo_last_action(img)
    assert result.restored == [f"{SUBJECT}/orientation_8.jpg"] and result.actions_left == 0
    assert [(entry.path, entry.action) for entry in read_manifest(img)] == [(edited, 0)]
    # a manifest written before actions were numbered is one action
    manifest = img / "_quarantine" / "manifest.json"
    document = json.loads(manifest.read_text())
    for entry in document["entries"]:
        del entry["action"]
    manifest.write_text(json.dumps(document))
    assert undo_last_action(img).skipped[0][0] == edited


# ---- never crash


def test_scan_survives_damaged_files_of_every_format(tmp_path):
    folder = tmp_path / "fuzz"
    count = write_fuzzed_files(folder)
    report = scan(target_for(folder), workers=1)
    assert report.images == count
    assert {item.code for item in report.findings} <= set(CHECKS)
