"""The trainer's parts: base-model loading, optimizers and schedules, images and captions,
text conditioning, and runs that switch on the rarer training options."""
from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config.schema import config_from_dict
from engine.errors import LoradeckError
from engine.run.events import read_events
from engine.train.loop import train
from tests.datasets import write_caption, write_image

# --------------------------------------------------------------------------- base model


def load(base_dir, pretrained, **model):
    from engine.model.loading import load_base_model

    config = config_from_dict({"model": {"pretrained_model": str(pretrained), **model}})
    return load_base_model(config, base_dir, device="cpu", dtype=torch.float32)


def load_error(base_dir, pretrained, **model) -> str:
    with pytest.raises(LoradeckError) as caught:
        load(base_dir, pretrained, **model)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_base_model_loading_and_its_errors(tmp_path, tiny_model_dir):
    from engine.model.loading import looks_like_hub_id

    model = load(tmp_path, tiny_model_dir)
    assert model.name == "tiny-sd15" and model.source == str(tiny_model_dir)
    assert type(model.noise_scheduler).__name__ == "DDPMScheduler"
    assert model.noise_scheduler.config.prediction_type == "epsilon"
    assert not any(p.requires_grad for p in model.unet.parameters())
    assert load(tmp_path, tiny_model_dir, v_parameterization=True).noise_scheduler.config.prediction_type == "v_prediction"

    # a VAE override from a folder and from a single diffusers-layout file
    for vae in (tiny_model_dir / "vae", tiny_model_dir / "vae" / "diffusion_pytorch_model.safetensors"):
        overridden = load(tmp_path, tiny_model_dir, vae=str(vae))
        torch.testing.assert_close(overridden.vae.state_dict(), model.vae.state_dict())

    assert "does not exist" in load_error(tmp_path, tmp_path / "nowhere")
    (tmp_path / "model.ckpt").write_bytes(b"not a pickle we will ever open")
    assert "allow_ckpt" in load_error(tmp_path, tmp_path / "model.ckpt")
    (tmp_path / "empty").mkdir()
    assert "not a diffusers model folder" in load_error(tmp_path, tmp_path / "empty")
    assert "model.vae" in load_error(tmp_path, tiny_model_dir, vae=str(tmp_path / "novae.safetensors"))
    assert looks_like_hub_id("runwayml/stable-diffusion-v1-5")
    assert not looks_like_hub_id("models/sd15.safetensors") and not looks_like_hub_id("model")


# --------------------------------------------------------------------------- optimizers and schedules


def optimizer_config(**settings):
    return config_from_dict({"model": {"pretrained_model": "x"}, "optimizer": settings, "training": {"epochs": 1}})


@pytest.mark.parametrize("name, args, expected", [
    ("AdamW", "weight_decay=0.1 betas=(0.9,0.99)", "AdamW"),
    ("Adafactor", "", "Adafactor"),
    ("Adafactor", "scale_parameter=False relative_step=False warmup_init=False", "Adafactor"),
    ("Prodigy", "d_coef=2", "Prodigy"),
    ("Lion", "weight_decay=0.01", "Lion"),
    ("SGD", "momentum=0.9", "SGD"),
])
def test_every_optimizer_steps(name, args, expected):
    from engine.train.optimizers import make_lr_scheduler, make_optimizer, scheduler_name

    lr = 1.0 if name == "Prodigy" else 1e-3
    text_lr = lr if name == "Prodigy" else lr / 2  # Prodigy takes one rate for every group
    config = optimizer_config(optimizer=name, optimizer_args=args, learning_rate=lr, text_encoder_lr=text_lr,
                              lr_scheduler="constant" if name != "Adafactor" else "constant_with_warmup")
    weights = [torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))]
    groups = [{"params": [weights[0]], "lr": lr, "name": "unet"},
              {"params": [weights[1]], "lr": text_lr, "name": "text_encoder"}]
    optimizer = make_optimizer(config, groups, torch.device("cpu"))
    assert type(optimizer).__name__ == expected
    scheduler = make_lr_scheduler(config, optimizer, total_steps=10)
    if name == "Adafactor" and not args:
        assert scheduler_name(config) == "adafactor"  # relative steps: Adafactor's own schedule
        assert type(scheduler).__name__ == "AdafactorSchedule"
    (weights[0].sum() + weights[1].sum()).backward()
    optimizer.step()
    scheduler.step()
    assert not torch.equal(weights[0].detach(), torch.ones(4))


