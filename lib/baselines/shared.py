"""What every baseline shares: checking its input clips and labels, the dev-chosen decision threshold, and keeping
torch's thread count when a VAD library changes it."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import numpy as np

from ..stats.metrics import metrics_from_counts


def as_clip(audio: Any, index: int) -> np.ndarray:
    """One clip as a 1-D float32 array; a clear error for anything else."""
    x = np.asarray(audio)
    if x.ndim != 1:
        raise ValueError(f"clip {index}: expected a 1-D mono array at 16 kHz, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"clip {index}: the clip is empty")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"clip {index}: expected float samples in [-1, 1], got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError(f"clip {index}: the clip holds NaN or infinite samples")
    return np.ascontiguousarray(x, dtype=np.float32)


def labels_to_y(labels: Sequence[Any], what: str) -> np.ndarray:
    """speech -> 1, nonspeech -> 0 (also accepts booleans / 0-1 ints); both classes must be present."""
    arr = np.asarray(list(labels), dtype=object)
    if arr.size == 0:
        raise ValueError(f"{what}: no labels")
    if all(isinstance(v, str) for v in arr):
        bad = sorted(set(arr) - {"speech", "nonspeech"})
        if bad:
            raise ValueError(f"{what}: unknown labels {bad}; labels must be 'speech' or 'nonspeech'")
        y = (arr == "speech").astype(int)
    else:
        y = np.asarray(arr, dtype=float)
        if not set(np.unique(y)) <= {0.0, 1.0}:
            raise ValueError(f"{what}: numeric labels must be 1 (speech) or 0 (nonspeech)")
        y = y.astype(int)
    if len(np.unique(y)) < 2:
        raise ValueError(f"{what}: both classes (speech and nonspeech) are needed, got only {'speech' if y[0] else 'nonspeech'}")
    return y


def choose_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """The cut-off on ``p`` (pred = p >= t) that maximises balanced accuracy on (p, y).

    Candidates are midpoints between consecutive distinct scores (plus one below and one above all);
    among equally good cut-offs the one nearest 0.5 wins, so a calibrated score keeps its natural cut.
    Meant for dev scores only: the callers in this module never see test labels.
    """
    p, y = np.asarray(p, dtype=float), np.asarray(y).astype(bool)
    if y.all() or (~y).all():
        raise ValueError("choosing a threshold needs both classes in the dev split")
    u = np.unique(p)
    cands = np.concatenate([[u[0] - 1e-6], (u[:-1] + u[1:]) / 2, [u[-1] + 1e-6]])
    # balanced accuracy of every candidate at once, from its class counts
    pos, neg = np.sort(p[y]), np.sort(p[~y])
    speech_right = len(pos) - np.searchsorted(pos, cands, side="left")  # speech with p >= t
    nonspeech_right = np.searchsorted(neg, cands, side="left")  # nonspeech with p < t
    counts = np.stack([np.full(len(cands), len(pos)), speech_right, np.full(len(cands), len(neg)), nonspeech_right], axis=1)
    bacc = metrics_from_counts(counts)["balanced_accuracy"]
    best = np.flatnonzero(np.isclose(bacc, bacc.max(), rtol=0, atol=1e-12))
    return float(cands[best[np.argmin(np.abs(cands[best] - 0.5))]])


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Restore torch's intra-op thread count after the block (silero_vad sets it to 1 on import)."""
    import torch

    n = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)

