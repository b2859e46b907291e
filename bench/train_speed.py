"""Training speed: images per second, peak VRAM and share of the GPU's bf16 peak, for our step.

    /work/venv/bin/python bench/train_speed.py                 full matrix on a CUDA GPU
    /work/venv/bin/python bench/train_speed.py --quick         tiny model, seconds, anywhere (the CPU default)
    ... [--json] [--peak-tflops 989] [--resolutions 512 768] [--batches 1 4 16] [--ranks 16 64]
        [--text-encoder both|on|off] [--checkpointing both|on|off] [--compile] [--steps 10] [--warmup 3]
        [--profile FILE]                 torch.profiler table of 3 more steps of the first configuration
    ... --loader [--workers 0 2 4 8]    can the data loader feed the GPU when latents are not cached?
    ... --memory-model                  re-measure engine/plan/vram.py's activation constants (meta device)
    ... --family sdxl                   SDXL base's architecture (1024², batch 1/4/8; --quick: the tiny SDXL)
    ... --family flux                   FLUX.1-dev's (1024², batch 1/2, rank 16/32, --fp8 both, text encoders frozen)

The model is SD1.5's (or with --family sdxl SDXL base 1.0's) real architecture built from
`engine/model/assets/sd15` (`.../sdxl`) with random weights
(speed does not depend on the weights, so nothing is downloaded). Each configuration runs
`engine.train.step.TrainStep` -- the trainer's own step: LoRA from engine.network.lora,
speed settings, optimizer and schedule from the config, accelerate's mixed precision --
on a batch shaped like the trainer's: cached latents (pinned, copied without waiting) and,
when the text encoder is frozen, its cached outputs; token ids when it trains.

images/s is counted after `--warmup` steps, between two `torch.cuda.synchronize()`.
Peak VRAM is `torch.cuda.max_memory_allocated()` for that configuration, beside
engine.plan.vram's estimate. "bf16 peak" is U-Net model FLOPs per image (forward and backward
of the LoRA step, counted once with torch.utils.flop_counter on the meta device:
1.75 TFLOP at 512², 4.96 at 768²; recomputation under checkpointing is not counted)
times images/s over `--peak-tflops` (989 = H100 SXM dense bf16).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ASSETS_ROOT = ROOT / "engine" / "model" / "assets"
ASSETS = ASSETS_ROOT / "sd15"
QUICK = {"resolutions": [64], "batches": [1, 4], "ranks": [4], "steps": 3, "warmup": 1}
FULL = {"resolutions": [512, 768], "batches": [1, 4, 16], "ranks": [16, 64], "steps": 10, "warmup": 3}
FULL_SDXL = {"resolutions": [1024], "batches": [1, 4, 8], "ranks": [16, 64], "steps": 10, "warmup": 3}
FAMILY = "sd15"  # set by --family
# a family's own full-size matrix and memory-model sizes, where they differ from SD1.5's
FULL_FLUX = {"resolutions": [1024], "batches": [1, 2], "ranks": [16, 32], "steps": 5, "warmup": 2}
FULL_BY_FAMILY = {"sdxl": FULL_SDXL, "flux": FULL_FLUX}
MEMORY_MODEL_SIZES = {"sdxl": {"resolutions": [1024], "batches": [2]}, "flux": {"resolutions": [512, 1024], "batches": [1]}}


def _assets():
    from engine.model.families import family_named

    return family_named(FAMILY).config_folder


def _model_label(quick: bool) -> str:
    """The family's name for the real-size configs; "tiny" (the first family's) or "tiny-<family>" in quick mode."""
    from engine.model.families import default_family

    if not quick:
        return FAMILY
    return "tiny" if FAMILY == default_family().name else f"tiny-{FAMILY}"


def unet_conditioning_extras(unet, batch: int, device, dtype=None) -> dict:
    """SDXL's added conditioning (pooled text, six size numbers) for a U-Net that takes it."""
    import torch

    if unet.config.get("addition_embed_type") != "text_time":
        return {}
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    return {"added_cond_kwargs": {"text_embeds": torch.zeros(batch, pooled, device=device, dtype=dtype),
                                  "time_ids": torch.zeros(batch, 6, device=device, dtype=dtype)}}


# --------------------------------------------------------------------------- models


