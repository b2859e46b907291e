"""The engine process with a probe, for tests/test_multiprocess.py: what each process trained.

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m tests.multiprocess_probe RUN_DIR [--resume]

Each process appends to `$LORADECK_PROBE_DIR/process-<rank>.jsonl`: its pid, the batches it
trains in each epoch (instance indices, as its sampler yields them) and, after each optimizer
step, a digest of its LoRA weights. `LORADECK_PROBE_FAULT=<rank>:<step>:signal` makes that
process send itself SIGTERM after that step (as `kill PID` would), `...:crash` raise there.
The engine itself runs unchanged (engine.train.process.main).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from pathlib import Path


def _record(entry: dict) -> None:
    folder = Path(os.environ["LORADECK_PROBE_DIR"])
    with open(folder / f"process-{os.environ.get('RANK', '0')}.jsonl", "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def lora_digest(state_dict) -> str:
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def install() -> None:
    from engine.train.data import EpochBatchSampler
    from engine.train.loop import Training

    fault = os.environ.get("LORADECK_PROBE_FAULT", "")
    fault_rank, fault_step, fault_kind = fault.split(":") if fault else ("", "0", "")
    here = os.environ.get("RANK", "0") == fault_rank
    real_iter, real_after_step = EpochBatchSampler.__iter__, Training.after_step

    def sampler_iter(self):
        _record({"epoch": self.epoch, "batches": self.epoch_batches()})
        return real_iter(self)

    def after_step(self, loss):
        _record({"step": self.progress.step, "lora": lora_digest(self.network.state_dict())})
        if here and self.progress.step == int(fault_step):
            if fault_kind == "signal":
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                raise RuntimeError(f"probe: a crash in process {fault_rank} after step {fault_step}")
        return real_after_step(self, loss)

    EpochBatchSampler.__iter__ = sampler_iter
    Training.after_step = after_step
    _record({"pid": os.getpid()})


if __name__ == "__main__":
    install()
    from engine.train.process import main

    sys.exit(main())
