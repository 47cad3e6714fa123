"""Are a system's probabilities honest? Brier score, reliability diagrams, expected calibration error, ROC."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..results import SYSTEM_KEY
from .intervals import wilson_interval
from .metrics import POSITIVE, weighted_auc
from .predictions import select, system_keys


def brier_score(y: Sequence[bool], p: Sequence[float]) -> float:
    """Mean squared error of ``p_speech`` against the 0/1 truth (``sklearn.metrics.brier_score_loss``)."""
    from sklearn.metrics import brier_score_loss

    return float(brier_score_loss(np.asarray(y, int), np.asarray(p, float), pos_label=1))


def reliability_table(y: Sequence[bool], p: Sequence[float], n_bins: int = 10, strategy: str = "uniform",
                      level: float = 0.95) -> pd.DataFrame:
    """Reliability-diagram data for ``p_speech``: per bin, count, mean predicted probability, observed
    share of speech with its Wilson interval. Bins: ``uniform`` (equal width on [0, 1], right-closed
    last bin) or ``quantile``. Empty bins are left out."""
    y, p = np.asarray(y, bool), np.asarray(p, float)
    if strategy == "quantile":
        edges = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1)))
        edges[0], edges[-1] = 0.0, 1.0
    elif strategy == "uniform":
        edges = np.linspace(0, 1, n_bins + 1)
    else:
        raise ValueError("strategy must be 'uniform' or 'quantile'")
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for j in range(len(edges) - 1):
        m = idx == j
        if not m.any():
            continue
        k, n = int(y[m].sum()), int(m.sum())
        lo, hi = wilson_interval(k, n, level)
        rows.append({"bin": j, "bin_lo": edges[j], "bin_hi": edges[j + 1], "n": n, "mean_p": float(p[m].mean()),
                     "frac_speech": k / n, "wilson_lo": lo, "wilson_hi": hi})
    return pd.DataFrame(rows)


def expected_calibration_error(y: Sequence[bool], p: Sequence[float], n_bins: int = 10, strategy: str = "uniform",
                               kind: str = "speech") -> float:
    """ECE = sum over bins of (n_bin / N) * |observed frequency - mean predicted probability|.

    ``kind="speech"``: the probability is ``p_speech`` and the frequency the share of speech (the
    reliability diagram's ECE). ``kind="confidence"``: top-label ECE, with confidence ``max(p, 1-p)``
    against the share of correct decisions at threshold 0.5.
    """
    y, p = np.asarray(y, bool), np.asarray(p, float)
    if kind == "confidence":
        pred = p >= 0.5
        y, p = pred == y, np.where(pred, p, 1 - p)
    elif kind != "speech":
        raise ValueError("kind must be 'speech' or 'confidence'")
    t = reliability_table(y, p, n_bins, strategy)
    return float((t["n"] / len(p) * (t["frac_speech"] - t["mean_p"]).abs()).sum())


def calibration_table(predictions: pd.DataFrame, n_bins: int = 10) -> pd.DataFrame:
    """Per system: Brier score, ECE (speech-probability and top-label), AUC."""
    rows = []
    for key in system_keys(predictions):
        part = select(predictions, key)
        y, p = part["label"].astype(str).values == POSITIVE, part["p_speech"].astype(float).values
        rows.append({**dict(zip(SYSTEM_KEY, key)), "n": len(part), "brier": brier_score(y, p),
                     "ece": expected_calibration_error(y, p, n_bins),
                     "ece_confidence": expected_calibration_error(y, p, n_bins, kind="confidence"),
                     "auc": float(weighted_auc(y, p)), "mean_p_speech": float(p.mean())})
    return pd.DataFrame(rows)


def reliability_frame(predictions: pd.DataFrame, n_bins: int = 10, strategy: str = "uniform") -> pd.DataFrame:
    """``reliability_table`` for every system, stacked with the system key columns."""
    parts = []
    for key in system_keys(predictions):
        part = select(predictions, key)
        t = reliability_table(part["label"].astype(str).values == POSITIVE, part["p_speech"].astype(float).values, n_bins, strategy)
        parts.append(t.assign(**dict(zip(SYSTEM_KEY, key))))
    return pd.concat(parts, ignore_index=True)


def roc_frame(predictions: pd.DataFrame) -> pd.DataFrame:
    """ROC curve points of every system (``sklearn.metrics.roc_curve``) with its AUC."""
    from sklearn.metrics import roc_auc_score, roc_curve

    parts = []
    for key in system_keys(predictions):
        part = select(predictions, key)
        y, p = (part["label"].astype(str).values == POSITIVE).astype(int), part["p_speech"].astype(float).values
        if len(set(y)) < 2:
            continue
        fpr, tpr, thr = roc_curve(y, p)
        parts.append(pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr, "auc": roc_auc_score(y, p), **dict(zip(SYSTEM_KEY, key))}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["fpr", "tpr", "threshold", "auc"] + SYSTEM_KEY)