def build_model(quick: bool, device, dtype, config):
    """A BaseModel with random weights: the family's real architecture (U-Net and CLIP from its
    shipped configs), or its tiny test model."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from engine.model.families import family_named
    from engine.model.family import BaseModel
    from engine.model.ldm_checkpoints import load_tokenizer

    family = family_named(FAMILY)
    runtime = family.runtime()
    torch.manual_seed(0)
    if quick:
        pipeline = runtime.tiny_pipeline()
        parts = {name: part for name, part in pipeline.components.items() if part is not None}
        scheduler = parts.pop("scheduler")
    elif FAMILY == "flux":
        parts, scheduler = _full_flux_parts(device)
    else:
        read = lambda part: json.loads((_assets() / part / "config.json").read_text())  # noqa: E731
        text_classes = {"text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection}
        with torch.device(device):  # initialise on the GPU: seconds instead of a minute on the CPU
            parts = {"unet": UNet2DConditionModel.from_config(read("unet")),
                     "vae": AutoencoderKL.from_config(read("vae"))}
            for name in family.text_encoders:
                parts[name] = text_classes[name](CLIPTextConfig.from_dict(read(name)))
        parts.update({name: load_tokenizer(_assets(), name) for name in family.tokenizers})
        scheduler = DDPMScheduler.from_config(DDPMScheduler.load_config(str(_assets() / "scheduler")))
    in_fp32 = ("vae",) if dtype == torch.float16 else ()
    runtime.place_parts(parts, config, device=device, dtype=dtype, in_fp32=in_fp32)  # fp8 storage where asked
    schedule = runtime.training_scheduler(scheduler, config)
    return BaseModel(family=family, parts=parts, noise_scheduler=schedule, objective=runtime.objective(schedule, config),
                     name="random", source="random")


def _full_flux_parts(device):
    """FLUX.1-dev's architecture from the shipped configs, random weights, made on `device`
    (the tiny T5 tokenizer: the ids' values do not matter to speed)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from engine.model.families.flux.tiny import tiny_t5_tokenizer
    from engine.model.ldm_checkpoints import load_tokenizer

    read = lambda part: json.loads((_assets() / part / "config.json").read_text())  # noqa: E731
    with torch.device(device):
        parts = {"transformer": FluxTransformer2DModel.from_config(read("transformer")),
                 "vae": AutoencoderKL.from_config(read("vae")),
                 "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(read("text_encoder"))),
                 "text_encoder_2": T5EncoderModel(T5Config.from_dict(read("text_encoder_2")))}
    parts.update(tokenizer=load_tokenizer(_assets()), tokenizer_2=tiny_t5_tokenizer())
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        FlowMatchEulerDiscreteScheduler.load_config(str(_assets() / "scheduler")))
    return parts, scheduler


def bench_config(*, rank: int, text_encoder: bool, checkpointing: bool, precision: str, compile_unet: bool,
                 batch: int, resolution: int, fp8: bool = False):
    from engine.config.schema import config_from_dict

    return config_from_dict({
        "model": {"pretrained_model": str(_assets())},  # names the family's configs (for engine.plan.vram); nothing is loaded
        "dataset": {"resolution": str(resolution)},
        "network": {"rank": rank, "alpha": float(rank), "train_text_encoder": text_encoder},
        "optimizer": {"optimizer": "AdamW", "learning_rate": 1e-4, "lr_scheduler": "constant"},
        "training": {"batch_size": batch},
        "precision": {"mixed_precision": precision, "gradient_checkpointing": checkpointing,
                      "compile_unet": compile_unet, "fp8_base": fp8},
        "flux": {"t5xxl_max_token_length": 512},  # Flux only: [dev]'s T5 tokens
    })


