"""One process or many: the same training code under `python -m hat` and under torchrun.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; when WORLD_SIZE > 1 we join
the process group (gloo on CPU, nccl when CUDA is present). Everything else asks this
module whether it is rank 0 and reduces through it, so no other module touches
``torch.distributed`` directly.
"""

from __future__ import annotations

import gc
import os
from typing import Any

import torch
import torch.distributed as dist


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env() -> bool:
    """Join the process group torchrun describes; returns whether we are distributed."""
    if env_world_size() <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (returns the input unchanged in one process)."""
    if is_distributed():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shutdown() -> None:
    """Leave the process group. After a successful run call :func:`barrier` first: a rank
    that tears gloo down while another still talks to it can abort the run at the very end
    (seen as SIGABRT in CI). After a failure do not wait: the other ranks may never come.

    ``destroy_process_group`` only drops torch's own reference: DistributedDataParallel's
    reducer keeps the gloo group alive, and a group that dies at interpreter exit kills
    its worker threads mid-flight ("terminate called without an active exception",
    SIGABRT, seen in CI). So the caller drops its references to the trained model first,
    and we collect the reference cycles that may still hold it before destroying."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