def test_optimizer_errors_are_one_line():
    from engine.train.optimizers import make_optimizer

    groups = [{"params": [torch.nn.Parameter(torch.ones(2))], "lr": 1e-3}]
    with pytest.raises(LoradeckError, match="needs a CUDA GPU"):
        make_optimizer(optimizer_config(optimizer="AdamW8bit"), groups, torch.device("cpu"))
    two_rates = groups + [{"params": [torch.nn.Parameter(torch.ones(2))], "lr": 0.5}]
    with pytest.raises(LoradeckError, match="Prodigy needs one learning rate"):
        make_optimizer(optimizer_config(optimizer="Prodigy"), two_rates, torch.device("cpu"))
    with pytest.raises(LoradeckError, match="optimizer_args"):
        make_optimizer(optimizer_config(optimizer="AdamW", optimizer_args="bogus=1"), groups, torch.device("cpu"))


def test_schedules_warmup_cycles_and_power():
    from engine.train.optimizers import make_lr_scheduler, warmup_steps

    def rates(**settings):
        config = optimizer_config(learning_rate=1.0, **settings)
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
        scheduler = make_lr_scheduler(config, optimizer, total_steps=20)
        values = []
        for _ in range(20):
            values.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return values

    assert warmup_steps(optimizer_config(lr_warmup_percent=10.0), 50) == 5
    assert rates(lr_scheduler="constant", lr_warmup_steps=4)[:5] == [0.0, 0.25, 0.5, 0.75, 1.0]
    restarts = rates(lr_scheduler="cosine_with_restarts", lr_scheduler_num_cycles=2)
    assert restarts[10] == pytest.approx(1.0) and restarts[9] < 0.1  # back to the top halfway
    squared = rates(lr_scheduler="polynomial", lr_scheduler_power=2.0)
    linear = rates(lr_scheduler="polynomial", lr_scheduler_power=1.0)
    assert squared[10] < linear[10]
    # sd-scripts' lr_scheduler_type: torch's class with its --lr_scheduler_args, whatever lr_scheduler says
    annealed = rates(lr_scheduler="cosine", lr_scheduler_type="CosineAnnealingLR", lr_scheduler_args="T_max=8 eta_min=0.1")
    assert annealed[:9] == pytest.approx([0.1 + 0.9 * (1 + math.cos(math.pi * t / 8)) / 2 for t in range(9)])


def test_warmup_percent_is_sd_scripts_ratio_rounded_down():
    """sd-scripts: int(lr_warmup_steps * num_training_steps) for a ratio, which the Kohya GUI passes."""
    from engine.train.optimizers import warmup_steps

    for percent, total in [(10.0, 50), (8.0, 37), (5.0, 19), (12.5, 7), (0.0, 100)]:
        assert warmup_steps(optimizer_config(lr_warmup_percent=percent), total) == int(percent / 100 * total)


@pytest.mark.parametrize("name", ["DAdaptAdam", "DAdaptAdaGrad", "DAdaptAdan", "DAdaptLion", "DAdaptSGD",
                                  "DAdaptAdamPreprint", "DAdaptAdanIP"])
def test_d_adaptation_optimizers_are_the_packages_and_find_their_step(name):
    import dadaptation
    import dadaptation.experimental

    from engine.train.optimizers import make_optimizer

    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(8, 8))
    groups = [{"params": [weight], "lr": 1.0, "name": "unet"}]
    optimizer = make_optimizer(optimizer_config(optimizer=name, learning_rate=1.0), groups, torch.device("cpu"))
    module = dadaptation.experimental if name in ("DAdaptAdamPreprint", "DAdaptAdanIP") else dadaptation
    assert type(optimizer) is getattr(module, name)  # the class sd-scripts' get_optimizer picks for the name
    before = weight.detach().clone()
    for _ in range(3):
        optimizer.zero_grad()
        (weight ** 2).sum().backward()
        optimizer.step()
    assert not torch.equal(weight.detach(), before) and optimizer.param_groups[0]["d"] > 0
    with pytest.raises(LoradeckError, match=f"{name} needs one learning rate"):
        make_optimizer(optimizer_config(optimizer=name), groups + [{"params": [torch.nn.Parameter(torch.ones(2))],
                                                                     "lr": 0.5}], torch.device("cpu"))


# --------------------------------------------------------------------------- images


