"""How much GPU memory a config needs, before it runs, and what to change when it runs out.

    estimate_vram(config, base_dir) -> VramEstimate      .total_gb, .card_gb, .summary()
    out_of_memory_advice(config, run_dir, step) -> str    the one-line error for a CUDA OOM

The peak of a LoRA step is the frozen weights, the LoRA's fp32 weights with their
gradients and optimizer state, and the larger of two transients: the activations the
backward pass needs, or the VAE encoding a batch (when latents are not cached, and while
they are being cached). In GiB (2^30 bytes):

    weights      parameters × bytes of the compute precision (the VAE stays fp32 under fp16 unless
                 the family says otherwise); counted from a local diffusers folder's safetensors
                 headers, else the family's released model's
    LoRA         LoRA parameters × (4 weight + 4 gradient + optimizer state bytes), plus for
                 LoHa / LoKr every adapted layer's rebuilt ΔW in the compute precision
    activations  batch × (width × height / 512²) × (ACTIVATIONS_PER_IMAGE + rank × PER_RANK)
                 (rank: lora, locon and dora; LoHa and LoKr have no rank intermediate)
                 + the family's text-encoder activations per 75-token window when they train
                 (fp32: × 2)
    total        (weights + LoRA + max(activations, VAE encoding)) × (1 + WORKSPACE)
    card         total + CUDA_CONTEXT: what nvidia-smi shows at the peak, about
    RAM          the family's rule for system memory while the model loads (by default its
                 frozen weights in the compute precision: each part passes through RAM once);
                 not measured yet, a floor rather than a peak

Activation constants were measured on SD1.5's real architecture: every tensor the step
allocates was tracked until freed (a TorchDispatchMode on the meta device, so no memory
and no GPU) while the U-Net ran forward and backward under CUDA autocast's bf16 rules
with a flash-attention stand-in that keeps what the real kernel keeps (q, k, v, output,
log-sum-exp). `python bench/train_speed.py --memory-model` repeats the measurement.
They scale with the pixels (flash attention is linear in tokens): 512² and 768² agree
within 1%. Each family holds its own constants (engine.model.families.<name>: SDXL's were
measured the same way on its architecture) and scales them for a model of another width
(the tiny test models: the U-Net's first block channels over SD's 320 and each text
encoder's width over 768, a rough rule; every released SD model has exactly those widths). `bench/train_speed.py` prints its measured peak
(`max_memory_allocated`) next to this estimate: that is how the constants get checked on
a GPU (not yet done: see docs/speed.md).

Light module: no torch import.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.model.families import config_family
from engine.plan.model_shapes import frozen_parameters, lora_parameter_count, model_shapes, rebuilt_weights_of

GIB = 2**30

BYTES = {"no": 4, "fp16": 2, "bf16": 2}

# GiB per 512×512 image at bf16/fp16 (measured, see above); fp32 activations are twice as large
ACTIVATIONS_PER_RANK = 0.0003  # the LoRA's own intermediate (x · down) per rank

# Optimizer state in bytes per LoRA parameter (fp32 unless the optimizer says otherwise)
OPTIMIZER_STATE_BYTES = {"AdamW": 8, "AdamW8bit": 2, "Adafactor": 1, "Prodigy": 16, "Lion": 4, "SGD": 4}

WORKSPACE = 0.05  # cuDNN and attention workspaces, allocated through PyTorch's allocator
CUDA_CONTEXT = 0.7  # CUDA context plus the allocator's cached-but-free blocks, not in max_memory_allocated


@dataclass(frozen=True)
class VramEstimate:
    weights_gb: float
    lora_gb: float
    activations_gb: float
    vae_encode_gb: float
    total_gb: float  # comparable to torch.cuda.max_memory_allocated()
    card_gb: float  # a card needs at least this much memory
    ram_gb: float = 0.0  # system memory the model passes through while it loads (the family's rule)

    def as_json(self) -> dict[str, float]:
        return {key: round(value, 3) for key, value in asdict(self).items()}

    def summary(self) -> str:
        return (f"about {_gib(self.total_gb)} GiB at the peak (weights {_gib(self.weights_gb)}, LoRA and optimizer "
                f"{_gib(self.lora_gb)}, activations {_gib(max(self.activations_gb, self.vae_encode_gb))}); "
                f"needs a GPU with {math.ceil(self.card_gb)} GB or more")


def _gib(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def largest_image(config) -> tuple[int, int]:
    """Width and height of the largest bucket the config allows (buckets keep the area)."""
    from engine.config.schema import parse_resolution

    return parse_resolution(config.dataset.resolution)


def estimate_vram(config, base_dir: str | Path | None = None, *, width: int | None = None,
                  height: int | None = None, batch_size: int | None = None,
                  lora_parameters: int | None = None) -> VramEstimate:
    """Peak GPU memory of a training step for `config` (its largest image unless given).

    `lora_parameters` saves counting them again when the caller (the plan) already has.
    """
    precision = config.precision.mixed_precision
    family = config_family(config, base_dir or ".")
    counts = frozen_parameters(config, base_dir)
    shapes = model_shapes(config, base_dir or ".")
    channels = family.activation_scale(shapes)  # 1 for every released model; less for the tiny test models
    weight_bytes = BYTES[precision]
    in_fp32 = family.fp32_under_fp16(config) if precision == "fp16" else ()  # parts that overflow in fp16
    weights = family.resident_weights(config, counts, weight_bytes, in_fp32)

    if lora_parameters is None:
        lora_parameters, _ = lora_parameter_count(config, base_dir or ".")
    state_bytes = OPTIMIZER_STATE_BYTES.get(config.optimizer.optimizer, 8)
    lora = lora_parameters * (4 + 4 + state_bytes)
    # LoHa / LoKr keep each layer's rebuilt ΔW for the backward, in the compute precision
    lora += rebuilt_weights_of(config, base_dir or ".") * weight_bytes

    if width is None or height is None:
        width, height = largest_image(config)
    batch = batch_size or config.training.batch_size
    images = batch * width * height / 512**2
    scale = 2.0 if precision == "no" else 1.0
    checkpointing = config.precision.gradient_checkpointing
    activations = family.step_activations(config, shapes, width=width, height=height, batch=batch)
    if activations is None:
        per_image = family.activations_per_image[checkpointing]
        # the `x · down` intermediate exists for the types that run through the rank
        rank = config.network.rank if config.network.type in ("lora", "locon", "dora") else 0
        activations = images * channels * (per_image + rank * ACTIVATIONS_PER_RANK)
    trains_text_encoder = (config.network.train_text_encoder and config.text_encoder_learning_rate > 0)
    if trains_text_encoder:
        activations += batch * family.text_encoder_activations(shapes, config.captions.max_token_length // 75)
    activations *= scale * GIB
    # also while latents are being cached
    vae_encode = images * channels * family.vae_encode_per_image * scale * GIB

    total = (weights + lora + max(activations, vae_encode)) * (1 + WORKSPACE) / GIB
    return VramEstimate(
        weights_gb=weights / GIB, lora_gb=lora / GIB, activations_gb=activations / GIB,
        vae_encode_gb=vae_encode / GIB, total_gb=total, card_gb=total + CUDA_CONTEXT,
        ram_gb=family.system_ram_bytes(counts, weight_bytes, config) / GIB,
    )


def out_of_memory_advice(config, run_dir: str | Path, step: int) -> str:
    """One line for a CUDA out-of-memory: what ran out, the estimate, and what to change."""
    estimate = estimate_vram(config, run_dir)
    family = config_family(config, run_dir)
    precision = config.precision
    changes = []
    if config.training.batch_size > 1:
        changes.append(f"lower training.batch_size (now {config.training.batch_size}; "
                       "gradient_accumulation_steps keeps the effective batch)")
    if not precision.gradient_checkpointing:
        saving = family.activations_per_image[False] / family.activations_per_image[True]
        changes.append(f"turn on precision.gradient_checkpointing (about {saving:.0f}x less activation memory, "
                       "~25% slower)")
    changes += family.memory_advice(config)
    changes.append(f"lower dataset.resolution (now {config.dataset.resolution})")
    if config.network.rank > 16:
        changes.append(f"lower network.rank (now {config.network.rank})")
    if precision.mixed_precision == "no":
        changes.append("use precision.mixed_precision = bf16 (or fp16)")
    where = f"at step {step + 1}" if step else "before the first step finished"
    return (f"out of GPU memory {where}: the estimate for this config is {_gib(estimate.total_gb)} GiB; "
            + "; ".join(changes))
