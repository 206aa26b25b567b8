"""torchrun support for the training loop: the process group, the sharded sampler and the global-batch loss.

Under torchrun (WORLD_SIZE > 1) training runs with DistributedDataParallel: NCCL on CUDA (one GPU per process,
cuda:LOCAL_RANK), gloo on CPU. `--batch-size` stays the global batch; every rank draws the run's global sample (the
same seeded sampler as one process) and takes its own share, so each optimiser step sees the batch one process
would; time-budget and early-stopping decisions are rank 0's; rank 0 alone writes the output folder.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job; the default (world size 1) is a plain single-process run.

    Every collective helper returns its input unchanged in a single-process run, so the training loop reads the same
    either way.
    """

    device: torch.device
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether this run is one of several DistributedDataParallel processes."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that decides, logs and writes files."""
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: str | None = None) -> Distributed:
        """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU); else a plain run.

        Args:
            device: --device (cpu, cuda; default cuda when available). Under torchrun a CUDA run uses
                cuda:LOCAL_RANK, one GPU per process.
        """
        default = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls(device=default)
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if default.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise SystemExit(
                    f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} CUDA devices: start at "
                    "most one process per GPU (torchrun --nproc_per_node)."
                )
            run_device, backend = torch.device("cuda", local_rank), "nccl"
            torch.cuda.set_device(run_device)
        else:
            run_device, backend = default, "gloo"
        torch.distributed.init_process_group(backend=backend, device_id=run_device if backend == "nccl" else None)
        return cls(device=run_device, world_size=world_size, rank=rank, local_rank=local_rank, backend=backend)

    def local_batch(self, batch_size: int) -> int:
        """Each rank's share of the global --batch-size; refuses a batch that the processes cannot share evenly."""
        if batch_size % self.world_size:
            raise SystemExit(
                f"--batch-size {batch_size} is the global batch and must be divisible by the {self.world_size} "
                f"processes (WORLD_SIZE); try {max(1, batch_size // self.world_size) * self.world_size}."
            )
        return batch_size // self.world_size

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value (any picklable object) on every rank."""
        if not self.enabled:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def flag(self, value: bool) -> bool:
        """Rank 0's decision on every rank (one small tensor broadcast: cheap enough for every step)."""
        if not self.enabled:
            return value
        tensor = torch.tensor([int(value)], device=self.device)
        torch.distributed.broadcast(tensor, src=0)
        return bool(tensor.item())

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's value (picklable), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        values: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(values, value)
        return values

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so all replicas are identical."""
        if self.enabled:
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer.data, src=0)

    def close(self) -> None:
        """Leave the process group (a no-op in a single-process run)."""
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class ShardSampler(torch.utils.data.Sampler[int]):
    """One rank's share of the global training sample, for DistributedDataParallel.

    Every rank runs the same single-process sampler (`sampler`: the WeightedRandomSampler of the class/source
    weighting, or a RandomSampler), seeded alike and drawn in the same order, so all ranks hold the same global
    sample each epoch: exactly what one process draws, epoch after epoch, and restored with the loader generator on
    --resume. That sample is cut to whole global batches (the single-process loader drops the last partial batch
    too) and rank r takes every world_size-th index from r: the union of the ranks' k-th batches is the global
    sample's k-th batch of `batch_size`, the batch one process would train on at that step.
    """

    def __init__(self, sampler: torch.utils.data.Sampler[int], *, batch_size: int, rank: int, world_size: int):
        """Shard `sampler`'s draws for `rank` of `world_size`; `batch_size` is the global batch."""
        self.sampler, self.batch_size, self.rank, self.world_size = sampler, batch_size, rank, world_size

    def _kept(self) -> int:
        n = len(self.sampler)
        if n > self.batch_size:  # whole global batches only, as the single-process loader's drop_last
            return n // self.batch_size * self.batch_size
        return math.ceil(n / self.world_size) * self.world_size  # one short batch, padded to an equal share

    def __len__(self) -> int:
        """Indices per rank and epoch."""
        return self._kept() // self.world_size

    def __iter__(self) -> Iterator[int]:
        """This rank's indices of this epoch's global sample."""
        drawn = list(self.sampler)
        kept = self._kept()
        drawn = (drawn * math.ceil(kept / max(1, len(drawn))))[:kept]
        return iter(drawn[self.rank :: self.world_size])


def seed_worker(worker_id: int, rank: int) -> None:
    """DataLoader worker seeding under DDP: ranks share the loader generator, so mix the rank into the seed.

    Without this every rank's worker k would draw the same augmentations (rotation, shift, ...) in the same order.
    """
    seed = (torch.initial_seed() + 1_000_003 * rank) % 2**63
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def distributed_loss(
    logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, dist: Distributed
) -> torch.Tensor:
    """One rank's share of the global batch's (class-weighted) mean cross-entropy.

    DDP averages gradients over ranks, so each rank returns world_size * sum(w_i * loss_i) / sum over the global
    batch of w_i: the average of these is the single-process loss on the whole global batch. (The per-rank weighted
    mean would weigh ranks equally whatever their class mix.)
    """
    losses = torch.nn.functional.cross_entropy(logits, y, weight=weight, reduction="none")
    if weight is None:
        total = float(len(y) * dist.world_size)  # equal shares: the global count is known
    else:
        total = dist.sum([float(weight[y].sum())])[0]
    return losses.sum() * (dist.world_size / total)