def png_bytes(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


def test_images_become_upright_8_bit_rgb(tmp_path):
    from engine.train.data import load_rgb

    transparent = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    (tmp_path / "alpha.png").write_bytes(png_bytes(transparent))
    assert load_rgb(tmp_path / "alpha.png").getpixel((0, 0)) == (255, 255, 255)  # on white, not black

    deep = Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16))  # 16-bit mid grey
    (tmp_path / "deep.png").write_bytes(png_bytes(deep))
    assert load_rgb(tmp_path / "deep.png").getpixel((0, 0)) == (128, 128, 128)  # scaled, not clipped to 255

    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.info["transparency"] = 0
    (tmp_path / "palette.png").write_bytes(png_bytes(palette, transparency=0))
    assert load_rgb(tmp_path / "palette.png").getpixel((0, 0)) == (10, 200, 30)

    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    red = load_rgb(tmp_path / "cmyk.jpg").getpixel((0, 0))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60

    write_image(tmp_path / "phone.jpg", (40, 20), orientation=6)  # stored landscape, shown portrait
    assert load_rgb(tmp_path / "phone.jpg").size == (20, 40)


def test_fit_to_bucket_and_check_images(tmp_path):
    from engine.train.data import check_images, fit_to_bucket

    image = Image.new("RGB", (300, 100))
    assert fit_to_bucket(image, (128, 64), None).size == (128, 64)
    assert fit_to_bucket(image, (64, 128), random.Random(1)).size == (64, 128)

    good = write_image(tmp_path / "good.jpg", (256, 256))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:400])
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    problems = dict(check_images([good, bad, junk]))
    assert set(problems) == {bad, junk}


def test_captions_shuffle_keep_and_drop():
    from engine.train.data import process_caption

    caption = "sks dog, red, outdoors, night, grass"
    orders = {process_caption(caption, random.Random(seed), shuffle=True, keep_tokens=1, dropout=0.0)
              for seed in range(20)}
    assert len(orders) > 5 and all(order.startswith("sks dog, ") for order in orders)
    assert all(sorted(order.split(", ")) == sorted(caption.split(", ")) for order in orders)
    dropped = [process_caption(caption, random.Random(seed), shuffle=False, keep_tokens=0, dropout=0.5)
               for seed in range(200)]
    assert 60 < dropped.count("") < 140 and set(dropped) == {"", caption}


def sd_scripts_process_caption(caption, rng, *, shuffle, keep_tokens, dropout, tag_dropout, current_epoch,
                               every_n_epochs, separator):
    """library/train_util.py's BaseDataset.process_caption, rewritten with `rng` for its
    `random` (no prefix, suffix, wildcard, token warm-up or secondary separator)."""
    is_drop_out = dropout > 0 and rng.random() < dropout
    is_drop_out = is_drop_out or every_n_epochs > 0 and current_epoch % every_n_epochs == 0
    if is_drop_out:
        return ""
    caption = caption.split("\n")[0]
    if shuffle or tag_dropout > 0:
        fixed_tokens, flex_tokens, fixed_suffix_tokens = [], [], []
        if separator and separator in caption:
            fixed_part, flex_part = caption.split(separator, 1)
            if separator in flex_part:
                flex_part, fixed_suffix_part = flex_part.split(separator, 1)
                fixed_suffix_tokens = [t.strip() for t in fixed_suffix_part.split(",") if t.strip()]
            fixed_tokens = [t.strip() for t in fixed_part.split(",") if t.strip()]
            flex_tokens = [t.strip() for t in flex_part.split(",") if t.strip()]
        else:
            tokens = [t.strip() for t in caption.strip().split(",")]
            flex_tokens = tokens[:]
            if keep_tokens > 0:
                fixed_tokens = flex_tokens[:keep_tokens]
                flex_tokens = tokens[keep_tokens:]
        if shuffle:
            rng.shuffle(flex_tokens)
        if tag_dropout > 0:
            flex_tokens = [token for token in flex_tokens if rng.random() >= tag_dropout]
        caption = ", ".join(fixed_tokens + flex_tokens + fixed_suffix_tokens)
    return caption


