"""fp8 storage of Flux.1's frozen weights (`fp8_base`): half the memory of bf16, bf16 compute.

    store_transformer_in_fp8(transformer, compute_dtype)
    store_t5_in_fp8(text_encoder_2, compute_dtype)
    check_network(network_type)        DoRA cannot train on fp8 weights: one line

What it does, as sd-scripts' `--fp8_base`: every Linear of the blocks keeps its weight in
float8 e4m3fn and is cast to the compute dtype for its own forward only, then back; the
LoRA's own weights stay fp32 (engine.network), and the small layers at the model's ends
(embedders, the final projection, the RMS norms) stay in the compute dtype. A Flux.1 [dev]
transformer then holds 11.9 GB instead of 23.8 GB.

Why diffusers' layerwise casting (`diffusers.hooks.apply_layerwise_casting`, on the
transformer and on transformers' T5 alike) and not torchao: it is
part of diffusers, already a dependency, and works on any device including the CPU (the
tests run it), with any input dtype; it knows peft's layers (it turns off peft's input
casting on the layers it manages), so LoRA, LoHa and LoKr train over it unchanged, and a
file that is already fp8 e4m3fn is taken as it is (no cast, no copy). torchao's float8
weight-only quantization needs a recent CUDA GPU for its kernels and another dependency,
and peft's LoRA over torchao layers covers int8 only. DoRA is the exception: peft's DoRA
reads the frozen weight directly (for its weight norm), outside the casting hook, and
PyTorch has no fp8 arithmetic for it.

Heavy module (torch, diffusers).
"""
from __future__ import annotations

import torch

from engine.errors import LoradeckError

STORAGE_DTYPE = torch.float8_e4m3fn
# Layers kept in the compute dtype: inputs, output, positions, and the q/k RMS norms
TRANSFORMER_KEEP = ("pos_embed", "^x_embedder$", "^context_embedder$", "^time_text_embed", "^norm_out", "^proj_out$",
                    r"\.norm_(q|k|added_q|added_k)$")
# T5's feed-forward casts its input to `wo`'s dtype before `wo` (transformers keeps `wo` out of
# 8-bit for that reason): `wo` stays in the compute dtype, 1.0 of T5's 4.7 G parameters
T5_KEEP = ("shared", "embed_tokens", "layer_norm", "relative_attention_bias", r"\.wo$")
PEFT_LAYERS = ("lora_A", "lora_B", "lora_magnitude_vector", "hada_", "lokr_")


def check_network(network_type: str) -> None:
    if network_type == "dora":
        raise LoradeckError("precision.fp8_base: DoRA reads the frozen weights directly for its weight norm, which "
                            "fp8 storage cannot give it; use lora, loha or lokr with fp8_base, or turn fp8_base off")


def _cast_unmanaged(model: torch.nn.Module, compute_dtype: torch.dtype) -> None:
    """Weights outside the casting hooks go to the compute dtype (an all-fp8 file has its
    norms and embedders in fp8 too)."""
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry.get_hook("layerwise_casting") is not None:
            continue
        for name, parameter in module.named_parameters(recurse=False):
            if parameter.dtype != compute_dtype:
                parameter.data = parameter.data.to(compute_dtype)
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point() and buffer.dtype != compute_dtype:
                setattr(module, name, buffer.to(compute_dtype))


def _store(model: torch.nn.Module, compute_dtype: torch.dtype, keep: tuple[str, ...]) -> None:
    from diffusers.hooks import apply_layerwise_casting

    # diffusers' own entry point (ModelMixin.enable_layerwise_casting) adds the model's
    # "norm" pattern, which would keep every block's modulation Linear (a quarter of Flux's
    # weights) out of fp8; the adapters' layers are kept out whenever they already exist
    apply_layerwise_casting(model, storage_dtype=STORAGE_DTYPE, compute_dtype=compute_dtype,
                            skip_modules_pattern=keep + PEFT_LAYERS)
    _cast_unmanaged(model, compute_dtype)


def store_transformer_in_fp8(transformer, compute_dtype: torch.dtype) -> None:
    _store(transformer, compute_dtype, TRANSFORMER_KEEP)


def store_t5_in_fp8(text_encoder, compute_dtype: torch.dtype) -> None:
    _store(text_encoder, compute_dtype, T5_KEEP)


def bfl_dtypes(compute_dtype: torch.dtype):
    """Each BFL transformer key's dtype under fp8_base, for loading a bf16 file straight into
    fp8 (engine.model.families.flux.single_files.read_tensors): every weight and bias of the
    blocks but the q/k norm scales in fp8, the rest in the compute dtype."""
    def dtype_of(key: str) -> torch.dtype:
        key = key.removeprefix("model.diffusion_model.")
        in_blocks = key.startswith(("double_blocks.", "single_blocks."))
        return STORAGE_DTYPE if in_blocks and not key.endswith(".scale") else compute_dtype
    return dtype_of


def fp8_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weights held in fp8 (tests and the plan's check)."""
    return sum(p.numel() for p in model.parameters() if p.dtype == STORAGE_DTYPE)
