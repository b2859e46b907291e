"""Samples inside a real training run (engine.train.loop on the tiny models, CPU): when they are
made, and that a run with samples trains bit for bit like the same run without, for every family."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from engine.run.events import read_events
from engine.network.lora import read_lora_file
from engine.train.loop import train

PROMPTS = "a cat --w 64 --h 64 --s 2 --d 3\n# unseeded: a random seed, kept for the whole run\na dog --w 64 --h 96 --s 2 --ss ddim\n"


@pytest.fixture
def one_thread():
    """Bit-exact comparisons need one intra-op thread: with several, torch's CPU reductions
    may add in a different order from run to run (about one fp16 ulp in the LoRA)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# caption shuffle, dropout and flip: the trainer draws randomness all along the run
AUGMENTED = {
    "captions": {"shuffle_caption": True, "caption_dropout_rate": 0.2},
    "augmentation": {"flip": True},
}


def test_run_with_samples_trains_exactly_like_one_without(tmp_path, tiny_dataset, family_run, one_thread):
    sampling = {"prompts": PROMPTS, "at_start": True, "every_n_epochs": 1, "every_n_steps": 2}
    with_samples = family_run(tmp_path, "with-samples", sampling=sampling, **AUGMENTED)
    without = family_run(tmp_path, "without", sampling={"prompts": "", "every_n_epochs": 0}, **AUGMENTED)
    assert train(with_samples.path) == 0
    assert train(without.path) == 0

    # 4 images x 2 repeats in batches of 2 = 4 steps per epoch, 2 epochs
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


def test_sample_now_request_samples_at_the_next_step(tmp_path, tiny_dataset, make_run):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dog --w 64 --h 64 --s 1 --d 5\n", encoding="utf-8")
    run = make_run(tmp_path, "asked", training={"epochs": 1}, sampling={"prompts_file": str(prompts), "every_n_epochs": 0})
    run.request("sample")  # as `loradeck sample-now RUN_DIR` does; seen at the first step boundary
    assert train(run.path) == 0
    assert sorted(p.name for p in run.samples.iterdir()) == ["e0001-s000001-p00.png"]
    events = list(read_events(run.events))
    control = [e for e in events if e["type"] == "control"]
    assert [(e["request"], e["outcome"]) for e in control] == [("sample", "1 sample(s) written")]
    assert Image.open(run.samples / "e0001-s000001-p00.png").text["parameters"].startswith("a dog\nSteps: 1, Sampler: Euler a")
