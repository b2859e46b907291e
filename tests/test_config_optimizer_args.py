"""Optimizer arguments: read as sd-scripts reads them, and refused when the config is read if
the optimizer would refuse them at training start."""
import ast
import inspect
import math

import pytest
import torch

from engine.config.kohya_import import import_kohya
from engine.config.optimizer_args import ACCEPTED_ARGUMENTS, parse_optimizer_args
from engine.config.schema import config_from_dict
from engine.errors import ConfigError, LoradeckError
from tui.cli import main


def _constructor(name):
    if name == "AdamW":
        return torch.optim.AdamW
    if name == "SGD":
        return torch.optim.SGD
    if name == "Adafactor":
        from transformers.optimization import Adafactor
        return Adafactor
    if name == "Prodigy":
        from prodigyopt import Prodigy
        return Prodigy
    if name == "Lion":
        from lion_pytorch import Lion
        return Lion
    if name.startswith("DAdapt"):
        from engine.train.optimizers import optimizer_class
        return optimizer_class(name)
    return pytest.importorskip("bitsandbytes").optim.AdamW8bit


@pytest.mark.parametrize("name", sorted(ACCEPTED_ARGUMENTS))
def test_table_is_the_real_constructor_signature(name):
    signature = inspect.signature(_constructor(name))
    real = {key: parameter.default for key, parameter in signature.parameters.items() if key not in ("params", "lr")}
    assert list(ACCEPTED_ARGUMENTS[name]) == list(real)
    for key, default in real.items():
        ours = ACCEPTED_ARGUMENTS[name][key]
        assert type(ours) is type(default), key
        assert ours == default or (isinstance(ours, float) and math.isinf(ours) and math.isinf(default)), key


def sd_scripts_reading(text):
    """How sd-scripts' get_optimizer reads each `--optimizer_args` token."""
    result = {}
    for token in text.split():
        key, value = token.split("=")
        result[key] = ast.literal_eval(value)
    return result


@pytest.mark.parametrize("text", [
    "betas=0.9,0.99 weight_decay=0.01",
    "betas=(0.9,0.99) eps=1e-8",
    "scale_parameter=False relative_step=False warmup_init=False",
    "decouple=True use_bias_correction=True safeguard_warmup=True d_coef=2",
    "eps=1e-30,1e-3 beta1=None",
])
def test_parsed_as_sd_scripts_parses(text):
    assert parse_optimizer_args(text) == sd_scripts_reading(text)


def test_betas_without_parentheses_is_a_pair_that_builds():
    from engine.train.optimizers import make_optimizer

    config = config_from_dict({"model": {"pretrained_model": "x"},
                               "optimizer": {"optimizer": "AdamW", "optimizer_args": "betas=0.9,0.99"}})
    assert config.optimizer_kwargs == {"betas": (0.9, 0.99)}
    groups = [{"params": [torch.nn.Parameter(torch.ones(2))], "lr": 1e-3}]
    optimizer = make_optimizer(config, groups, torch.device("cpu"))
    assert optimizer.defaults["betas"] == (0.9, 0.99)


@pytest.mark.parametrize("optimizer, text, message", [
    ("AdamW", "relative_step=False", "AdamW takes no argument 'relative_step'"),
    ("Adafactor", "betas=0.9,0.99", "Adafactor takes no argument 'betas'"),
    ("AdamW", "betas=0.9", "betas takes 2 numbers"),
    ("AdamW", "weight_decay=lots", "weight_decay takes a number"),
    ("Prodigy", "decouple=1", "decouple takes True or False"),
    ("AdamW", "lr=1e-3", "learning rate settings"),
])
def test_arguments_the_optimizer_refuses_are_refused_at_config_time(optimizer, text, message):
    with pytest.raises(ConfigError, match=message) as caught:
        config_from_dict({"model": {"pretrained_model": "x"},
                          "optimizer": {"optimizer": optimizer, "optimizer_args": text}})
    assert caught.value.field == "optimizer.optimizer_args"


def test_import_and_plan_check_them(tmp_path, capsys):
    imported = import_kohya({"pretrained_model_name_or_path": "x", "optimizer": "AdamW",
                             "optimizer_args": "betas=0.9,0.99 weight_decay=0.05"})
    assert imported.config.optimizer_kwargs == {"betas": (0.9, 0.99), "weight_decay": 0.05}
    with pytest.raises(LoradeckError, match="optimizer_args"):
        import_kohya({"pretrained_model_name_or_path": "x", "optimizer": "Lion", "optimizer_args": "eps=1e-8"})
    config = tmp_path / "c.toml"
    config.write_text('[model]\npretrained_model = "x"\n[optimizer]\noptimizer = "SGD"\n'
                      'optimizer_args = "betas=0.9,0.99"\n')
    assert main(["plan", str(config)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "SGD takes no argument 'betas'" in err
