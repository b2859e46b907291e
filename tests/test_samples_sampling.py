"""TrainingSampler on the tiny model, CPU: files, metadata, events, untouched training state,
and the same image diffusers makes from the saved LoRA file."""
from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

from engine.config.schema import SAMPLERS, TrainConfig, replace_setting
from engine.run.events import EventWriter, read_events
from engine.network.lora import LoraNetwork, save_lora_file
from engine.model.loading import load_base_model
from engine.config.prompts import SamplePrompt
from engine.run.folder import RunDir
from engine.model.text_conditioning import encode_prompts
from engine.model.unet_models import make_scheduler
from engine.sampling.sampler import TrainingSampler, a1111_parameters, inference_mode_for


def load_model(tiny_model_dir, *, lora_seed: int = 1):
    """The base model as the trainer loads it, with a LoRA whose weights are far from zero."""
    model = load_base_model(make_config(tiny_model_dir), tiny_model_dir, device="cpu", dtype=torch.float32)
    network = LoraNetwork.attach(model.family, model, rank=4, alpha=4.0)
    generator = torch.Generator().manual_seed(lora_seed)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    model.unet.train()
    model.text_encoder.train()
    return model, network


def make_config(tiny_model_dir, **settings) -> TrainConfig:
    config = replace_setting(TrainConfig(), "model.pretrained_model", str(tiny_model_dir))
    config = replace_setting(config, "saving.output_name", "tiny-lora")
    for key, value in settings.items():
        config = replace_setting(config, key.replace("__", "."), value)
    return config


def make_sampler(tmp_path, tiny_model_dir, model, **settings):
    run = RunDir(tmp_path / "run")
    run.create()
    events = EventWriter(run.path, fsync=False)
    config = make_config(tiny_model_dir, **settings)
    return TrainingSampler(run, config, tmp_path, model, events, "cpu", torch.float32), run


def rng_draws() -> tuple:
    return torch.rand(3).tolist(), random.random(), float(np.random.rand())


def test_samples_files_metadata_events_and_training_state(tmp_path, tiny_model_dir):
    model, _ = load_model(tiny_model_dir)
    model.vae.eval()  # a trainer keeps the frozen VAE in eval mode: it must stay so
    prompts = "# two prompts\na cat --w 64 --h 96 --s 2 --d 11 --n ugly, blurry --l 5\na dog --w 72 --h 64 --s 3 --ss dpm++_2m_karras --cn x\n"
    sampler, run = make_sampler(tmp_path, tiny_model_dir, model, sampling__prompts=prompts, model__clip_skip=2)

    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    expected = rng_draws()
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    paths = sampler.sample(epoch=3, step=120)
    assert rng_draws() == expected  # sampling drew from its own generators only
    assert model.unet.training and model.text_encoder.training and not model.vae.training
    assert all(sub.training for sub in model.unet.modules())

    assert [p.name for p in paths] == ["e0003-s000120-p00.png", "e0003-s000120-p01.png"]
    assert all(p.parent == run.samples for p in paths)
    first, second = Image.open(paths[0]), Image.open(paths[1])
    assert first.size == (64, 96) and second.size == (72, 64)
    assert first.text["parameters"] == (
        "a cat\nNegative prompt: ugly, blurry\n"
        "Steps: 2, Sampler: Euler a, CFG scale: 5, Seed: 11, Size: 64x96, Model: tiny-sd15, "
        "Clip skip: 2, RNG: CPU, Lora: tiny-lora, Epoch: 3, Step: 120"
    )
    lines = second.text["parameters"].split("\n")
    assert lines[0] == "a dog" and lines[1].startswith("Steps: 3, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: ")
    assert not list(run.samples.glob(".*.tmp"))  # written atomically, nothing left over

    events = list(read_events(run.events))
    warnings = [e for e in events if e["type"] == "warning"]
    assert len(warnings) == 1 and "unknown flag --cn" in warnings[0]["message"]
    samples = [e for e in events if e["type"] == "sample"]
    assert samples[0] | {"v": 0, "seq": 0, "time": 0} == {
        "v": 0, "seq": 0, "time": 0, "type": "sample",
        "path": "samples/e0003-s000120-p00.png", "epoch": 3, "step": 120, "prompt_index": 0,
        "prompt": "a cat", "negative_prompt": "ugly, blurry", "seed": 11, "width": 64, "height": 96,
        "steps": 2, "cfg": 5.0, "sampler": "euler_a",
    }
    assert samples[1]["sampler"] == "dpm++_2m_karras" and (samples[1]["width"], samples[1]["height"]) == (72, 64)
    assert f"Seed: {samples[1]['seed']}," in second.text["parameters"]  # the random seed is written down


