"""Every speed switch trains the same LoRA as the slow path (tiny model, CPU), the step never
reads a value back from the device, the speed bench runs, and VRAM guidance is given.

Runs are 2 epochs of 4 steps on 64x64 images (tests/conftest.small_run_settings).
"""
from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from engine.run.events import read_events
from engine.network.lora import read_lora_file
from engine.train.loop import train
from tests.datasets import write_caption

ROOT = Path(__file__).resolve().parents[1]


def trained(root: Path, make_run, capsys, name: str, **sections) -> tuple[dict[str, torch.Tensor], list[float], str]:
    """(final LoRA tensors, the loss of every step, the engine's log) of a fresh run."""
    run = make_run(root, name, **sections)
    assert train(run.path) == 0
    log = capsys.readouterr().out
    tensors, _ = read_lora_file(run.checkpoints / f"{name}.safetensors")
    losses = [event["loss"] for event in read_events(run.events) if event["type"] == "step"]
    return tensors, losses, log


def assert_same_lora(first: dict, second: dict, exact: bool = False) -> None:
    """Same tensors; or, beyond float tolerance, the same learned change ΔW = up · down.

    Adam turns float-order noise in a near-zero gradient into a visible weight difference,
    so single weights are a poor yardstick; what the LoRA does is ΔW. Every module's ΔW must
    match within 0.1% of the largest module's (noise is ~1e-5; a real difference, such as
    other latents or another epoch's augmentation, is of the order of ΔW itself).
    """
    assert first.keys() == second.keys()
    if exact:
        for key in first:
            assert torch.equal(first[key], second[key]), key
        return

    def change(tensors, module):
        return tensors[f"{module}.lora_up.weight"].flatten(1) @ tensors[f"{module}.lora_down.weight"].flatten(1)

    modules = sorted({key.removesuffix(".lora_down.weight") for key in first if key.endswith(".lora_down.weight")})
    largest = max(float(change(first, module).norm()) for module in modules)
    assert largest > 0
    for module in modules:
        difference = float((change(first, module) - change(second, module)).norm())
        assert difference <= 1e-3 * largest, (module, difference, largest)


