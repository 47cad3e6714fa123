"""Scoring: one forward pass per batch of clips, the logits of ``A`` and ``B`` at the answer position.

``p_speech = softmax([logit_A, logit_B])[0]``. :func:`score` is the plain loop; ``fast=True`` (the default on a
GPU) hands the same work to the fast scorer (:mod:`lib.model.fast`), whose speed-ups change nothing beyond float
rounding. :func:`generate_answers` is the cross-check through Hugging Face's own ``generate``.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .batching import batches_of, length_buckets, with_cpu_threads
from .encoder_cache import EncoderCache
from .fast.scorer import score as fast_score
from .forward import Scores, answer_logits, softmax2
from .load import on_gpu, short_encoder_for, unwrap, uses_short_encoder
from .prompt import ANSWERS, DEFAULT_PROMPT, answer_token_ids, make_inputs


@with_cpu_threads
def score(model, processor, audios: Sequence[np.ndarray], prompt: str = DEFAULT_PROMPT, batch_size: int = 16,
          short_encoder: bool | None = None, progress: bool = False, desc: str = "scoring",
          lengths: Sequence[int] | None = None, fast: bool | None = None) -> Scores:
    """Score clips: one forward pass per batch of similar lengths, logits of A/B at the answer position.

    ``fast``: the GPU fast path (:func:`lib.model.fast.score`: shared prompt prefix, prefetching worker, fused
    kernels, attention off cuDNN); ``None`` (the default) means on when the model is on CUDA, so CPU results are
    bit for bit this loop's. ``audios`` may be lazy (e.g. :class:`ClipFiles`, which reads a file on access): with
    ``lengths`` (samples per clip, exact or approximate, e.g. from the bank's ``duration_ms``) the batches are made
    from them and each clip is read once.
    """
    if on_gpu(model) if fast is None else fast:
        return fast_score(model, processor, audios, prompt, batch_size, short_encoder, progress, desc, lengths,
                          shared_prefix=True, prefetch=True, fused=True, plan_free_attention=True)
    import torch
    from tqdm.auto import tqdm

    short_encoder = short_encoder_for(model, short_encoder)
    ids = answer_token_ids(processor.tokenizer)
    logits = np.zeros((len(audios), 2), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for idx in tqdm(batches_of(audios, batch_size, lengths), desc=desc, disable=not progress, unit="batch"):
                inputs = make_inputs(processor, [audios[i] for i in idx], prompt, short_encoder=short_encoder)
                logits[idx] = answer_logits(model, inputs, ids).cpu().numpy()
    finally:
        model.train(was_training)
    return Scores(p_speech=softmax2(logits), logits=logits)


@with_cpu_threads
def generate_answers(model, processor, audios: Sequence[np.ndarray], prompt: str = DEFAULT_PROMPT,
                     batch_size: int = 16, short_encoder: bool | None = None) -> tuple[list[str], np.ndarray]:
    """Constrained ``generate``: one new token, only ``A``/``B`` allowed, greedy; returns answers and raw logits.

    The cross-check of :func:`score`: it goes through Hugging Face's own forward and generation loop.
    """
    import torch

    if short_encoder is None:
        short_encoder = uses_short_encoder(model)
    ids = answer_token_ids(processor.tokenizer)
    answers: list[str] = [""] * len(audios)
    raw = np.zeros((len(audios), 2), dtype=np.float32)
    model.eval()
    with torch.inference_mode():
        for idx in length_buckets([len(a) for a in audios], batch_size):
            inputs = make_inputs(processor, [audios[i] for i in idx], prompt, short_encoder=short_encoder)
            device = unwrap(model).lm_head.weight.device
            inputs = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in inputs.items()}
            out = model.generate(**inputs, max_new_tokens=1, do_sample=False, num_beams=1,
                                 prefix_allowed_tokens_fn=lambda batch_id, sent: list(ids),
                                 output_logits=True, return_dict_in_generate=True)
            new = out.sequences[:, -1].cpu().numpy()
            raw[idx] = out.logits[0][:, list(ids)].float().cpu().numpy()
            for j, tok in zip(idx, new):
                answers[j] = ANSWERS[list(ids).index(int(tok))]
    return answers, raw


@with_cpu_threads
def encoder_outputs(model, processor, audios: Sequence[np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
    """The audio tower's outputs per clip, (audio tokens, d_model) each, before the projector: what the language
    model is given about the clip. Through the model's :class:`EncoderCache` when it has one."""
    import torch

    out: list[np.ndarray] = [np.zeros(0)] * len(audios)
    base = unwrap(model)
    tower = base.model.audio_tower
    cache = getattr(base, "speechbook_encoder_cache", None) or EncoderCache()
    for idx in length_buckets([len(a) for a in audios], batch_size):
        inputs = make_inputs(processor, [audios[i] for i in idx], short_encoder=uses_short_encoder(model))
        frames = inputs["feature_attention_mask"].sum(-1)
        feat_lengths, out_lengths = tower._get_feat_extract_output_lengths(frames)
        with torch.no_grad():
            hidden = cache.encode(tower, inputs["input_features"], frames, feat_lengths, out_lengths)
        for j, i in enumerate(idx):
            out[i] = hidden[j, : int(out_lengths[j])].numpy()
    return out


class ClipFiles(Sequence):
    """Clips read from audio files on access (``load``: path -> float32 16-kHz array; default: the book's
    :func:`lib.data.load_clip` with ``normalization``). Pass it to :func:`score` with ``lengths`` so each file is
    read once (on the fast path, in the worker that builds its batch)."""

    def __init__(self, paths: Sequence[str | os.PathLike], normalization: str = "rms", load=None):
        self.paths = list(paths)
        self.normalization = normalization
        self._load = load

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if self._load is not None:
            return self._load(self.paths[i])
        from .. import data

        return data.load_clip(self.paths[i], self.normalization)
