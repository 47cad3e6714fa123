"""The book's summary tables: one row per system with every metric and both intervals, ``metrics.json``,
accuracy per sound category, and the spread over training seeds."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from ..results import SYSTEM_KEY
from .bootstrap import DEFAULT_N_BOOT, ClusterBootstrap, cluster_bootstrap_metrics
from .calibration import brier_score
from .intervals import percentile_interval, wilson_interval, wilson_intervals
from .metrics import METRICS, POSITIVE, binary_metrics, weighted_auc
from .predictions import checked_correct, cluster_units, system_label, with_bank
from .threads import one_blas_thread


@one_blas_thread
def metrics_table(predictions: pd.DataFrame, bank: pd.DataFrame | str | Path | None = None, level: float = 0.95,
                  n_boot: int = DEFAULT_N_BOOT, seed: int = 0, stratify: bool = True) -> pd.DataFrame:
    """One row per ``(system, variant, seed)``: counts, the four metrics, Wilson and cluster-bootstrap
    intervals (``<metric>_wilson_lo/hi``, ``<metric>_boot_lo/hi``), ROC AUC with its bootstrap interval,
    and the Brier score. ``boot_unit`` says what was resampled (``group_id``, or ``clip_id`` without groups).
    """
    df = with_bank(predictions, bank, columns=["group_id"]) if bank is not None else predictions
    if df.empty:
        raise ValueError("no predictions to summarise")
    rows = []
    boot_cache: dict[tuple, ClusterBootstrap] = {}
    warned = False
    for key, part in df.groupby(SYSTEM_KEY, sort=False, dropna=False):
        part = part.sort_values("clip_id", kind="mergesort")
        if part["clip_id"].duplicated().any():
            raise ValueError(f"system {key} has several rows for one clip (e.g. {part.loc[part['clip_id'].duplicated(), 'clip_id'].iloc[0]})")
        label, pred = part["label"].astype(str).values, part["pred"].astype(str).values
        checked_correct(part)  # refuses labels outside LABELS
        groups, unit = cluster_units(part, warn=not warned)
        warned = warned or unit != "group_id"
        cache_key = (tuple(part["clip_id"]), tuple(groups))
        if cache_key not in boot_cache:  # same clips and groups -> same replicates for every system
            boot_cache[cache_key] = ClusterBootstrap.draw(groups, n_boot, seed, strata=label if stratify else None, unit=unit)
        boot = boot_cache[cache_key]
        point = binary_metrics(label, pred)
        wil = wilson_intervals(label, pred, level)
        bts = cluster_bootstrap_metrics(label, pred, groups, level, boot=boot)
        y = label == POSITIVE
        p = part["p_speech"].astype(float).values
        row: dict[str, Any] = dict(zip(SYSTEM_KEY, key))
        row["run_id"] = ",".join(sorted(set(part["run_id"].astype(str)))) if "run_id" in part else ""
        row.update(n=len(part), n_speech=int(y.sum()), n_nonspeech=int((~y).sum()), n_groups=len(boot.groups), boot_unit=unit)
        for m in METRICS:
            row[m] = point[m]
            row[f"{m}_wilson_lo"], row[f"{m}_wilson_hi"] = wil[m]
            row[f"{m}_boot_lo"], row[f"{m}_boot_hi"] = bts[m]
        row["auc"] = float(weighted_auc(y, p))
        aucs = np.concatenate([weighted_auc(y, p, boot.clip_weights(slice(i, i + 200))) for i in range(0, boot.n_boot, 200)])
        row["auc_boot_lo"], row["auc_boot_hi"] = percentile_interval(aucs, level)
        row["brier"] = brier_score(y, p)
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs.update(level=level, n_boot=n_boot, seed=seed)
    return out


INTERVAL_METHODS = {
    "wilson": "Wilson score interval on clip counts (statsmodels proportion_confint, method='wilson'); assumes "
              "independent clips. Balanced accuracy: mean of per-class Wilson bounds at level 1-alpha/2 "
              "(Bonferroni-combined, conservative).",
    "bootstrap": "Cluster bootstrap: group_ids resampled with replacement within each class, percentile "
                 "interval; respects clips sharing a source.",
}


def _json_safe(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if not np.isfinite(v) else float(v)
    return v


def metrics_json(predictions: pd.DataFrame, bank: pd.DataFrame | str | Path | None = None, level: float = 0.95,
                 n_boot: int = DEFAULT_N_BOOT, seed: int = 0, smoke: bool | Iterable[str] | None = None,
                 table: pd.DataFrame | None = None) -> dict[str, Any]:
    """The content of a run's ``metrics.json``, derived from the predictions only (pass ``table`` to reuse
    a ``metrics_table``; its own level, n_boot and seed are then reported).

    ``smoke``: ``True``/``False`` labels the whole file; a collection of system names (e.g. the tiny
    model's systems in a cpu run, beside real baselines) marks those systems' entries ``"smoke": true``
    and the file ``"smoke": true`` if any is.
    """
    table = metrics_table(predictions, bank, level, n_boot, seed) if table is None else table
    smoke_systems = None if smoke is None or isinstance(smoke, bool) else {str(s) for s in smoke}
    models: dict[tuple, str] = {}
    if "model" in predictions.columns:
        named = predictions[predictions["model"].fillna("").astype(str) != ""]
        for key, part in named.groupby(SYSTEM_KEY, sort=False):
            models[tuple(map(str, key))] = str(part["model"].iloc[0])
    systems = []
    for _, r in table.iterrows():
        entry: dict[str, Any] = {k: _json_safe(r[k]) for k in SYSTEM_KEY + ["run_id", "n", "n_speech", "n_nonspeech", "n_groups", "boot_unit"]}
        entry["name"] = system_label(r["system"], r["variant"], r["seed"])
        for m in METRICS:
            entry[m] = {
                "estimate": _json_safe(r[m]),
                "wilson": [_json_safe(r[f"{m}_wilson_lo"]), _json_safe(r[f"{m}_wilson_hi"])],
                "bootstrap": [_json_safe(r[f"{m}_boot_lo"]), _json_safe(r[f"{m}_boot_hi"])],
            }
        entry["auc"] = {"estimate": _json_safe(r["auc"]), "bootstrap": [_json_safe(r["auc_boot_lo"]), _json_safe(r["auc_boot_hi"])]}
        entry["brier"] = _json_safe(r["brier"])
        model = models.get((str(r["system"]), str(r["variant"]), str(r["seed"])))
        if model:
            entry["model"] = model  # which Qwen2-Audio the numbers come from (the 7B, the mini or the tiny model)
        if smoke_systems is not None:
            entry["smoke"] = str(r["system"]) in smoke_systems or entry["name"] in smoke_systems
        systems.append(entry)
    out: dict[str, Any] = {
        "level": float(table.attrs.get("level", level)),
        "n_boot": int(table.attrs.get("n_boot", n_boot)),
        "bootstrap_seed": int(table.attrs.get("seed", seed)),
        "interval_methods": INTERVAL_METHODS,
        "systems": systems,
    }
    if smoke_systems is not None:
        out["smoke"] = any(e["smoke"] for e in systems)
    elif smoke is not None:
        out["smoke"] = bool(smoke)
    return out


def category_table(predictions: pd.DataFrame, bank: pd.DataFrame | str | Path | None = None, by: str = "category",
                   level: float = 0.95) -> pd.DataFrame:
    """Accuracy per system and ``by`` value (default the sound category) with Wilson intervals, hardest first."""
    df = with_bank(predictions, bank, columns=[by]) if bank is not None else predictions
    if by not in df.columns:
        raise ValueError(f"predictions have no {by!r} column; pass the bank")
    df = df.assign(correct=checked_correct(df))
    g = df.groupby(SYSTEM_KEY + [by, "label"], dropna=False)["correct"].agg(["size", "sum"]).reset_index()
    g = g.rename(columns={"size": "n", "sum": "n_correct"})
    g["accuracy"] = g["n_correct"] / g["n"]
    ci = [wilson_interval(k, n, level) for k, n in zip(g["n_correct"], g["n"])]
    g["wilson_lo"], g["wilson_hi"] = [c[0] for c in ci], [c[1] for c in ci]
    return g.sort_values(SYSTEM_KEY + ["accuracy", "n"], ascending=[True, True, True, True, False]).reset_index(drop=True)


def hardest_categories(categories: pd.DataFrame, min_n: int = 1, top: int | None = None) -> pd.DataFrame:
    """Rows of ``category_table`` ranked hardest first by the **upper** end of their Wilson interval: a
    category is hard when even its optimistic accuracy is low, so three clips all wrong (upper bound
    about 0.56) rank below thirty clips of which a third are right (upper bound about 0.51). Categories
    with fewer than ``min_n`` clips are left out."""
    c = categories[categories["n"] >= min_n]
    c = c.sort_values(["wilson_hi", "accuracy", "n"], ascending=[True, True, False], kind="mergesort")
    return (c.head(top) if top else c).reset_index(drop=True)


def seed_summary(table: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Per (system, variant) and metric over seeds: n_seeds, mean, sd (n-1), min, max, range, seeds."""
    rows = []
    for (system, variant), part in table.groupby(["system", "variant"], sort=False, dropna=False):
        for m in metrics:
            v = part[m].astype(float).values
            rows.append({
                "system": system, "variant": variant, "metric": m, "n_seeds": len(v),
                "mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else math.nan,
                "min": float(np.min(v)), "max": float(np.max(v)), "range": float(np.max(v) - np.min(v)),
                "seeds": ",".join(str(s) for s in sorted(part["seed"].tolist())),
            })
    return pd.DataFrame(rows)


def per_seed_table(table: pd.DataFrame, metric: str = "balanced_accuracy") -> pd.DataFrame:
    """Rows (system, variant), one column per seed, values ``metric``."""
    return table.pivot_table(index=["system", "variant"], columns="seed", values=metric, aggfunc="first")