def model_for_weighted_captions(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """The tiny model with a final layer norm whose output has a mean away from 0, as trained
    CLIP's has: weighting restores each caption's mean, a division by ~0 on random weights."""
    import shutil

    from transformers import CLIPTextModel

    folder = shutil.copytree(tiny_model_dir, tmp_path / "tiny-weighted")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
    norm = getattr(text_encoder, "final_layer_norm", None) or text_encoder.text_model.final_layer_norm
    with torch.no_grad():
        norm.bias.fill_(0.5)
    text_encoder.save_pretrained(folder / "text_encoder")
    return folder


# --------------------------------------------------------------------------- switches


def test_cached_latents_train_like_encoding_every_step(tmp_path, tiny_dataset, make_run, capsys):
    flip = {"augmentation": {"flip": True}}  # the cache holds mirrored latents as well
    live, live_losses, log = trained(tiny_dataset, make_run, capsys, "live", precision={"cache_latents": "none"}, **flip)
    assert "latents encoded every step: precision.cache_latents is none" in log
    memory, memory_losses, log = trained(tiny_dataset, make_run, capsys, "memory", **flip)
    assert "latents cached (memory)" in log
    disk, _, log = trained(tiny_dataset, make_run, capsys, "disk", precision={"cache_latents": "disk"}, **flip)
    assert "latents cached (disk)" in log and "2 loader workers" not in log
    assert any((tiny_dataset / "runs" / "disk" / "cache" / "latents").iterdir())
    assert_same_lora(live, memory)
    assert_same_lora(memory, disk)
    assert live_losses == pytest.approx(memory_losses, rel=1e-3)


def test_cached_text_encoder_outputs_train_like_live_ones(tmp_path, tiny_dataset, tiny_model_dir, make_run, capsys):
    # one caption with A1111 emphasis, so weighted conditioning is cached too
    write_caption(tiny_dataset / "img" / "2_sks dog" / "0.png", "(sks dog:1.3), red, [outdoors]")
    frozen = {"network": {"train_text_encoder": False}, "captions": {"weighted_captions": True},
              "model": {"pretrained_model": str(model_for_weighted_captions(tiny_model_dir, tmp_path))}}
    live, live_losses, log = trained(tiny_dataset, make_run, capsys, "live",
                                     precision={"cache_text_encoder_outputs": False}, **frozen)
    assert "text encoder outputs computed every step: precision.cache_text_encoder_outputs is off" in log
    cached, cached_losses, log = trained(tiny_dataset, make_run, capsys, "cached", **frozen)
    assert "cached the text encoder's outputs for 4 captions" in log and "text encoder outputs cached" in log
    assert_same_lora(live, cached)
    assert live_losses == pytest.approx(cached_losses, rel=1e-3)


def test_text_encoder_outputs_are_not_cached_when_they_change(tmp_path, tiny_dataset, make_run, capsys):
    _, _, log = trained(tiny_dataset, make_run, capsys, "trains-te", training={"epochs": 1})
    assert "text encoder outputs computed every step: the text encoder is trained" in log
    _, _, log = trained(tiny_dataset, make_run, capsys, "shuffled", network={"train_text_encoder": False},
                        captions={"shuffle_caption": True}, training={"epochs": 1})
    assert "text encoder outputs computed every step: captions are shuffled" in log


def test_foreach_optimizer_steps_like_the_plain_loop(tmp_path, tiny_dataset, make_run, capsys):
    foreach, _, log = trained(tiny_dataset, make_run, capsys, "foreach")
    assert "optimizer foreach" in log  # fused is CUDA-only
    plain, _, log = trained(tiny_dataset, make_run, capsys, "plain", precision={"fused_optimizer": False})
    assert "optimizer plain" in log
    assert_same_lora(foreach, plain)


def test_channels_last_changes_no_result(tmp_path, tiny_dataset, make_run, capsys):
    channels_last, _, log = trained(tiny_dataset, make_run, capsys, "nhwc")
    assert "channels_last on" in log
    contiguous, _, log = trained(tiny_dataset, make_run, capsys, "nchw", precision={"channels_last": False})
    assert "channels_last off" in log
    assert_same_lora(channels_last, contiguous)


def test_losses_reach_the_cpu_every_n_steps_without_changing_training(tmp_path, tiny_dataset, make_run, capsys):
    every, every_losses, log = trained(tiny_dataset, make_run, capsys, "every")
    assert log.count("] step ") == 8
    batched, batched_losses, log = trained(tiny_dataset, make_run, capsys, "batched", logging={"log_every_n_steps": 5})
    assert log.count("] step ") == 3  # steps 5, and the epoch ends at 4 and 8 flush
    assert_same_lora(every, batched, exact=True)
    assert every_losses == batched_losses and len(batched_losses) == 8


def test_loader_workers_give_the_same_batches(tmp_path, tiny_dataset, make_run, capsys):
    """Workers live for the whole run; each epoch's augmentation still reaches them."""
    uncached = {"precision": {"cache_latents": "none"}, "augmentation": {"flip": True}}
    main_process, _, log = trained(tiny_dataset, make_run, capsys, "inline", **uncached)
    assert "0 loader workers" in log
    uncached["precision"]["dataloader_workers"] = 2
    workers, _, log = trained(tiny_dataset, make_run, capsys, "workers", **uncached)
    assert "2 loader workers" in log
    assert_same_lora(main_process, workers, exact=True)


@pytest.mark.slow
def test_compiled_unet_trains_like_eager(tmp_path, tiny_dataset, make_run, capsys, monkeypatch):
    """torch.compile works on this CPU, but inductor's C++ code generation for a U-Net takes
    minutes on two busy cores; the aot_eager backend still checks what could go wrong in our
    step -- graph capture of the LoRA'd U-Net and AOT autograd's backward -- in seconds."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile is not supported on this Python")
    settings = {"training": {"max_steps": 3}, "saving": {"save_every_n_epochs": 0}}
    eager, _, _ = trained(tiny_dataset, make_run, capsys, "eager", **settings)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    compiled, _, log = trained(tiny_dataset, make_run, capsys, "compiled", precision={"compile_unet": True}, **settings)
    assert "U-Net compiled" in log
    assert_same_lora(eager, compiled)


# --------------------------------------------------------------------------- no host sync


def test_a_step_never_reads_a_value_back_from_the_device(tmp_path, tiny_dataset, make_run, monkeypatch):
    """On a GPU a scalar read (`.item()`, `bool(t)`, `float(t)`) or an op whose output size
    depends on values makes the host wait for the GPU. None may happen inside a step; the
    only scalar reads allowed are the optimizer's step counters, which torch keeps on the CPU
    (the fused CUDA AdamW does not read them at all)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import engine.train.step

    aten = torch.ops.aten
    data_dependent = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
                      aten.unique_dim.default, aten._unique2.default, aten.is_nonzero.default}
    reads: list[str] = []

    class ScalarReads(TorchDispatchMode):
        def __init__(self, counters):
            super().__init__()
            self.counters = counters

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in data_dependent and not any(args[0] is counter for counter in self.counters()):
                reads.append(str(func))
            return func(*args, **(kwargs or {}))

    real_step = engine.train.step.TrainStep.__call__

    def watched(self, batch, generator):
        optimizer = self.optimizer.optimizer  # accelerate's wrapper holds the torch optimizer
        counters = lambda: [state["step"] for state in optimizer.state.values() if "step" in state]  # noqa: E731
        with ScalarReads(counters):
            return real_step(self, batch, generator)

    monkeypatch.setattr(engine.train.step.TrainStep, "__call__", watched)
    # the parts of a step that could read back: clipping, Min-SNR, offset noise, a schedule
    run = make_run(tiny_dataset, "nosync", training={"epochs": 1, "min_snr_gamma": 5.0, "noise_offset": 0.05},
                   optimizer={"learning_rate": 1e-3, "lr_scheduler": "cosine", "max_grad_norm": 1.0})
    assert train(run.path) == 0
    assert reads == []


