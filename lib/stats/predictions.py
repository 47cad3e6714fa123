"""The predictions table as the statistics read it: the bank joined on, systems picked and named.

A *system* is one ``(system, variant, seed)`` of the predictions table (``lib.results.SYSTEM_KEY``); ``group_id``,
the unit of independence, comes from the bank (joined on ``clip_id``) or from the predictions when they carry it.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..results import LABELS, SYSTEM_KEY
from ..systems import SystemKey


def read_bank(bank: pd.DataFrame | str | Path) -> pd.DataFrame:
    """The bank as a DataFrame (a path to its manifest is read by the one bank reader, ``lib.data.load_bank``)."""
    if isinstance(bank, pd.DataFrame):
        return bank
    from ..data import load_bank  # statistics never read audio: the files need not be there

    return load_bank(bank, check_files=False)


def with_bank(predictions: pd.DataFrame, bank: pd.DataFrame | str | Path | None, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Join bank columns onto predictions by ``clip_id``; refuse clips the bank lacks or labels that disagree.

    Columns already in ``predictions`` are kept; a ``group_id`` present in both must agree.
    """
    if bank is None:
        return predictions.copy()
    bank = read_bank(bank)
    if "clip_id" not in bank.columns:
        raise ValueError("the bank has no clip_id column; it cannot be joined to predictions")
    if bank["clip_id"].duplicated().any():
        raise ValueError(f"the bank repeats clip_ids: {bank.loc[bank['clip_id'].duplicated(), 'clip_id'].head(5).tolist()}")
    b = bank.copy()
    b["clip_id"] = b["clip_id"].astype(str)
    p = predictions.copy()
    p["clip_id"] = p["clip_id"].astype(str)
    missing = sorted(set(p["clip_id"]) - set(b["clip_id"]))
    if missing:
        raise ValueError(f"{len(missing)} predicted clip_ids are not in the bank (e.g. {missing[:5]}); wrong bank for this run?")
    wanted = [c for c in (columns or b.columns) if c != "clip_id"]
    new = [c for c in wanted if c not in p.columns]
    merged = p.merge(b[["clip_id"] + [c for c in wanted if c in b.columns]], on="clip_id", how="left", suffixes=("", "__bank"))
    for col in ("label", "group_id"):
        other = f"{col}__bank"
        if other in merged.columns:
            bad = merged[col].astype(str) != merged[other].astype(str)
            if bad.any():
                raise ValueError(f"{int(bad.sum())} clips have a {col} in the predictions that differs from the bank's (e.g. clip {merged.loc[bad, 'clip_id'].iloc[0]})")
    return merged[list(p.columns) + [c for c in new if c in merged.columns]]


def system_keys(predictions: pd.DataFrame) -> list[tuple]:
    """The ``(system, variant, seed)`` keys in order of first appearance."""
    return [tuple(k) for k in predictions[SYSTEM_KEY].drop_duplicates().itertuples(index=False, name=None)]


def system_label(system: str, variant: Any = "", seed: Any = -1, show_seed: bool = True) -> str:
    """A short display name: ``system``, ``system/variant``, plus ``#seed`` when asked and the seed is set
    (:meth:`lib.systems.SystemKey.label` of the key, from loose table values)."""
    return SystemKey(system, variant, seed).label(show_seed)


def add_system_label(df: pd.DataFrame, column: str = "name") -> pd.DataFrame:
    """Add a display-name column; seeds are shown only for (system, variant)s that have several."""
    out = df.copy()
    seeds = out.groupby(["system", "variant"], dropna=False)["seed"].transform("nunique")
    out[column] = [system_label(s, v, sd, show_seed=n > 1) for s, v, sd, n in zip(out["system"], out["variant"], out["seed"], seeds)]
    return out


def select(predictions: pd.DataFrame, key: str | tuple | Mapping[str, Any]) -> pd.DataFrame:
    """The rows of one system. ``key``: a system name (must be unambiguous), a display name from
    ``add_system_label``, a ``(system, variant)`` or ``(system, variant, seed)`` tuple, or a dict."""
    if isinstance(key, Mapping):
        mask = np.ones(len(predictions), bool)
        for k, v in key.items():
            mask &= predictions[k].astype(str).values == str(v)
    elif isinstance(key, tuple):
        mask = np.ones(len(predictions), bool)
        for k, v in zip(SYSTEM_KEY, key):
            mask &= predictions[k].astype(str).values == str(v)
    else:
        mask = predictions["system"].astype(str).values == str(key)
        if not mask.any():
            labelled = add_system_label(predictions)
            mask = labelled["name"].values == str(key)
    rows = predictions[mask]
    if rows.empty:
        raise KeyError(f"no predictions for system {key!r}; systems present: {[system_label(*k) for k in system_keys(predictions)]}")
    keys = system_keys(rows)
    if len(keys) > 1:
        raise KeyError(f"system {key!r} is ambiguous: it matches {keys}; pass a (system, variant, seed) tuple")
    return rows


def checked_correct(df: pd.DataFrame) -> np.ndarray:
    """Per clip, whether ``pred == label``; refuses a label or decision outside ``LABELS``."""
    bad = sorted((set(df["label"]) | set(df["pred"])) - set(LABELS))
    if bad:
        raise ValueError(f"labels/preds must be one of {LABELS}; found {bad}")
    return (df["pred"].astype(str).values == df["label"].astype(str).values)


def cluster_units(df: pd.DataFrame, warn: bool = True) -> tuple[np.ndarray, str]:
    """The unit the bootstrap resamples, per clip: ``group_id`` when every clip has one, else the clip itself
    (with a warning: clips that share sources then look independent)."""
    if "group_id" in df.columns and df["group_id"].notna().all() and (df["group_id"].astype(str) != "").all():
        return df["group_id"].astype(str).values, "group_id"
    if warn:
        warnings.warn(
            "no group_id for these predictions (pass the bank): the bootstrap resamples single clips, "
            "which understates the uncertainty when clips share sources",
            stacklevel=3,
        )
    return df["clip_id"].astype(str).values, "clip_id"

