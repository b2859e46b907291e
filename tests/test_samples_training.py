"""Samples inside a real training run (engine.trainer on the tiny model, CPU): when they are
made, and that a run with samples trains bit for bit like the same run without."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from engine.config import config_from_dict, save_config, with_absolute_paths
from engine.events import read_events
from engine.lora_network import read_lora_file
from engine.rundir import RunDir
from engine.tiny_model import make_tiny_model
from engine.trainer import train
from tests.datasets import write_caption, write_image

PROMPTS = "a cat --w 64 --h 64 --s 2 --d 3\n# unseeded: a random seed, kept for the whole run\na dog --w 64 --h 96 --s 2 --ss ddim\n"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-sd15")


@pytest.fixture
def one_thread():
    """Bit-exact comparisons need one intra-op thread: with several, torch's CPU reductions
    may add in a different order from run to run (about one fp16 ulp in the LoRA)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def start_run(root, tiny_dir, name: str, sampling: dict) -> RunDir:
    folder = root / "img" / "2_cat"
    for index, color in enumerate(((200, 80, 40), (40, 90, 210))):
        write_caption(write_image(folder / f"{index}.png", (64, 64), color=color), "a photo of a cat, red")
    config = config_from_dict(
        {
            "model": {"pretrained_model": str(tiny_dir)},
            "dataset": {"image_dir": "img", "resolution": "64", "min_bucket_resolution": 64,
                        "max_bucket_resolution": 128, "bucket_step": 64},
            "captions": {"shuffle_caption": True, "caption_dropout_rate": 0.2},
            "augmentation": {"flip": True},
            "network": {"rank": 4, "alpha": 4.0},
            "optimizer": {"learning_rate": 1e-3, "lr_scheduler": "constant"},
            "training": {"epochs": 2, "batch_size": 1, "seed": 7},
            "precision": {"mixed_precision": "no", "dataloader_workers": 0},
            "sampling": sampling,
            "saving": {"output_name": name, "save_every_n_epochs": 1, "save_state": False},
            "logging": {"tensorboard": False, "log_every_n_steps": 1},
        }
    )
    run = RunDir(root / "runs" / name)
    run.create()
    save_config(with_absolute_paths(config, root), run.config)
    return run


def test_run_with_samples_trains_exactly_like_one_without(tmp_path, tiny_dir, one_thread):
    with_samples = start_run(
        tmp_path, tiny_dir, "with-samples",
        {"prompts": PROMPTS, "at_start": True, "every_n_epochs": 1, "every_n_steps": 2},
    )
    without = start_run(tmp_path, tiny_dir, "without", {"prompts": "", "every_n_epochs": 0})
    assert train(with_samples.path) == 0
    assert train(without.path) == 0

    # 2 images x 2 repeats = 4 steps per epoch, 2 epochs
    names = sorted(p.name for p in with_samples.samples.glob("*.png"))
    points = ["e0000-s000000", "e0001-s000002", "e0001-s000004", "e0002-s000006", "e0002-s000008"]
    assert names == [f"{point}-p{index:02d}.png" for point in points for index in (0, 1)]
    assert not list(without.samples.iterdir())
    sizes = {Image.open(with_samples.samples / name).size for name in names}
    assert sizes == {(64, 64), (64, 96)}

    events = list(read_events(with_samples.events))
    samples = [e for e in events if e["type"] == "sample"]
    # a step that is also an epoch end is sampled once, not twice
    assert [(e["epoch"], e["step"], e["prompt_index"]) for e in samples] == [
        (epoch, step, index) for epoch, step in ((0, 0), (1, 2), (1, 4), (2, 6), (2, 8)) for index in (0, 1)
    ]
    dog_seeds = {e["seed"] for e in samples if e["prompt"] == "a dog"}
    assert len(dog_seeds) == 1
    assert all(e["sampler"] == ("ddim" if e["prompt"] == "a dog" else "euler_a") for e in samples)
    assert [e for e in events if e["type"] == "run_end"][-1]["status"] == "finished"
    # the LoRA learns: later samples differ from the base model's look at step 0
    first = Image.open(with_samples.samples / "e0000-s000000-p00.png").tobytes()
    last = Image.open(with_samples.samples / "e0002-s000008-p00.png").tobytes()
    assert first != last

    ours, _ = read_lora_file(with_samples.checkpoints / "with-samples.safetensors")
    theirs, _ = read_lora_file(without.checkpoints / "without.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)