def test_every_sampler_renders(tmp_path, tiny_model_dir):
    model, _ = load_model(tiny_model_dir)
    prompts = "\n".join(f"a cat --w 64 --h 64 --s 3 --d 5 --ss {name}" for name in SAMPLERS)
    sampler, _ = make_sampler(tmp_path, tiny_model_dir, model, sampling__prompts=prompts)
    paths = sampler.sample(1, 1)
    arrays = [np.asarray(Image.open(p)) for p in paths]
    assert len(arrays) == len(SAMPLERS)
    assert all(a.shape == (64, 64, 3) for a in arrays)
    # different samplers walk different paths from the same noise
    assert len({a.tobytes() for a in arrays}) == len(SAMPLERS)


def test_unseeded_prompt_keeps_its_seed_and_file_is_reread(tmp_path, tiny_model_dir):
    model, _ = load_model(tiny_model_dir)
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("a cat --w 64 --h 64 --s 2\n", encoding="utf-8")
    sampler, run = make_sampler(tmp_path, tiny_model_dir, model, sampling__prompts_file="prompts.txt")
    sampler.sample(1, 10)
    prompts_file.write_text("a cat --w 64 --h 64 --s 2\na dog --w 64 --h 64 --s 2 --d 4 --zz 1\n", encoding="utf-8")
    sampler.sample(2, 20)
    sampler.sample(3, 30)
    prompts_file.unlink()
    assert sampler.sample(4, 40) == []

    events = list(read_events(run.events))
    samples = [e for e in events if e["type"] == "sample"]
    assert [(e["epoch"], e["prompt_index"]) for e in samples] == [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1)]
    cat_seeds = {e["seed"] for e in samples if e["prompt"] == "a cat"}
    assert len(cat_seeds) == 1  # comparable from epoch to epoch
    # the same weights and seed give the same image at every sampling point
    assert (run.samples / "e0001-s000010-p00.png").read_bytes() != b""
    assert np.array_equal(
        np.asarray(Image.open(run.samples / "e0001-s000010-p00.png")),
        np.asarray(Image.open(run.samples / "e0003-s000030-p00.png")),
    )
    warnings = [e["message"] for e in events if e["type"] == "warning"]
    assert len(warnings) == 2  # each problem reported once, not at every sampling point
    assert "unknown flag --zz" in warnings[0]
    assert "prompts file not found" in warnings[1]


def test_sample_matches_diffusers_loading_the_saved_lora(tmp_path, tiny_model_dir):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    model, network = load_model(tiny_model_dir, lora_seed=7)
    prompt = "a photo of a red house --n blurry --w 64 --h 64 --s 4 --l 6 --d 1234 --ss euler_a"
    sampler, run = make_sampler(tmp_path, tiny_model_dir, model, sampling__prompts=prompt)
    ours = np.asarray(Image.open(sampler.sample(1, 8)[0]), dtype=np.float32)

    lora_file = tmp_path / "tiny-lora.safetensors"
    save_lora_file(lora_file, network.state_dict(torch.float32))
    fresh = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    fresh.scheduler = EulerAncestralDiscreteScheduler.from_config(fresh.scheduler.config)
    fresh.set_progress_bar_config(disable=True)
    base = fresh(
        "a photo of a red house", negative_prompt="blurry", width=64, height=64, num_inference_steps=4,
        guidance_scale=6, generator=torch.Generator().manual_seed(1234), output_type="np",
    ).images[0]
    fresh.load_lora_weights(str(lora_file))
    theirs = fresh(
        "a photo of a red house", negative_prompt="blurry", width=64, height=64, num_inference_steps=4,
        guidance_scale=6, generator=torch.Generator().manual_seed(1234), output_type="np",
    ).images[0]
    theirs, base = theirs * 255, base * 255
    assert np.abs(ours - theirs).max() <= 1.0  # 8-bit PNG rounding only
    assert np.abs(ours - base).mean() > 5 * np.abs(ours - theirs).mean() + 1.0  # the LoRA shows