def test_caption_rules_are_sd_scripts():
    """Tag dropout, caption dropout every n epochs and keep_tokens_separator, with shuffle,
    keep tokens and caption dropout, against sd-scripts' own rule with the same random draws."""
    from engine.train.data import process_caption

    captions = ["sks dog, red, outdoors, night, grass, tree", "sks dog ||| red, outdoors, night ||| photo, 4k",
                "one", "a,, b , c", "sks ||| a, b", "sks dog, red\nsecond line"]
    chooser = random.Random(0)
    for trial in range(400):
        caption = chooser.choice(captions)
        settings = dict(shuffle=chooser.random() < 0.6, keep_tokens=chooser.choice([0, 1, 2]),
                        dropout=chooser.choice([0.0, 0.3]), tag_dropout=chooser.choice([0.0, 0.2, 0.5]),
                        separator=chooser.choice(["", "|||"]))
        epoch, every = chooser.randrange(6), chooser.choice([0, 2, 3])
        ours = process_caption(caption, random.Random(trial), drop_this_epoch=every > 0 and (epoch + 1) % every == 0,
                               **settings)
        theirs = sd_scripts_process_caption(caption, random.Random(trial), current_epoch=epoch + 1,
                                            every_n_epochs=every, **settings)
        assert ours == theirs, (caption, settings, epoch, every)
    # the kept parts stay whatever the shuffle and the tag dropout
    kept = process_caption(captions[1], random.Random(1), shuffle=True, keep_tokens=0, dropout=0.0, tag_dropout=0.9,
                           separator="|||")
    assert kept.startswith("sks dog") and kept.endswith("photo, 4k")


def test_caption_dropout_every_n_epochs_in_the_dataset(tiny_dataset):
    from engine.config.schema import config_from_dict
    from engine.dataset.folders import scan_dataset
    from engine.train.data import ExampleRules, TrainingImages

    config = config_from_dict({"model": {"pretrained_model": "x"}, "dataset": {"image_dir": "img"},
                               "captions": {"caption_dropout_every_n_epochs": 2}})
    instances = scan_dataset(config, tiny_dataset).training_instances()

    class Captions:
        def example(self, caption):
            return {}

    images = TrainingImages(instances, ExampleRules.from_config(config), Captions())
    captions = {epoch: {images[(epoch, index)]["caption"] for index in range(len(instances))} for epoch in range(4)}
    assert captions[1] == captions[3] == {""}  # sd-scripts' epochs 2 and 4
    assert "" not in captions[0] and "" not in captions[2]


def test_batches_hold_one_bucket_and_repeat_per_epoch():
    from engine.dataset.folders import ImageItem
    from engine.train.data import EpochBatchSampler

    def item(index, bucket):
        return ImageItem(path=f"{index}.png", caption="", caption_path=None, width=64, height=64, repeats=1,
                         folder="1_x", class_tokens="x", bucket=bucket)

    instances = [item(i, (64, 64)) for i in range(5)] + [item(i, (64, 128)) for i in range(5, 8)]
    sampler = EpochBatchSampler(instances, batch_size=2, seed=3)
    first = sampler.epoch_batches()
    assert len(first) == 5 and sorted(i for batch in first for i in batch) == list(range(8))
    assert all(len({instances[i].bucket for i in batch}) == 1 for batch in first)
    assert sampler.epoch_batches() == first
    sampler.set_epoch(1)
    assert sampler.epoch_batches() != first
    sampler.resume_at(1, 2)
    fresh = EpochBatchSampler(instances, 2, 3)
    fresh.set_epoch(1)
    assert sampler.epoch_batches() == fresh.epoch_batches()[2:]
    shares = [EpochBatchSampler(instances, 2, 3, num_processes=2, process_index=p).epoch_batches() for p in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 3


# --------------------------------------------------------------------------- text conditioning


def test_text_conditioning(tiny_model_dir):
    from transformers import CLIPTextModel, CLIPTokenizer

    from engine.model.text_conditioning import encode_tokens, parse_emphasis, tokenize_caption

    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(tiny_model_dir / "text_encoder").eval()
    caption = "a photo of a red dog, sks, street at night"
    ids, weights = tokenize_caption(tokenizer, caption)
    standard = tokenizer(caption, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ids, standard) and torch.all(weights == 1)

    with torch.no_grad():
        last = encode_tokens(encoder, ids[None])
        assert torch.allclose(last, encoder(standard)[0])
        skipped = encode_tokens(encoder, ids[None], clip_skip=2)
        hidden = encoder(standard, output_hidden_states=True).hidden_states[-2]
        assert torch.allclose(skipped, encoder.final_layer_norm(hidden))

        long_ids, _ = tokenize_caption(tokenizer, ", ".join(["red dog"] * 60), max_token_length=150)
        assert long_ids.shape == (2, 77) and torch.all(long_ids[:, 0] == tokenizer.bos_token_id)
        assert encode_tokens(encoder, long_ids[None]).shape == (1, 152, 32)

    assert parse_emphasis("a (red:1.5) dog [blur]") == [("a ", 1.0), ("red", 1.5), (" dog ", 1.0), ("blur", 1 / 1.1)]
    _, weighted = tokenize_caption(tokenizer, "a (red:1.5) dog", weighted=True)
    assert weighted[0, :5].tolist() == [1.0, 1.0, 1.5, 1.0, 1.0]


# --------------------------------------------------------------------------- rarer options in real runs


def test_run_with_accumulation_and_the_sd_scripts_options(tmp_path, tiny_dataset, make_run):
    write_caption(write_image(tiny_dataset / "img" / "1_sks cat" / "cat.png", (64, 128)), "sks cat, (tabby:1.3)")
    run = make_run(
        tiny_dataset, "options",
        dataset={"max_bucket_resolution": 128},
        model={"clip_skip": 2, "v_parameterization": True},
        captions={"max_token_length": 150, "weighted_captions": True, "caption_dropout_rate": 0.3},
        training={"epochs": 2, "gradient_accumulation_steps": 3, "noise_offset": 0.05, "min_snr_gamma": 5.0},
        optimizer={"optimizer": "Adafactor",
                   "optimizer_args": "scale_parameter=False relative_step=False warmup_init=False"},
        precision={"cache_latents": "disk", "gradient_checkpointing": True},
        augmentation={"flip": True},
    )
    assert train(run.path) == 0
    events = list(read_events(run.events))
    plan = events[0]["plan"]
    # 8 + 1 instances: buckets 64x64 (4 batches) and 64x128 (1 batch); 5 batches / 3 = 2 steps
    assert plan["steps_per_epoch"] == 2 and plan["total_steps"] == 4
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2, 3, 4]
    assert events[-1]["status"] == "finished"
    assert len(list((run.path / "cache" / "latents").glob("*.safetensors"))) == 5


