"""Step logging: `step` events, TensorBoard scalars and a line in engine.log.

Losses stay on the device as tensors until `flush()`, which copies them to the CPU in one
transfer: the GPU never waits on the host inside a step. The trainer flushes every
`logging.log_every_n_steps` steps and before anything that must see the real numbers
(epoch end, a save, a stop). Each step still gets its own `step` event. Nothing else in
a step reads a device value, so the host queues work ahead of the GPU between flushes.

`timed(loader)` counts the time the loop waits for batches: `data_wait` in a step event
is that share of the interval (near 0 when the loader keeps up).

TensorBoard tags are the ones sd-scripts users know: loss/current, loss/average
(mean over the last epoch's worth of steps), loss/epoch, lr/unet, lr/textencoder; with
validation on also loss/validation, loss/validation_t<timestep> and loss/train_fixed; with
network.scale_weight_norms max_norm/keys_scaled, norm/avg_key_norm, max_norm/max_key_norm
(and the step event's keys_scaled, mean_norm, max_norm).
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.run.events import EPOCH_END, STEP


# step-event field -> sd-scripts' TensorBoard tag (network.scale_weight_norms)
NORM_TAGS = {"keys_scaled": "max_norm/keys_scaled", "mean_norm": "norm/avg_key_norm", "max_norm": "max_norm/max_key_norm"}


def _host_norms(pending: list) -> list[dict[str, float]]:
    """Each pending step's max-norm numbers as host values, in one copy ({} where none)."""
    with_norms = [entry.norms for entry in pending if entry.norms is not None]
    if not with_norms:
        return [{} for _ in pending]
    values = iter(torch.stack([torch.stack([v.float() for v in norms]) for norms in with_norms]).cpu().tolist())
    result = []
    for entry in pending:
        if entry.norms is None:
            result.append({})
            continue
        keys_scaled, mean_norm, max_norm = next(values)
        result.append({"keys_scaled": int(keys_scaled), "mean_norm": mean_norm, "max_norm": max_norm})
    return result


class NonFiniteLoss(Exception):
    def __init__(self, step: int, value: float):
        super().__init__(f"loss became {value} at step {step}")
        self.step = step
        self.value = value


@dataclass
class _Pending:
    step: int
    epoch: int
    loss: torch.Tensor
    lr_unet: float
    lr_text_encoder: float
    norms: tuple | None = None  # network.scale_weight_norms: (layers scaled, mean norm, largest norm) tensors


class StepLog:
    def __init__(self, events, *, steps_per_epoch: int, images_per_step: int, tensorboard_dir: Path | None,
                 log=print):
        self.events = events
        self.images_per_step = images_per_step
        self.window: deque[float] = deque(maxlen=max(1, steps_per_epoch))
        self.epoch_sum = 0.0
        self.epoch_count = 0
        self.pending: list[_Pending] = []
        self.log = log
        self._interval_start: float | None = None
        self._data_wait = 0.0  # seconds spent waiting for batches since the last flush
        self._writer = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(tensorboard_dir))

    # ---- resume

    def state_dict(self) -> dict[str, Any]:
        return {"window": list(self.window), "epoch_sum": self.epoch_sum, "epoch_count": self.epoch_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window.extend(state.get("window", []))
        self.epoch_sum = float(state.get("epoch_sum", 0.0))
        self.epoch_count = int(state.get("epoch_count", 0))

    # ---- steps

    def restart_clock(self) -> None:
        """Time from now: called when training (re)starts and after a pause to save or sample."""
        if not self.pending:
            self._interval_start = time.perf_counter()
            self._data_wait = 0.0

    def timed(self, loader):
        """Iterate `loader`, counting the time spent waiting for each batch."""
        iterator = iter(loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self._data_wait += time.perf_counter() - start
            yield batch

    def add(self, step: int, epoch: int, loss: torch.Tensor, lr_unet: float, lr_text_encoder: float,
            norms: tuple | None = None) -> None:
        if self._interval_start is None:
            self._interval_start = time.perf_counter()
        self.pending.append(_Pending(step, epoch, loss.detach(), lr_unet, lr_text_encoder, norms))

    def flush(self) -> None:
        """Write the pending steps (one device-to-host copy). Raises NonFiniteLoss."""
        if not self.pending:
            return
        values = torch.stack([p.loss.float().reshape(()) for p in self.pending]).cpu().tolist()
        norms = _host_norms(self.pending)
        now = time.perf_counter()
        elapsed = max(now - (self._interval_start or now), 1e-9)
        steps_per_s = len(self.pending) / elapsed
        data_wait = min(1.0, self._data_wait / elapsed)
        extra = _gpu_memory()
        pending, self.pending, self._interval_start, self._data_wait = self.pending, [], now, 0.0
        for entry, value, norm in zip(pending, values, norms):
            if not math.isfinite(value):
                raise NonFiniteLoss(entry.step, value)
            self.window.append(value)
            self.epoch_sum += value
            self.epoch_count += 1
            average = sum(self.window) / len(self.window)
            self.events.emit(
                STEP,
                step=entry.step,
                epoch=entry.epoch,
                loss=value,
                loss_avg=average,
                lr_unet=entry.lr_unet,
                lr_text_encoder=entry.lr_text_encoder,
                steps_per_s=steps_per_s,
                images_per_s=steps_per_s * self.images_per_step,
                data_wait=data_wait,
                **norm,
                **extra,
            )
            if self._writer is not None:
                for key, tag in NORM_TAGS.items():
                    if key in norm:
                        self._writer.add_scalar(tag, norm[key], entry.step)
                self._writer.add_scalar("loss/current", value, entry.step)
                self._writer.add_scalar("loss/average", average, entry.step)
                self._writer.add_scalar("lr/unet", entry.lr_unet, entry.step)
                self._writer.add_scalar("lr/textencoder", entry.lr_text_encoder, entry.step)
        last = pending[-1]
        self.log(
            f"step {last.step} epoch {last.epoch} loss {values[-1]:.4f} avg {sum(self.window) / len(self.window):.4f} "
            f"lr {last.lr_unet:.3g} {steps_per_s:.2f} it/s, waiting for data {data_wait:.0%}"
        )

    def end_epoch(self, epoch: int, step: int) -> float:
        """Flush, emit `epoch_end` with the epoch's mean loss, and start counting the next."""
        self.flush()
        loss_epoch = self.epoch_sum / self.epoch_count if self.epoch_count else float("nan")
        self.events.emit(EPOCH_END, epoch=epoch, step=step, loss_epoch=loss_epoch)
        if self._writer is not None and self.epoch_count:
            self._writer.add_scalar("loss/epoch", loss_epoch, epoch)
            self._writer.flush()
        self.log(f"epoch {epoch} done at step {step}, mean loss {loss_epoch:.4f}")
        self.epoch_sum, self.epoch_count = 0.0, 0
        return loss_epoch

    def scalars(self, values: dict[str, float], step: int) -> None:
        """TensorBoard scalars outside the step stream (the validation losses)."""
        if self._writer is not None:
            for tag, value in values.items():
                self._writer.add_scalar(tag, value, step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _gpu_memory() -> dict[str, float]:
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return {}
    device = torch.cuda.current_device()
    report = {
        "gpu_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20,
        "gpu_memory_total_mb": torch.cuda.get_device_properties(device).total_memory / 2**20,
    }
    try:  # NVML (the nvidia-ml-py package, in the `cuda` extra) reads utilisation without a sync
        report["gpu_util"] = float(torch.cuda.utilization(device))
    except Exception:  # no NVML library or package: the dashboard simply shows no utilisation
        pass
    return report
