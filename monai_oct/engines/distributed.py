"""Multi-process runs started by ``torchrun`` (PyTorch DDP): the process group, rank helpers, the network wrapper and
the sampler that shards another sampler.

``torchrun --nproc_per_node N -m monai.bundle run ...`` starts N processes and sets ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each; the bundles' ``multi_gpu_*.yaml`` overlays call
:func:`init_distributed` (NCCL on CUDA, gloo on CPU, chosen from the device), wrap the network with
:func:`wrap_ddp`, shard the data with MONAI's ``DistributedSampler`` (or :class:`ShardSampler` over a custom
sampler) and call :func:`destroy_distributed` at the end. Without a process group every helper answers as for
one process (rank 0 of 1), so the code that uses them runs unchanged in a plain run.

The rank helpers are the few lines of ``torch.distributed`` they wrap rather than ``ignite.distributed``'s: that one
keeps the native process group it first detects, so after ``destroy_process_group`` (the end of every multi-process
stage, and the tests that start and stop groups in one process) its ``get_rank`` raises "Default process group has
not been initialized" instead of answering 0 (tried with ignite 0.5).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterator, Sized

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, Sampler

__all__ = ["is_distributed", "get_rank", "get_world_size", "is_main_process", "barrier", "local_device", "backend_for",
           "init_distributed", "destroy_distributed", "wrap_ddp", "unwrap", "gather_interleaved", "ShardSampler",
           "TORCHRUN_VARIABLES"]

#: what torchrun sets in every process it starts (and ``init_process_group``'s ``env://`` reads).
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_distributed() -> bool:
    """Whether a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Whether this is rank 0: the process that writes checkpoints, logs, grids and manifests."""
    return get_rank() == 0


def barrier() -> None:
    """Wait until every process gets here (nothing without a process group)."""
    if is_distributed():
        dist.barrier()


def gather_interleaved(items: list) -> list:
    """Every rank's ``items`` in the order of the data they came from (on every rank; ``items`` itself in one process).

    Rank ``r`` of ``W`` under a ``DistributedSampler`` without shuffling holds positions ``r, r + W, ...``; its
    ``k``-th item goes back to position ``k * W + r``.

    Args:
        items: this rank's picklable items.

    Returns:
        the items of all ranks, interleaved.
    """
    if not is_distributed():
        return list(items)
    parts: list = [None] * get_world_size()
    dist.all_gather_object(parts, list(items))
    return [part[k] for k in range(max(map(len, parts))) for part in parts if k < len(part)]


def local_device(device: str | torch.device | None = None) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` for CUDA, else ``device`` as given.

    Args:
        device: ``"cuda"``/``"cuda:K"``/``"cpu"``/None (None: CUDA when available, else CPU). A CUDA device always
            becomes ``cuda:LOCAL_RANK`` (one GPU per process, as torchrun starts them).

    Returns:
        the ``torch.device``.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def backend_for(device: str | torch.device) -> str:
    """``"nccl"`` for a CUDA device, ``"gloo"`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_distributed(device: str | torch.device | None = None) -> torch.device:
    """Join the process group torchrun set up (once; a second call only returns the device).

    Args:
        device: as for :func:`local_device`; the backend follows it (NCCL on CUDA, gloo on CPU).

    Returns:
        this process's device (``cuda:LOCAL_RANK``, made the current CUDA device, or the CPU).

    ``sys.excepthook`` is kept as it was (torch replaces it with a wrapper that would swallow the message of a
    hook that ends the process, as the bundles' does).

    Raises:
        RuntimeError: when the process was not started by torchrun (names the missing variables and the command).
    """
    device = local_device(device)
    if is_distributed():
        return device
    missing = [k for k in TORCHRUN_VARIABLES if k not in os.environ]
    if missing:
        raise RuntimeError(f"multi_gpu configs run under torchrun, but {', '.join(missing)} is not set; start with "
                           "'torchrun --standalone --nproc_per_node N -m monai.bundle run --config_file ...'")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    hook = sys.excepthook
    dist.init_process_group(backend=backend_for(device))
    # torch wraps the hook to prefix the rank, buffering stderr until the old hook returns; the bundles' hook
    # (monai_oct.bundle.install_error_handler) exits the process, so the failure's message would never appear
    sys.excepthook = hook
    return device


def destroy_distributed() -> None:
    """Leave the process group (nothing when there is none)."""
    if is_distributed():
        dist.destroy_process_group()


def wrap_ddp(network: nn.Module, device: str | torch.device, **kwargs: Any) -> nn.Module:
    """``network`` on ``device`` wrapped in ``DistributedDataParallel`` (unchanged without a process group).

    Args:
        network: the module (its parameters are broadcast from rank 0 when wrapped).
        device: this process's device; a CUDA device becomes ``device_ids=[device]``.
        kwargs: passed to ``DistributedDataParallel`` (e.g. ``find_unused_parameters``).

    Returns:
        the wrapped module (``.module`` is the plain network, whose state dict has no ``module.`` prefix).
    """
    device = torch.device(device)
    network = network.to(device)
    if not is_distributed():
        return network
    ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(network, device_ids=ids, output_device=device if ids else None, **kwargs)


def unwrap(network: nn.Module) -> nn.Module:
    """The plain network inside a ``DistributedDataParallel``/``DataParallel`` wrapper (``network`` itself otherwise)."""
    return network.module if isinstance(network, (DistributedDataParallel, nn.DataParallel)) else network


class ShardSampler(DistributedSampler):
    """Each process's disjoint share of another sampler's epoch: positions ``rank, rank + N, ...`` of its indices.

    For a dataset, MONAI's/torch's ``DistributedSampler`` does this; a *custom* epoch (e.g.
    :class:`~monai_oct.recipes.mixing.RatioSampler`'s mixing quotas) needs a wrapper, which torch and MONAI do
    not have. Ignite's ``DistributedProxySampler`` is one, but it reseeds torch's global generator with the
    epoch number every epoch (so every rank's noise, dropout and augmentation streams restart each epoch) and
    does not pass the epoch to the wrapped sampler (a resumed run replays the first epoch's order). This one
    sets the wrapped sampler's epoch (when it has ``set_epoch``) before drawing, so every rank draws the same
    order and takes its own share, and nothing global is touched.

    It is a ``DistributedSampler``, so MONAI's workflows call :meth:`set_epoch` at every epoch start. Like
    ``DistributedSampler`` it pads the epoch (repeating its first indices) to a multiple of the number of
    processes, so every rank runs the same number of iterations (DDP needs that).

    Args:
        sampler: the sampler to shard; it must have ``len`` and draw the same indices on every rank for an epoch
            (seeded, as ``RatioSampler`` is).
        num_replicas: number of processes (default: the process group's size).
        rank: this process's rank (default: the process group's).

    Raises:
        TypeError: when ``sampler`` has no length.
    """

    def __init__(self, sampler: Sampler, num_replicas: int | None = None, rank: int | None = None) -> None:
        if not isinstance(sampler, Sized):
            raise TypeError(f"ShardSampler needs a sampler with a length, got {type(sampler).__name__}")
        num_replicas = get_world_size() if num_replicas is None else int(num_replicas)
        rank = get_rank() if rank is None else int(rank)
        super().__init__(range(len(sampler)), num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch of this sampler and of the wrapped one."""
        super().set_epoch(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)  # the same draw however often this epoch is iterated
        indices = [int(i) for i in self.sampler]
        if not indices:
            return iter([])
        while len(indices) < self.total_size:
            indices += indices[: self.total_size - len(indices)]
        return iter(indices[self.rank: self.total_size: self.num_replicas])
