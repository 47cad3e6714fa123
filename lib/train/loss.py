"""The training loss: cross-entropy on the answer token (``loss_masking``) or on every text token (the ablation),
and the gradient of one optimizer step accumulated over its micro-batches."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from .. import model as M

if TYPE_CHECKING:
    from .data_parallel import DataParallel
    from .recipe import TrainConfig

LABEL_TO_ANSWER = {"speech": "A", "nonspeech": "B"}


def answers_for(labels: Sequence[str]) -> list[str]:
    """The answer token of each training label; an unknown label is refused before any work."""
    bad = sorted(set(labels) - set(LABEL_TO_ANSWER))
    if bad:
        raise ValueError(f"unknown training labels {bad}; expected {sorted(LABEL_TO_ANSWER)}")
    return [LABEL_TO_ANSWER[label] for label in labels]


def batch_loss(model, processor, audios: Sequence[np.ndarray], answers: Sequence[str], tc: "TrainConfig",
               short_encoder: bool = True):
    """Mean cross-entropy (full vocabulary) over the answer token, or over every text token."""
    import torch

    inputs = M.make_inputs(processor, audios, tc.prompt, short_encoder=short_encoder, answers=answers)
    with M.attention_backends(model):  # SDPA's backward uses the forward's kernel
        h = M.hidden_states(model, inputs)
    ids = inputs["input_ids"].to(h.device)
    mask = inputs["attention_mask"].to(h.device).bool()
    targets = ids[:, 1:]
    if tc.loss_masking:
        suffix_lens = {M.cached_on_processor(processor, ("suffix_len", tc.prompt, a), lambda a=a: len(processor.tokenizer(
            M.answer_suffix(processor, tc.prompt, a), add_special_tokens=False).input_ids)) for a in set(answers)}
        if len(suffix_lens) != 1:
            raise ValueError("the answers' turns differ in token length; cannot locate the answer position")
        answer_pos = ids.shape[1] - suffix_lens.pop()  # index of the answer token (left padding)
        select = torch.zeros_like(targets, dtype=torch.bool)
        select[:, answer_pos - 1] = True
    else:
        audio_id = M.unwrap(model).config.audio_token_id
        select = mask[:, 1:] & (targets != audio_id)
    head = M.unwrap(model).lm_head
    logits = head(h[:, :-1][select]).float()
    return torch.nn.functional.cross_entropy(logits, targets[select])


def accumulate_gradients(model, processor, audios: Sequence[np.ndarray], answers: Sequence[str],
                         micro_batches: Sequence[np.ndarray], tc: "TrainConfig", short_encoder: bool,
                         parallel: "DataParallel | None" = None) -> float:
    """Backward over one optimizer step's micro-batches (indices into ``audios``); returns the step's loss.

    Each micro-batch's loss is weighted by its share of the step's clips, so the gradient is that of the mean
    loss over the step's clips whatever the micro-batch size. With ``parallel`` this process takes its share of
    every micro-batch, and its gradient is a part of the whole step's (``DataParallel.sum_gradients`` adds them).
    """
    n_step = sum(len(idx) for idx in micro_batches)
    total = 0.0
    for idx in micro_batches:
        if parallel is not None:
            idx = parallel.shard(idx)
            if len(idx) == 0:
                continue
        loss = batch_loss(model, processor, [audios[i] for i in idx], [answers[i] for i in idx], tc,
                          short_encoder=short_encoder)
        weight = len(idx) / n_step
        with M.attention_backends(model):  # gradient checkpointing recomputes attention here: the same kernels
            (loss * weight).backward()
        total += float(loss.detach()) * weight
    return total
