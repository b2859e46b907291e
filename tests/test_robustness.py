"""Bad input at the command line: one clear line naming the problem, exit 1 (2 for usage).

Every case calls the real `loradeck` entry point (`tui.cli.main`) on small broken inputs
made in a temporary folder; none loads a model (the one exception loads nothing from a
folder that holds no model). Also here: the data-safety rules that bad input must not
break (a damaged quarantine manifest moves nothing, an undo never deletes a caption
someone changed, the light engine modules import no heavy library).
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from engine.config.schema import config_from_dict, save_config
from tests.datasets import write_caption, write_image
from tui.cli import main

ROOT = Path(__file__).resolve().parents[1]
KOHYA_CONFIG = ROOT / "tests" / "fixtures" / "kohya" / "lora_gui_native.json"


def _config_text(t: Path, **overrides: str) -> str:
    """A valid config (inline TOML) pointing into the scratch folder, with raw overrides."""
    settings = {
        "model.pretrained_model": f'"{t / "model"}"',
        "dataset.image_dir": f'"{t / "img"}"',
        "saving.output_dir": f'"{t / "runs"}"',
        "sampling.prompts": '"a cat"',
    }
    settings.update(overrides)
    sections: dict[str, list[str]] = {}
    for key, value in settings.items():
        group, name = key.split(".")
        sections.setdefault(group, []).append(f"{name} = {value}")
    return "\n".join(f"[{group}]\n" + "\n".join(lines) for group, lines in sections.items()) + "\n"


def _fake_lora(path: Path) -> None:
    """A file with a valid safetensors header only: enough for the grid to list it."""
    header = json.dumps({"__metadata__": {"ss_steps": "10", "ss_epoch": "1"}}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(header)) + header)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    t = tmp_path
    (t / "empty").mkdir()
    (t / "model" / "unet").mkdir(parents=True)  # enough of a diffusers folder for the checks before a run
    (t / "file.txt").write_text("hello\n")
    (t / "garbage.toml").write_text("garbage = [\n")
    (t / "binary.toml").write_bytes(b"\xff\xfe\x00bad")
    (t / "garbage.json").write_text("{not json")
    (t / "list.json").write_text("[1, 2]")
    shutil.copy(KOHYA_CONFIG, t / "kohya.json")
    write_caption(write_image(t / "img" / "2_cat" / "a.png", (64, 64)), "cat")
    (t / "good.toml").write_text(_config_text(t))
    (t / "epochs-inf.toml").write_text(_config_text(t, **{"training.epochs": "inf"}))
    (t / "resolution-nan.toml").write_text(_config_text(t, **{"dataset.resolution": "nan"}))
    (t / "no-images.toml").write_text(_config_text(t, **{"dataset.image_dir": f'"{t / "nowhere"}"'}))
    (t / "output-is-file.toml").write_text(_config_text(t, **{"saving.output_dir": f'"{t / "file.txt"}"'}))
    (t / "no-prompts-file.toml").write_text(
        _config_text(t, **{"sampling.prompts": '""', "sampling.prompts_file": f'"{t / "nope.txt"}"'})
    )
    # A run folder with a frozen config and one LoRA file, but no engine: for grid and control.
    run = t / "runs" / "done"
    save_config(config_from_dict({
        "model": {"pretrained_model": str(t / "model")}, "dataset": {"image_dir": str(t / "img")},
        "sampling": {"prompts": "a cat"},
    }), run / "config.toml")
    _fake_lora(run / "checkpoints" / "done.safetensors")
    broken_run = t / "broken-run"
    broken_run.mkdir()
    (broken_run / "config.toml").write_text("garbage = [\n")
    return t


CASES = [
    # (id, argv, exit status, text the error line must hold)
    ("plan-missing", ["plan", "{t}/nope.toml"], 1, "no such config file"),
    ("plan-folder", ["plan", "{t}/empty"], 1, "cannot read (Is a directory)"),
    ("plan-garbage", ["plan", "{t}/garbage.toml"], 1, "not valid TOML"),
    ("plan-binary", ["plan", "{t}/binary.toml"], 1, "not a UTF-8 text file"),
    ("plan-epochs-inf", ["plan", "{t}/epochs-inf.toml"], 1, "training.epochs: expected a whole number"),
    ("plan-resolution-nan", ["plan", "{t}/resolution-nan.toml"], 1, "dataset.resolution: expected a size"),
    ("plan-no-images", ["plan", "{t}/no-images.toml"], 1, "does not exist"),
    ("kohya-missing", ["import-kohya", "{t}/nope.json"], 1, "no such file"),
    ("kohya-folder", ["import-kohya", "{t}/empty"], 1, "cannot read (Is a directory)"),
    ("kohya-garbage", ["import-kohya", "{t}/garbage.json"], 1, "not a Kohya JSON config"),
    ("kohya-list", ["import-kohya", "{t}/list.json"], 1, "expected an object"),
    ("kohya-out-under-file", ["import-kohya", "{t}/kohya.json", "-o", "{t}/file.txt/out.toml"], 1,
     "cannot write the config (Not a directory)"),
    ("kohya-out-is-folder", ["import-kohya", "{t}/kohya.json", "-o", "{t}/empty", "--force"], 1,
     "cannot write the config"),
    ("kohya-out-exists", ["import-kohya", "{t}/kohya.json", "-o", "{t}/file.txt"], 2, "pass --force"),
    ("presets-unknown", ["presets", "--write", "nope", "{t}/out.toml"], 1, "no preset named 'nope'"),
    ("presets-out-under-file", ["presets", "--write", "sd15-character", "{t}/file.txt/x.toml"], 1,
     "Not a directory"),
    ("train-nothing", ["train"], 2, "give a CONFIG"),
    ("train-missing", ["train", "{t}/nope.toml"], 1, "no such config file"),
    ("train-folder", ["train", "{t}/empty"], 1, "cannot read"),
    ("train-no-images", ["train", "{t}/no-images.toml"], 1, "dataset.image_dir"),
    ("train-output-is-file", ["train", "{t}/output-is-file.toml"], 1,
     "saving.output_dir: cannot create the run folder"),
    ("train-prompts-file-missing", ["train", "{t}/no-prompts-file.toml"], 1, "prompts file not found"),
    ("train-resume-not-run", ["train", "--resume", "{t}/empty"], 1, "not a run folder"),
    ("train-resume-garbage-config", ["train", "--resume", "{t}/broken-run"], 1, "not valid TOML"),
    ("train-resume-garbage-new-config", ["train", "--resume", "{t}/runs/done", "{t}/garbage.toml"], 1,
     "not valid TOML"),
    ("stop-not-run", ["stop", "{t}/empty"], 1, "not a run folder"),
    ("save-now-file", ["save-now", "{t}/file.txt"], 1, "not a run folder"),
    ("sample-now-no-engine", ["sample-now", "{t}/runs/done"], 1, "no engine is running"),
    ("runs-missing", ["runs", "{t}/nope"], 2, "no such folder"),
    ("runs-file", ["runs", "{t}/file.txt"], 2, "not a folder"),
    ("scan-missing", ["scan", "{t}/nope"], 2, "not a folder"),
    ("scan-file", ["scan", "{t}/file.txt"], 2, "not a folder"),
    ("scan-workers", ["scan", "{t}/img", "--workers", "0"], 2, "--workers"),
    ("caption-missing", ["caption", "{t}/nope", "--model", "{t}/empty", "--kind", "wd14"], 1, "not a folder"),
    ("caption-no-tagger", ["caption", "{t}/img", "--model", "{t}/empty", "--kind", "wd14"], 1,
     "model.onnx is missing"),
    ("caption-unknown-kind", ["caption", "{t}/img", "--model", "nope"], 2, "say which with --kind"),
    ("caption-batch-size", ["caption", "{t}/img", "--model", "{t}/empty", "--batch-size", "0"], 2,
     "--batch-size 0: must be at least 1"),
    ("caption-device", ["caption", "{t}/img", "--model", "{t}/empty", "--device", "gpu0"], 2, "--device gpu0"),
    ("caption-threshold", ["caption", "{t}/img", "--model", "{t}/empty", "--general-threshold", "2"], 2,
     "between 0 and 1"),
    ("tags-missing", ["tags", "{t}/nope", "--stats"], 1, "not a folder"),
    ("tags-top", ["tags", "{t}/img", "--stats", "--top", "-1"], 2, "--top -1"),
    ("tags-keep-tokens", ["tags", "{t}/img", "--stats", "--keep-tokens", "-1"], 2, "--keep-tokens -1"),
    ("tags-replace", ["tags", "{t}/img", "--replace", "abc"], 2, "write OLD=NEW"),
    ("grid-not-run", ["grid", "{t}/empty"], 1, "not a run folder"),
    ("grid-garbage-config", ["grid", "{t}/broken-run"], 1, "not valid TOML"),
    ("grid-weights", ["grid", "{t}/runs/done", "--weights", "abc"], 2, "--weights: 'abc' is not a number"),
    ("grid-weights-nan", ["grid", "{t}/runs/done", "--weights", "0.5,nan"], 2, "'nan' is not a number"),
    ("grid-prompts-missing", ["grid", "{t}/runs/done", "--prompts", "{t}/nope.txt"], 1, "no such prompts file"),
    ("grid-out-is-folder", ["grid", "{t}/runs/done", "-o", "{t}/empty"], 1, "is a folder"),
    ("grid-out-under-file", ["grid", "{t}/runs/done", "-o", "{t}/file.txt/grid.png"], 1, "not a writable folder"),
    ("make-tiny-model-file", ["make-tiny-model", "{t}/file.txt"], 1, "exists and is not a folder"),
    ("make-tiny-model-under-file", ["make-tiny-model", "{t}/file.txt/model"], 1, "Not a directory"),
]


@pytest.mark.parametrize("argv, status, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_gives_one_clear_line(scratch, capsys, argv, status, expected):
    argv = [part.replace("{t}", str(scratch)) for part in argv]
    assert main(argv) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert expected in last, err
    assert last.startswith(f"loradeck {argv[0]}: "), err


def test_a_request_that_cannot_be_written_is_one_line(scratch, capsys):
    run = scratch / "runs" / "done"
    # An engine on another machine sharing the disk is trusted to be alive.
    (run / "engine.pid").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    (run / "control").write_text("not a folder")
    assert main(["stop", str(run)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cannot write the request" in err.strip().splitlines()[-1]


def test_a_failed_train_leaves_no_run_folder(scratch, capsys):
    assert main(["train", str(scratch / "no-prompts-file.toml")]) == 1
    # The run name is still free once the prompts file is fixed.
    assert [p.name for p in (scratch / "runs").iterdir()] == ["done"]


def test_caption_usage_errors_reach_the_json_progress_stream(scratch, capsys):
    argv = ["caption", str(scratch / "img"), "--model", str(scratch / "empty"), "--batch-size", "0",
            "--progress-json"]
    assert main(argv) == 2
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["type"] == "error"


def test_caption_model_folder_without_a_processor_is_one_line(scratch, capsys):
    # transformers raises ValueError (not OSError) for a folder without processor files
    argv = ["caption", str(scratch / "img"), "--model", str(scratch / "empty"), "--kind", "florence2",
            "--device", "cpu"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cannot load" in err.strip().splitlines()[-1]


# ---- data safety under bad input


def _dataset_with_a_corrupt_image(root: Path) -> Path:
    image_dir = root / "img"
    write_caption(write_image(image_dir / "2_cat" / "good.png", (64, 64)), "cat")
    broken = image_dir / "2_cat" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return image_dir


@pytest.mark.parametrize("manifest", ["{bad json", "[1, 2]", '{"entries": [{"kind": "moved"}]}'])
def test_quarantine_with_a_damaged_manifest_moves_nothing(tmp_path, capsys, manifest):
    image_dir = _dataset_with_a_corrupt_image(tmp_path)
    (image_dir / "_quarantine").mkdir()
    (image_dir / "_quarantine" / "manifest.json").write_text(manifest)
    assert main(["scan", str(image_dir), "--quarantine"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "cannot read the quarantine manifest" in captured.err
    # Moving first would have left the image in the quarantine with no record to undo it by.
    assert (image_dir / "2_cat" / "broken.png").is_file()
    assert sorted(p.name for p in (image_dir / "_quarantine").iterdir()) == ["manifest.json"]
    assert main(["scan", str(image_dir), "--undo-quarantine"]) == 1
    assert "cannot read the quarantine manifest" in capsys.readouterr().err


def test_exif_fix_with_a_damaged_manifest_leaves_the_image(tmp_path, capsys):
    image = write_image(tmp_path / "img" / "2_cat" / "side.jpg", (64, 32), orientation=6)
    before = image.read_bytes()
    (tmp_path / "img" / "_quarantine").mkdir()
    (tmp_path / "img" / "_quarantine" / "manifest.json").write_text("{bad json")
    main(["scan", str(tmp_path / "img"), "--fix-exif"])
    assert "cannot read the quarantine manifest" in capsys.readouterr().err
    assert image.read_bytes() == before


def test_undo_never_deletes_a_caption_changed_on_disk(tmp_path):
    from engine.dataset.caption_files import CaptionChanged, caption_stamp, write_caption as write_caption_file

    caption = tmp_path / "a.txt"
    stamp = write_caption_file(caption, "cat", None)  # loradeck created it (the image had none)
    assert write_caption_file(caption, None, stamp) is None  # undo of our own file: removed
    assert not caption.exists()
    caption.write_text("someone's own words")  # written outside loradeck after the undo was planned
    with pytest.raises(CaptionChanged):
        write_caption_file(caption, None, "any")  # even "overwrite conflicts" keeps it
    assert caption.read_text() == "someone's own words"
    assert caption_stamp(caption) is not None


def test_atomic_write_names_the_file_in_the_way(tmp_path):
    from engine.atomic import atomic_write_text

    (tmp_path / "plain").write_text("x")
    with pytest.raises(NotADirectoryError) as error:  # mkdir alone would say "File exists"
        atomic_write_text(tmp_path / "plain" / "out.txt", "y")
    assert error.value.filename == str(tmp_path / "plain")
    with pytest.raises(NotADirectoryError):
        atomic_write_text(tmp_path / "plain" / "deeper" / "out.txt", "y")


def test_tiny_model_is_written_whole_with_no_temporary_left(tiny_model_dir):
    assert (tiny_model_dir / "model_index.json").is_file()
    assert (tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert [p.name for p in tiny_model_dir.parent.iterdir()] == [tiny_model_dir.name]
    assert tiny_model_dir.stat().st_mode & 0o077  # not mkdtemp's owner-only 0700


# ---- a closed stdout (`loradeck ... | head`)


@pytest.mark.parametrize("argv, statuses", [
    (["plan", "{t}/good.toml", "--json"], {141}),
    (["runs", "{t}/runs", "--json"], {141}),
    (["tags", "{t}/img", "--stats"], {141}),
    (["presets"], {141}),
    (["--help"], {0, 141}),  # argparse swallows the error of its own help text: 0 when the help is long
], ids=["plan", "runs", "tags", "presets", "help"])
def test_a_reader_that_closes_the_pipe_early_gets_no_traceback(scratch, argv, statuses):
    # The reader goes away before the command prints (as `head` does once it has its lines).
    import os
    import subprocess
    import sys

    argv = [part.replace("{t}", str(scratch)) for part in argv]
    command = subprocess.Popen([sys.executable, "-m", "tui.cli", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    command.stdout.close()
    _out, err = command.communicate(timeout=120)
    assert err.decode() == ""
    assert command.returncode in statuses  # 141 = 128 + SIGPIPE, as a shell tool stopped by the closed pipe
