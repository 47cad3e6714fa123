"""Splits: group-disjoint, class-stratified train/dev/test assignment, and the check of its promises.

Nothing that shares a ``group_id`` (a speaker for speech, an original recording for non-speech, a noise
recording) may sit in two splits, so the test set measures generalisation to unheard speakers and
unheard recordings.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from .schema import LABELS, SPLITS


def assign_splits(
    groups: pd.Series, labels: pd.Series, fractions: Sequence[float], seed: int, names: Sequence[str] = SPLITS
) -> pd.Series:
    """Group-disjoint, class-stratified split: every row of a group gets the same split.

    Greedy: groups in a seeded random order, largest first, each to the split whose per-class
    shortfall (relative to ``fractions``) its rows fill best. Reproducible for a given seed.
    """
    fractions = np.asarray(fractions, dtype=float)
    counts = pd.crosstab(groups.values, labels.values)
    order_rng = np.random.default_rng([int(seed), 7])
    perm = order_rng.permutation(len(counts))
    counts = counts.iloc[perm]
    sizes = counts.sum(axis=1).values
    counts = counts.iloc[np.argsort(-sizes, kind="stable")]
    totals = counts.sum(axis=0).values.astype(float)
    target = fractions[:, None] * totals[None, :]
    current = np.zeros_like(target)
    assignment: dict[Any, str] = {}
    for gid, row in zip(counts.index, counts.values.astype(float)):
        share = row / totals
        score = ((target - current) / np.maximum(target, 1e-9) * share[None, :]).sum(axis=1)
        s = int(np.argmax(score))
        current[s] += row
        assignment[gid] = names[s]
    return groups.map(assignment)


def check_splits(df: pd.DataFrame, what: str, names: Sequence[str] = SPLITS, labels: Sequence[str] = LABELS) -> None:
    """Raise if a split is empty or lacks a class, or a group sits in two splits."""
    for s in names:
        part = df[df["split"] == s]
        if len(part) == 0:
            raise ValueError(f"{what}: split {s!r} is empty; use more source groups or other split_fractions")
        for lab in labels:
            if not (part["label"] == lab).any():
                raise ValueError(f"{what}: class {lab!r} is absent from split {s!r}; use more source groups or other split_fractions")
    cross = df.groupby("group_id")["split"].nunique()
    if (cross > 1).any():
        raise AssertionError(f"{what}: groups in several splits: {cross[cross > 1].index[:5].tolist()}")



def split_table(bank: pd.DataFrame, names: Sequence[str] = SPLITS) -> pd.DataFrame:
    """Clips, source segments and groups per split (rows, in ``names`` order) and class (column level 2)."""
    table = bank.groupby(["split", "label"]).agg(clips=("clip_id", "size"), sources=("source_id", "nunique"),
                                                  groups=("group_id", "nunique")).unstack("label")
    return table.reindex(list(names))


def split_disjointness(bank: pd.DataFrame) -> dict[str, int]:
    """Recheck a built bank's promise from its manifest: every group, and every real-noise recording, sits in
    one split. Returns how many of each were checked; raises AssertionError naming the first offenders."""
    crossing = bank.groupby("group_id")["split"].nunique()
    if (crossing > 1).any():
        raise AssertionError(f"groups in several splits: {crossing[crossing > 1].index.tolist()[:5]}")
    real = bank[bank["noise_type"] == "real"]
    noise_crossing = real.groupby("noise_group_id")["split"].nunique() if len(real) else pd.Series(dtype=int)
    if (noise_crossing > 1).any():
        raise AssertionError(f"noise recordings in several splits: {noise_crossing[noise_crossing > 1].index.tolist()[:5]}")
    return {"groups": int(crossing.size), "noise_recordings": int(noise_crossing.size)}


def subset(rows: pd.DataFrame, max_clips: int | None, seed: int = 0, by_label: bool = False) -> pd.DataFrame:
    """At most ``max_clips`` of ``rows``, seeded, in bank order: the book's one subset picker. A plain random draw,
    or with ``by_label`` one drawn per label in proportion to its share (at least one clip of each)."""
    if not max_clips or len(rows) <= max_clips:
        return rows
    if not by_label:
        return rows.sample(n=int(max_clips), random_state=seed).sort_index()
    rng = np.random.default_rng(seed)
    counts = rows["label"].value_counts()
    take = {lab: int(round(max_clips * n / len(rows))) for lab, n in counts.items()}
    keep = []
    for lab, part in rows.groupby("label", sort=True):
        idx = part.index.to_numpy()
        keep.extend(rng.choice(idx, size=min(len(idx), max(1, take[lab])), replace=False).tolist())
    return rows.loc[sorted(keep, key=rows.index.get_loc)]


def split_rows(bank: pd.DataFrame, split: str, max_clips: int | None = None, seed: int = 0) -> pd.DataFrame:
    """The bank's rows of ``split``; with ``max_clips``, a seeded random subset of that many (in bank order)."""
    rows = bank[bank["split"] == split]
    if rows.empty:
        raise ValueError(f"the bank has no {split!r} clips: rebuild it (chapter 01) with split_fractions that give every split clips")
    return subset(rows, max_clips, seed)
