"""The book's one metrics core: accuracy, balanced accuracy and the two per-class recalls.

Everything that scores decisions calls this module: the statistics' tables and bootstrap, the baselines'
threshold choice (``lib.baselines``), the training loop's dev score (``lib.train``) and the per-condition
breakdown (``lib.evaluate``). ``speech`` is the positive class: ``recall_speech`` is the sensitivity,
``recall_nonspeech`` the specificity, and balanced accuracy their mean.

The core works on **class counts** ``[..., 4]`` = ``(n_speech, correct_speech, n_nonspeech,
correct_nonspeech)``, so the same formulas serve one system (a vector), every bootstrap replicate at once
(a matrix) and every candidate threshold at once.

A class with no clips: balanced accuracy is then undefined (``absent_class="undefined"``, NaN: the book's
tables, where a balanced accuracy of one class would be read as balanced), or the recall of the class
present (``absent_class="other"``: the breakdown by condition and the psychometric levels, where a level
may hold one class only, and the training loop's dev score).
"""
from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np

POSITIVE = "speech"
METRICS = ("accuracy", "balanced_accuracy", "recall_speech", "recall_nonspeech")
AbsentClass = Literal["undefined", "other"]


def ratio(k: Any, n: Any) -> np.ndarray:
    """``k / n`` elementwise, NaN where ``n == 0``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.asarray(n) > 0, np.asarray(k, float) / np.where(np.asarray(n) > 0, n, 1), np.nan)


def class_counts(is_speech: Sequence[bool] | np.ndarray, correct: Sequence[bool] | np.ndarray) -> np.ndarray:
    """``(n_speech, correct_speech, n_nonspeech, correct_nonspeech)`` of clips with these truths and outcomes."""
    s, ok = np.asarray(is_speech, bool), np.asarray(correct, bool)
    return np.array([s.sum(), (ok & s).sum(), (~s).sum(), (ok & ~s).sum()], float)


def metrics_from_counts(counts: np.ndarray, absent_class: AbsentClass = "undefined") -> dict[str, np.ndarray]:
    """The four metrics from class counts ``[..., 4]`` (any leading shape: one system, or many replicates)."""
    c = np.asarray(counts, float)
    ns, ks, nn, kn = (c[..., i] for i in range(4))
    rs, rn = ratio(ks, ns), ratio(kn, nn)
    balanced = (rs + rn) / 2  # NaN when a class is absent: undefined, not the other recall
    if absent_class == "other":
        balanced = np.where((ns > 0) & (nn > 0), balanced, np.where(ns > 0, rs, rn))
    elif absent_class != "undefined":
        raise ValueError(f"absent_class must be 'undefined' or 'other', not {absent_class!r}")
    return {"accuracy": ratio(ks + kn, ns + nn), "balanced_accuracy": balanced, "recall_speech": rs, "recall_nonspeech": rn}


def truth_and_correct(label: Sequence[Any], pred: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per clip: whether it is speech, and whether the decision is right.

    ``label`` and ``pred`` are the predictions table's words (``speech`` / ``nonspeech``) or booleans
    (or 0/1: True = speech), as the baselines and the training loop hold them.
    """
    label, pred = np.asarray(label), np.asarray(pred)
    if label.dtype.kind in "biu" and pred.dtype.kind in "biu":
        y = label.astype(bool)
        return y, y == pred.astype(bool)
    label, pred = label.astype(str), pred.astype(str)
    return label == POSITIVE, label == pred


def binary_metrics(label: Sequence[Any], pred: Sequence[Any], absent_class: AbsentClass = "undefined") -> dict[str, float]:
    """Accuracy, balanced accuracy (mean of the two recalls) and per-class recall of one system."""
    counts = class_counts(*truth_and_correct(label, pred))
    return {k: float(v) for k, v in metrics_from_counts(counts, absent_class).items()}


def balanced_accuracy(label: Sequence[Any], pred: Sequence[Any], absent_class: AbsentClass = "undefined") -> float:
    """Mean of the two per-class recalls (see ``binary_metrics``)."""
    return binary_metrics(label, pred, absent_class)["balanced_accuracy"]


def weighted_auc(y: np.ndarray, score: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """ROC AUC (Mann-Whitney, ties count 1/2) for one or many weight vectors ``[r, n]`` at once.

    Equals ``sklearn.metrics.roc_auc_score(y, score, sample_weight=w)`` (tested); vectorised so that the
    bootstrap can compute a thousand replicates in one pass.
    """
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, float)
    w = np.ones((1, len(y))) if weights is None else np.atleast_2d(np.asarray(weights, float))
    order = np.argsort(score, kind="mergesort")
    sorted_score = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    ws = w[:, order]
    yp = y[order]
    wp = np.add.reduceat(ws * yp, starts, axis=1)
    wn = np.add.reduceat(ws * ~yp, starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn
    num = (wp * (below + 0.5 * wn)).sum(axis=1)
    den = wp.sum(axis=1) * wn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return auc if weights is not None and np.ndim(weights) == 2 else auc[0]
