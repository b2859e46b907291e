"""The plan for Flux.1 at 1024² before anything loads (a hub id): VRAM from the per-token
activation constants, fp8 storage and cached text outputs taking the encoders off the GPU;
system RAM by how the model loads; the notes for 24 GB and 16 GB cards and the OOM advice."""
from __future__ import annotations

import pytest

from engine.config.schema import config_from_dict
from engine.plan.vram import estimate_vram, out_of_memory_advice


def flux_config(**precision):
    return config_from_dict({
        "model": {"pretrained_model": "black-forest-labs/FLUX.1-dev", "family": "flux"},
        "dataset": {"resolution": "1024"},
        "network": {"rank": 16, "alpha": 16.0, "train_text_encoder": False},
        "optimizer": {"optimizer": "AdamW8bit"},
        "precision": {"mixed_precision": "bf16", "gradient_checkpointing": True, **precision},
    })


def test_vram_and_ram_at_1024():
    fp8 = estimate_vram(flux_config(fp8_base=True), ".")
    # transformer 11.9 G weights at 1 byte, VAE in bf16; (4096 + 512 tokens) x 0.000628 GiB
    assert fp8.weights_gb == pytest.approx((11_901_408_320 + 2 * 83_819_683) / 2**30, rel=1e-6)
    assert fp8.activations_gb == pytest.approx(4608 * 0.000628, rel=1e-6)
    assert 15 < fp8.total_gb < 17 and fp8.card_gb < 24
    bf16 = estimate_vram(flux_config(), ".")
    assert 26 < bf16.total_gb < 28
    # text encoders that run every step stay on the GPU: T5 in bf16 adds 8.9 GiB
    live = estimate_vram(flux_config(cache_text_encoder_outputs=False), ".")
    assert live.weights_gb - bf16.weights_gb == pytest.approx((4_762_310_656 + 123_060_480) * 2 / 2**30, rel=1e-6)
    # a hub id: from_pretrained passes the bf16 transformer through memory; a single file streams
    assert bf16.ram_gb > 22
    swapped = estimate_vram(flux_config(fp8_base=True, blocks_to_swap=20), ".")
    assert fp8.total_gb - swapped.total_gb > 3.5  # 20 of 57 blocks off the GPU


def test_notes_and_out_of_memory_advice():
    from engine.model.families import family_named

    config = flux_config()
    notes = family_named("flux").plan_notes(config)
    assert any("24 GB card" in note and "16 GB card" in note for note in notes)
    assert any(note.startswith("Flux.1: precision.fp8_base is off") for note in notes)
    advice = out_of_memory_advice(config, ".", 0)
    assert "turn on precision.fp8_base" in advice and "precision.blocks_to_swap" in advice
    assert "lower dataset.resolution (now 1024)" in advice


def test_ddpm_and_unfused_settings_are_said_in_one_line_each():
    """sd-scripts' loss settings that flow matching has no use for (noise offset, SNR weights,
    the DDPM timestep range), the huber snr schedule, the network types Flux's fused qkv
    cannot take and the max norm: one line each in the plan; the run refuses what it cannot
    train."""
    from engine.config.network_types import NetworkSpec
    from engine.errors import LoradeckError
    from engine.model.families import family_named
    from engine.model.objectives.flow_matching import FlowMatchingObjective

    flux = family_named("flux")
    assert len(flux.plan_notes(flux_config(fp8_base=True))) == 1  # the defaults: the card note alone
    config = config_from_dict({
        "model": {"pretrained_model": "black-forest-labs/FLUX.1-dev", "family": "flux"},
        "network": {"type": "ia3", "scale_weight_norms": 1.0},
        "training": {"min_timestep": 100, "debiased_estimation_loss": True, "noise_offset": 0.05,
                     "noise_offset_random_strength": True, "loss_type": "huber"},
        "precision": {"fp8_base": True},
    })
    notes = flux.plan_notes(config)
    unused = next(note for note in notes if "not used" in note)
    for name in ("training.debiased_estimation_loss", "training.noise_offset", "training.noise_offset_random_strength",
                 "training.min_timestep / max_timestep"):
        assert name in unused
    assert any(note.startswith("Flux.1: training.huber_schedule snr needs a DDPM schedule") for note in notes)
    assert flux.network_problem(NetworkSpec.of(config)).startswith("network.type: ia3 is not trained on Flux.1")
    assert any(note.startswith("Flux.1: network.scale_weight_norms: not trained on Flux.1") for note in notes)
    assert all("\n" not in note for note in notes)
    with pytest.raises(LoradeckError, match="^training.huber_schedule: snr"):
        FlowMatchingObjective(config.flux, config.training)
    exponential = config_from_dict({**{"model": {"pretrained_model": "x", "family": "flux"}},
                                    "training": {"loss_type": "huber", "huber_schedule": "exponential"}})
    FlowMatchingObjective(exponential.flux, exponential.training)  # trains
