"""Scoring one split of a bank with any clip scorer into the predictions table."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..systems import scoring_normalization


def score_bank(
    system: Any,
    bank_df: pd.DataFrame,
    manifest: str | Path,
    normalization: str | None = None,
    split: str | None = "test",
    *,
    run_id: str,
    variant: str | None = None,
    seed: int | None = None,
    chunk_size: int = 256,
    progress: bool = True,
) -> pd.DataFrame:
    """Score one split of a bank with a system and return the predictions table.

    ``normalization`` defaults to the system's own (fitted baselines carry the one they were trained
    under and refuse another); built-in VADs take clips at whichever normalization is asked (required).
    ``variant`` defaults to the normalization, followed by ``/<settings>`` for systems with settings
    (e.g. ``rms/mode3-30ms``). ``seed`` defaults to the fitted system's seed (-1 for the VADs).
    ``split=None`` scores every clip of ``bank_df``.
    """
    from tqdm.auto import tqdm

    from ..data import load_clips
    from ..results import predictions_frame

    own = getattr(system, "normalization", None)
    normalization = scoring_normalization(system, normalization, default=None)
    if own is not None and normalization != own:
        raise ValueError(f"{system.name} was trained on clips at normalization {own!r}; scoring at {normalization!r} would be a mismatch")
    df = bank_df if split is None else bank_df[bank_df["split"] == split]
    if df.empty:
        raise ValueError(f"the bank has no clips in split {split!r}")
    scores: list[np.ndarray] = []
    settings = getattr(system, "settings", "")
    desc = f"{system.name} ({normalization}{'/' + settings if settings else ''}, {split or 'all'})"
    for start in tqdm(range(0, len(df), chunk_size), desc=desc, unit="chunk", disable=not progress):
        rows = df.iloc[start : start + chunk_size]
        audios = load_clips(rows, manifest, normalization=normalization)
        scores.append(np.asarray(system.score(audios), dtype=float))
    if variant is None:
        variant = normalization + (f"/{settings}" if settings else "")
    if seed is None:
        seed = getattr(system, "seed", None)
    return predictions_frame(
        run_id=run_id, system=system.name, variant=variant, seed=seed,
        clip_ids=df["clip_id"].astype(str).tolist(), labels=df["label"].tolist(),
        p_speech=np.concatenate(scores), threshold=float(getattr(system, "threshold", 0.5)), model=getattr(system, "model_label", ""),
    )
