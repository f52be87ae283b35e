"""Small helpers for work sharded under ``torchrun`` (and a no-op in a single process).

    from sencache.runtime import distributed as dist
    dist.init_if_needed()                      # gloo on CPU, nccl on CUDA; nothing without torchrun
    mine = dist.shard(items)                   # [(global_index, item), ...] of this rank, round-robin
    parts = dist.gather_objects(my_results)    # list (one entry per rank, in rank order) on rank 0, else None
    if dist.is_main(): ...

Every function works unchanged in a plain single process: rank 0 of a world of one. Before the
process group is initialised, :func:`rank` and :func:`world_size` read the environment torchrun
sets (``RANK``, ``WORLD_SIZE``), so a launcher can ask them early.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any, Iterable, TypeVar

import torch
import torch.distributed as _dist

from sencache.errors import SenCacheError

T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _initialized() -> bool:
    return _dist.is_available() and _dist.is_initialized()


def launched() -> bool:
    """True when this process was started by torchrun (or similar) with more than one rank."""
    return _env_int("WORLD_SIZE", 1) > 1


def is_distributed() -> bool:
    """True when running with more than one rank (initialised or about to be, under torchrun)."""
    return world_size() > 1


def rank() -> int:
    """This process's rank (before the process group is up: torchrun's ``RANK``, else 0)."""
    return _dist.get_rank() if _initialized() else _env_int("RANK", 0)


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``, else the global rank)."""
    return _env_int("LOCAL_RANK", rank())


def world_size() -> int:
    """The ranks' count (before the process group is up: torchrun's ``WORLD_SIZE``, else 1)."""
    return _dist.get_world_size() if _initialized() else _env_int("WORLD_SIZE", 1)


def is_main() -> bool:
    """True on rank 0 (so always in a single process)."""
    return rank() == 0


def gpu_per_rank() -> bool:
    """True when CUDA is available with at least one GPU for every rank on this node (``LOCAL_WORLD_SIZE``);
    NCCL cannot put two ranks on one GPU, so with fewer GPUs than ranks every rank runs on the CPU."""
    return torch.cuda.is_available() and torch.cuda.device_count() >= _env_int("LOCAL_WORLD_SIZE", 1)


def backend() -> str:
    """nccl with a GPU per rank, else gloo."""
    return "nccl" if gpu_per_rank() else "gloo"


def default_device() -> torch.device:
    """cuda:LOCAL_RANK with a GPU per rank, else the CPU."""
    if gpu_per_rank():
        return torch.device("cuda", local_rank() % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


def init_if_needed() -> bool:
    """Join the torchrun process group once (gloo on CPU, nccl on CUDA). Returns is_distributed()."""
    if not launched() or not _dist.is_available():
        return False
    if not _initialized():
        name = backend()
        if torch.cuda.is_available() and name == "gloo" and is_main():
            print(f"sencache: {_env_int('LOCAL_WORLD_SIZE', 1)} ranks on this node but "
                  f"{torch.cuda.device_count()} GPU(s): running every rank on the CPU with gloo; launch at most "
                  f"{torch.cuda.device_count()} rank(s) per node to use the GPUs", file=sys.stderr)
        if name == "nccl":
            torch.cuda.set_device(default_device())
        _dist.init_process_group(backend=name)
        atexit.register(_leave_process_group)
    return world_size() > 1


def _leave_process_group() -> None:
    """Tear the process group down before the interpreter exits: left alive, gloo's threads can abort a rank
    at exit ("terminate called without an active exception"), failing a run whose work was done. No barrier
    here: a rank that exits on an error must not wait for peers still inside a collective."""
    if not _initialized():
        return
    try:
        _dist.destroy_process_group()
    except Exception:  # a peer that already died must not turn a clean exit into a traceback
        pass


def shard(items: Iterable[T]) -> list[tuple[int, T]]:
    """This rank's share of ``items``, round-robin: [(global_index, item), ...] in global order."""
    r, w = rank(), world_size()
    return [(i, item) for i, item in enumerate(items) if i % w == r]


def gather_objects(obj: Any) -> list[Any] | None:
    """Pickle-gather one object per rank: on rank 0 a list in rank order, elsewhere None.

    In a single process: ``[obj]``.
    """
    if not (_initialized() and world_size() > 1):
        return [obj]
    out = [None] * world_size() if is_main() else None
    _dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s object on every rank (a single process returns ``obj``)."""
    if not (_initialized() and world_size() > 1):
        return obj
    box = [obj if rank() == src else None]
    _dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every rank; a no-op in a single process or before the process group is up."""
    if _initialized() and world_size() > 1:
        _dist.barrier()


def group_active() -> bool:
    """True when a process group of more than one rank is up (torchrun + :func:`init_if_needed`)."""
    return _initialized() and world_size() > 1


def run_on_main(fn):
    """Run ``fn`` on rank 0 only and hand its (picklable) result to every rank; a single process just runs it.

    If it fails on rank 0, every rank raises (so none waits forever for a result that will not come)."""
    if not group_active():
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the others were told
            error = exc
    shared = broadcast_object((result, None if error is None else f"{type(error).__name__}: {error}"))
    if error is not None:
        raise error
    if shared[1] is not None:
        raise SenCacheError(f"rank 0 failed: {shared[1]}")
    return shared[0]
