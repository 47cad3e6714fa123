"""Benchmark switches: variants of the book's code that the book never runs, measured side by side with it.

* :func:`prefix_join` -- the shared prompt prefix joined to each batch's keys/values by ``torch.cat`` of the
  broadcast prefix (``"cat"``) instead of the two copies into one buffer that :mod:`lib.model.fast.prefix` makes
  (``"copy"``); same values, slower on CUDA (bench/NOTES.md).
* :func:`encode_group` -- the encoder cache's rows per encoder call (:data:`lib.model.encoder_cache.ENCODE_GROUP`),
  e.g. 1 to encode each clip alone (``bench/encoder_time.py``).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from lib.model import encoder_cache
from lib.model.fast import prefix as P

BOOK_JOIN = P.with_prefix


def cat_join(prefix, states):
    """``torch.cat`` of the prefix broadcast to the batch and the states (the join the book replaced)."""
    import torch

    return torch.cat([prefix.expand(states.shape[0], -1, -1, -1), states], dim=-2)


@contextlib.contextmanager
def prefix_join(kind: str = "cat") -> Iterator[None]:
    """Within the block, shared prefixes are joined by ``kind``: ``copy`` (the book's) or ``cat``."""
    joins = {"copy": BOOK_JOIN, "cat": cat_join}
    if kind not in joins:
        raise ValueError(f"prefix join {kind!r} unknown; use one of {', '.join(joins)}")
    before = P.with_prefix
    P.with_prefix = joins[kind]
    try:
        yield
    finally:
        P.with_prefix = before


@contextlib.contextmanager
def encode_group(rows: int) -> Iterator[None]:
    """Within the block, the encoder cache encodes equal-length clips in groups of ``rows`` rows."""
    before = encoder_cache.ENCODE_GROUP
    encoder_cache.ENCODE_GROUP = rows
    try:
        yield
    finally:
        encoder_cache.ENCODE_GROUP = before