def test_clip_skip_changes_the_text_embedding(tmp_path, tiny_model_dir):
    model, _ = load_model(tiny_model_dir)
    images = []
    for clip_skip in (1, 2):
        sampler, _ = make_sampler(
            tmp_path / str(clip_skip), tiny_model_dir, model, sampling__prompts="a cat --w 64 --h 64 --s 2 --d 3",
            model__clip_skip=clip_skip,
        )
        images.append(np.asarray(Image.open(sampler.sample(1, 1)[0])))
    assert not np.array_equal(images[0], images[1])


def test_schedulers_keep_the_model_schedule(tiny_model_dir):
    from diffusers import DDPMScheduler

    base = DDPMScheduler.from_pretrained(tiny_model_dir, subfolder="scheduler").config
    for name in SAMPLERS:
        scheduler = make_scheduler(name, base)
        assert scheduler.config.beta_schedule == "scaled_linear"
        assert scheduler.config.num_train_timesteps == 1000
    assert make_scheduler("dpm++_2m_karras", base).config.use_karras_sigmas
    assert not make_scheduler("dpm++_2m", base).config.use_karras_sigmas
    assert not make_scheduler("ddim", base).config.clip_sample
    assert make_scheduler("euler", base, v_prediction=True).config.prediction_type == "v_prediction"


def test_a1111_parameters_quote_values_with_commas():
    prompt = SamplePrompt(prompt="a cat", seed=1, width=512, height=768)
    text = a1111_parameters(prompt, model_name="my, model", Lora="x")
    assert text == (
        'a cat\nSteps: 30, Sampler: Euler a, CFG scale: 7.5, Seed: 1, Size: 512x768, Model: "my, model", RNG: CPU, Lora: x'
    )


def test_prompt_encoding_plain_long_and_weighted(tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    positive, negative = encode_prompts(pipeline, "a photo of a cat", "blurry")
    theirs, their_negative = pipeline.encode_prompt("a photo of a cat", "cpu", 1, True, "blurry")
    # another code path (diffusers' own encoder call): equal up to float op order
    torch.testing.assert_close(positive, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(negative, their_negative, rtol=1e-5, atol=1e-5)

    long_prompt = ", ".join(["red house"] * 40)  # over 75 tokens: two windows, as A1111 and sd-scripts
    positive, negative = encode_prompts(pipeline, long_prompt, "blurry")
    assert positive.shape == negative.shape == (1, 2 + 2 * 75, 32)

    weighted, _ = encode_prompts(pipeline, "a photo of a (cat:1.4)", "")
    plain, _ = encode_prompts(pipeline, "a photo of a cat", "")
    assert weighted.shape == plain.shape and not torch.allclose(weighted, plain)


def test_inference_mode_restores_every_rng_and_train_flag():
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    module.train()
    module[1].train(False)  # a part the trainer keeps in eval mode on purpose
    torch.manual_seed(9), random.seed(9), np.random.seed(9)
    expected = rng_draws()
    torch.manual_seed(9), random.seed(9), np.random.seed(9)
    with inference_mode_for([module], torch.device("cpu")):
        assert not any(sub.training for sub in module.modules())
        rng_draws(), rng_draws()  # whatever sampling draws from the global generators
    assert rng_draws() == expected
    assert module.training and module[0].training and not module[1].training
