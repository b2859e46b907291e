"""The parts of `bench/gpu_check.sh` that are Python: each subcommand prints one JSON object.

    python bench/gpu_check.py sync [--quick]                 host syncs in the trainer's step (set_sync_debug_mode)
    python bench/gpu_check.py make-model DIR [--quick]       random-weight SD1.5 (tiny with --quick): a diffusers
                                                             folder DIR/diffusers and DIR/model.safetensors, written
                                                             by engine.model.single_file.export_single_file
    python bench/gpu_check.py workspace DIR MODEL [--images N] [--size S] [--batch B] [--quick]
                                                             N generated captioned JPEGs and two configs: train.toml
                                                             (bf16, cached latents, samples on) and oom.toml
    python bench/gpu_check.py check-run RUN_DIR DIFFUSERS_DIR it/s from events.jsonl, samples, and the last LoRA
                                                             loaded in diffusers' StableDiffusionPipeline
    python bench/gpu_check.py check-oom RUN_DIR STDERR_FILE  the out-of-memory line in the events and on stderr
    python bench/gpu_check.py summary OUT                    one table (summary.md) from the JSON files in OUT

Nothing is downloaded: the models are SD1.5's architecture from engine/model/assets/sd15
with random weights, the images are generated.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ASSETS = ROOT / "engine" / "model" / "assets" / "sd15"
MATMUL_TFLOPS = 790.0  # 8192³ bf16 matmul measured on this workplace's H200s (device KINDS.md)
SPEC_TFLOPS = 989.0  # H100/H200 SXM dense bf16, datasheet


def _print(report: dict) -> int:
    print(json.dumps(report, indent=1))
    return 0 if report.get("ok", True) else 1


# --------------------------------------------------------------------------- sync


def sync_check(args) -> int:
    """Train steps of the tiny model under torch.cuda.set_sync_debug_mode("warn") and count
    the synchronising operations, with the line that caused each, per precision and switch."""
    import torch

    from engine.config.schema import config_from_dict
    from engine.network.lora import LoraNetwork
    from engine.train.loop import WEIGHT_DTYPES, make_accelerator
    from engine.train.optimizers import make_lr_scheduler, make_optimizer, optimizer_kernel
    from engine.train.step import TrainStep, apply_speed_settings

    bench = _bench()
    if not torch.cuda.is_available():
        return _print({"ok": False, "error": "no CUDA device"})
    rows = []
    for precision in ("bf16", "fp16"):
        for text_encoder in (False, True):
            config = config_from_dict({
                "model": {"pretrained_model": str(ASSETS)},
                "dataset": {"resolution": "64"},
                "network": {"rank": 4, "alpha": 4.0, "train_text_encoder": text_encoder},
                "optimizer": {"optimizer": "AdamW", "learning_rate": 1e-4, "lr_scheduler": "cosine",
                              "max_grad_norm": 1.0},
                "training": {"batch_size": 2, "min_snr_gamma": 5.0, "noise_offset": 0.05},
                "precision": {"mixed_precision": precision},
            })
            accelerator = make_accelerator(config)
            model = bench.build_model(True, accelerator.device, WEIGHT_DTYPES[accelerator.mixed_precision], config)
            network = LoraNetwork.attach(model.family, model, rank=4, alpha=4.0, train_text_encoder=text_encoder)
            apply_speed_settings(model, config, accelerator.device, text_encoder)
            optimizer = make_optimizer(config, network.param_groups(
                {"unet": 1e-4, "text_encoder": 1e-5, "text_encoder_2": 1e-5}), accelerator.device)
            step = TrainStep.prepare(accelerator, model, network, optimizer, make_lr_scheduler(config, optimizer, 1000),
                                     config, train_text_encoder=text_encoder, text_encoder_active=text_encoder)
            items = bench.synthetic_batch(model, config, batch=2, resolution=64, text_encoder=text_encoder,
                                          accelerator=accelerator, pin=True)
            generator = torch.Generator(device=accelerator.device).manual_seed(0)
            for _ in range(3):  # warm-up: lazy initialisation may sync once
                step(items, generator)
            torch.cuda.synchronize()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    for _ in range(5):
                        step(items, generator)
                finally:
                    torch.cuda.set_sync_debug_mode(0)
            syncs = [w for w in caught if "synchroniz" in str(w.message)]
            places: dict[str, int] = {}
            for w in syncs:
                where = f"{Path(w.filename).name}:{w.lineno}"
                places[where] = places.get(where, 0) + 1
            rows.append({"precision": precision, "text_encoder": text_encoder, "steps": 5, "syncs": len(syncs),
                         "where": places, "optimizer": optimizer_kernel(optimizer),
                         "first": str(syncs[0].message)[:200] if syncs else ""})
            print(f"sync {precision} text encoder {text_encoder}: {len(syncs)} syncs in 5 steps {places}",
                  file=sys.stderr, flush=True)
            del step, optimizer, network, model
            torch.cuda.empty_cache()
    return _print({"ok": all(row["syncs"] == 0 for row in rows), "results": rows})


def _bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_speed", ROOT / "bench" / "train_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- the model


def make_model(args) -> int:
    """SD1.5 with random weights as a diffusers folder, then one original-layout file by the
    project's exporter (which checks the keys round-trip through diffusers' converters)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.model.single_file import export_single_file, load_tokenizer
    from engine.model.tiny import make_tiny_model

    start = time.perf_counter()
    out = Path(args.dir)
    folder, file = out / "diffusers", out / "model.safetensors"
    if args.quick:
        make_tiny_model(folder)
    else:
        read = lambda part: json.loads((ASSETS / part / "config.json").read_text())  # noqa: E731
        device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.manual_seed(0)
        with torch.device(device):  # random init on the GPU: seconds instead of a minute
            unet = UNet2DConditionModel.from_config(read("unet"))
            vae = AutoencoderKL.from_config(read("vae"))
            text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(read("text_encoder")))
        pipeline = StableDiffusionPipeline(
            unet=unet.half().cpu(), vae=vae.half().cpu(), text_encoder=text_encoder.half().cpu(),
            tokenizer=load_tokenizer(ASSETS), scheduler=DDPMScheduler.from_pretrained(str(ASSETS / "scheduler")),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipeline.save_pretrained(folder, safe_serialization=True)
    export_single_file(folder, file, dtype=torch.float16)
    return _print({"ok": True, "diffusers": str(folder), "file": str(file), "file_gb": file.stat().st_size / 1e9,
                   "seconds": time.perf_counter() - start})


# --------------------------------------------------------------------------- the workspace


def make_workspace(args) -> int:
    """Generated photos (smooth random colour fields with a few shapes) and two configs."""
    import numpy as np
    from PIL import Image, ImageDraw

    from engine.config.schema import config_from_dict, save_config

    root = Path(args.dir)
    images = root / "img" / "1_gpu"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = ["city", "street", "night", "day", "dog", "cat", "tree", "house", "sky", "red", "blue", "green"]
    for index in range(args.images):
        coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
        image = coarse.resize((args.size, args.size), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y = (int(v) for v in rng.integers(0, args.size, 2))
            r = int(rng.integers(args.size // 16, args.size // 4))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        path = images / f"{index:04d}.jpg"
        image.save(path, quality=90)
        path.with_suffix(".txt").write_text("gpu, a photo of " + ", ".join(rng.choice(words, 3)) + "\n")
    resolution = str(args.size)
    common = {
        "model": {"pretrained_model": str(Path(args.model).resolve())},
        "dataset": {"image_dir": "img", "resolution": resolution},
        "network": {"rank": 16, "alpha": 16.0},
        "optimizer": {"optimizer": "AdamW", "learning_rate": 1e-4, "lr_scheduler": "constant"},
        "precision": {"mixed_precision": "bf16", "cache_latents": "memory", "cache_text_encoder_outputs": True,
                      "dataloader_workers": 0, "save_precision": "fp16"},
        "logging": {"tensorboard": False, "log_every_n_steps": 10},
    }
    prompts = f"gpu, a photo of a city --w {args.size} --h {args.size} --d 1 --s 20\n" \
              f"a dog --w {args.size} --h {args.size} --d 2 --s 20"
    train = {**common, "training": {"batch_size": args.batch, "epochs": args.epochs, "seed": 1},
             "sampling": {"prompts": prompts, "every_n_epochs": args.sample_every, "at_start": True,
                          "sampler": "euler_a"},
             "saving": {"output_name": "gpu-train", "save_every_n_epochs": 1}}
    oom = {**common, "training": {"batch_size": args.oom_batch, "epochs": 1, "seed": 1},
           "sampling": {"every_n_epochs": 0}, "saving": {"output_name": "gpu-oom", "save_every_n_epochs": 1}}
    for name, data in (("train.toml", train), ("oom.toml", oom)):
        save_config(config_from_dict(data), root / name)
    return _print({"ok": True, "images": args.images, "size": args.size, "configs": ["train.toml", "oom.toml"]})


# --------------------------------------------------------------------------- the run


def _events(run_dir: Path) -> list[dict]:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def check_run(args) -> int:
    """What the dashboard shows (steps/s, images/s from the step events), the samples on disk,
    and the last LoRA file loaded by diffusers into the same random model on the GPU."""
    run_dir = Path(args.run_dir)
    events = _events(run_dir)
    steps = [e for e in events if e.get("type") == "step"]
    ends = [e for e in events if e.get("type") == "run_end"]
    starts = [e for e in events if e.get("type") == "run_start"]
    later = steps[len(steps) // 4:]  # after warm-up and the first sampling point
    report: dict = {
        "steps": len(steps),
        "run_end": {k: ends[-1].get(k) for k in ("status", "step", "epoch", "message")} if ends else None,
        "device": starts[0].get("device") if starts else None,
        "precision": starts[0].get("precision") if starts else None,
        "vram_estimate_gb": starts[0].get("vram_estimate_gb") if starts else None,
        "steps_per_s_median": _median([e["steps_per_s"] for e in later]) if later else None,
        "images_per_s_median": _median([e["images_per_s"] for e in later]) if later else None,
        "gpu_memory_gb_max": max((e.get("gpu_memory_mb", 0) for e in steps), default=0) / 1024,
        "gpu_util_median": _median([e["gpu_util"] for e in later if "gpu_util" in e]) if later else None,
        "data_wait_median": _median([e["data_wait"] for e in later]) if later else None,
        "loss_first_last": [steps[0]["loss"], steps[-1]["loss"]] if steps else None,
        "types": sorted({e.get("type") for e in events}),
        "errors": [e.get("message") for e in events if e.get("type") in ("error", "warning")][:5],
    }
    samples = sorted((run_dir / "samples").rglob("*.png")) if (run_dir / "samples").is_dir() else []
    report["samples"] = len(samples)
    if samples:
        from PIL import Image
        import numpy as np

        pixels = np.asarray(Image.open(samples[-1]).convert("RGB"), dtype=np.float32)
        report["last_sample"] = {"name": samples[-1].name, "size": list(pixels.shape[:2]), "std": float(pixels.std())}
    loras = sorted((run_dir / "checkpoints").glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
    report["checkpoints"] = [p.name for p in loras]
    report["lora"] = _load_lora_in_diffusers(Path(args.diffusers_dir), loras[-1]) if loras else None
    ok = bool(steps) and bool(ends) and ends[-1].get("status") in ("finished", "stopped") and bool(samples) \
        and bool(report["lora"]) and report["lora"].get("ok", False)
    report["ok"] = ok
    return _print(report)


def _load_lora_in_diffusers(folder: Path, lora: Path) -> dict:
    """StableDiffusionPipeline.load_lora_weights on the GPU: every LoRA'd layer is found, and
    the U-Net's output changes with the LoRA on and does not with it disabled."""
    import torch
    from diffusers import StableDiffusionPipeline

    from safetensors import safe_open

    try:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float16 if device == "cuda" else torch.float32
        pipe = StableDiffusionPipeline.from_pretrained(str(folder), dtype=dtype, safety_checker=None).to(device)
        sample_size = pipe.unet.config.sample_size
        generator = torch.Generator(device=device).manual_seed(0)
        latents = torch.randn(1, 4, sample_size, sample_size, generator=generator, device=device, dtype=dtype)
        states = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=generator, device=device,
                             dtype=dtype)
        timestep = torch.tensor([500], device=device)
        with torch.no_grad():
            before = pipe.unet(latents, timestep, states).sample
        with safe_open(str(lora), "pt") as handle:
            keys = list(handle.keys())
            metadata = handle.metadata() or {}
        pipe.load_lora_weights(str(lora), adapter_name="trained")
        lora_layers = sum(1 for m in pipe.unet.modules() if hasattr(m, "lora_A") and "trained" in m.lora_A)
        with torch.no_grad():
            after = pipe.unet(latents, timestep, states).sample
            pipe.disable_lora()
            disabled = pipe.unet(latents, timestep, states).sample
        image = pipe("gpu, a photo of a city", num_inference_steps=4, output_type="np").images[0] \
            if device == "cuda" else None
        unet_modules = sum(1 for k in keys if k.startswith("lora_unet_") and k.endswith(".lora_down.weight"))
        change = float((after - before).abs().max())
        return {"ok": lora_layers == unet_modules and change > 0 and bool(torch.equal(disabled, before)),
                "file": lora.name, "keys": len(keys), "unet_modules_in_file": unet_modules,
                "lora_layers_in_diffusers": lora_layers, "max_output_change": change,
                "disabled_equals_base": bool(torch.equal(disabled, before)),
                "ss_network_dim": metadata.get("ss_network_dim"),
                "image_finite": None if image is None else bool(torch.isfinite(torch.from_numpy(image)).all())}
    except Exception as error:  # reported, not raised: the rest of the check still prints
        return {"ok": False, "error": f"{type(error).__name__}: {error}"[:500]}


def check_oom(args) -> int:
    run_dir = Path(args.run_dir)
    stderr = Path(args.stderr).read_text(errors="replace") if Path(args.stderr).is_file() else ""
    events = _events(run_dir) if (run_dir / "events.jsonl").is_file() else []
    errors = [e.get("message", "") for e in events if e.get("type") == "error"]
    lines = [line for line in stderr.splitlines() if "out of GPU memory" in line]
    tracebacks = stderr.count("Traceback")
    return _print({"ok": bool(lines) and any("out of GPU memory" in m for m in errors) and tracebacks == 0,
                   "stderr_line": lines[0] if lines else None, "event_error": errors[0] if errors else None,
                   "tracebacks_on_stderr": tracebacks, "stderr_tail": stderr[-600:] if not lines else ""})


def _median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


# --------------------------------------------------------------------------- summary


def summary(args) -> int:
    """bench.json (and bench-compile.json) and the run checks as one Markdown table."""
    out = Path(args.out)
    lines = []
    for name in ("bench.json", "bench-compile.json"):
        path = out / name
        if not path.is_file():
            lines.append(f"{name}: missing")
            continue
        try:
            report = json.loads(path.read_text())
        except json.JSONDecodeError:
            lines.append(f"{name}: not JSON")
            continue
        lines.append(f"\n{name}: {report.get('device')}, torch {report.get('torch')}, {report.get('precision')}, "
                     f"U-Net {'compiled' if report.get('compile_unet') else 'eager'}, optimizer "
                     f"{report.get('optimizer')}\n")
        lines.append("| res | batch | rank | images/s | step ms | TFLOP/s | of 989 spec | of 790 matmul | "
                     "peak GiB | estimate GiB | est/peak |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for row in report.get("results", []):
            if row.get("status") != "ok":
                lines.append(f"| {row['resolution']} | {row['batch']} | {row['rank']} | {row['status']} |"
                             " | | | | | | |")
                continue
            tflops = row["images_per_s"] * row["tflop_per_image"]
            ratio = (row["vram_estimate_gb"] / row["peak_vram_gb"]) if row.get("vram_estimate_gb") and \
                row.get("peak_vram_gb") else None
            lines.append(
                f"| {row['resolution']} | {row['batch']} | {row['rank']} | {row['images_per_s']:.1f} | "
                f"{row['step_ms']:.1f} | {tflops:.0f} | {tflops / SPEC_TFLOPS:.1%} | {tflops / MATMUL_TFLOPS:.1%} | "
                f"{_fmt(row.get('peak_vram_gb'))} | {_fmt(row.get('vram_estimate_gb'))} | "
                f"{'-' if ratio is None else format(ratio, '.2f')} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sync = commands.add_parser("sync")
    sync.set_defaults(handler=sync_check)
    model = commands.add_parser("make-model")
    model.add_argument("dir")
    model.add_argument("--quick", action="store_true", help="the tiny model (CPU, seconds)")
    model.set_defaults(handler=make_model)
    workspace = commands.add_parser("workspace")
    workspace.add_argument("dir")
    workspace.add_argument("model", help="the single-file checkpoint")
    workspace.add_argument("--images", type=int, default=320)
    workspace.add_argument("--size", type=int, default=512)
    workspace.add_argument("--batch", type=int, default=8)
    workspace.add_argument("--epochs", type=int, default=100)
    workspace.add_argument("--sample-every", type=int, default=4)
    workspace.add_argument("--oom-batch", type=int, default=256)
    workspace.set_defaults(handler=make_workspace)
    run = commands.add_parser("check-run")
    run.add_argument("run_dir")
    run.add_argument("diffusers_dir")
    run.set_defaults(handler=check_run)
    oom = commands.add_parser("check-oom")
    oom.add_argument("run_dir")
    oom.add_argument("stderr")
    oom.set_defaults(handler=check_oom)
    table = commands.add_parser("summary")
    table.add_argument("out")
    table.set_defaults(handler=summary)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
