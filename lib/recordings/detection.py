"""Speech detection in recordings measured against RTTM references, with the field's own metrics.

* **Segment metrics** come from ``pyannote.metrics`` (not re-implemented here): the detection error rate
  ``(false alarm + missed detection) / reference speech`` with its two parts, and detection precision and recall,
  with a **collar** (``collar_s`` in all around each reference boundary, half before and half after, removed from
  scoring: pyannote's convention) and the whole recording as the evaluated region (``uem`` = 0 to its duration,
  so a false alarm before the first or after the last reference segment counts).
* **Frame metrics**: every frame of the ``frame_ms`` grid is labelled speech when its centre lies in a reference
  speech region; the frame probabilities then give a ROC curve and its AUC (scikit-learn), no threshold involved.
* **Intervals** by bootstrap over recordings: the per-recording components (seconds of false alarm, miss, reference
  speech, retrieved speech; frames) are resampled with replacement by recording and the ratios recomputed, so a
  recording's frames stay together -- they are not independent.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

Segments = Sequence[tuple[float, float]]
COMPONENTS = ["duration_s", "reference_s", "false_alarm_s", "missed_s", "hypothesis_s", "true_positive_s"]


def annotation(segments: Segments, uri: str, label: str = "speech") -> Any:
    from pyannote.core import Annotation, Segment

    ann = Annotation(uri=uri)
    for i, (a, b) in enumerate(segments):
        if b > a:
            ann[Segment(float(a), float(b)), i] = label
    return ann


def recording_components(reference: Segments, hypothesis: Segments, duration_s: float, collar_s: float = 0.5,
                         uri: str = "recording") -> dict[str, float]:
    """Seconds of reference speech, false alarm, missed detection, hypothesis and true positive speech of one
    recording, from pyannote.metrics' DetectionPrecisionRecallFMeasure. Its three components give DetectionErrorRate's
    too, on the same collar and uem (false alarm = retrieved - relevant retrieved, miss = relevant - relevant
    retrieved, total = relevant; a test checks this against DetectionErrorRate itself): one pass instead of two,
    since chapter 09 scores thousands of dev settings."""
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.detection import DetectionPrecisionRecallFMeasure

    ref, hyp = annotation(reference, uri), annotation(hypothesis, uri)
    uem = Timeline([Segment(0.0, float(duration_s))], uri=uri)
    prf = DetectionPrecisionRecallFMeasure(collar=collar_s)(ref, hyp, uem=uem, detailed=True)
    tp, retrieved, relevant = float(prf["relevant retrieved"]), float(prf["retrieved"]), float(prf["relevant"])
    return {
        "duration_s": float(duration_s),
        "reference_s": relevant,
        "false_alarm_s": retrieved - tp,
        "missed_s": relevant - tp,
        "hypothesis_s": retrieved,
        "true_positive_s": tp,
    }


def rates(c: Mapping[str, float]) -> dict[str, float]:
    """Detection error rate and its parts (relative to reference speech), precision and recall, from summed seconds."""
    ref = c["reference_s"]
    return {
        "detection_error_rate": (c["false_alarm_s"] + c["missed_s"]) / ref if ref > 0 else np.nan,
        "false_alarm_rate": c["false_alarm_s"] / ref if ref > 0 else np.nan,
        "miss_rate": c["missed_s"] / ref if ref > 0 else np.nan,
        "precision": c["true_positive_s"] / c["hypothesis_s"] if c["hypothesis_s"] > 0 else np.nan,
        "recall": c["true_positive_s"] / (c["true_positive_s"] + c["missed_s"]) if c["true_positive_s"] + c["missed_s"] > 0 else np.nan,
    }


def frame_labels(reference: Segments, n_frames: int, frame_s: float) -> np.ndarray:
    """True for the frames whose centre lies in a reference speech region."""
    t = (np.arange(n_frames) + 0.5) * frame_s
    y = np.zeros(n_frames, dtype=bool)
    for a, b in reference:
        y[(t >= a) & (t < b)] = True
    return y


def frame_auc(labels: Sequence[np.ndarray], probs: Sequence[np.ndarray]) -> float:
    from sklearn.metrics import roc_auc_score

    y, p = np.concatenate(labels), np.concatenate(probs)
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else np.nan


class _WeightedAUC:
    """ROC AUC of frames pooled over recordings, each recording counted ``w`` times (a bootstrap replicate), without
    re-sorting: the frames are sorted once, and a replicate's AUC is the Mann-Whitney count with weights (ties
    count half), equal to scikit-learn's ``roc_auc_score`` on the replicate's concatenated frames (a test checks it)."""

    def __init__(self, labels: Sequence[np.ndarray], probs: Sequence[np.ndarray]):
        y = np.concatenate(labels).astype(bool)
        p = np.concatenate(probs).astype(float)
        self.rec = np.repeat(np.arange(len(labels)), [len(v) for v in labels])
        _, self.inv = np.unique(p, return_inverse=True)
        self.y, self.n_values = y, int(self.inv.max()) + 1 if len(p) else 0

    def __call__(self, w: np.ndarray) -> float:
        fw = np.asarray(w, dtype=float)[self.rec]
        pos = np.bincount(self.inv, fw * self.y, self.n_values)
        neg = np.bincount(self.inv, fw * ~self.y, self.n_values)
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos == 0 or n_neg == 0:
            return np.nan
        below = np.cumsum(neg) - neg
        return float(np.sum(pos * (below + 0.5 * neg)) / (n_pos * n_neg))


def evaluate(per_recording: pd.DataFrame, frames: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
             n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Pooled metrics over recordings (``per_recording``: one row per recording with :data:`COMPONENTS`) and, with
    ``frames`` (``recording_id -> (labels, probs)``), the frame AUC; each with a bootstrap-over-recordings interval
    (``<metric>_lo`` / ``<metric>_hi``)."""
    comp = per_recording[COMPONENTS].to_numpy(dtype=float)
    ids = per_recording["recording_id"].tolist()
    point = rates(dict(zip(COMPONENTS, comp.sum(axis=0))))
    if frames is not None:
        point["frame_auc"] = frame_auc([frames[r][0] for r in ids], [frames[r][1] for r in ids])
    out = {"n_recordings": len(ids), "audio_s": float(comp[:, 0].sum()), "reference_speech_s": float(comp[:, 1].sum()),
           **point}
    rng = np.random.default_rng(seed)
    boots: dict[str, list[float]] = {k: [] for k in point}
    auc = _WeightedAUC([frames[r][0] for r in ids], [frames[r][1] for r in ids]) if frames is not None else None
    for _ in range(int(n_boot)):
        pick = rng.integers(0, len(ids), len(ids))
        r = rates(dict(zip(COMPONENTS, comp[pick].sum(axis=0))))
        if auc is not None:
            r["frame_auc"] = auc(np.bincount(pick, minlength=len(ids)))
        for k in boots:
            boots[k].append(r[k])
    alpha = (1 - level) / 2
    for k, vals in boots.items():
        v = np.asarray(vals, dtype=float)
        v = v[np.isfinite(v)]
        out[f"{k}_lo"], out[f"{k}_hi"] = (float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))) if len(v) else (np.nan, np.nan)
    return out


def coverage(regions: Segments, segments: Segments) -> float:
    """Share of the total duration of ``regions`` that ``segments`` cover (overlaps within each counted once)."""
    from ..data.rttm import merge_intervals as _union

    total = sum(b - a for a, b in regions)
    if total <= 0:
        return np.nan
    hyp = _union(segments)
    hit = 0.0
    for a, b in _union(regions):
        for c, d in hyp:
            hit += max(0.0, min(b, d) - max(a, c))
    return hit / total


def interval_text(row: Mapping[str, Any], key: str, digits: int = 3) -> str:
    """``value [lo, hi]`` of ``key`` from a row of :func:`evaluate`'s results."""
    return f"{row[key]:.{digits}f} [{row[key + '_lo']:.{digits}f}, {row[key + '_hi']:.{digits}f}]"
