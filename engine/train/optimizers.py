"""Optimizers and learning-rate schedules of the config, built from the libraries that own them.

    make_optimizer(config, param_groups, device) -> torch.optim.Optimizer
    make_lr_scheduler(config, optimizer, total_steps) -> LambdaLR
    warmup_steps(config, total_steps) -> int

Extra optimizer arguments come from `optimizer.optimizer_args` in Kohya's `key=value`
form. Adafactor follows sd-scripts: without `relative_step=False` it picks its own step
size (the learning rate is ignored and the adafactor schedule is used).
"""
from __future__ import annotations

from typing import Any

import torch

from engine.config.schema import DADAPTATION_OPTIMIZERS, TrainConfig
from engine.errors import LoradeckError


def adafactor_uses_relative_step(config: TrainConfig) -> bool:
    kwargs = config.optimizer_kwargs
    # warmup_init only works with relative steps, so it implies them (as in sd-scripts)
    return bool(kwargs.get("relative_step", True)) or bool(kwargs.get("warmup_init", False))


def make_optimizer(config: TrainConfig, param_groups: list[dict[str, Any]], device: torch.device) -> torch.optim.Optimizer:
    name = config.optimizer.optimizer
    kwargs = dict(config.optimizer_kwargs)
    lr = param_groups[0]["lr"] if param_groups else config.optimizer.learning_rate
    on_cuda = torch.device(device).type == "cuda"
    try:
        if name == "AdamW":
            return torch.optim.AdamW(param_groups, lr=lr, **_kernel_choice(config, kwargs, on_cuda))
        if name == "AdamW8bit":
            return _adamw_8bit(param_groups, lr, kwargs, on_cuda)
        if name == "Adafactor":
            from transformers.optimization import Adafactor

            if adafactor_uses_relative_step(config):
                kwargs["relative_step"] = True
                groups = [{**group, "lr": None} for group in param_groups]
                return Adafactor(groups, lr=None, **kwargs)
            return Adafactor(param_groups, lr=lr, **kwargs)
        if name == "Prodigy" or name in DADAPTATION_OPTIMIZERS:
            if len({group["lr"] for group in param_groups}) > 1:
                raise LoradeckError(
                    f"optimizer: {name} needs one learning rate for U-Net and text encoder (usually 1.0); "
                    "leave unet_lr and text_encoder_lr unset"
                )
            return optimizer_class(name)(param_groups, lr=lr, **kwargs)
        if name == "Lion":
            from lion_pytorch import Lion

            return Lion(param_groups, lr=lr, **kwargs)
        if name == "SGD":
            return torch.optim.SGD(param_groups, lr=lr, **_kernel_choice(config, kwargs, on_cuda))
    except TypeError as error:
        # an unknown keyword in optimizer_args
        raise LoradeckError(f"optimizer.optimizer_args: {name} does not take these arguments ({error})") from None
    except (ValueError, AssertionError) as error:
        raise LoradeckError(f"optimizer: {name} refused its settings ({error or 'invalid value'})") from None
    raise LoradeckError(f"optimizer.optimizer: unknown optimizer {name!r}")


def optimizer_class(name: str) -> type:
    """The class of a step-size-finding optimizer (Prodigy, the D-Adaptation family), as sd-scripts picks it."""
    if name == "Prodigy":
        from prodigyopt import Prodigy

        return Prodigy
    try:
        import dadaptation
        import dadaptation.experimental as experimental
    except ImportError:
        raise LoradeckError(f"optimizer.optimizer: {name} needs the dadaptation package (pip install dadaptation)") from None
    # sd-scripts takes the preprint's Adam and AdanIP from the package's experimental module
    return getattr(experimental if name in ("DAdaptAdamPreprint", "DAdaptAdanIP") else dadaptation, name)


def _kernel_choice(config: TrainConfig, kwargs: dict[str, Any], on_cuda: bool) -> dict[str, Any]:
    """`precision.fused_optimizer`: one fused kernel for all parameters on CUDA, else
    `foreach` (a few batched kernels instead of one small kernel per LoRA tensor: a LoRA has
    hundreds); off means the plain per-tensor loop. `optimizer_args` may still choose."""
    if "fused" in kwargs or "foreach" in kwargs:
        return kwargs
    if not config.precision.fused_optimizer:
        return {**kwargs, "foreach": False}
    return {**kwargs, "fused": True} if on_cuda else {**kwargs, "foreach": True}


def optimizer_kernel(optimizer: torch.optim.Optimizer) -> str:
    """"fused", "foreach" or "plain": how a torch optimizer steps (others say their class)."""
    defaults = getattr(optimizer, "defaults", {})
    if type(optimizer).__module__.startswith("torch.optim"):
        return "fused" if defaults.get("fused") else "foreach" if defaults.get("foreach") else "plain"
    return type(optimizer).__name__


def _adamw_8bit(param_groups, lr: float, kwargs: dict[str, Any], on_cuda: bool) -> torch.optim.Optimizer:
    if not on_cuda:
        raise LoradeckError("optimizer.optimizer: AdamW8bit needs a CUDA GPU; use AdamW on this machine")
    try:
        import bitsandbytes
    except ImportError:
        raise LoradeckError(
            "optimizer.optimizer: AdamW8bit needs bitsandbytes (pip install 'loradeck[cuda]'), or use AdamW"
        ) from None
    return bitsandbytes.optim.AdamW8bit(param_groups, lr=lr, **kwargs)


def warmup_steps(config: TrainConfig, total_steps: int) -> int:
    """Warm-up steps; a percentage is sd-scripts' ratio of the total, rounded down
    (`int(lr_warmup_steps * num_training_steps)`, as the Kohya GUI passes it)."""
    optimizer = config.optimizer
    if optimizer.lr_warmup_steps:
        return min(optimizer.lr_warmup_steps, total_steps)
    return int(optimizer.lr_warmup_percent / 100 * total_steps)


def scheduler_name(config: TrainConfig) -> str:
    """The schedule actually used: relative-step Adafactor always runs its own; a scheduler
    class (optimizer.lr_scheduler_type) replaces the named schedule."""
    name = config.optimizer.lr_scheduler
    if config.optimizer.lr_scheduler_type:
        return config.optimizer.lr_scheduler_type
    if config.optimizer.optimizer == "Adafactor" and adafactor_uses_relative_step(config):
        return "adafactor"
    if name == "constant" and (config.optimizer.lr_warmup_steps or config.optimizer.lr_warmup_percent):
        return "constant_with_warmup"  # a warm-up was asked for; plain constant would ignore it
    return name


def make_lr_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    """Steps once per optimizer step; `total_steps` is the plan's optimizer-step count."""
    name = scheduler_name(config)
    if config.optimizer.lr_scheduler_type:
        from engine.config.optimizer_args import parse_optimizer_args

        # sd-scripts' lr_scheduler_type: the class with its --lr_scheduler_args, stepped once per optimizer step
        arguments = parse_optimizer_args(config.optimizer.lr_scheduler_args)
        try:
            return getattr(torch.optim.lr_scheduler, name)(optimizer, **arguments)
        except (TypeError, ValueError) as error:
            raise LoradeckError(f"optimizer.lr_scheduler_args: {name} refused them ({error})") from None
    if name == "adafactor":
        from transformers.optimization import AdafactorSchedule

        return AdafactorSchedule(optimizer, initial_lr=config.unet_learning_rate)
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=warmup_steps(config, total_steps),
        num_training_steps=max(total_steps, 1),
        num_cycles=config.optimizer.lr_scheduler_num_cycles,
        power=config.optimizer.lr_scheduler_power,
    )
