"""Our LoRA files load in diffusers' `load_lora_weights` with no key left over (a trained one
for every family), and change the pipeline's output exactly as the LoRA did inside the trainer."""
from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch

from engine.network.lora import (
    ADAPTER_NAME,
    LoraNetwork,
    attach_lora_file,
    lora_layers,
    network_shape,
    read_lora_file,
    save_lora_file,
)
from engine.train.loop import train
from tests.conftest import TINY_FAMILIES


def render(pipeline) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipeline("sks dog, red", num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=generator).images[0]


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def load_in_diffusers(pipeline, path) -> list[str]:
    """Load with diffusers; every warning it logs or raises (leftover or missing keys).

    diffusers' Kohya Flux converter splits a single block's fused `linear1` at Flux.1's full
    widths (3072, ..., 12288), so on the tiny Flux those keys are left out here; the full-size
    layout, linear1 included, is checked in tests/test_flux_lora.py."""
    if type(pipeline).__name__ == "FluxPipeline":
        from safetensors.torch import load_file

        path = {key: value for key, value in load_file(str(path)).items() if "_linear1." not in key}
    handler = _Collect()
    loggers = [logging.getLogger(name) for name in ("diffusers", "peft", "transformers")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipeline.load_lora_weights(path if isinstance(path, dict) else str(path))  # raises on keys it cannot rename
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    return handler.messages + [str(w.message) for w in caught if "key" in str(w.message).lower()]


def randomized_network(pipeline, family=None, **kwargs) -> LoraNetwork:
    """A LoRA far from zero on a pipeline of `family` (default: SD 1.x's, pipeline_factory's)."""
    from engine.model.families import family_named

    network = LoraNetwork.attach(family or family_named(TINY_FAMILIES[0]), pipeline, rank=4, alpha=2.0, **kwargs)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return network


@pytest.mark.parametrize("train_text_encoder", [True, False])
def test_saved_file_loads_in_diffusers_and_matches(tmp_path, pipeline_factory, train_text_encoder):
    ours = pipeline_factory()
    network = randomized_network(ours, train_text_encoder=train_text_encoder)
    path = tmp_path / "lora.safetensors"
    save_lora_file(path, network.state_dict(torch.float32), {"ss_network_dim": "4"})

    tensors, metadata = read_lora_file(path)
    assert metadata == {"ss_network_dim": "4"}
    assert network_shape(tensors) == (4, 2.0, True, train_text_encoder)
    assert all(key.startswith(("lora_unet_", "lora_te_text_model_")) for key in tensors)
    assert all(key.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for key in tensors)
    assert tensors["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].shape == (4, 32, 1, 1)
    assert float(tensors["lora_unet_down_blocks_0_attentions_0_proj_in.alpha"]) == 2.0

    fresh = pipeline_factory()
    base = render(fresh)
    messages = load_in_diffusers(fresh, path)
    if not train_text_encoder:  # diffusers notes a U-Net-only file; nothing is wrong
        messages = [m for m in messages if not m.startswith("No LoRA keys associated to CLIPTextModel")]
    assert messages == []
    assert len(list(lora_layers_of_any_adapter(fresh.unet))) == len(list(lora_layers(ours.unet)))
    loaded = render(fresh)
    assert np.abs(loaded - base).max() > 1e-3  # the LoRA does something
    np.testing.assert_allclose(loaded, render(ours), atol=1e-5)  # and the same as in training


def lora_layers_of_any_adapter(model):
    from peft.tuners.lora import LoraLayer

    return (module for module in model.modules() if isinstance(module, LoraLayer) and module.lora_A)


def test_fp16_file_and_round_trip(tmp_path, pipeline_factory):
    ours = pipeline_factory()
    network = randomized_network(ours)
    path = tmp_path / "half.safetensors"
    save_lora_file(path, network.state_dict(torch.float16))
    assert all(t.dtype == torch.float16 for t in read_lora_file(path)[0].values())
    fresh = pipeline_factory()
    assert load_in_diffusers(fresh, path) == []

    # our own loader (resume, grid) puts the same numbers back
    again = pipeline_factory()
    loaded = attach_lora_file(network.family, again, path)
    for (name, layer), (_, original) in zip(lora_layers(again.unet), lora_layers(ours.unet)):
        torch.testing.assert_close(layer.lora_A[ADAPTER_NAME].weight,
                                   original.lora_A[ADAPTER_NAME].weight.half().float(), msg=name)
    assert loaded.rank == 4 and loaded.alpha == 2.0


def test_trained_checkpoint_loads_in_diffusers(tmp_path, tiny_dataset, family_run, family_pipelines, capsys):
    """Trained with cached text-encoder outputs and latents (the family's text cache), saved
    in fp16, read by diffusers' own loader for the family's pipeline."""
    run = family_run(tiny_dataset, "interop", training={"epochs": 1}, optimizer={"learning_rate": 5e-3},
                     network={"train_text_encoder": False},
                     precision={"save_precision": "fp16", "cache_text_encoder_outputs": True,
                                "cache_latents": "memory"})
    assert train(run.path) == 0
    assert "cached the text encoder's outputs for 4 captions" in capsys.readouterr().out
    fresh = family_pipelines()
    base = render(fresh)
    messages = load_in_diffusers(fresh, run.checkpoints / "interop.safetensors")
    # diffusers notes a U-Net-only file; nothing is wrong
    assert [m for m in messages if not m.startswith("No LoRA keys associated to CLIPTextModel")] == []
    assert np.abs(render(fresh) - base).max() > 0