def test_run_with_pixel_augmentation_and_max_steps(tmp_path, tiny_dataset, make_run):
    run = make_run(
        tiny_dataset, "augmented",
        augmentation={"color": True, "random_crop": True, "flip": True},
        network={"train_text_encoder": False},
        optimizer={"optimizer": "Prodigy", "learning_rate": 1.0},
        training={"epochs": 10, "max_steps": 6, "batch_size": 1},
        precision={"dataloader_workers": 1},
    )
    assert train(run.path) == 0
    events = list(read_events(run.events))
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 7))
    assert all(e["lr_text_encoder"] == 0.0 and e["lr_unet"] > 0 for e in steps)
    # 6 of 8 steps: the step limit falls in epoch 1, which still ends (samples, validation), as in sd-scripts
    assert [(e["epoch"], e["step"]) for e in events if e["type"] == "epoch_end"] == [(1, 6)]
    from engine.network.lora import read_lora_file

    tensors, metadata = read_lora_file(run.checkpoints / "augmented.safetensors")
    assert not any(key.startswith("lora_te_") for key in tensors)
    assert metadata["ss_steps"] == "6" and metadata["ss_optimizer"].startswith("prodigyopt.prodigy.Prodigy")


def test_single_file_base_model_goes_through_engine_single_file(tmp_path, tiny_model_dir, monkeypatch):
    """A .safetensors (or an allowed .ckpt) base is read by its family's single-file loader
    (a .ckpt's keys cannot be read unpickled: the fallback family's, SD's), offline."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    calls = []

    def fake_load(path, *, allow_ckpt, config_dir, prediction_type, dtype):
        calls.append((path, allow_ckpt, config_dir, prediction_type, dtype))
        return {
            "unet": UNet2DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet"),
            "vae": AutoencoderKL.from_pretrained(tiny_model_dir, subfolder="vae"),
            "text_encoder": CLIPTextModel.from_pretrained(tiny_model_dir / "text_encoder"),
            "tokenizer": CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer"),
            "scheduler": PNDMScheduler.from_pretrained(tiny_model_dir, subfolder="scheduler"),
        }

    from engine.model.families import default_family

    monkeypatch.setattr(type(default_family().runtime()), "load_single_file", staticmethod(fake_load))
    checkpoint = tmp_path / "merge.ckpt"
    checkpoint.write_bytes(b"")
    model = load(tmp_path, checkpoint, allow_ckpt=True, v_parameterization=True)
    assert calls == [(checkpoint, True, None, "v_prediction", torch.float32)]
    assert model.name == "merge" and model.noise_scheduler.config.prediction_type == "v_prediction"
