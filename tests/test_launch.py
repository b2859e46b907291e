"""Starting a run refuses missing local files before a run folder takes the name."""
import pytest

from engine.config.schema import config_from_dict, save_config
from engine.errors import LoradeckError
from engine.run.launch import prepare_run
from tests.datasets import plan_dataset


@pytest.mark.parametrize(
    "model, message",
    [
        ("/nowhere/v1-5.safetensors", "model.pretrained_model: /nowhere/v1-5.safetensors does not exist"),
        ("./models/sd15", "does not exist"),
    ],
)
def test_missing_base_model_file_is_refused_without_a_run_folder(tmp_path, model, message):
    plan_dataset(tmp_path)
    save_config(config_from_dict({"model": {"pretrained_model": model}, "saving": {"output_name": "x"}}),
                tmp_path / "loradeck.toml")
    with pytest.raises(LoradeckError, match=message.replace(".", r"\.")):
        prepare_run(tmp_path / "loradeck.toml")
    assert not (tmp_path / "runs" / "x").exists()


def test_hub_ids_are_not_checked_locally(tmp_path):
    plan_dataset(tmp_path)
    save_config(config_from_dict({"model": {"pretrained_model": "someone/model"}, "saving": {"output_name": "y"}}),
                tmp_path / "loradeck.toml")
    run = prepare_run(tmp_path / "loradeck.toml")
    assert run.config.is_file()


def test_missing_image_folder_is_refused(tmp_path):
    save_config(config_from_dict({"model": {"pretrained_model": "someone/model"}, "dataset": {"image_dir": "pics"}}),
                tmp_path / "loradeck.toml")
    with pytest.raises(LoradeckError, match="dataset.image_dir"):
        prepare_run(tmp_path / "loradeck.toml")


def test_a_random_seed_is_drawn_into_the_frozen_config_and_kept_on_resume(tmp_path):
    from engine.config.schema import load_config

    plan_dataset(tmp_path)
    save_config(config_from_dict({"model": {"pretrained_model": "someone/model"}, "training": {"seed": -1},
                                  "saving": {"output_name": "z"}}), tmp_path / "loradeck.toml")
    run = prepare_run(tmp_path / "loradeck.toml")
    seed = load_config(run.config).training.seed
    assert 0 <= seed < 2**32
    # new settings for the rest of the run, still with seed -1: the drawn seed stays
    prepare_run(tmp_path / "loradeck.toml", resume=run.path)
    assert load_config(run.config).training.seed == seed


def test_several_processes_start_under_torchrun(tmp_path, monkeypatch):
    """`loradeck train` (and ctrl+t) with training.processes = 2: the engine command is
    torchrun's, as torch's own parser reads it."""
    import os
    import subprocess
    import sys

    from torch.distributed.run import get_args_parser

    from engine.run.launch import start_training

    commands = []

    class Started:
        pid = os.getpid()

    def popen(command, **_):
        commands.append(command)
        return Started()

    monkeypatch.setattr(subprocess, "Popen", popen)
    plan_dataset(tmp_path)
    save_config(config_from_dict({"model": {"pretrained_model": "someone/model"}, "training": {"processes": 2},
                                  "saving": {"output_name": "two"}}), tmp_path / "loradeck.toml")
    run_dir = start_training(tmp_path / "loradeck.toml", detach=True)
    (command,) = commands
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    launch = get_args_parser().parse_args(command[3:])
    assert launch.standalone and launch.module and launch.nproc_per_node == "2"
    assert launch.training_script == "engine.train.process" and launch.training_script_args == [str(run_dir)]


def test_a_foreground_run_that_stopped_cleanly_is_not_a_failure_whatever_torchrun_exits_with(tmp_path, monkeypatch):
    """Ctrl-C to `loradeck train`: torchrun forwards it, its engines save and stop, and
    torchrun itself exits 1 for having been interrupted. The events say how the run ended."""
    import io
    import subprocess

    from engine.run.events import EventWriter
    from engine.run.launch import start_training

    class Interrupted:
        pid = 1

        def __init__(self, run_dir, status):
            self.run_dir, self.status = run_dir, status

        def poll(self):
            with EventWriter(self.run_dir) as events:
                events.emit("run_start", plan={})
                events.emit("run_end", status=self.status, step=3, epoch=1, message="")
            return 1

    plan_dataset(tmp_path)
    for name, status in (("stopped", "stopped"), ("failed", "failed")):
        save_config(config_from_dict({"model": {"pretrained_model": "someone/model"}, "training": {"processes": 2},
                                      "saving": {"output_name": name}}), tmp_path / "loradeck.toml")
        run_dir = (tmp_path / "runs" / name).resolve()
        monkeypatch.setattr(subprocess, "Popen", lambda command, **_: Interrupted(run_dir, status))
        if status == "stopped":
            assert start_training(tmp_path / "loradeck.toml", detach=False, echo=io.StringIO()) == run_dir
        else:
            with pytest.raises(LoradeckError, match="training failed"):
                start_training(tmp_path / "loradeck.toml", detach=False, echo=io.StringIO())
