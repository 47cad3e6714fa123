"""A clip detector slid over a recording: the windows' start samples, their scores from the system (each window at the
system's own load-time normalization, digital silence scored 0 unseen), and the frame probabilities that aggregate
the windows covering each frame (``mean``, ``max`` or ``min``; :mod:`lib.recordings.segment` says why the choice matters)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..audio import SILENCE_PEAK, normalize

AGGREGATIONS = ("mean", "max", "min")


def window_starts(n_samples: int, window: int, hop: int) -> np.ndarray:
    """Start samples of the windows over a recording: every ``hop``, plus one ending at the recording's end when the
    regular ones fall short of it; one window (the whole recording) when it is shorter than a window."""
    if n_samples <= window:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, n_samples - window + 1, hop, dtype=np.int64)
    if starts[-1] + window < n_samples:
        starts = np.append(starts, n_samples - window)
    return starts


def frames_from_windows(scores: np.ndarray, starts: np.ndarray, window: int, n_samples: int, frame: int,
                        aggregate: str = "mean") -> np.ndarray:
    """Frame probabilities on a grid of ``frame`` samples from window scores: each frame aggregates the windows
    that cover its centre (``mean``, ``max`` or ``min``)."""
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
    n_frames = max(1, -(-n_samples // frame))
    centres = (np.arange(n_frames) + 0.5) * frame
    ends = np.minimum(starts + window, max(n_samples, 1))
    lo = np.searchsorted(centres, starts, side="left")  # first frame whose centre is >= the window's start
    hi = np.searchsorted(centres, ends, side="left")  # frames with centre < the window's end
    total = np.zeros(n_frames)
    count = np.zeros(n_frames)
    top = np.full(n_frames, -np.inf)
    bottom = np.full(n_frames, np.inf)
    for s, a, b in zip(np.asarray(scores, dtype=float), lo, hi):
        if b <= a:  # only a recording shorter than one frame: its one window speaks for its one frame
            a = min(int(a), n_frames - 1)
            b = a + 1
        total[a:b] += s
        count[a:b] += 1
        np.maximum(top[a:b], s, out=top[a:b])
        np.minimum(bottom[a:b], s, out=bottom[a:b])
    if (count == 0).any():  # cannot happen with window_starts' windows; say so if someone passes others
        raise ValueError(f"{int((count == 0).sum())} frame(s) are covered by no window")
    out = {"mean": total / count, "max": top, "min": bottom}[aggregate]
    return out.astype(np.float32)


def score_windows(system: Any, x: np.ndarray, starts: np.ndarray, window: int, normalization: str,
                  batch: int = 256, progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, int]:
    """Each window's ``p_speech`` from ``system.score``, ``batch`` windows per call; returns the scores and how many
    windows were digital silence (scored 0 without the system)."""
    scores = np.zeros(len(starts), dtype=float)
    silent = 0
    for a in range(0, len(starts), batch):
        part = starts[a : a + batch]
        clips, idx = [], []
        for j, s in enumerate(part):
            w = x[s : s + window]
            if float(np.max(np.abs(w))) < SILENCE_PEAK:
                silent += 1
                continue
            clips.append(normalize(w, normalization))
            idx.append(a + j)
        if clips:
            scores[idx] = np.asarray(system.score(clips), dtype=float)
        if progress is not None:
            progress(len(part))
    return scores, silent
