"""Ensembles across seeds: majority vote and mean p_speech, written as systems of their own."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .results import PREDICTION_COLUMNS, predictions_frame
from .systems import derived_name


def ensemble_predictions(predictions: pd.DataFrame, system: str, variant: str | None = None, run_id: str = "ensemble") -> pd.DataFrame:
    """Combine every seed of ``system`` (and ``variant``) on the clips all seeds scored.

    Returns two systems' rows, named by ``lib.systems.derived_name``: ``<system>+vote`` (majority of the seeds' decisions; ties go to the
    mean probability) and ``<system>+mean`` (mean p_speech, threshold 0.5). ``p_speech`` of the vote
    system is the share of seeds that said speech, so it has a ROC curve too.
    """
    rows = predictions[predictions["system"] == system]
    if variant is not None:
        rows = rows[rows["variant"] == variant]
    seeds = sorted(rows["seed"].unique())
    if len(seeds) < 2:
        raise ValueError(f"an ensemble of {system!r} needs at least two seeds; found {seeds}")
    wide_p = rows.pivot_table(index="clip_id", columns="seed", values="p_speech", aggfunc="first").dropna()
    wide_pred = rows.pivot_table(index="clip_id", columns="seed", values="pred", aggfunc="first").loc[wide_p.index]
    labels = rows.drop_duplicates("clip_id").set_index("clip_id").loc[wide_p.index, "label"]
    mean_p = wide_p.mean(axis=1).to_numpy()
    share = (wide_pred == "speech").mean(axis=1).to_numpy()
    vote = np.where(share > 0.5, "speech", np.where(share < 0.5, "nonspeech", np.where(mean_p >= 0.5, "speech", "nonspeech")))
    var = variant if variant is not None else ",".join(sorted(rows["variant"].unique()))
    models = sorted({str(m) for m in rows.get("model", pd.Series(dtype=str)).fillna("") if str(m)})
    common = dict(run_id=run_id, clip_ids=wide_p.index.tolist(), labels=labels.tolist(), seed=None,
                  model=" | ".join(models))
    vote_df = predictions_frame(system=derived_name(system, "vote"), variant=f"{var} seeds={len(seeds)}", p_speech=share, pred=vote, **common)
    mean_df = predictions_frame(system=derived_name(system, "mean"), variant=f"{var} seeds={len(seeds)}", p_speech=mean_p, **common)
    return pd.concat([vote_df, mean_df], ignore_index=True)[PREDICTION_COLUMNS]
