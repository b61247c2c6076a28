"""Data-parallel training: `torchrun --nproc_per_node=N -m normbench train ...`.

torchrun starts N processes and sets RANK / WORLD_SIZE / LOCAL_RANK; normbench then joins
them in a process group (gloo on the CPU, NCCL on CUDA). Every rank draws the same global
batch of `train.batch_size` windows and trains on its slice of it; DistributedDataParallel
averages the gradients, and the loss is averaged across ranks before any decision
(divergence, logging), so N processes follow the trajectory of one process at the same
global batch, up to the order of floating-point sums. Evaluation is sharded and summed.
Only rank 0 writes the run record, logs to W&B and prints; all ranks share its run
directory.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as tdist
from torch.nn.parallel import DistributedDataParallel

from normbench.errors import ConfigError

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: the command line imports this module before it
# knows whether it will train (`normbench list` stays fast).


def world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return world()[0] == 0


def active() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def init() -> None:
    """Join the process group torchrun describes (once); a no-op for a single process."""

    rank, size = world()
    if size > 1 and not active():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        tdist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=size)


def device(name: str) -> torch.device:
    """This rank's device: cuda:<LOCAL_RANK> under torchrun with CUDA."""

    if name == "cuda" and active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def broadcast(value: Any) -> Any:
    """Rank 0's value on every rank (any picklable object)."""

    if not active():
        return value
    box = [value]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        tdist.barrier()


def mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor across ranks (itself for one process)."""

    if not active():
        return t
    t = t.detach().clone()
    tdist.all_reduce(t)
    return t / tdist.get_world_size()


def total(t: torch.Tensor) -> torch.Tensor:
    """The sum of a tensor across ranks."""

    if not active():
        return t
    t = t.clone()
    tdist.all_reduce(t)
    return t


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any (a stop request reaches ranks unevenly)."""

    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


def rows() -> slice:
    """This rank's rows of a global batch whose size is a multiple of the world size."""
    rank, size = world() if active() else (0, 1)
    return slice(rank, None, size)


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """DistributedDataParallel around the model under torchrun; the model itself otherwise."""

    if not active():
        return model

    ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None
    return DistributedDataParallel(model, device_ids=ids)


def finish() -> None:
    if world()[1] > 1 and active():
        tdist.destroy_process_group()


def check_global_batch(batch_size: int) -> None:
    """Under torchrun, train.batch_size is the global batch: a multiple of the processes."""
    size = world()[1]
    if batch_size % size:
        raise ConfigError(
            f"train.batch_size={batch_size} is the global batch; it must be a multiple of "
            f"the {size} processes of torchrun"
        )
