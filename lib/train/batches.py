"""Which clips each optimizer step trains on.

An epoch's order is a function of ``(seed, epoch)`` alone, so a resumed run (which knows only its epoch and
position) sees the clips an uninterrupted run would. The order is cut into micro-batches (one forward and
backward each), and ``grad_accum_steps`` consecutive micro-batches make one optimizer step; an epoch's last
micro-batch and step may be short.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def micro_batches(n: int, micro_batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The clip indices of each micro-batch of ``epoch``."""
    order = epoch_order(n, seed, epoch)
    return [order[i:i + micro_batch_size] for i in range(0, n, micro_batch_size)]


def optimizer_steps(batches: list[np.ndarray], grad_accum_steps: int, start: int = 0) -> Iterator[list[np.ndarray]]:
    """The micro-batches of each optimizer step, from micro-batch ``start`` on (where a resumed run stopped)."""
    for i in range(start, len(batches), grad_accum_steps):
        yield batches[i:i + grad_accum_steps]


def steps_per_epoch(n: int, micro_batch_size: int, grad_accum_steps: int) -> int:
    return math.ceil(math.ceil(n / micro_batch_size) / grad_accum_steps)