def flops_per_image(quick: bool, resolution: int, rank: int) -> float:
    """Forward + backward FLOPs of one image through the family's LoRA'd denoiser, counted on
    the meta device (the memory model's step builders)."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    import torch

    model, run = (_meta_flux_step if FAMILY == "flux" else _meta_unet_step)(resolution, 1, rank, quick=quick,
                                                                             dtype=torch.float32)
    counter = FlopCounterMode(display=False)
    with counter:
        prediction, target = run()
        F.mse_loss(prediction.float(), target.float()).backward()
    return float(counter.get_total_flops())


def _meta_unet(quick: bool):
    import torch
    from diffusers import UNet2DConditionModel

    if quick:
        from engine.model.tiny import make_tiny_pipeline

        config = dict(make_tiny_pipeline(FAMILY).unet.config)
    else:
        config = json.loads((_assets() / "unet" / "config.json").read_text())
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


# --------------------------------------------------------------------------- the matrix


CAPTION = "a photo of a city street at night, red car"


def synthetic_batch(model, config, *, batch: int, resolution: int, text_encoder: bool, accelerator, pin: bool):
    """What the trainer's loader yields with cached latents (and cached text states when the
    text encoder is frozen): CPU tensors, pinned on CUDA, made by the family's own code."""
    import torch

    from engine.train.data import collate_examples

    side = resolution // 8
    generator = torch.Generator().manual_seed(0)
    runtime = model.runtime
    if text_encoder:
        captions = runtime.caption_tokens(model.tokenizers, max_token_length=75, weighted=False, config=config)
    else:
        captions = runtime.text_state_cache(model, [CAPTION], config, autocast=accelerator.autocast)
    example = {"latents": torch.zeros(model.vae.config.latent_channels, side, side), **captions.example(CAPTION),
               "caption": CAPTION, "path": "synthetic"}
    if model.family.size_conditioning:  # sizes of an image trained uncropped at its own size
        example.update({"original_size": torch.full((2,), float(resolution)), "crop_top_left": torch.zeros(2),
                        "target_size": torch.full((2,), float(resolution))})
    items = collate_examples([example] * batch)
    items["latents"] = torch.randn(items["latents"].shape, generator=generator)
    if pin:
        items = {key: value.pin_memory() if hasattr(value, "pin_memory") else value for key, value in items.items()}
    return items


def run_matrix(args, on_row=lambda row: None) -> dict:
    import torch

    from engine.network.lora import LoraNetwork
    from engine.train.optimizers import make_lr_scheduler, make_optimizer, optimizer_kernel
    from engine.train.step import TrainStep, apply_speed_settings
    from engine.train.loop import WEIGHT_DTYPES, make_accelerator
    from engine.plan.vram import estimate_vram

    cuda = torch.cuda.is_available()
    quick = args.quick or not cuda
    precision = args.precision if cuda else "no"
    results, flops = [], {}
    for rank, fp8 in ((rank, fp8) for rank in args.ranks for fp8 in _switch(args.fp8)):
        for text_encoder in _switch(args.text_encoder):
            for checkpointing in _switch(args.checkpointing):
                first = bench_config(rank=rank, text_encoder=text_encoder, checkpointing=checkpointing,
                                     precision=precision, compile_unet=args.compile, batch=args.batches[0],
                                     resolution=args.resolutions[0], fp8=fp8)
                accelerator = make_accelerator(first)
                device = accelerator.device
                model = build_model(quick, device, WEIGHT_DTYPES[accelerator.mixed_precision], first)
                network = LoraNetwork.attach(model.family, model, rank=rank, alpha=float(rank),
                                             train_text_encoder=text_encoder)
                apply_speed_settings(model, first, device, text_encoder)
                optimizer = make_optimizer(first, network.param_groups(
                    {"unet": 1e-4, "text_encoder": 1e-5, "text_encoder_2": 1e-5}), device)
                kernel = optimizer_kernel(optimizer)
                step = TrainStep.prepare(accelerator, model, network, optimizer,
                                         make_lr_scheduler(first, optimizer, 10**6), first,
                                         train_text_encoder=text_encoder, text_encoder_active=text_encoder)
                for resolution in args.resolutions:
                    key = (resolution, rank)
                    if key not in flops:
                        flops[key] = flops_per_image(quick, resolution, rank)
                    for batch in args.batches:
                        config = bench_config(rank=rank, text_encoder=text_encoder, checkpointing=checkpointing,
                                              precision=precision, compile_unet=args.compile, batch=batch,
                                              resolution=resolution, fp8=fp8)
                        # the estimate is for the real family; the tiny model of --quick has nothing to compare it with
                        estimate = None if quick else round(estimate_vram(config).total_gb, 2)
                        row = {"resolution": resolution, "batch": batch, "rank": rank, "fp8_base": fp8,
                               "text_encoder": text_encoder,
                               "gradient_checkpointing": checkpointing, "tflop_per_image": flops[key] / 1e12,
                               "vram_estimate_gb": estimate}
                        row.update(time_steps(step, model, config, batch, resolution, text_encoder, accelerator, args,
                                              cuda))
                        if row["status"] == "ok":
                            row["mfu"] = row["images_per_s"] * flops[key] / (args.peak_tflops * 1e12)
                        results.append(row)
                        on_row(row)
                del step, optimizer, network, model
                if cuda:
                    torch.cuda.empty_cache()
    return {**describe(args), "optimizer": kernel, "results": results}


