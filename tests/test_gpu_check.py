"""bench/gpu_check.sh's parts on the CPU and the tiny model, so that the GPU run they prepare
(issue 20: minutes of device time, no second try) does not fail on a path or a typo."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benches_name_the_shipped_sd15_configs():
    for module in (load("train_speed"), load("gpu_check")):
        for part in ("unet", "vae", "text_encoder"):
            assert (module.ASSETS / part / "config.json").is_file(), f"{module.__name__}: {module.ASSETS}"


def test_speed_bench_profile_writes_the_operator_table(tmp_path, capsys):
    table = tmp_path / "profile.txt"
    assert load("train_speed").main(["--quick", "--json", "--ranks", "4", "--batches", "1", "--text-encoder", "off",
                                     "--checkpointing", "off", "--steps", "1", "--warmup", "1",
                                     "--profile", str(table)]) == 0
    text = table.read_text()
    assert text.startswith("3 steps, 64² batch 1") and "aten::" in text and "Self CPU" in text
    assert json.loads(capsys.readouterr().out)["results"][0]["status"] == "ok"


@pytest.mark.slow
def test_gpu_check_trains_the_workspace_and_loads_the_lora_in_diffusers(tmp_path, capsys):
    from tui.cli import main as loradeck

    check = load("gpu_check")
    assert check.main(["make-model", str(tmp_path / "model"), "--quick"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert Path(made["file"]).is_file() and made["file_gb"] > 0
    assert check.main(["workspace", str(tmp_path / "ws"), str(tmp_path / "model" / "diffusers"), "--images", "4",
                       "--size", "64", "--batch", "2", "--epochs", "2", "--sample-every", "1", "--oom-batch", "4"]) == 0
    capsys.readouterr()
    assert len(list((tmp_path / "ws" / "img" / "1_gpu").glob("*.jpg"))) == 4
    assert loradeck(["train", str(tmp_path / "ws" / "train.toml")]) == 0
    capsys.readouterr()
    run_dir = tmp_path / "ws" / "runs" / "gpu-train"
    assert check.main(["check-run", str(run_dir), str(tmp_path / "model" / "diffusers")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["run_end"]["status"] == "finished" and report["steps"] == 4 and report["samples"] == 6
    lora = report["lora"]
    assert lora["lora_layers_in_diffusers"] == lora["unet_modules_in_file"] > 0
    assert lora["max_output_change"] > 0 and lora["disabled_equals_base"]


def test_gpu_check_finds_the_out_of_memory_line_and_refuses_a_traceback(tmp_path, capsys):
    check = load("gpu_check")
    line = "loradeck train: out of GPU memory before the first step finished: the estimate for this config is 300 GiB"
    (tmp_path / "events.jsonl").write_text(json.dumps({"type": "error", "message": line[16:]}) + "\n")
    stderr = tmp_path / "stderr.txt"
    stderr.write_text(line + "\n")
    assert check.main(["check-oom", str(tmp_path), str(stderr)]) == 0
    assert json.loads(capsys.readouterr().out)["stderr_line"] == line
    stderr.write_text("Traceback (most recent call last):\n" + line + "\n")
    assert check.main(["check-oom", str(tmp_path), str(stderr)]) == 1
    assert json.loads(capsys.readouterr().out)["tracebacks_on_stderr"] == 1
