"""One job on several ranks (torchrun + DDP): the process group, data shards, token weighting.

Every function takes the run's Ranks (None in a single process) and does nothing without
one, so the engine's loop reads the same in both cases. Each rank runs the whole loop on
the same global batch order (one seeded generator), trains on its strided share of each
batch, and DDP sums the gradients. The loss is token-weighted across ranks: each rank's
piece weighs its valid tokens over the global count (all_reduce), so a rank with fewer
valid tokens (padding, masked prompts) counts for less, exactly as in one process.
"""

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from worker.training.callbacks import StopReason
from worker.training.device import pick_device

# Rank 0 saves checkpoints while the others wait at a barrier: a gpt2-xl checkpoint on a
# slow disk takes minutes, far under this.
GROUP_TIMEOUT = datetime.timedelta(hours=1)
STOP_CODES = [None, *StopReason]


@dataclass
class Ranks:
    """This rank's place in the group and the DDP wrapper its training passes go through."""

    rank: int
    world: int
    model: Any  # DistributedDataParallel around Run.model (which stays the plain module)
    device: torch.device
    # This step's share of the batch is empty (a batch smaller than the group): the rank
    # runs a stand-in row that weighs nothing, so every rank joins the gradient all-reduce.
    idle: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_group() -> torch.device:
    """Join torchrun's group (env RANK, WORLD_SIZE, LOCAL_RANK); gloo on CPU, NCCL on GPUs."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if pick_device().type == "cuda":  # the worker's GPT2FT_DEVICE rule, as for one process
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend, timeout=GROUP_TIMEOUT)
    return device


def wrap(model: Any, device: torch.device) -> Ranks | None:
    """Ranks with a DDP wrapper around model when a group is up, else None."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    ids = [device.index] if device.type == "cuda" else None
    # broadcast_buffers off: rank 0 alone may run the plain module (sampling) between steps.
    ddp = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    return Ranks(dist.get_rank(), dist.get_world_size(), ddp, device)


def is_main(ranks: Ranks | None) -> bool:
    """True on rank 0 (and in a single process): the rank that saves and reports."""
    return ranks is None or ranks.main


def shard(ranks: Ranks | None, index: torch.Tensor) -> torch.Tensor:
    """This rank's rows of the global batch index: every world-th, from its rank."""
    if ranks is None:
        return index
    rows = index[ranks.rank :: ranks.world]
    ranks.idle = rows.numel() == 0
    return index[:1] if ranks.idle else rows


def count_tokens(
    ranks: Ranks | None, counted: list[torch.Tensor]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(each piece's valid tokens, the batch's total): the total summed over every rank."""
    if ranks is not None and ranks.idle:
        counted = [count * 0 for count in counted]
    total = torch.stack(counted).sum()
    if ranks is not None:
        dist.all_reduce(total)
    return counted, total


def forward_model(run: Any) -> Any:
    """What a training pass calls: the DDP wrapper on several ranks, else the model."""
    return run.model if run.ranks is None else run.ranks.model


def accumulating(ranks: Ranks | None, more_pieces: bool) -> Any:
    """DDP's no_sync for every micro-batch but the last: one all-reduce per optimizer step."""
    return ranks.model.no_sync() if ranks is not None and more_pieces else nullcontext()


def gradient_scale(ranks: Ranks | None) -> int:
    """DDP averages gradients over ranks; each rank's loss is its share of the global sum."""
    return 1 if ranks is None else ranks.world


def sum_over_ranks(
    ranks: Ranks | None, loss: torch.Tensor, correct: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's loss (already a share of the global mean) and correct count, summed."""
    if ranks is None:
        return loss, correct
    both = torch.stack([loss.double(), correct.double() * (not ranks.idle)])
    dist.all_reduce(both)
    return both[0].to(loss.dtype), both[1].to(correct.dtype)


def agree(ranks: Ranks | None, reason: StopReason | None) -> StopReason | None:
    """Rank 0's stop reason on every rank, so all of them leave the loop at the same step."""
    if ranks is None:
        return reason
    code = torch.tensor([STOP_CODES.index(reason)], device=ranks.device)
    dist.broadcast(code, 0)
    return STOP_CODES[int(code.item())]


@contextmanager
def main_rank_writes(ranks: Ranks | None) -> Iterator[bool]:
    """Yields True on the rank that writes (rank 0); the others wait at a barrier for it."""
    try:
        yield is_main(ranks)
    finally:
        if ranks is not None:
            dist.barrier()


def leave_group() -> None:
    """Destroy the process group, if one is up."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
