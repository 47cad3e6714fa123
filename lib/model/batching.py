"""How clips are run through the model: in batches of similar length, and a small model on one CPU thread."""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Sequence

import numpy as np

from .load import unwrap


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length (sorted by length, stable), for scoring."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def batches_of(audios: Sequence, batch_size: int, lengths: Sequence[int] | None = None) -> list[np.ndarray]:
    """:func:`length_buckets` of the clips, by their own lengths or by ``lengths`` (samples per clip, exact or
    approximate, e.g. from a bank's ``duration_ms``) so that lazy clips are not read to be sorted."""
    if lengths is not None and len(lengths) != len(audios):
        raise ValueError(f"lengths has {len(lengths)} entries for {len(audios)} clips")
    return length_buckets(list(lengths) if lengths is not None else [len(a) for a in audios], batch_size)


SMALL_MODEL_PARAMS = 50_000_000


@contextlib.contextmanager
def cpu_threads_for(model):
    """Run a small model on CPU with one intra-op thread (``SPEECHBOOK_CPU_THREADS`` overrides it).

    The tiny model's matrices are too small to share out: on the 2-core machine with other work running,
    two torch threads were several times slower than one (BENCHMARKS.md).
    GPU runs and large models keep torch's setting. Restored on exit.
    """
    import torch

    if model is None:  # nothing to size up: let the wrapped function report what is wrong with its input
        yield
        return
    base = unwrap(model)
    # the vocabulary-sized embedding and head are looked up / read two rows at a time: they do not count as work
    vocab_sized = {id(p) for p in (*base.get_input_embeddings().parameters(), *base.lm_head.parameters())}
    small = sum(p.numel() for p in base.parameters() if id(p) not in vocab_sized) < SMALL_MODEL_PARAMS
    on_cpu = next(base.parameters()).device.type == "cpu"
    if not (small and on_cpu):
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("SPEECHBOOK_CPU_THREADS", "1")))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def with_cpu_threads(fn):
    """Decorator: call ``fn(model, ...)`` under :func:`cpu_threads_for` of its first argument."""
    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        with cpu_threads_for(model):
            return fn(model, *args, **kwargs)

    return wrapper