# --------------------------------------------------------------------------- the bench


def test_speed_bench_quick_mode_reports_numbers(capsys):
    spec = importlib.util.spec_from_file_location("train_speed", ROOT / "bench" / "train_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--json", "--ranks", "4", "--batches", "2", "--text-encoder", "both",
                       "--checkpointing", "off", "--steps", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"device", "cuda", "model", "precision", "torch", "peak_tflops", "optimizer", "results"} <= set(report)
    assert report["model"] == "tiny" and report["peak_tflops"] == 989 and len(report["results"]) == 2
    for row in report["results"]:
        assert {"resolution", "batch", "rank", "text_encoder", "gradient_checkpointing", "images_per_s", "step_ms",
                "peak_vram_gb", "vram_estimate_gb", "tflop_per_image", "mfu", "status"} <= set(row)
        assert row["status"] == "ok" and (row["resolution"], row["batch"], row["rank"]) == (64, 2, 4)
        assert row["images_per_s"] > 0 and row["step_ms"] > 0 and row["tflop_per_image"] > 0 and row["mfu"] > 0
        assert row["mfu"] == pytest.approx(row["images_per_s"] * row["tflop_per_image"] / 989)
        assert row["peak_vram_gb"] is None  # no CUDA here
    assert {row["text_encoder"] for row in report["results"]} == {False, True}


# --------------------------------------------------------------------------- VRAM guidance


def test_vram_estimate_follows_the_settings(tiny_model_dir):
    from engine.config.schema import config_from_dict
    from engine.plan.vram import estimate_vram

    def estimate(**precision_and_more):
        sections = {"model": {"pretrained_model": str(ROOT / "engine" / "model" / "assets" / "sd15")},
                    "network": {"rank": 16, "alpha": 16.0}, "training": {"batch_size": 4}}
        for group, values in precision_and_more.items():
            sections.setdefault(group, {}).update(values)
        return estimate_vram(config_from_dict(sections))

    base = estimate()
    assert 5 < base.total_gb < 10 and base.card_gb < 24  # SD1.5, 512², batch 4, bf16: a 24 GB card fits
    assert 1.5 < base.weights_gb < 2.2  # 1.07 billion frozen parameters in bf16
    assert estimate(precision={"gradient_checkpointing": True}).total_gb < base.total_gb - 3
    assert estimate(dataset={"resolution": "768"}).total_gb > base.total_gb + 5
    assert estimate(training={"batch_size": 16}).total_gb > 3 * base.total_gb
    assert estimate(network={"rank": 128, "alpha": 128.0}).lora_gb > 6 * base.lora_gb
    assert estimate(precision={"mixed_precision": "no"}).total_gb > 1.8 * base.total_gb


def test_plan_command_shows_the_vram_estimate(tiny_dataset, make_run, capsys):
    from tui.cli import main as loradeck

    run = make_run(tiny_dataset, "plan")
    assert loradeck(["plan", str(run.config)]) == 0
    out = capsys.readouterr().out
    assert "VRAM (estimate)   about " in out and "needs a GPU with" in out
    assert loradeck(["plan", str(run.config), "--json"]) == 0
    estimate = json.loads(capsys.readouterr().out)["vram_estimate"]
    assert estimate["total_gb"] > 0 and estimate["card_gb"] > estimate["total_gb"]


def test_out_of_memory_is_one_clear_error(tiny_dataset, make_run, monkeypatch, capsys):
    import engine.train.step

    def out_of_memory(self, batch, generator):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total)")

    monkeypatch.setattr(engine.train.step.TrainStep, "__call__", out_of_memory)
    run = make_run(tiny_dataset, "oom", training={"batch_size": 4})
    assert train(run.path) == 1
    events = list(read_events(run.events))
    assert events[0]["type"] == "run_start" and events[0]["vram_estimate_gb"] > 0
    error = next(event for event in events if event["type"] == "error")
    assert error["message"].startswith("out of GPU memory before the first step finished: the estimate for this config is ")
    for advice in ("training.batch_size (now 4", "precision.gradient_checkpointing", "dataset.resolution (now 64)"):
        assert advice in error["message"]
    assert error["traceback"] == ""
    assert events[-1]["type"] == "run_end" and events[-1]["status"] == "failed"
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"loradeck train: {error['message']}"
