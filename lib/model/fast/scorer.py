"""The fast scorer: :func:`lib.model.score`'s loop with the GPU speed-ups, each proven by a test to change nothing
beyond float noise (``tests/test_fast_scoring.py``):

* ``shared_prefix`` -- the prompt tokens before the audio computed once (:class:`SharedPrefix`), not in every row;
* ``prefetch`` -- the next batches' inputs (feature extraction, tokenization, reading lazy clips) built by a worker
  thread while the GPU runs the current one, and results copied back once at the end, so the GPU never waits for
  the CPU;
* ``fused`` -- the language model's elementwise work fused (:func:`fused_kernels`);
* ``plan_free_attention`` -- attention off cuDNN (:func:`attention_backends`): cuDNN builds a plan for every new
  batch shape, which slows the first pass over new clips, and the memory-efficient kernel is as fast per batch.

What each gains on the 7B: BENCHMARKS.md.

Each switch left at ``None`` is on when the model is on CUDA and off on the CPU, where the loop is then bit for bit
the plain one.
"""
from __future__ import annotations

import collections
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

import numpy as np

from ..batching import batches_of, with_cpu_threads
from ..forward import Scores, answer_logits, softmax2
from ..load import on_gpu, short_encoder_for
from ..prompt import DEFAULT_PROMPT, answer_token_ids, make_inputs
from .kernels import scoring_kernels
from .prefix import SharedPrefix

PREFETCH_AHEAD = 2  # batches the worker keeps ready


@with_cpu_threads
def score(model, processor, audios: Sequence[np.ndarray], prompt: str = DEFAULT_PROMPT, batch_size: int = 16,
          short_encoder: bool | None = None, progress: bool = False, desc: str = "scoring",
          lengths: Sequence[int] | None = None, *, shared_prefix: bool | None = None, prefetch: bool | None = None,
          fused: bool | None = None, plan_free_attention: bool | None = None) -> Scores:
    """:func:`lib.model.score` with the speed-ups of this module switched one by one (``None``: on CUDA only)."""
    import torch
    from tqdm.auto import tqdm

    gpu = on_gpu(model)
    shared_prefix, prefetch, fused, plan_free_attention = (
        gpu if switch is None else switch for switch in (shared_prefix, prefetch, fused, plan_free_attention))
    short_encoder = short_encoder_for(model, short_encoder)
    ids = answer_token_ids(processor.tokenizer)
    logits = np.zeros((len(audios), 2), dtype=np.float32)

    def make(idx: np.ndarray):
        return make_inputs(processor, [audios[i] for i in idx], prompt, short_encoder=short_encoder)

    was_training = model.training
    model.eval()
    try:
        batches = batches_of(audios, batch_size, lengths)
        with torch.inference_mode(), scoring_kernels(model, fused=fused, plan_free_attention=plan_free_attention):
            # built before the prefetching worker starts: a fast tokenizer's padding settings are shared state, and a
            # tokenization here while the worker pads a batch gave the worker ragged, unpadded ids (seen in CI)
            prefix = SharedPrefix.for_prompt(model, processor, prompt) if shared_prefix and batches else None
            with prefetched(make, batches, enabled=prefetch) as made:
                outs = [(idx, answer_logits(model, inputs, ids, prefix=prefix))
                        for idx, inputs in tqdm(made, total=len(batches), desc=desc, disable=not progress, unit="batch")]
            for idx, out in outs:  # one copy back per batch, after the last forward pass was queued
                logits[idx] = out.cpu().numpy()
    finally:
        model.train(was_training)
    return Scores(p_speech=softmax2(logits), logits=logits)


@contextlib.contextmanager
def prefetched(make: Callable, batches: list[np.ndarray], enabled: bool = True) -> Iterator[Iterator[tuple]]:
    """``(idx, make(idx))`` for every batch, in order; when ``enabled``, made by one worker thread
    :data:`PREFETCH_AHEAD` batches ahead. The worker is shut down on leaving the block, whatever happened in it."""
    if not enabled or len(batches) < 2:
        yield ((idx, make(idx)) for idx in batches)
        return
    pool = ThreadPoolExecutor(1, thread_name_prefix="speechbook-inputs")
    try:
        pending = collections.deque(pool.submit(make, idx) for idx in batches[:PREFETCH_AHEAD])

        def in_order() -> Iterator[tuple]:
            for k, idx in enumerate(batches):
                inputs = pending.popleft().result()
                if k + PREFETCH_AHEAD < len(batches):
                    pending.append(pool.submit(make, batches[k + PREFETCH_AHEAD]))
                yield idx, inputs

        yield in_order()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
