"""torch.distributed plumbing for ``torchrun`` launches, and the seeded, resumable batch sampler.

``torchrun --nproc-per-node G [--nnodes N ...] -m glimpse train ...`` sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_distributed` reads them and joins the process
group (``nccl`` on GPUs, ``gloo`` on CPU). Without those variables everything runs as a single
process and no process group is created.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = [
    "DistInfo",
    "init_distributed",
    "get_rank",
    "get_world_size",
    "resolve_device",
    "ShardedBatchSampler",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank, 0..world_size-1.
        world_size: number of processes in the job.
        local_rank: rank on this node (selects the GPU).
        device: the device this process trains on.
        created_group: True when :func:`init_distributed` created the process group, so the
            caller should destroy it when done.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    created_group: bool

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs and checkpoints."""
        return self.rank == 0


def get_rank() -> int:
    """Global rank, 0 when not distributed."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes, 1 when not distributed."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def init_distributed(device: str | torch.device = "cpu") -> DistInfo:
    """Join the process group described by torchrun's environment variables, if any.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` or an explicit device. Under a multi-process
            launch, ``"cuda"`` becomes ``cuda:LOCAL_RANK``.

    Returns:
        The rank, world size and device of this process.
    """
    device = resolve_device(device)
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        created = False
    else:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        created = world_size > 1
        if created:
            if device.type == "cuda":
                torch.cuda.set_device(local_rank)
            dist.init_process_group(
                backend="nccl" if device.type == "cuda" else "gloo",
                rank=rank,
                world_size=world_size,
            )
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return DistInfo(rank, world_size, local_rank, device, created)


class ShardedBatchSampler(Sampler[list[int]]):
    """An endless stream of batches for iteration-based training, sharded over ranks.

    Epoch ``e`` shuffles the dataset with a generator seeded by ``(seed, e)`` (the same on every
    rank), pads it to a multiple of ``world_size`` by repeating its head, and gives rank ``r``
    the indices ``perm[r::world_size]`` (``DistributedSampler`` semantics). Each rank's epochs
    are concatenated and cut into batches of ``batch_size``, so batch ``k`` of rank ``r`` holds
    ``perm[(k * batch_size + j) * world_size + r]``: the union over ranks of batch ``k`` is the
    single-process batch ``k`` of size ``batch_size * world_size``.

    Because every position is a closed-form function of ``(seed, epoch, rank)``, resuming only
    needs the number of batches already consumed (``start_batch``).

    Args:
        dataset_len: number of samples.
        batch_size: samples per batch on this rank.
        seed: shuffling seed.
        rank: this process's rank.
        world_size: number of processes.
        shuffle: permute every epoch (else the natural order).
        start_batch: number of batches to skip (already consumed before a resume).
    """

    def __init__(
        self,
        dataset_len: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        start_batch: int = 0,
    ) -> None:
        if dataset_len <= 0:
            raise ValueError("cannot train on an empty dataset (it has 0 samples)")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.start_batch = start_batch
        # samples per rank per epoch, after padding to a multiple of world_size
        self.per_rank = -(-dataset_len // world_size)

    def _epoch_indices(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.dataset_len, generator=g).tolist()
        else:
            perm = list(range(self.dataset_len))
        total = self.per_rank * self.world_size
        perm = (perm * (-(-total // len(perm))))[:total]
        return perm[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        position = self.start_batch * self.batch_size
        epoch, offset = divmod(position, self.per_rank)
        indices = self._epoch_indices(epoch)[offset:]
        while True:
            while len(indices) < self.batch_size:
                epoch += 1
                indices += self._epoch_indices(epoch)
            yield indices[: self.batch_size]
            indices = indices[self.batch_size :]
