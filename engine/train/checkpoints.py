"""Save points: the LoRA file, the resumable state beside it, keep-last-N, events.

File names follow sd-scripts, and keep counting across a resume (the step is global):

    checkpoints/<name>-000003.safetensors         after epoch 3
    checkpoints/<name>-step00000450.safetensors   every N steps, on save-now, on stop
    checkpoints/<name>.safetensors                the final LoRA
    checkpoints/<name>-best.safetensors           the lowest validation loss so far (validation on)
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

from engine.errors import LoradeckError, no_space_reason
from engine.run.events import CHECKPOINT
from engine.network.lora import SAVE_DTYPES, LoraNetwork, save_lora_file
from engine.network.metadata import with_file_hashes
from engine.run.folder import RunDir
from engine.train.state import folder_bytes, save_state


def lora_file_name(output_name: str, *, epoch: int | None = None, step: int | None = None) -> str:
    if epoch is not None:
        return f"{output_name}-{epoch:06d}.safetensors"
    if step is not None:
        return f"{output_name}-step{step:08d}.safetensors"
    return f"{output_name}.safetensors"


def best_file_name(output_name: str) -> str:
    """The stable name of the best-by-validation LoRA, rewritten at each new best."""
    return f"{output_name}-best.safetensors"


class Checkpointer:
    def __init__(self, run: RunDir, config, events, network: LoraNetwork,
                 metadata: Callable[[int, int], dict[str, str]], log=print):
        self.run = run
        self.config = config
        self.events = events
        self.network = network
        self.metadata = metadata
        self.log = log
        self.saved: list[list[Any]] = []  # [step, file name] of intermediate LoRA files, oldest first
        self.last_saved_step: int | None = None

    def write_lora(self, name: str, *, epoch: int, step: int) -> tuple[Path, int]:
        """The LoRA file (in the save precision, written atomically) and its size."""
        path = self.run.checkpoints / name
        tensors = self.network.state_dict(SAVE_DTYPES[self.config.precision.save_precision])
        return path, save_lora_file(path, tensors, with_file_hashes(tensors, self.metadata(epoch, step)))

    def save_best(self, *, epoch: int, step: int) -> str:
        """Write `<name>-best.safetensors` (not pruned, no event of its own); its relative path."""
        path, _ = self.write_lora(best_file_name(self.config.saving.output_name), epoch=epoch, step=step)
        return _relative(path, self.run)

    def save(self, *, epoch: int, step: int, name: str, final: bool,
             optimizer, lr_scheduler, progress: dict[str, Any], validation_loss: float | None = None) -> Path:
        """Write the LoRA (in the save precision) and, if enabled, the state; prune old files.

        A full disk is one LoradeckError naming the step and the last good checkpoint; what
        the failed save had written is gone (engine.atomic, engine.train.state)."""
        with self._out_of_space_is_one_line("the LoRA file", step):
            path, size = self.write_lora(name, epoch=epoch, step=step)
        scored = {} if validation_loss is None else {"validation_loss": validation_loss}
        self.events.emit(CHECKPOINT, path=_relative(path, self.run), epoch=epoch, step=step, bytes=size,
                         kind="lora", final=final, **scored)
        self.log(f"saved {path.name} (epoch {epoch}, step {step})")
        if not final:
            self.saved = [entry for entry in self.saved if entry[1] != name] + [[step, name]]
            self._prune()
        self.last_saved_step = step
        if self.config.saving.save_state:
            progress = {**progress, "checkpoints": self.saved}
            with self._out_of_space_is_one_line("the state", step):
                folder = save_state(
                    self.run.state, step=step, lora=self.network.state_dict(), optimizer=optimizer.state_dict(),
                    lr_scheduler=lr_scheduler.state_dict(), progress=progress,
                )
            self.events.emit(CHECKPOINT, path=_relative(folder, self.run), epoch=epoch, step=step,
                             bytes=folder_bytes(folder), kind="state", final=final)
        return path

    @contextlib.contextmanager
    def _out_of_space_is_one_line(self, what: str, step: int) -> Iterator[None]:
        try:
            yield
        except Exception as error:
            reason = no_space_reason(error)
            if reason is None:
                raise
            raise LoradeckError(f"{reason} while saving {what} at step {step}; {self._last_good()}") from None

    def _last_good(self) -> str:
        """The checkpoint a user falls back on: the state a resume starts from, else the newest LoRA file."""
        if self.config.saving.save_state:
            step = self.run.saved_state_step()
            return f"the last good checkpoint is step {step}" if step is not None else "no state was saved before"
        written = [entry for entry in self.saved if (self.run.checkpoints / entry[1]).is_file()]
        return f"the last good checkpoint is step {written[-1][0]}" if written else "no LoRA file was saved before"

    def _prune(self) -> None:
        keep = self.config.saving.save_last_n
        if not keep:
            return
        for _, name in self.saved[:-keep]:
            (self.run.checkpoints / name).unlink(missing_ok=True)
        self.saved = self.saved[-keep:]


def _relative(path: Path, run: RunDir) -> str:
    return path.relative_to(run.path).as_posix()
