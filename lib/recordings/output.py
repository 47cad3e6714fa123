"""The output folder of ``python -m lib segment``: ``segment.yaml`` marks it, ``segments.csv`` is the **segments**
table of DESIGN.md, ``frames/<recording_id>.npz`` the frame probabilities, ``rttm/`` the detected speech
(:func:`lib.data.rttm.write_rttm`), ``recordings.csv`` one row per recording; :func:`measure` scores such a folder
against reference speech regions (:mod:`lib.recordings.detection`, pyannote.metrics)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import io
from ..audio import SR  # the book's one sample rate
from ..data.rttm import read_rttm_segments
from . import detection

SEGMENT_COLUMNS = ["run_id", "system", "variant", "recording_id", "start_s", "end_s", "p_speech_mean"]
MARKER = "segment.yaml"  # what marks a folder as one this command wrote (and may write again)


def prepare_out(out: str | Path, inputs: Iterable[Path]) -> Path:
    """The output folder: new, or one this command wrote before (it holds segment.yaml); never an input's folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder (it will hold rttm/, frames/, segments.csv)")
    res = out.resolve()
    for p in inputs:
        if Path(p).resolve().is_relative_to(res):
            raise ValueError(f"--out {out} holds the input {p}; give another folder, so no input can be overwritten")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ValueError(f"--out {out} is a folder that segment did not write (no {MARKER}); give a new folder, so nothing in it is overwritten")
    return out


def segments_table(probs: np.ndarray, segs: Sequence[tuple[int, int]], frame_s: float, n_samples: int, *,
                   run_id: str, system: str, variant: str, recording_id: str) -> pd.DataFrame:
    """The segments table of one recording; times in seconds (the last segment ends at the recording's end at most)."""
    dur = n_samples / SR
    rows = [{"run_id": run_id, "system": system, "variant": variant, "recording_id": recording_id,
             "start_s": round(a * frame_s, 6), "end_s": round(min(b * frame_s, dur), 6),
             "p_speech_mean": float(np.mean(probs[a:b]))} for a, b in segs]
    return pd.DataFrame(rows, columns=SEGMENT_COLUMNS)


def write_frames(path: str | Path, probs: np.ndarray, frame_s: float, n_samples: int) -> Path:
    """``frames/<recording_id>.npz``: the frame probabilities of one recording (for ROC curves and figures)."""
    with io.atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, probs=probs, frame_s=frame_s, n_samples=n_samples)
    return Path(path)


def read_frames(path: str | Path) -> tuple[np.ndarray, float, int]:
    """``(probs, frame_s, n_samples)`` from a ``frames/<recording_id>.npz`` that segment wrote."""
    with np.load(path) as z:
        return np.asarray(z["probs"]), float(z["frame_s"]), int(z["n_samples"])


def measure(out: str | Path, refs: Mapping[str, Sequence[tuple[float, float]]], collar_s: float, n_boot: int,
            level: float, seed: int) -> tuple[dict[str, float], pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Metrics of a segment output folder against the references: pooled with intervals, per recording, and the
    frame labels and probabilities (for ROC curves)."""
    out = Path(out)
    recs = pd.read_csv(out / "recordings.csv", keep_default_na=False)
    rows, frames = [], {}
    for r in recs.itertuples(index=False):
        rid = str(r.recording_id)
        hyp = read_rttm_segments(out / "rttm" / f"{rid}.rttm").get(rid, [])
        rows.append({"recording_id": rid, **detection.recording_components(refs[rid], hyp, float(r.duration_s), collar_s, uri=rid)})
        if (out / "frames" / f"{rid}.npz").exists():  # a VAD's own helper gives segments only
            probs, frame_s, n = read_frames(out / "frames" / f"{rid}.npz")
            frames[rid] = (detection.frame_labels(refs[rid], len(probs), frame_s), probs)
    per = pd.DataFrame(rows)
    pooled = detection.evaluate(per, frames if len(frames) == len(per) else None, n_boot=n_boot, level=level, seed=seed)
    pooled["rtf"] = float(recs["compute_s"].sum() / recs["duration_s"].sum())
    return pooled, per, frames
