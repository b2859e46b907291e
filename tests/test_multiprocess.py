"""Data-parallel training on two CPU processes (gloo), launched the way loradeck launches it:
the split of each epoch's batches, one writer of the run folder, equal weights on every
process after every step, a stop signalled to one process, a bit-exact resume, and a crash
in one process. tests/multiprocess_probe.py runs the unchanged engine in each process and
records what that process trained.

Launches of two processes each, made once per family for the module: a whole run, for every
family (the split, the writer and the equal weights involve the family's model under DDP);
and, on the first family only (they do not depend on the family), a run whose process 1 is
signalled to stop after step 1 and its resume, in which process 1 crashes after step 3; a
run of LyCORIS' own Diag-OFT modules under sd-scripts' max norm; and a run on a dataset
with an image that cannot be decoded. The tests read what they left.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from engine.config.schema import load_config
from engine.network.lora import read_lora_file
from engine.plan.training_plan import make_plan
from engine.run.events import read_events
from engine.run.folder import RunDir
from engine.run.launch import engine_command
from engine.train.data import EpochBatchSampler
from engine.train.loop import load_dataset, train
from tests.conftest import TINY_FAMILIES, new_run, write_tiny_dataset

REPOSITORY = Path(__file__).resolve().parent.parent
LAUNCH_TIMEOUT_S = 240  # a hang in a collective fails the test instead of the suite

SETTINGS = dict(
    training={"processes": 2, "epochs": 2},
    # a schedule that moves, dropout and augmentation: a resume must restore all of it
    optimizer={"learning_rate": 1e-3, "lr_scheduler": "cosine"},
    network={"network_dropout": 0.1},
    # sd-scripts' caption and tag dropout: drawn per example, so a resume draws them again
    captions={"shuffle_caption": True, "caption_dropout_rate": 0.2, "caption_tag_dropout_rate": 0.2},
    augmentation={"flip": True},
    sampling={"prompts": "a cat --w 64 --h 64 --s 2 --d 3", "every_n_epochs": 2},
    logging={"tensorboard": True, "log_every_n_steps": 1},
)


NORMED_NETWORK = {"type": "diag-oft", "scale_weight_norms": 0.002}


def launch(run, probe_dir: Path, *, resume: bool = False, fault: str = "") -> subprocess.CompletedProcess:
    """The engine command loradeck builds for two processes (torchrun), with the probe's
    module; on the CPU (gloo) even where there is a GPU, which two processes cannot share."""
    command = engine_command(run, resume=resume, processes=2)
    command[command.index("engine.train.process")] = "tests.multiprocess_probe"
    probe_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPOSITORY),
           "CUDA_VISIBLE_DEVICES": "",
           "LORADECK_PROBE_DIR": str(probe_dir), "LORADECK_PROBE_FAULT": fault}
    return subprocess.run(command, cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)


def probe_records(probe_dir: Path, process: int) -> list[dict]:
    return [json.loads(line) for line in (probe_dir / f"process-{process}.jsonl").read_text().splitlines()]


def digests(probe_dir: Path, process: int) -> dict[int, str]:
    return {entry["step"]: entry["lora"] for entry in probe_records(probe_dir, process) if "step" in entry}


def events_of(run) -> list[dict]:
    return list(read_events(run.events))


def of_type(events, kind: str) -> list[dict]:
    return [event for event in events if event["type"] == kind]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, family, family_model_dir):
    """name -> (run folder, probe folder, completed launch): "whole" for every family,
    "stopped" and "resumed" for the first."""
    root = write_tiny_dataset(tmp_path_factory.mktemp(f"multiprocess-{family}"))
    whole = new_run(family_model_dir, root, "whole", **SETTINGS)
    made = {"whole": (whole, root / "whole", launch(whole, root / "whole"))}
    if family == TINY_FAMILIES[0]:
        stopped = new_run(family_model_dir, root, "stopped", **SETTINGS)
        made["stopped"] = (stopped, root / "stopped", launch(stopped, root / "stopped", fault="1:1:signal"))
        made["resumed"] = (stopped, root / "resumed", launch(stopped, root / "resumed", resume=True,
                                                              fault="1:3:crash"))
        # every process scales the same layers by the same ratios after each step
        normed = new_run(family_model_dir, root, "normed", **{**SETTINGS, "training": {"processes": 2, "epochs": 1},
                                                               "network": NORMED_NETWORK})
        made["normed"] = (normed, root / "normed", launch(normed, root / "normed"))
        damaged = write_tiny_dataset(root / "damaged")
        image = sorted((damaged / "img").rglob("*.png"))[0]
        image.write_bytes(image.read_bytes()[:200])  # a header that promises pixels the file no longer has
        unreadable = new_run(family_model_dir, damaged, "unreadable", **SETTINGS)
        made["unreadable"] = (unreadable, damaged / "probe", launch(unreadable, damaged / "probe"))
    return made


@pytest.fixture
def interrupted(runs, family):
    if family != TINY_FAMILIES[0]:
        pytest.skip("stop, resume and crash are the same for every family: run on the first")
    return runs


def test_each_process_trains_half_of_every_epoch(runs):
    run, probe, completed = runs["whole"]
    assert completed.returncode == 0, completed.stdout + completed.stderr
    config = load_config(run.config)
    one_process = make_plan(config, run.path, num_processes=1)
    events = events_of(run)
    (start,) = of_type(events, "run_start")
    assert start["plan"]["num_processes"] == 2
    # 8 instances in batches of 2: 4 batches an epoch, 2 per process, so half the steps of one process
    assert start["plan"]["total_steps"] == one_process.total_steps // 2 == 4
    assert [event["step"] for event in of_type(events, "step")] == [1, 2, 3, 4]

    _, instances = load_dataset(config, run.path)
    whole_epochs = EpochBatchSampler(instances, 2, config.training.seed)
    shares = [{entry["epoch"]: entry["batches"] for entry in probe_records(probe, process) if "batches" in entry}
              for process in (0, 1)]
    for epoch in (0, 1):
        whole_epochs.set_epoch(epoch)
        batches = whole_epochs.epoch_batches()
        first, second = shares[0][epoch], shares[1][epoch]
        assert len(first) == len(second) == len(batches) // 2
        assert sorted(first + second) == sorted(batches)  # together, every batch of the epoch once


def test_one_process_writes_the_run_folder(runs):
    run, probe, _ = runs["whole"]
    events = events_of(run)
    assert [event["seq"] for event in events] == list(range(len(events)))  # one writer: one sequence
    (start,) = of_type(events, "run_start")
    (end,) = of_type(events, "run_end")
    assert end["status"] == "finished" and end["step"] == 4
    assert start["pid"] == probe_records(probe, 0)[0]["pid"]  # the main process
    assert sorted(path.name for path in run.checkpoints.iterdir()) == ["whole-000001.safetensors", "whole.safetensors"]
    assert len([event for event in of_type(events, "checkpoint") if event["kind"] == "lora"]) == 2
    assert sorted(path.name for path in run.state.iterdir() if path.is_dir()) == ["step-00000002", "step-00000004"]
    assert len(of_type(events, "sample")) == 1 and len(list(run.samples.rglob("*.png"))) == 1
    assert len(list(run.tensorboard.glob("events.out.tfevents.*"))) == 1
    assert not (run.path / "engine.pid").exists()


def test_every_process_has_the_same_weights_after_every_step(runs):
    _, probe, _ = runs["whole"]
    first, second = digests(probe, 0), digests(probe, 1)
    assert list(first) == [1, 2, 3, 4]
    assert first == second  # gradients averaged, so every process takes the same step
    assert len(set(first.values())) == 4  # and the weights do move


def test_a_stop_signalled_to_one_process_stops_all_at_the_same_step(interrupted):
    run, probe, completed = interrupted["stopped"]
    assert completed.returncode == 0, completed.stdout + completed.stderr
    events = events_of(run)  # and, after the first run_end, the resume's (below)
    first_session = events[: [event["type"] for event in events].index("run_end") + 1]
    (end,) = of_type(first_session, "run_end")
    assert end["status"] == "stopped" and end["step"] == 1
    assert [event["request"] for event in of_type(first_session, "control")] == ["stop"]
    assert list(digests(probe, 0)) == list(digests(probe, 1)) == [1]


def test_a_resume_with_the_same_processes_is_bit_exact(interrupted):
    whole, whole_probe, _ = interrupted["whole"]
    run, probe, _ = interrupted["resumed"]
    events = events_of(run)
    assert [event["status"] for event in of_type(events, "run_end")] == ["stopped", "failed"]
    # steps 2 and 3, then process 1 crashes (below) before step 3's loss is averaged and logged
    assert [event["step"] for event in of_type(events, "step")] == [1, 2]
    expected = {step: digest for step, digest in digests(whole_probe, 0).items() if step in (2, 3)}
    assert digests(probe, 0) == digests(probe, 1) == expected
    resumed, _ = read_lora_file(run.checkpoints / "stopped-000001.safetensors")  # saved at step 2
    reference, _ = read_lora_file(whole.checkpoints / "whole-000001.safetensors")
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[key], reference[key]) for key in reference)


def test_a_crash_in_one_process_ends_the_run_with_one_error(interrupted):
    run, _, completed = interrupted["resumed"]
    assert completed.returncode != 0
    events = events_of(run)
    resumed_session = events[[event["type"] for event in events].index("run_end") + 1:]
    (error,) = of_type(resumed_session, "error")
    (end,) = of_type(resumed_session, "run_end")
    assert error["message"] == "process 1 of 2 failed: RuntimeError: probe: a crash in process 1 after step 3"
    assert "multiprocess_probe.py" in error["traceback"]
    assert end["status"] == "failed" and end["step"] == 3 and end["message"] == error["message"]
    assert not run.pid_file.exists()


def test_a_resume_with_another_number_of_processes_is_refused(interrupted, tmp_path, capsys):
    run, _, _ = interrupted["resumed"]
    copy = RunDir(tmp_path / "copy")
    shutil.copytree(run.path, copy.path)
    # one process, in this one: the state (step 2's) was saved by two
    assert train(copy.path, resume=True) == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("loradeck train: ") and "saved by 2 process(es), this launch has 1" in message
    *_, error, end = events_of(copy)
    assert error["type"] == "error" and end["status"] == "failed"


def test_lycoris_modules_under_max_norm_keep_the_processes_equal(interrupted):
    run, probe, completed = interrupted["normed"]
    assert completed.returncode == 0, completed.stdout + completed.stderr
    first, second = digests(probe, 0), digests(probe, 1)
    assert list(first) == [1, 2] and first == second  # step 2's weights are step 1's after its max norm
    events = events_of(run)
    steps = of_type(events, "step")
    assert [event["step"] for event in steps] == [1, 2]  # one writer
    bound = NORMED_NETWORK["scale_weight_norms"]
    assert all(event["keys_scaled"] > 0 and event["max_norm"] <= bound * (1 + 1e-5) for event in steps)
    (end,) = of_type(events, "run_end")
    assert end["status"] == "finished"


def test_a_dataset_that_cannot_be_read_fails_every_process_in_one_line(interrupted):
    run, _, completed = interrupted["unreadable"]
    assert completed.returncode != 0
    said = [line for line in (completed.stdout + completed.stderr).splitlines() if line.startswith("loradeck train:")]
    assert len(said) == 1 and "1 unreadable image(s), training not started" in said[0]  # the main process's
    events = events_of(run)
    (error,) = of_type(events, "error")
    (end,) = of_type(events, "run_end")
    assert said[0] == f"loradeck train: {error['message']}" and error["traceback"] == ""
    assert end["status"] == "failed" and end["message"] == error["message"] and not of_type(events, "run_start")
    assert not run.pid_file.exists()


def documented_commands(section: str) -> list[list[str]]:
    """The `accelerate launch` commands of a section of docs/several_gpus.md, as argument lists."""
    text = (REPOSITORY / "docs" / "several_gpus.md").read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    joined = text.replace("\\\n", " ")
    return [shlex.split(line.strip())[2:] for line in joined.splitlines() if line.strip().startswith("accelerate launch")]


def test_the_documented_two_machine_launch_is_what_accelerate_and_the_engine_read():
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import prepare_multi_gpu_env

    from engine.train.process import argument_parser

    commands = documented_commands("Several machines")
    assert len(commands) == 2
    for machine, arguments in enumerate(commands):
        launch, _, _ = _validate_launch_command(launch_command_parser().parse_args(arguments))
        prepare_multi_gpu_env(launch)  # what accelerate hands torchrun on this machine
        assert launch.multi_gpu and launch.module and launch.training_script == "engine.train.process"
        assert (launch.nnodes, launch.node_rank, launch.nproc_per_node) == ("2", machine, "2")
        assert launch.rdzv_endpoint == "10.0.0.1:29500"
        engine = argument_parser().parse_args(launch.training_script_args)
        assert engine.config == Path("lora.toml") and engine.run_dir is None and engine.resume is None
