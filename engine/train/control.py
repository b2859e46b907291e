"""Stopping and other requests at step boundaries: signals, `loradeck stop|save-now|sample-now`.

The trainer calls `obey_requests` after every optimizer step and at every epoch end.
A request file (engine.run.folder) or SIGINT/SIGTERM is handled there, never mid-step:
sample and save requests run and training goes on; stop saves and ends the run.
"""
from __future__ import annotations

import signal
from typing import Any

from engine.train.checkpoints import lora_file_name
from engine.run.events import CONTROL


class StopSignal:
    """SIGINT/SIGTERM ask for a graceful stop at the next step boundary; a second one aborts."""

    def __init__(self):
        self.triggered = False
        self._previous: dict[int, Any] = {}

    def install(self) -> "StopSignal":
        for number in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[number] = signal.signal(number, self._handle)
            except ValueError:  # not the main thread: the caller handles stopping
                pass
        return self

    def _handle(self, number: int, frame: Any) -> None:
        if self.triggered:
            raise KeyboardInterrupt
        self.triggered = True

    def uninstall(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def obey_requests(training, epoch_end: bool = False) -> bool:
    """Handle control requests at a step boundary of `training` (engine.train.loop.Training:
    its run folder, config, accelerator, events, stop signal, progress, `sample` and `save`);
    True when the run must stop now.

    One listdir per step on one GPU; with several processes the decision is broadcast,
    only at log points so the GPUs do not wait on each other every step.
    """
    run, accelerator, events, progress = training.run, training.accelerator, training.events, training.progress
    several = accelerator.num_processes > 1
    if several and not epoch_end and progress.step % training.config.logging.log_every_n_steps:
        return False
    requests = set(run.pending_requests()) if accelerator.is_main_process else set()
    if training.stop_signal.triggered:
        requests.add("stop")
    if several:
        from accelerate.utils import broadcast_object_list

        box = [sorted(requests)]
        broadcast_object_list(box)
        requests = set(box[0])
    if "skip" in requests:  # meant for a sampling that has ended since: nothing to skip now
        requests.discard("skip")
        if accelerator.is_main_process:
            run.clear_request("skip")
    if not requests:
        return False
    name = lora_file_name(training.config.saving.output_name, step=progress.step)

    def done(action: str) -> None:
        if accelerator.is_main_process:
            run.clear_request(action)

    if "sample" in requests:
        count = training.sample(progress.last_epoch, progress.step)
        done("sample")
        outcome = f"{count} sample(s) written" if count else "no sample prompts configured"
        events.emit(CONTROL, request="sample", outcome=outcome)
    if "save" in requests:
        training.save(name)
        done("save")
        events.emit(CONTROL, request="save", outcome=f"saved at step {progress.step}")
    if "stop" in requests:
        training.save(name)
        done("stop")
        events.emit(CONTROL, request="stop", outcome=f"stopped after step {progress.step}")
        return True
    return False
