"""The cluster bootstrap: the intervals the book reports.

Resample whole ``group_id``s with replacement, *within each class* (the bank's design fixes how many speech
and non-speech sources there are, so each replicate keeps those numbers; a group whose clips carry both labels
forms its own stratum), recompute the metric on every clip of the drawn groups, and take the percentile
interval ``[q(alpha/2), q(1 - alpha/2)]`` of ``n_boot`` replicates. Seeded (``numpy.random.default_rng(seed)``);
every system sees the same resampled groups when the systems share their clips (common random numbers), so
their intervals are comparable. Without any ``group_id`` it falls back to resampling clips and says so
(``boot_unit == "clip_id"``) with a warning (``predictions.cluster_units``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .intervals import percentile_interval
from .metrics import metrics_from_counts, truth_and_correct

DEFAULT_N_BOOT = 1000


@dataclass
class ClusterBootstrap:
    """Group-resampling weights shared by every statistic of one set of clips.

    ``weights[r, g]`` is how often group ``g`` was drawn in replicate ``r``; ``codes[i]`` is clip ``i``'s
    group. Groups are resampled with replacement within strata (by default the groups' class), each
    stratum keeping its number of groups.
    """

    groups: np.ndarray  # the unique group names, in code order
    codes: np.ndarray  # per clip
    weights: np.ndarray  # (n_boot, n_groups)
    unit: str = "group_id"

    @classmethod
    def draw(cls, groups: Sequence[Any], n_boot: int = DEFAULT_N_BOOT, seed: int = 0, strata: Sequence[Any] | None = None, unit: str = "group_id") -> "ClusterBootstrap":
        groups = np.asarray(groups).astype(str)
        uniq, codes = np.unique(groups, return_inverse=True)
        rng = np.random.default_rng(seed)
        G = len(uniq)
        if strata is None:
            group_stratum = np.zeros(G, dtype=object)
        else:
            frame = pd.DataFrame({"g": codes, "s": np.asarray(strata).astype(str)})
            per_group = frame.groupby("g")["s"].agg(lambda s: s.iloc[0] if s.nunique() == 1 else "__mixed__")
            group_stratum = per_group.reindex(range(G)).values
        weights = np.zeros((n_boot, G), dtype=np.int32)
        for stratum in sorted(set(group_stratum), key=str):
            members = np.flatnonzero(group_stratum == stratum)
            draws = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
            np.add.at(weights, (np.repeat(np.arange(n_boot), len(members)), draws.ravel()), 1)
        return cls(groups=uniq, codes=codes, weights=weights, unit=unit)

    @property
    def n_boot(self) -> int:
        return self.weights.shape[0]

    def aggregate(self, per_clip: np.ndarray) -> np.ndarray:
        """Sum per-clip values ``[n_clips, k]`` within groups, then over each replicate: ``[n_boot, k]``."""
        per_clip = np.asarray(per_clip, float).reshape(len(self.codes), -1)
        per_group = np.zeros((len(self.groups), per_clip.shape[1]))
        np.add.at(per_group, self.codes, per_clip)
        return self.weights @ per_group

    def clip_weights(self, rows: slice | None = None) -> np.ndarray:
        """Per-clip weights ``[n_boot, n_clips]`` (how often each clip is in each replicate)."""
        w = self.weights if rows is None else self.weights[rows]
        return w[:, self.codes]


def cluster_bootstrap_metrics(label: Sequence[str], pred: Sequence[str], groups: Sequence[Any], level: float = 0.95,
                              n_boot: int = DEFAULT_N_BOOT, seed: int = 0, stratify: bool = True,
                              boot: ClusterBootstrap | None = None) -> dict[str, tuple[float, float]]:
    """Cluster-bootstrap percentile intervals for every metric (see the module doc)."""
    label, pred = np.asarray(label).astype(str), np.asarray(pred).astype(str)
    if boot is None:
        boot = ClusterBootstrap.draw(groups, n_boot, seed, strata=label if stratify else None)
    s, ok = truth_and_correct(label, pred)
    per_clip = np.stack([s, ok & s, ~s, ok & ~s], axis=1).astype(float)  # class counts of each clip
    reps = metrics_from_counts(boot.aggregate(per_clip))
    return {k: percentile_interval(v, level) for k, v in reps.items()}
