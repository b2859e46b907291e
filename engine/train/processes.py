"""Several training processes: data-parallel over GPUs (NCCL), or CPU processes (gloo).

    processes = start_processes()           first, in every process
    share_from_main(processes, make)        make() on the main process; its result (or its
                                            LoradeckError) on every process
    repeats_main(error)                     an error the main process has already said
    any_process(flags, device)              a flag set on any process is set on all
    gather_from_all(value)                  every process's value, in process order
    report_failure(message, traceback)      a failing process leaves its error for the main one
    first_failure(message, traceback)       the main process: the failure that ended the run

`torchrun` and `accelerate launch` start the processes and say so in the environment
(LOCAL_RANK, WORLD_SIZE). accelerate's PartialState is a singleton that sets up the process
group the first time it is built, and only with cpu=True does it pick gloo on a machine
without CUDA: built bare, every process trains alone and writes the run folder. So
`start_processes` builds it first, before the Accelerator (which reuses it).

No collective waits forever: COLLECTIVE_TIMEOUT_S bounds each (the main process may sample,
validate or cache latents to disk while the others wait, so it is generous), and a process
that dies closes its connections, which fails the others' next collective at once. The
launcher's rendezvous store, which every process reaches, carries each failure in the order
it happened, so the main process writes one error event naming the process that failed
first and why, not the broken connection it saw.
"""
from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any, Callable, Sequence

from engine.errors import LoradeckError

COLLECTIVE_TIMEOUT_S = 30 * 60
TIMEOUT_VARIABLE = "LORADECK_COLLECTIVE_TIMEOUT_S"
FAILURE_KEY = "loradeck/failure"
FAILURE_WAIT_S = 5  # how long the main process waits for the failure that broke its connection
STORE_TIMEOUT_S = 10  # a failing process does not wait long on the store either


def collective_timeout() -> timedelta:
    value = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    try:
        seconds = float(value) if value else COLLECTIVE_TIMEOUT_S
    except ValueError:
        raise LoradeckError(f"{TIMEOUT_VARIABLE}={value!r}: give the seconds a collective may wait") from None
    return timedelta(seconds=seconds)


def start_processes():
    """accelerate's PartialState for this launch: one process, or the process group of a
    `torchrun` / `accelerate launch` (gloo without CUDA, NCCL with it)."""
    import torch
    from accelerate import PartialState

    cuda = torch.cuda.is_available()
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if cuda and local_processes > torch.cuda.device_count():
        raise LoradeckError(f"training.processes: {local_processes} processes on this machine, but it has "
                            f"{torch.cuda.device_count()} GPU(s); start one process per GPU")
    return PartialState(cpu=not cuda, timeout=collective_timeout())


def share_from_main(processes, make: Callable[[], Any]) -> Any:
    """`make()` run by the main process, its result on every process. A LoradeckError it
    raises is raised on every process, so none waits for a value that will not come."""
    if processes.num_processes == 1:
        return make()
    from accelerate.utils import broadcast_object_list

    box: list[Any] = [None]
    if processes.is_main_process:
        try:
            box = [("value", make())]
        except LoradeckError as error:
            box = [("error", (str(error), error.exit_status))]
    broadcast_object_list(box)
    kind, payload = box[0]
    if kind == "error":
        message, status = payload
        error = LoradeckError(message)
        error.exit_status = status
        error.said_by_main = not processes.is_main_process  # the main process says it; the others need not repeat it
        raise error
    return payload


def repeats_main(error: BaseException) -> bool:
    """True for another process's copy of the main process's error (share_from_main): one
    line in engine.log for the user, not one per process."""
    return bool(getattr(error, "said_by_main", False))


def any_process(flags: Sequence[bool], device) -> list[bool]:
    """Each flag, set if any process set it (one small all-reduce)."""
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([int(flag) for flag in flags], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(value) for value in tensor.tolist()]


def gather_from_all(value: Any) -> list[Any]:
    """Every process's `value`, in process order (on every process)."""
    from accelerate.utils import gather_object

    return gather_object([value])


# --------------------------------------------------------------------------- failures


def _store():
    """The launcher's key-value store, or None with one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    # the store the process group was rendezvoused through: torch has no public getter
    store = dist.distributed_c10d._get_default_store()
    store.set_timeout(timedelta(seconds=STORE_TIMEOUT_S))
    return store


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank()


def report_failure(message: str, trace: str) -> None:
    """Leave this process's failure in the store, numbered in the order failures happen.

    A process that crashes reports before it exits, and the others only fail once it has
    exited (its connections close), so the first failure is the cause, the rest echoes."""
    store = _store()
    if store is None:
        return
    try:
        order = store.add(f"{FAILURE_KEY}/count", 1)
        store.set(f"{FAILURE_KEY}/{order}", json.dumps({"process": _rank(), "message": message, "traceback": trace}))
    except RuntimeError as error:  # the store's host is gone too: the main process reports its own error
        print(f"loradeck train: could not report this failure to the other processes ({error})", flush=True)


def first_failure(message: str, trace: str) -> tuple[str, str]:
    """(message, traceback) of the failure that ended the run, for the main process's error
    event: its own, or the first one another process reported (a crash elsewhere reaches
    the main process as a broken connection, which says nothing of the cause)."""
    store = _store()
    if store is None:
        return message, trace
    import torch.distributed as dist

    try:
        store.wait([f"{FAILURE_KEY}/1"], timedelta(seconds=FAILURE_WAIT_S))
        first = json.loads(store.get(f"{FAILURE_KEY}/1"))
    except RuntimeError:  # no report in time (a process that hung, or was killed): this one's own
        return message, trace
    if first["process"] == _rank() or first["message"] == message:
        return message, trace
    return f"process {first['process']} of {dist.get_world_size()} failed: {first['message']}", first["traceback"]


def end_processes() -> None:
    """Leave the process group (torch warns at exit otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
