"""Thin helpers over ``torch.distributed`` for analyses that shard images across ranks.

Under ``torchrun --nproc_per_node K -m attnviz ...`` the environment holds ``WORLD_SIZE``,
``RANK``, ``MASTER_ADDR`` / ``MASTER_PORT``; :func:`init_from_env` starts the process group
(gloo on CPU, nccl on CUDA). Without torchrun everything here is a no-op for one process.

The rule that keeps ranks from deadlocking: a collective call (:func:`all_gather_objects`,
:func:`all_reduce_sum_`, :func:`barrier`, ...) must be made by every rank or by none. A step
that only one rank runs (rank 0 writing figures, the query viewer, the report: each of which
may call :func:`attnviz.analysis.runner.run` again) runs inside :func:`local_only`, where this
process acts as the only one: :func:`is_distributed` is False, :func:`rank` 0, :func:`world_size`
1, so the runner neither shards nor gathers. The CLI wraps its rank-0 steps in
:func:`attnviz.commands._common.on_main_rank`, which does this and makes the other ranks wait
for (and fail with) rank 0.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

_LOCAL_DEPTH = [0]  # open local_only() blocks in this process


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Inside the block this process acts alone: no sharding, every collective a no-op.

    For steps that one rank runs by itself (see the module docstring). Nests."""
    _LOCAL_DEPTH[0] += 1
    try:
        yield
    finally:
        _LOCAL_DEPTH[0] -= 1


def is_distributed() -> bool:
    """True when a process group with more than one rank is running (outside local_only())."""
    if _LOCAL_DEPTH[0]:
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_from_env(device: str | torch.device = "cpu") -> bool:
    """Start the process group if launched by torchrun with WORLD_SIZE > 1; True if started."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if dist.is_initialized():
        return False
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum_(tensors: dict[str, torch.Tensor]) -> None:
    """In-place sum of each tensor over all ranks (tensors stay on their device)."""
    if not is_distributed():
        return
    for key in sorted(tensors):
        dist.all_reduce(tensors[key], op=dist.ReduceOp.SUM)


def all_reduce_max(value: int) -> int:
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_gather_objects(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] (picklable objects)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()
