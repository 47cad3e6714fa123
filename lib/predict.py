"""Apply any system to any clips: the engine behind ``python -m lib predict``.

The manifest is a CSV with at least ``path`` (relative to the audio root) and ``label``
(speech|nonspeech); ``clip_id`` is optional (the path is used). Clips of any length, sample rate and
channel count are read, mixed to mono and resampled to 16 kHz. Paths that escape the audio root are
refused: the command never reads files outside it.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import io
from .results import LABELS, predictions_frame

REQUIRED = ("path", "label")


def read_clip_manifest(manifest: str | Path, audio_root: str | Path) -> pd.DataFrame:
    """Read and check a user's clip manifest; every problem is named with its row and what to do."""
    manifest, root = Path(manifest), Path(audio_root).resolve()
    if not manifest.exists():
        raise FileNotFoundError(f"manifest {manifest} does not exist")
    if not root.is_dir():
        raise FileNotFoundError(f"audio root {root} is not a folder")
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"{manifest} lacks column(s) {missing}; it needs at least {list(REQUIRED)} (found {list(df.columns)})")
    if df.empty:
        raise ValueError(f"{manifest} has no rows")
    if "clip_id" not in df.columns:
        df["clip_id"] = df["path"]
    dup = df["clip_id"][df["clip_id"].duplicated()].unique()
    if len(dup):
        raise ValueError(f"{manifest}: duplicated clip_id(s) {list(dup[:5])}: each clip needs its own id")
    bad = df[~df["label"].isin(LABELS)]
    if len(bad):
        row = bad.index[0]
        raise ValueError(f"{manifest} row {row + 2}: unknown label {bad['label'].iloc[0]!r}; labels must be one of {LABELS}")
    resolved = []
    for i, rel in enumerate(df["path"]):
        full = (root / rel).resolve()
        if not full.is_relative_to(root):
            raise ValueError(f"{manifest} row {i + 2}: path {rel!r} points outside the audio root {root}; refused")
        resolved.append(full)
    # Checked before any model is loaded: a typo should not cost a model load and half a scoring run.
    gone = [i for i, p in enumerate(resolved) if not p.is_file()]
    if gone:
        rows = ", ".join(f"row {i + 2} ({df['path'].iloc[i]!r})" for i in gone[:5])
        raise FileNotFoundError(
            f"{manifest}: {len(gone)} audio file(s) not found under {root}: {rows}{' ...' if len(gone) > 5 else ''}; "
            "fix the paths (relative to --audio-root) or drop those rows"
        )
    df["abs_path"] = resolved
    return df


def _load_clip(manifest: Path, row: int, path: Path, mode: str) -> np.ndarray:
    """One clip, normalized; an unusable one is named by its manifest row as well as its file."""
    from .audio import load_audio, normalize

    try:
        return normalize(load_audio(path), mode, name=str(path))
    except ValueError as err:  # AudioError, or an all-silent clip under peak/rms: the message says what to do
        raise type(err)(f"{manifest} row {row + 2}: {err}") from err


def predict_manifest(
    system: str,
    manifest: str | Path,
    audio_root: str | Path,
    out: str | Path,
    normalization: str | None = None,
    batch_size: int = 32,
    **options: Any,
) -> Path:
    from .systems import load_system

    df = read_clip_manifest(manifest, audio_root)
    scorer = load_system(system, **options)
    mode = normalization or getattr(scorer, "normalization", None) or "none"
    scores: list[float] = []
    for start in tqdm(range(0, len(df), batch_size), desc=f"scoring with {scorer.name}", unit="batch"):
        rows = df.iloc[start : start + batch_size]
        audios = [_load_clip(Path(manifest), start + j, p, mode) for j, p in enumerate(rows["abs_path"])]
        scores.extend(np.asarray(scorer.score(audios), dtype=float).tolist())
    preds = predictions_frame(
        run_id=f"predict-{_dt.datetime.now():%Y%m%d-%H%M%S}", system=scorer.name, variant=f"normalization={mode}",
        clip_ids=df["clip_id"].tolist(), labels=df["label"].tolist(), p_speech=scores,
        threshold=float(getattr(scorer, "threshold", 0.5)), model=getattr(scorer, "model_label", ""),
    )
    preds["path"] = df["path"].values
    return io.write_csv(out, preds)