def describe(args) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        device = torch.cuda.get_device_name()
    else:
        device = f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    return {"device": device, "cuda": cuda, "model": _model_label(args.quick),
            "precision": args.precision if cuda else "no", "torch": torch.__version__,
            "peak_tflops": args.peak_tflops, "compile_unet": args.compile, "steps": args.steps, "warmup": args.warmup}


def time_steps(step, model, config, batch: int, resolution: int, text_encoder: bool, accelerator, args,
               cuda: bool) -> dict:
    import torch

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        items = synthetic_batch(model, config, batch=batch, resolution=resolution, text_encoder=text_encoder,
                                accelerator=accelerator, pin=cuda)
        generator = torch.Generator(device=accelerator.device).manual_seed(0)
        losses = [step(items, generator) for _ in range(args.warmup)]
        _synchronize(cuda)
        start = time.perf_counter()
        losses += [step(items, generator) for _ in range(args.steps)]
        _synchronize(cuda)
        elapsed = time.perf_counter() - start
        if args.profile and not getattr(args, "profiled", False):
            args.profiled = True
            profile_steps(step, items, generator, cuda, args.profile, f"{resolution}² batch {batch}")
    except torch.cuda.OutOfMemoryError:
        step.optimizer.zero_grad(set_to_none=True)
        return {"status": "out of memory", "images_per_s": None, "step_ms": None,
                "peak_vram_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
    finite = bool(torch.isfinite(torch.stack(losses)).all())  # after the timing: a host sync
    return {
        "status": "ok" if finite else "non-finite loss",
        "images_per_s": args.steps * batch / elapsed,
        "step_ms": 1000 * elapsed / args.steps,
        "peak_vram_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }


def profile_steps(step, items, generator, cuda: bool, path: str, what: str) -> None:
    """Three steps under torch.profiler: the operators by device time (or CPU time without CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as profiler:
        for _ in range(3):
            step(items, generator)
        _synchronize(cuda)
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = profiler.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=70)
    Path(path).write_text(f"3 steps, {what}, sorted by {sort}\n{table}\n")


def _synchronize(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def _switch(value: str) -> list[bool]:
    return {"both": [False, True], "on": [True], "off": [False]}[value]


def _row_text(row: dict) -> str:
    def number(key: str, width: int, spec: str, scale: float = 1.0, suffix: str = "") -> str:
        value = row.get(key)
        return (format(value * scale, spec) + suffix if value is not None else "-").rjust(width)

    status = "" if row["status"] == "ok" else f"  {row['status']}"
    yes_no = lambda flag: "yes" if flag else "no"  # noqa: E731
    return (f"{row['resolution']:>5} {row['batch']:>5} {row['rank']:>4} {yes_no(row['text_encoder']):>4} "
            f"{yes_no(row['gradient_checkpointing']):>5} {number('images_per_s', 10, '.2f')} "
            f"{number('step_ms', 9, '.1f')} {number('peak_vram_gb', 8, '.2f')} {number('vram_estimate_gb', 8, '.2f')} "
            f"{number('tflop_per_image', 9, '.3g')} {number('mfu', 8, '.2f', 100, '%')} "
            f"{yes_no(row.get('fp8_base')):>4}{status}")


HEADER = (f"{'res':>5} {'batch':>5} {'rank':>4} {'TE':>4} {'ckpt':>5} {'images/s':>10} {'step ms':>9} "
          f"{'peak GB':>8} {'est GB':>8} {'TFLOP/img':>9} {'bf16 pk':>8} {'fp8':>4}")


def print_banner(report: dict) -> None:
    print(f"{report['device']}; torch {report['torch']}; {report['model']} model; precision {report['precision']}; "
          f"U-Net {'compiled' if report['compile_unet'] else 'eager'}; {report['warmup']} warm-up + "
          f"{report['steps']} timed steps; bf16 peak {report['peak_tflops']:g} TFLOP/s", flush=True)
    print(HEADER, flush=True)


# --------------------------------------------------------------------------- the loader


def run_loader(args) -> dict:
    """Decode + resize + tensor throughput of the trainer's loader on photo-sized JPEGs (what
    each step needs when latents cannot be cached: colour augmentation or random crop)."""
    import tempfile

    import numpy as np
    import torch
    from PIL import Image

    from engine.dataset.buckets import BucketAssigner, BucketRules
    from engine.config.schema import config_from_dict
    from engine.dataset.folders import ImageItem
    from engine.model.text_conditioning import CaptionTokens
    from engine.model.tiny import make_tiny_pipeline
    from engine.train.data import EpochBatchSampler, ExampleRules, TrainingImages, make_loader

    resolution, batch, count = args.resolutions[0], args.batches[-1], args.images
    captions = CaptionTokens([make_tiny_pipeline().tokenizer], max_token_length=75, weighted=False)
    config = config_from_dict({"model": {"pretrained_model": str(ASSETS)}, "dataset": {"resolution": str(resolution)},
                               "augmentation": {"flip": True, "color": True}, "training": {"batch_size": batch}})
    bucket = BucketAssigner(BucketRules.from_config(config)).bucket_for(1024, 768)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        items = []
        rng = np.random.default_rng(0)
        for index in range(count):
            path = Path(folder) / f"{index:05d}.jpg"
            coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
            coarse.resize((1024, 768), Image.Resampling.BICUBIC).save(path, quality=90)
            items.append(ImageItem(path=path, caption="a photo of a dog, outdoors", caption_path=None, width=1024,
                                   height=768, repeats=1, folder="1_dog", class_tokens="dog", bucket=bucket))
        images = TrainingImages(items, ExampleRules.from_config(config), captions)
        for workers in args.workers:
            sampler = EpochBatchSampler(items, batch, seed=0)
            loader = make_loader(images, sampler, workers=workers, pin_memory=torch.cuda.is_available())
            start, seen = time.perf_counter(), 0
            for epoch in range(2):  # the second epoch shows the persistent workers' steady state
                sampler.set_epoch(epoch)
                if epoch == 1:
                    start, seen = time.perf_counter(), 0
                for batch_items in loader:
                    seen += batch_items["count"]
            rows.append({"workers": workers, "images_per_s": seen / (time.perf_counter() - start)})
            print(f"{workers:>3} workers: {rows[-1]['images_per_s']:8.1f} images/s", file=sys.stderr, flush=True)
            del loader
    return {"cpu_count": os.cpu_count(), "bucket": list(items[0].bucket), "batch": batch, "images": count,
            "source": "1024x768 JPEG", "results": rows}


# --------------------------------------------------------------------------- the memory model


def _meta_unet_step(resolution: int, batch: int, rank: int, quick: bool = False, dtype=None):
    """The LoRA'd U-Net of the family on the meta device, and its step's (prediction, target)."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    from engine.model.families import family_named
    from engine.network.lora import LoraNetwork

    dtype = dtype or torch.bfloat16
    unet = _meta_unet(quick).to(dtype)
    LoraNetwork.attach(family_named(FAMILY), {"unet": unet}, rank=rank, alpha=rank, train_text_encoder=False)
    unet.set_attn_processor(AttnProcessor2_0())
    side = resolution // 8
    latents = torch.empty(batch, 4, side, side, device="meta", dtype=torch.float32 if dtype == torch.bfloat16 else dtype)
    states = torch.empty(batch, 77, unet.config.cross_attention_dim, device="meta", dtype=dtype)
    extras = unet_conditioning_extras(unet, batch, "meta", dtype)
    timesteps = torch.zeros(batch, dtype=torch.long, device="meta")
    return unet, lambda: (unet(latents, timesteps, states, **extras).sample, latents)


FLUX_TEXT_TOKENS = 512  # t5xxl_max_token_length of Flux.1 [dev]


def _meta_flux_step(resolution: int, batch: int, rank: int, quick: bool = False, dtype=None):
    """FLUX.1 [dev]'s transformer with the family's LoRA on the meta device, on packed latents
    with cached T5 states (512 tokens) and CLIP's pooled output, and its step's (prediction, target)."""
    import torch
    from diffusers import FluxTransformer2DModel

    from engine.config.network_types import NetworkSpec
    from engine.model.families.flux import latents as flux_latents
    from engine.model.families.flux import network as flux_network

    if quick:
        from engine.model.tiny import make_tiny_pipeline

        config = dict(make_tiny_pipeline(FAMILY).transformer.config)
    else:
        config = json.loads((_assets() / "transformer" / "config.json").read_text())
    dtype = dtype or torch.bfloat16
    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(config).to(dtype)
    flux_network.inject(transformer, NetworkSpec(rank=rank, alpha=float(rank), train_text_encoder=False))
    side = resolution // 16  # packed: 2x2 patches of the 8x-downsampled latent
    tokens = side * side
    meta = dict(device="meta")
    packed = torch.empty(batch, tokens, config["in_channels"], **meta)
    states = torch.empty(batch, FLUX_TEXT_TOKENS, config["joint_attention_dim"], dtype=dtype, **meta)
    pooled = torch.empty(batch, config["pooled_projection_dim"], dtype=dtype, **meta)
    inputs = dict(hidden_states=packed, encoder_hidden_states=states, pooled_projections=pooled,
                  timestep=torch.empty(batch, **meta), guidance=torch.empty(batch, **meta),
                  img_ids=flux_latents.image_ids(2 * side, 2 * side, device="meta"),
                  txt_ids=flux_latents.text_ids(FLUX_TEXT_TOKENS, device="meta"))
    return transformer, lambda: (transformer(**inputs).sample, packed)


def memory_model(args) -> dict:
    """engine/plan/vram.py's activation constants, measured: every tensor the U-Net step allocates
    is tracked until freed, on the meta device (no memory, no GPU), under CUDA autocast's bf16
    rules, with attention kept as flash attention keeps it (q, k, v, output, log-sum-exp)."""
    import contextlib
    import functools
    import weakref

    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from torch.utils.checkpoint import checkpoint

    low = {F.conv2d, F.linear, torch.matmul, torch.bmm, torch.baddbmm, torch.mm, torch.addmm}
    high = {F.group_norm, F.layer_norm, F.softmax}

    class FlashStandIn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
            ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
            return out

        @staticmethod
        def backward(ctx, grad):
            q, k, v, _, _ = ctx.saved_tensors
            return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def cast(value, dtype):
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
            return value.to(dtype)
        if isinstance(value, (list, tuple)):
            return type(value)(cast(item, dtype) for item in value)
        return value

    class Autocast(TorchFunctionMode):  # CUDA autocast's rules for the ops SD's U-Net uses
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is F.scaled_dot_product_attention:
                qkv = [*args[:3], *(kwargs[name] for name in ("query", "key", "value")[len(args[:3]):])]
                return FlashStandIn.apply(*cast(qkv, torch.bfloat16))
            if func in low:
                return func(*cast(args, torch.bfloat16), **kwargs)
            if func in high:
                return func(*cast(args, torch.float32), **kwargs)
            return func(*args, **kwargs)

    class LiveBytes(TorchDispatchMode):  # bytes of storages created inside, until they are freed
        def __init__(self, known):
            super().__init__()
            self.known, self.refs, self.live, self.peak = known, {}, 0, 0

        def _freed(self, key, size, ref):
            self.live -= size
            self.refs.pop(key, None)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in tree_flatten(out)[0]:
                if isinstance(tensor, torch.Tensor):
                    storage = tensor.untyped_storage()
                    key = storage._cdata
                    if key in self.refs or key in self.known:
                        continue
                    size = storage.nbytes()
                    self.live += size
                    self.peak = max(self.peak, self.live)
                    self.refs[key] = weakref.ref(storage, functools.partial(self._freed, key, size))
            return out

    def peak_gib(resolution: int, batch: int, checkpointing: bool, rank: int) -> float:
        model, run = (_meta_flux_step if FAMILY == "flux" else _meta_unet_step)(resolution, batch, rank)
        if checkpointing:  # recomputation must run under the same autocast rules
            model.enable_gradient_checkpointing(functools.partial(
                checkpoint, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), Autocast())))
        model.train()
        known = {p.untyped_storage()._cdata for p in [*model.parameters(), *model.buffers()]}
        tracker = LiveBytes(known)
        with tracker, Autocast():
            prediction, target = run()
            F.mse_loss(prediction.float(), target).backward()
        return tracker.peak / 2**30

    rows = []
    for checkpointing in (False, True):
        for resolution in args.resolutions:
            for rank in args.ranks or [16]:
                batch = args.batches[-1]
                peak = peak_gib(resolution, batch, checkpointing, rank)
                per_image = peak / batch / (resolution**2 / 512**2)
                rows.append({"resolution": resolution, "batch": batch, "gradient_checkpointing": checkpointing,
                             "rank": rank, "peak_gib": peak, "per_512_image_gib": per_image})
                print(f"{resolution:>5}² batch {batch:>2} rank {rank:>3} checkpointing {'on ' if checkpointing else 'off'}: "
                      f"peak {peak:6.2f} GiB = {per_image:.3f} GiB per 512² image (LoRA gradients included)",
                      file=sys.stderr, flush=True)
    return {"unit": "GiB", "results": rows}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    from engine.model.tiny import tiny_families

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, tiny sizes: seconds on any CPU")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--resolutions", type=int, nargs="+")
    parser.add_argument("--batches", type=int, nargs="+")
    parser.add_argument("--ranks", type=int, nargs="+")
    parser.add_argument("--text-encoder", choices=("both", "on", "off"), default="both")
    parser.add_argument("--checkpointing", choices=("both", "on", "off"), default="both")
    parser.add_argument("--fp8", choices=("both", "on", "off"), default="off",
                        help="precision.fp8_base (Flux.1: the frozen weights in fp8); --family flux: both by default")
    parser.add_argument("--precision", choices=("bf16", "fp16", "no"), default="bf16")
    parser.add_argument("--compile", action="store_true", help="torch.compile the U-Net (precision.compile_unet)")
    parser.add_argument("--steps", type=int, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, help="untimed steps first (cuDNN autotuning, allocator, compile)")
    parser.add_argument("--profile", metavar="FILE", help="write a torch.profiler table of 3 more steps of the "
                        "first configuration to FILE")
    parser.add_argument("--loader", action="store_true", help="measure the data loader instead of the step")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4, 8])
    parser.add_argument("--images", type=int, default=64, help="JPEGs for --loader")
    parser.add_argument("--memory-model", action="store_true", help="measure activation memory on the meta device")
    parser.add_argument("--family", choices=tiny_families(), default=tiny_families()[0],
                        help=f"model architecture (default {tiny_families()[0]})")
    args = parser.parse_args(argv)
    given = argv if argv is not None else sys.argv
    if args.family == "flux":  # the rows Flux users train: fp8 on and off, T5 and CLIP-L frozen and cached
        args.fp8 = args.fp8 if "--fp8" in given else "both"
        args.text_encoder = args.text_encoder if "--text-encoder" in given else "off"

    import torch

    global FAMILY
    FAMILY = args.family
    args.quick = args.quick or not torch.cuda.is_available()
    if args.memory_model:
        # at full size: the meta device needs no memory
        defaults = MEMORY_MODEL_SIZES.get(FAMILY, {"resolutions": [512, 768], "batches": [4]})
    elif args.loader:
        defaults = {"resolutions": [512], "batches": [16]}
    else:
        defaults = QUICK if args.quick else FULL_BY_FAMILY.get(FAMILY, FULL)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.memory_model:
        report = memory_model(args)
    elif args.loader:
        report = run_loader(args)
    elif args.json:  # progress on stderr, the JSON at the end
        report = run_matrix(args, on_row=lambda row: print(_row_text(row), file=sys.stderr, flush=True))
    else:  # the table, a row as each configuration finishes
        print_banner(describe(args))
        report = run_matrix(args, on_row=lambda row: print(_row_text(row), flush=True))
        print(f"optimizer steps: {report['optimizer']}")
    if args.json or args.loader or args.memory_model:
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
