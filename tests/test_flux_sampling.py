"""Flux.1 samples: our render with sd-scripts' prompt flags gives what diffusers' FluxPipeline
gives for the same prompt, seed and guidance when called with plain strings."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.config.prompts import parse_prompts
from engine.model.families import family_named
from engine.sampling.sampler import render as sampler_render


@pytest.fixture(scope="module")
def pipeline(tiny_flux_dir):
    from diffusers import FluxPipeline

    pipeline = FluxPipeline.from_pretrained(tiny_flux_dir, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def render(pipeline, prompt, t5_max_tokens=None):
    """engine.sampling.sampler.render through Flux's runtime, as samples and the grid draw."""
    return sampler_render(pipeline, prompt, runtime=family_named("flux").runtime(),
                          base_scheduler_config=pipeline.scheduler.config)


def one(line: str):
    prompts, warnings = parse_prompts(line)
    assert not warnings
    return prompts[0]


def test_render_matches_the_pipeline(pipeline):
    prompt = one("sks dog, red --w 72 --h 64 --s 3 --d 7 --g 4.5 --n blurry")
    image = render(pipeline, prompt, t5_max_tokens=16)
    assert image.size == (64, 64)  # 72 rounded down to a multiple of 16
    expected = pipeline("sks dog, red", width=64, height=64, num_inference_steps=3, guidance_scale=4.5,
                        max_sequence_length=512, generator=torch.Generator().manual_seed(7)).images[0]
    assert np.abs(np.asarray(image, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1
    # --g changes the embedded guidance; the negative prompt is unused without --l (no true CFG)
    other = render(pipeline, one("sks dog, red --w 64 --h 64 --s 3 --d 7 --g 1.0"), t5_max_tokens=16)
    assert np.abs(np.asarray(other, dtype=int) - np.asarray(image, dtype=int)).max() > 0


def test_true_cfg_with_l_and_n(pipeline):
    prompt = one("sks dog --n blurry --l 3 --w 64 --h 64 --s 2 --d 1")
    image = render(pipeline, prompt, t5_max_tokens=16)
    expected = pipeline("sks dog", negative_prompt="blurry", true_cfg_scale=3.0, width=64, height=64,
                        num_inference_steps=2, guidance_scale=3.5, max_sequence_length=512,
                        generator=torch.Generator().manual_seed(1)).images[0]
    assert np.abs(np.asarray(image, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1
