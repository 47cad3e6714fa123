"""Data-parallel training over several processes (torchrun / Accelerate: ``lib.distributed`` starts them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class DataParallel:
    """This process's part in data-parallel training over ``world`` processes.

    Every process sees the same seeded data order and takes every ``world``-th clip of each micro-batch;
    gradients are summed across processes before the optimizer step, so the step equals the one-process
    step on the same effective batch (up to the order of floating-point sums).
    """

    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: np.ndarray) -> np.ndarray:
        return idx[self.rank::self.world]

    def sum_gradients(self, params: Sequence[Any], loss_share: float) -> float:
        """Sum every process's gradients (each a share of the step's) and losses; returns the step's loss."""
        import torch
        import torch.distributed as dist

        for p in params:
            if p.grad is None:  # a process with no clips in this step still takes part in the sum
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        total = torch.tensor([loss_share], dtype=torch.float64, device=params[0].device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return float(total)

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()
