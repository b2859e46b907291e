"""Shared fixtures: the tiny models of every family, a small dataset, and run folders that train on them.

    family           parametrized over the families (one per family runtime, engine.model.families):
                     a test or fixture that asks for it runs once per family, module by module
    family_model_dir the tiny model of `family` (session-scoped, made offline, once per family)
    family_run       family_run(root, name, **sections) -> RunDir training `family`'s tiny model
    tiny_model_dir   the first family's (SD 1.5's) tiny model, for tests of its own formats
    tiny_dataset     a fresh Kohya dataset: img/2_sks dog/ with four 64x64 captioned images
    make_run         make_run(root, name, **sections) -> RunDir with a frozen config, ready for
                     engine.train.loop.train; sections override the small defaults below

A feature test that takes `family` (or `family_run`) runs for every registered family, so
a new family folder is tested by it without a line here, and a feature that forgets a family
fails for that family.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.datasets import write_caption, write_image

# On a CUDA machine the trainer tests train on the GPU (the trainer picks CUDA when it is there);
# LORADECK_TEST_PRECISION=bf16|fp16 runs them in that mixed precision instead of fp32
# (bench/gpu_check.sh does both). The CPU always trains in fp32, whatever it says.
TEST_PRECISION = os.environ.get("LORADECK_TEST_PRECISION", "no")
if TEST_PRECISION not in ("no", "bf16", "fp16"):
    raise ValueError(f"LORADECK_TEST_PRECISION={TEST_PRECISION!r}: use bf16, fp16 or no")

# Tests never reach a model hub: a hub id in a test must fail fast and offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# Four distinct images: solid colours with a diagonal stripe (tests/datasets.write_image).
TINY_IMAGES = (
    ((200, 80, 40), "sks dog, red, outdoors"),
    ((40, 90, 210), "sks dog, blue, indoors"),
    ((30, 190, 60), "sks dog, green, street"),
    ((240, 230, 20), "sks dog, yellow, night"),
)


def small_run_settings(model_dir: Path) -> dict[str, dict]:
    """A config that trains the tiny model on 64x64 images in a fraction of a second per step."""
    return {
        "model": {"pretrained_model": str(model_dir)},
        "dataset": {"image_dir": "img", "resolution": "64", "min_bucket_resolution": 64,
                    "max_bucket_resolution": 128, "bucket_step": 64},
        "network": {"rank": 4, "alpha": 4.0},
        "optimizer": {"learning_rate": 1e-3, "lr_scheduler": "constant"},
        "training": {"epochs": 2, "batch_size": 2, "seed": 11},
        "precision": {"mixed_precision": TEST_PRECISION, "dataloader_workers": 0, "save_precision": "float"},
        "sampling": {"every_n_epochs": 0},
        "saving": {"save_every_n_epochs": 1},
        "logging": {"tensorboard": False, "log_every_n_steps": 1},
        "flux": {"t5xxl_max_token_length": 16},  # Flux only: T5 tokens per caption (512 on the real model)
    }


def _tiny_families() -> tuple[str, ...]:
    from engine.model.tiny import tiny_families

    return tiny_families()


TINY_FAMILIES = _tiny_families()


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """family name -> its tiny model folder, each made once (`tiny-<family>`, as metadata names it)."""
    import torch

    from engine.model.tiny import make_tiny_model

    # Two busy cores: one torch thread is several times faster than two fighting for them.
    torch.set_num_threads(1)
    made: dict[str, Path] = {}

    def model_dir(family: str) -> Path:
        if family not in made:
            made[family] = make_tiny_model(tmp_path_factory.mktemp(f"tiny-{family}") / f"tiny-{family}",
                                           family=family)
        return made[family]

    return model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model_dirs) -> Path:
    return tiny_model_dirs(TINY_FAMILIES[0])


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def family(request) -> str:
    """A family's name; module-scoped, so a module's shared runs are made once per family."""
    return request.param


@pytest.fixture(scope="module")
def family_model_dir(family, tiny_model_dirs) -> Path:
    return tiny_model_dirs(family)


@pytest.fixture
def family_run(family_model_dir):
    return lambda root, name, **sections: new_run(family_model_dir, root, name, **sections)


def write_tiny_dataset(root: Path) -> Path:
    for index, (color, caption) in enumerate(TINY_IMAGES):
        write_caption(write_image(root / "img" / "2_sks dog" / f"{index}.png", (64, 64), color=color), caption)
    return root


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    return write_tiny_dataset(tmp_path)


def app_training_workspace(tmp_path: Path, model_dir: Path, one_thread_env: dict, monkeypatch,
                           **sections: dict) -> Path:
    """A workspace `tmp_path/ws` whose loradeck.toml trains `model_dir` on the tiny dataset
    with the small settings, updated by `sections`, for the app to train from: the engine
    process it starts inherits the one-thread environment, and the app's own settings live
    under `tmp_path`."""
    from engine.config.schema import config_from_dict, save_config

    for name, value in one_thread_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    root = write_tiny_dataset(tmp_path / "ws")
    data = small_run_settings(model_dir)
    for group, values in sections.items():
        data.setdefault(group, {}).update(values)
    save_config(config_from_dict(data), root / "loradeck.toml")
    return root


def new_run(model_dir: Path, root: Path, name: str, **sections: dict):
    """A run folder `root/runs/<name>` whose frozen config trains `model_dir` on the
    dataset under `root` with the small settings, updated by `sections`."""
    from engine.config.schema import config_from_dict, save_config, with_absolute_paths
    from engine.run.folder import RunDir

    data = small_run_settings(model_dir)
    for group, values in sections.items():
        data.setdefault(group, {}).update(values)
    data["saving"]["output_name"] = name
    run = RunDir(root / "runs" / name)
    run.create()
    save_config(with_absolute_paths(config_from_dict(data), root), run.config)
    return run


@pytest.fixture
def make_run(tiny_model_dir):
    return lambda root, name, **sections: new_run(tiny_model_dir, root, name, **sections)


def pipelines_of(model_dir: Path):
    """A factory of fresh diffusers pipelines of a tiny model (its family's class), progress bars off."""
    from diffusers import DiffusionPipeline

    def make():
        pipeline = DiffusionPipeline.from_pretrained(model_dir, local_files_only=True)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    return make


@pytest.fixture
def pipeline_factory(tiny_model_dir):
    """Fresh diffusers pipelines of the tiny SD1.5 model, progress bars off."""
    return pipelines_of(tiny_model_dir)


@pytest.fixture
def family_pipelines(family_model_dir):
    """Fresh diffusers pipelines of `family`'s tiny model."""
    return pipelines_of(family_model_dir)


@pytest.fixture
def one_thread_env() -> dict[str, str]:
    """Environment for engine subprocesses on the shared test machine."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def stop_when_epoch_ends(run, monkeypatch, epoch: int = 1) -> None:
    """Ask `run` to stop as its `epoch` ends, the way a user presses stop then (undo with
    monkeypatch.undo() before resuming)."""
    from engine.run.events import EventWriter

    real_emit = EventWriter.emit

    def emit(self, type, **fields):
        event = real_emit(self, type, **fields)
        if type == "epoch_end" and fields["epoch"] == epoch:
            run.request("stop")
        return event

    monkeypatch.setattr(EventWriter, "emit", emit)


@pytest.fixture(scope="session")
def tiny_flux_dir(tiny_model_dirs) -> Path:
    """The tiny Flux.1 [dev] as a diffusers folder."""
    return tiny_model_dirs("flux")


@pytest.fixture(scope="session")
def tiny_flux_files(tiny_flux_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny Flux.1 as BFL's single files: transformer (bf16), clip_l, t5xxl, ae."""
    from engine.model.families.flux.tiny import write_tiny_single_files

    return write_tiny_single_files(tiny_flux_dir, tmp_path_factory.mktemp("tiny-flux-files"))
