"""Statistics for the book: every number is computed here from a predictions table (DESIGN.md, Tables 3-4).

Conventions
-----------
* A *system* is one ``(system, variant, seed)`` of the predictions table (``lib.results.SYSTEM_KEY``).
  Functions that take ``predictions`` work on all systems in it at once; ``select`` picks one.
* ``speech`` is the positive class: ``p_speech`` is the score, ``recall_speech`` the sensitivity and
  ``recall_nonspeech`` the specificity. A clip is *correct* when ``pred == label``.
* The unit of independence is ``group_id`` (a speaker or an original sound file): clips cut from one
  source share its voice, room and microphone, so they are not independent. ``group_id`` comes from the
  bank (joined on ``clip_id``) or from the predictions when they already carry it.

Intervals (``level`` = 0.95 unless asked otherwise)
---------------------------------------------------
* **Wilson** (``*_wilson_lo/hi``): score interval for a binomial proportion,
  ``statsmodels.stats.proportion.proportion_confint(method="wilson")`` on clip counts. It treats clips as
  independent, so it is too narrow when clips share sources; it is shown because it is the textbook
  interval and because the gap to the bootstrap shows how much clustering matters.
  For **balanced accuracy** (the mean of the two recalls, which is not one binomial proportion) the
  Wilson columns hold a *Bonferroni-combined* interval: each recall gets a Wilson interval at level
  ``1 - alpha/2`` and the bounds are averaged. Both recalls lie in their intervals together with
  probability >= ``1 - alpha`` (Bonferroni), and then their mean lies between the averaged bounds, so the
  interval is conservative (coverage >= level) under clip independence.
* **Cluster bootstrap** (``*_boot_lo/hi``): the intervals the book reports. Resample whole ``group_id``s
  with replacement, *within each class* (the bank's design fixes how many speech and non-speech sources
  there are, so each replicate keeps those numbers; a group whose clips carry both labels forms its own
  stratum), recompute the metric on every clip of the drawn groups, and take the percentile interval
  ``[q(alpha/2), q(1 - alpha/2)]`` of ``n_boot`` replicates. Seeded (``numpy.random.default_rng(seed)``);
  every system sees the same resampled groups when the systems share their clips (common random
  numbers), so their intervals are comparable. Without any ``group_id`` it falls back to resampling clips
  and says so (``boot_unit == "clip_id"``) with a warning.

Tests for paired systems: McNemar's exact test (``statsmodels``'s ``mcnemar(exact=True)``, the two-sided
binomial test on the discordant pairs) and its mid-p version (``scipy.stats.binom``), on clips and on
sources collapsed by majority vote (a tie within a source broken by the mean probability of the true
class: ``collapse_majority``). Psychometric functions, calibration, ROC and power analysis follow;
each function's docstring states its formula.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, special
from scipy import stats as sps

from .results import LABELS, SYSTEM_KEY

POSITIVE = "speech"


def _one_blas_thread(func):
    """Run ``func`` with BLAS limited to one thread: its matrices are tiny, and on a busy 2-core machine
    OpenBLAS's thread hand-offs made each small L-BFGS-B fit ~50x slower (measured)."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return func(*args, **kwargs)

    return wrapper


METRICS = ("accuracy", "balanced_accuracy", "recall_speech", "recall_nonspeech")
DEFAULT_N_BOOT = 1000


# ----------------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------------
def read_bank(bank: pd.DataFrame | str | Path) -> pd.DataFrame:
    """The bank as a DataFrame (a path to its manifest is read by the one bank reader, ``lib.data.load_bank``)."""
    if isinstance(bank, pd.DataFrame):
        return bank
    from .data import load_bank  # statistics never read audio: the files need not be there

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
    """A short display name: ``system``, ``system/variant``, plus ``#seed`` when asked and the seed is set."""
    name = str(system)
    if variant is not None and str(variant) not in ("", "nan", "None"):
        name += f"/{variant}"
    if show_seed and seed is not None and str(seed) not in ("", "nan") and int(seed) >= 0:
        name += f"#{int(seed)}"
    return name


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


def _correct(df: pd.DataFrame) -> np.ndarray:
    bad = sorted((set(df["label"]) | set(df["pred"])) - set(LABELS))
    if bad:
        raise ValueError(f"labels/preds must be one of {LABELS}; found {bad}")
    return (df["pred"].astype(str).values == df["label"].astype(str).values)


def _groups(df: pd.DataFrame, warn: bool = True) -> tuple[np.ndarray, str]:
    if "group_id" in df.columns and df["group_id"].notna().all() and (df["group_id"].astype(str) != "").all():
        return df["group_id"].astype(str).values, "group_id"
    if warn:
        warnings.warn(
            "no group_id for these predictions (pass the bank): the bootstrap resamples single clips, "
            "which understates the uncertainty when clips share sources",
            stacklevel=3,
        )
    return df["clip_id"].astype(str).values, "clip_id"


# ----------------------------------------------------------------------------------------------------
# Point metrics and Wilson intervals
# ----------------------------------------------------------------------------------------------------
def wilson_interval(successes: float, n: float, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``successes / n`` (statsmodels); ``(nan, nan)`` when ``n == 0``."""
    from statsmodels.stats.proportion import proportion_confint

    if n <= 0:
        return (math.nan, math.nan)
    lo, hi = proportion_confint(successes, n, alpha=1 - level, method="wilson")
    return float(lo), float(hi)


def _ratio(k: Any, n: Any) -> Any:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.asarray(n) > 0, np.asarray(k, float) / np.where(np.asarray(n) > 0, n, 1), np.nan)


def _metrics_from_counts(c: np.ndarray) -> dict[str, np.ndarray]:
    """Counts ``[..., 4]`` = (n_speech, correct_speech, n_nonspeech, correct_nonspeech) -> metrics."""
    ns, ks, nn, kn = (c[..., i] for i in range(4))
    rs, rn = _ratio(ks, ns), _ratio(kn, nn)
    return {
        "accuracy": _ratio(ks + kn, ns + nn),
        "balanced_accuracy": (rs + rn) / 2,  # nan when a class is absent: undefined, not the other recall
        "recall_speech": rs,
        "recall_nonspeech": rn,
    }


def _counts(label: np.ndarray, correct: np.ndarray) -> np.ndarray:
    s = label == POSITIVE
    return np.array([s.sum(), (correct & s).sum(), (~s).sum(), (correct & ~s).sum()], float)


def binary_metrics(label: Sequence[str], pred: Sequence[str]) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean of the two recalls) and per-class recall of one system."""
    label, pred = np.asarray(label).astype(str), np.asarray(pred).astype(str)
    c = _counts(label, label == pred)
    return {k: float(v) for k, v in _metrics_from_counts(c).items()}


def wilson_intervals(label: Sequence[str], pred: Sequence[str], level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Wilson intervals for every metric (balanced accuracy: Bonferroni-combined, see the module doc)."""
    label, pred = np.asarray(label).astype(str), np.asarray(pred).astype(str)
    ns, ks, nn, kn = _counts(label, label == pred)
    out = {
        "accuracy": wilson_interval(ks + kn, ns + nn, level),
        "recall_speech": wilson_interval(ks, ns, level),
        "recall_nonspeech": wilson_interval(kn, nn, level),
    }
    per_class_level = 1 - (1 - level) / 2
    s_lo, s_hi = wilson_interval(ks, ns, per_class_level)
    n_lo, n_hi = wilson_interval(kn, nn, per_class_level)
    out["balanced_accuracy"] = ((s_lo + n_lo) / 2, (s_hi + n_hi) / 2)
    return out


# ----------------------------------------------------------------------------------------------------
# Cluster bootstrap
# ----------------------------------------------------------------------------------------------------
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


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaN replicates, e.g. a class absent, are ignored)."""
    v = np.asarray(values, float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return (math.nan, math.nan)
    a = (1 - level) / 2
    lo, hi = np.quantile(v, [a, 1 - a])
    return float(lo), float(hi)


def cluster_bootstrap_metrics(label: Sequence[str], pred: Sequence[str], groups: Sequence[Any], level: float = 0.95,
                              n_boot: int = DEFAULT_N_BOOT, seed: int = 0, stratify: bool = True,
                              boot: ClusterBootstrap | None = None) -> dict[str, tuple[float, float]]:
    """Cluster-bootstrap percentile intervals for every metric (see the module doc)."""
    label, pred = np.asarray(label).astype(str), np.asarray(pred).astype(str)
    if boot is None:
        boot = ClusterBootstrap.draw(groups, n_boot, seed, strata=label if stratify else None)
    s, ok = label == POSITIVE, label == pred
    per_clip = np.stack([s, ok & s, ~s, ok & ~s], axis=1).astype(float)
    reps = _metrics_from_counts(boot.aggregate(per_clip))
    return {k: percentile_interval(v, level) for k, v in reps.items()}


def weighted_auc(y: np.ndarray, score: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """ROC AUC (Mann-Whitney, ties count 1/2) for one or many weight vectors ``[r, n]`` at once.

    Equals ``sklearn.metrics.roc_auc_score(y, score, sample_weight=w)`` (tested); vectorised so that the
    bootstrap can compute a thousand replicates in one pass.
    """
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, float)
    w = np.ones((1, len(y))) if weights is None else np.atleast_2d(np.asarray(weights, float))
    order = np.argsort(score, kind="mergesort")
    sorted_score = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    ws = w[:, order]
    yp = y[order]
    wp = np.add.reduceat(ws * yp, starts, axis=1)
    wn = np.add.reduceat(ws * ~yp, starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn
    num = (wp * (below + 0.5 * wn)).sum(axis=1)
    den = wp.sum(axis=1) * wn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return auc if weights is not None and np.ndim(weights) == 2 else auc[0]


# ----------------------------------------------------------------------------------------------------
# The metrics table and metrics.json
# ----------------------------------------------------------------------------------------------------
@_one_blas_thread
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
        _correct(part)
        groups, unit = _groups(part, warn=not warned)
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
    df = df.assign(correct=_correct(df))
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


# ----------------------------------------------------------------------------------------------------
# Paired comparisons: McNemar
# ----------------------------------------------------------------------------------------------------
def mcnemar_midp(b: int, c: int) -> float:
    """Two-sided mid-p McNemar test: ``2 * (P(X < min) + P(X = min)/2)`` with ``X ~ Binom(b + c, 1/2)``,
    capped at 1 (Fagerland, Lydersen & Laake 2013). 1 when there are no discordant pairs."""
    n = int(b) + int(c)
    if n == 0:
        return 1.0
    k = min(int(b), int(c))
    return float(min(1.0, 2 * (sps.binom.cdf(k, n, 0.5) - 0.5 * sps.binom.pmf(k, n, 0.5))))


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value (statsmodels ``mcnemar(exact=True)``) from the discordant counts."""
    from statsmodels.stats.contingency_tables import mcnemar

    if int(b) + int(c) == 0:
        return 1.0
    return float(mcnemar(np.array([[0, int(b)], [int(c), 0]]), exact=True).pvalue)


def _align(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str]) -> pd.DataFrame:
    for df, name in zip((a, b), names):
        if df["clip_id"].duplicated().any():
            raise ValueError(f"system {name} has several rows for one clip")
    sa, sb = set(a["clip_id"].astype(str)), set(b["clip_id"].astype(str))
    if sa != sb:
        only_a, only_b = sorted(sa - sb), sorted(sb - sa)
        raise ValueError(
            f"clip sets differ: a paired test needs both systems on the same clips. {names[0]} has "
            f"{len(only_a)} clips that {names[1]} lacks (e.g. {only_a[:3]}), {names[1]} has {len(only_b)} that "
            f"{names[0]} lacks (e.g. {only_b[:3]}). Score both systems on the same test clips."
        )
    both_p = "p_speech" in a.columns and "p_speech" in b.columns
    own = ["clip_id", "label", "pred"] + (["p_speech"] if both_p else [])
    cols = own + (["group_id"] if "group_id" in a.columns else [])
    m = a[cols].astype({"clip_id": str}).merge(b[own].astype({"clip_id": str}), on="clip_id", suffixes=("_a", "_b"))
    if (m["label_a"] != m["label_b"]).any():
        raise ValueError(f"the two systems disagree on the true label of {int((m['label_a'] != m['label_b']).sum())} clips")
    for s in ("a", "b"):
        m[f"correct_{s}"] = m[f"pred_{s}"] == m[f"label_{s}"]
        if both_p:  # the probability each system gave the true class: breaks within-group ties
            p = m[f"p_speech_{s}"].astype(float)
            m[f"p_true_{s}"] = np.where(m[f"label_{s}"] == POSITIVE, p, 1 - p)
    return m


def collapse_majority(correct: np.ndarray, groups: np.ndarray,
                      p_true: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Collapse one system's clips to one outcome per group by majority vote of correctness.

    A group is right (1.0) when more than half of its clips are correct and wrong (0.0) when fewer
    than half are. A **tie** (exactly half, possible in groups with an even number of clips; in the cpu
    bank every test source gives 2 clips, so one error makes a tie) is broken by ``p_true``, the
    probability the system gave each clip's *true* class (``p_speech`` for speech, ``1 - p_speech`` for
    non-speech): the group is right when the mean of ``p_true`` over its clips is above 0.5, wrong below
    (a soft vote: the clip answered right outweighs the one answered wrong when it was answered with
    more confidence). A tie with no ``p_true``, or with a mean of exactly 0.5, stays undecided (NaN).

    Why not "a tie counts as wrong" (this function's first rule): it biased source-level McNemar against
    a system whose errors are scattered (one per source: every 2-clip source lost) in favour of one
    whose errors pile up in few sources. Why not drop tied groups: with 2 clips per source that discards
    most of the groups where systems differ. The rule is the same for both systems of a pair, so under
    the null hypothesis (the two systems exchangeable) the discordant groups stay symmetric and the
    exact test stays valid. ``mcnemar_test`` leaves a group out of a pair's comparison when either
    system's tie stays undecided, and reports how many groups it left out.

    Returns ``(group names, outcome per group: 1.0 / 0.0 / NaN, tied per group)``.
    """
    frame = pd.DataFrame({"g": np.asarray(groups).astype(str), "c": np.asarray(correct, float)})
    frame["p"] = np.nan if p_true is None else np.asarray(p_true, float)
    agg = frame.groupby("g").agg(share=("c", "mean"), p=("p", "mean"))
    share, p = agg["share"].values, agg["p"].values
    tied = np.isclose(share, 0.5)
    outcome = np.where(share > 0.5, 1.0, 0.0)
    outcome[tied] = np.where(p[tied] > 0.5, 1.0, np.where(p[tied] < 0.5, 0.0, np.nan))  # NaN p -> NaN too
    return agg.index.values, outcome, tied


def mcnemar_test(predictions: pd.DataFrame, system_a: Any, system_b: Any, bank: pd.DataFrame | str | Path | None = None,
                 collapse: str | None = None) -> dict[str, Any]:
    """McNemar's exact test and mid-p for two systems on the same clips.

    ``collapse=None`` compares clips; ``collapse="group_id"`` (or ``"source_id"``) first collapses each
    group's clips by majority vote of correctness (``collapse_majority``) for each system separately,
    then compares groups, which are independent units. Refuses (``ValueError``) if the clip sets differ.
    ``b``: a right, b wrong; ``c``: a wrong, b right.

    Collapsed, ties within a group are broken by the mean probability of the true class (see
    ``collapse_majority``); ``ties_a``/``ties_b`` count each system's tied groups and ``dropped`` the
    groups left out of the comparison because a tie stayed undecided (no ``p_speech``, or a mean of
    exactly 0.5). ``n`` counts the units compared. On clips all three are 0.
    """
    df = with_bank(predictions, bank, columns=[collapse] if collapse else None) if bank is not None else predictions
    a, b_ = select(df, system_a), select(df, system_b)
    names = (system_label(*system_keys(a)[0]), system_label(*system_keys(b_)[0]))
    m = _align(a, b_, names)
    if collapse:
        if collapse not in a.columns:
            raise ValueError(f"cannot collapse by {collapse!r}: the predictions lack it (pass the bank)")
        m = m.merge(a[["clip_id", collapse]].astype({"clip_id": str}).drop_duplicates("clip_id"), on="clip_id", how="left", suffixes=("", "_g")) if collapse not in m.columns else m
        groups = m[collapse].astype(str).values
        _, oa, ta = collapse_majority(m["correct_a"].values, groups, m["p_true_a"].values if "p_true_a" in m else None)
        _, ob, tb = collapse_majority(m["correct_b"].values, groups, m["p_true_b"].values if "p_true_b" in m else None)
        keep = ~(np.isnan(oa) | np.isnan(ob))  # an undecided tie of either system: the group is left out
        ca, cb, unit = oa[keep] == 1.0, ob[keep] == 1.0, collapse
        ties_a, ties_b, dropped = int(ta.sum()), int(tb.sum()), int((~keep).sum())
    else:
        ca, cb, unit = m["correct_a"].values, m["correct_b"].values, "clip_id"
        ties_a = ties_b = dropped = 0
    ca, cb = np.asarray(ca, bool), np.asarray(cb, bool)
    n01 = int((ca & ~cb).sum())  # a right, b wrong
    n10 = int((~ca & cb).sum())
    nan_if_empty = (lambda v: float(v.mean()) if len(v) else math.nan)
    return {
        "system_a": names[0], "system_b": names[1], "unit": unit, "n": int(len(ca)),
        "both_correct": int((ca & cb).sum()), "a_only": n01, "b_only": n10, "both_wrong": int((~ca & ~cb).sum()),
        "accuracy_a": nan_if_empty(ca), "accuracy_b": nan_if_empty(cb),
        "difference": nan_if_empty(ca) - nan_if_empty(cb),
        "p_exact": mcnemar_exact(n01, n10), "p_midp": mcnemar_midp(n01, n10),
        "ties_a": ties_a, "ties_b": ties_b, "dropped": dropped,
    }


def mcnemar_table(predictions: pd.DataFrame, reference: Any, bank: pd.DataFrame | str | Path | None = None,
                  collapse: Iterable[str | None] = (None, "group_id"), others: Sequence[Any] | None = None,
                  adjust: str = "holm") -> pd.DataFrame:
    """McNemar tests of every other system against ``reference``, on clips and collapsed by group.

    ``p_exact_adj``: Holm-adjusted exact p within each unit (``statsmodels.stats.multitest``), because
    the table makes several comparisons.
    """
    from statsmodels.stats.multitest import multipletests

    df = with_bank(predictions, bank) if bank is not None else predictions
    ref = system_keys(select(df, reference))[0]
    others = [system_keys(select(df, o))[0] for o in others] if others is not None else [k for k in system_keys(df) if k != ref]
    rows = [mcnemar_test(df, ref, o, collapse=c) for c in collapse for o in others]
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_exact_adj"] = np.nan
    for unit, idx in out.groupby("unit").groups.items():
        out.loc[idx, "p_exact_adj"] = multipletests(out.loc[idx, "p_exact"].values, method=adjust)[1]
    return out


# ----------------------------------------------------------------------------------------------------
# Several seeds
# ----------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------
# Psychometric functions
# ----------------------------------------------------------------------------------------------------
FLAGS = ("ok", "below_range", "above_range", "unreachable", "not_increasing")


@dataclass
class PsychometricFit:
    """``p(x) = gamma + (1 - gamma - lapse) * logistic(a + b * t(x))`` with ``t`` = log (duration) or identity.

    ``gamma`` is the guess rate (fixed: 0.5, chance for a balanced two-class task), ``lapse`` the lapse
    rate, fitted by maximum likelihood within ``[0, lapse_max]``.
    """

    a: float
    b: float
    lapse: float
    gamma: float
    x: str
    log_x: bool
    levels: pd.DataFrame  # x, n, k (effective counts), p
    loglik: float
    converged: bool
    lapse_max: float = 0.1

    def t(self, x: Any) -> np.ndarray:
        x = np.asarray(x, float)
        return np.log(x) if self.log_x else x

    def predict(self, x: Any) -> np.ndarray:
        return self.gamma + (1 - self.gamma - self.lapse) * special.expit(self.a + self.b * self.t(x))

    @property
    def tested_range(self) -> tuple[float, float]:
        return float(self.levels["x"].min()), float(self.levels["x"].max())

    def threshold(self, target: float) -> tuple[float, str]:
        """``x`` where the fitted curve reaches ``target``, and a flag from ``FLAGS``.

        Never extrapolates. The fitted curve is read at the ends of the tested range: met at both ends
        -> ``-inf``, ``below_range`` (the threshold lies below anything tested); met at neither -> ``+inf``,
        ``above_range`` (or ``unreachable`` when the target is above the fitted ceiling ``1 - lapse``);
        met at the low end only -> ``nan``, ``not_increasing``; otherwise the crossing, flag ``ok``.
        """
        return _threshold(self.a, self.b, self.lapse, self.gamma, target, self.tested_range, self.log_x)


def _threshold(a: float, b: float, lapse: float, gamma: float, target: float, rng: tuple[float, float], log_x: bool) -> tuple[float, str]:
    if not gamma < target < 1:
        raise ValueError(f"target {target} must lie between the guess rate {gamma} and 1")
    lo, hi = rng
    t_lo, t_hi = (math.log(lo), math.log(hi)) if log_x else (lo, hi)
    p_lo, p_hi = (gamma + (1 - gamma - lapse) * special.expit(a + b * t) for t in (t_lo, t_hi))
    if p_lo >= target and p_hi >= target:
        return -math.inf, "below_range"  # met everywhere tested
    if p_lo < target and p_hi < target:
        return math.inf, ("unreachable" if target >= 1 - lapse else "above_range")  # met nowhere tested
    if p_lo >= target > p_hi:
        return math.nan, "not_increasing"  # crosses the target downwards
    t = (special.logit((target - gamma) / (1 - gamma - lapse)) - a) / b
    x = math.exp(t) if log_x else t
    return float(min(max(x, lo), hi)), "ok"


def psychometric_levels(df: pd.DataFrame, x: str, balanced: bool = True, level: float = 0.95) -> pd.DataFrame:
    """Observed performance per level of ``x``: counts, accuracy, recalls, balanced accuracy (Wilson for
    accuracy), and the effective counts the fit uses (``n``, ``k``; ``p = k/n`` is the balanced accuracy
    when ``balanced`` else the accuracy)."""
    d = df.assign(_c=_correct(df), _s=df["label"].astype(str).values == POSITIVE)
    d = d[np.isfinite(d[x].astype(float))]
    rows = []
    for xv, part in d.groupby(x):
        c = _counts(np.where(part["_s"], POSITIVE, "nonspeech"), part["_c"].values)
        m = _metrics_from_counts(c)
        n = c[0] + c[2]
        p = float(m["balanced_accuracy"]) if balanced and c[0] > 0 and c[2] > 0 else float(m["accuracy"])
        lo, hi = wilson_interval(c[1] + c[3], n, level)
        rows.append({"x": float(xv), "n": n, "k": p * n, "p": p, "accuracy": float(m["accuracy"]),
                     "balanced_accuracy": float(m["balanced_accuracy"]), "recall_speech": float(m["recall_speech"]),
                     "recall_nonspeech": float(m["recall_nonspeech"]), "accuracy_wilson_lo": lo, "accuracy_wilson_hi": hi})
    return pd.DataFrame(rows)


def _nll_and_grad(theta: np.ndarray, t: np.ndarray, k: np.ndarray, n: np.ndarray, gamma: float) -> tuple[float, np.ndarray]:
    a, b, lapse = theta
    s = special.expit(a + b * t)
    span = 1 - gamma - lapse
    p = np.clip(gamma + span * s, 1e-12, 1 - 1e-12)
    nll = -np.sum(k * np.log(p) + (n - k) * np.log1p(-p))
    dp = -(k / p - (n - k) / (1 - p))
    ds = span * s * (1 - s)
    return float(nll), np.array([np.sum(dp * ds), np.sum(dp * ds * t), np.sum(dp * -s)])


def _glm_start(t: np.ndarray, k: np.ndarray, n: np.ndarray, gamma: float) -> tuple[float, float]:
    """Start values: a binomial GLM (statsmodels, logit link) on the guess-rate-rescaled proportions."""
    import statsmodels.api as sm

    y = np.clip((k / n - gamma) / (1 - gamma), 0.02, 0.98)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sm.GLM(y, sm.add_constant(t, has_constant="add"), family=sm.families.Binomial(), var_weights=n).fit()
        a, b = (float(v) for v in res.params)
        if np.isfinite(a) and np.isfinite(b):
            return a, b
    except Exception:  # noqa: BLE001 - any failure just means a neutral start
        pass
    return 0.0, 1.0


@_one_blas_thread
def _fit_core(t: np.ndarray, k: np.ndarray, n: np.ndarray, gamma: float, lapse_max: float,
              starts: Sequence[tuple[float, float, float]] | None = None) -> tuple[np.ndarray, float, bool]:
    """ML fit on standardised ``t``; returns (a, b, lapse) on the original ``t`` scale, nll, converged."""
    mu, sd = float(np.average(t, weights=n)), float(np.sqrt(np.average((t - np.average(t, weights=n)) ** 2, weights=n)))
    sd = sd if sd > 0 else 1.0
    z = (t - mu) / sd
    if starts is None:
        a0, b0 = _glm_start(z, k, n, gamma)
        starts = [(a0, b0, 0.01), (a0, b0, lapse_max / 2), (0.0, 2.0, 0.0), (2.0, 0.0, 0.01)]
    else:  # starts given on the t scale
        starts = [(a + b * mu, b * sd, lp) for a, b, lp in starts]
    bounds = [(-60, 60), (-60, 60), (0.0, lapse_max)]
    best = None
    for s in starts:
        x0 = np.array([np.clip(s[0], -59, 59), np.clip(s[1], -59, 59), np.clip(s[2], 0, lapse_max)])
        r = optimize.minimize(_nll_and_grad, x0, args=(z, k, n, gamma), jac=True, method="L-BFGS-B", bounds=bounds)
        if best is None or r.fun < best.fun:
            best = r
    a_z, b_z, lapse = best.x
    return np.array([a_z - b_z * mu / sd, b_z / sd, lapse]), float(best.fun), bool(best.success)


def _fit_batch(t: np.ndarray, k: np.ndarray, n: np.ndarray, gamma: float, lapse_max: float,
               start: tuple[float, float, float], iters: int = 200) -> np.ndarray:
    """Fit many replicates at once (rows of ``k``, ``n`` ``[R, L]``), for the bootstrap.

    Same model and likelihood as ``_fit_core``; Levenberg-Marquardt (damped Fisher scoring, damping
    adapted per replicate), done for all replicates together in numpy, on ``(a, b, u)`` with ``lapse = lapse_max * expit(u)`` so the
    bound holds without constraints. Started from the full-data fit. Returns ``(a, b, lapse)`` per row
    on the ``t`` scale. A test checks it against ``_fit_core`` (L-BFGS-B) replicate by replicate.
    """
    k, n = np.atleast_2d(np.asarray(k, float)), np.atleast_2d(np.asarray(n, float))
    R = k.shape[0]
    w = n.sum(axis=0)
    mu = float(np.average(t, weights=w)) if w.sum() > 0 else 0.0
    sd = float(np.sqrt(np.average((t - mu) ** 2, weights=w))) if w.sum() > 0 else 1.0
    sd = sd if sd > 0 else 1.0
    z = (t - mu) / sd
    a0, b0, l0 = start
    u0 = special.logit(np.clip(l0 / lapse_max, 1e-4, 1 - 1e-4))
    theta = np.tile([a0 + b0 * mu, b0 * sd, u0], (R, 1)).astype(float)

    def nll(th: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lam = lapse_max * special.expit(th[:, 2:3])
        s = special.expit(th[:, 0:1] + th[:, 1:2] * z)
        p = np.clip(gamma + (1 - gamma - lam) * s, 1e-12, 1 - 1e-12)
        return -(k * np.log(p) + (n - k) * np.log1p(-p)).sum(axis=1), p, s

    f, p, s = nll(theta)
    damp = np.full(R, 1e-3)
    active = np.ones(R, bool)
    for _ in range(iters):
        lam_u = lapse_max * special.expit(theta[:, 2:3])
        dlam = lam_u * (1 - lam_u / lapse_max)
        ds = (1 - gamma - lam_u) * s * (1 - s)
        dp = np.stack([ds, ds * z, -s * dlam], axis=2)  # [R, L, 3]
        resid = -(k / p - (n - k) / (1 - p))
        grad = (resid[..., None] * dp).sum(axis=1)
        info = np.einsum("rl,rli,rlj->rij", n / (p * (1 - p)), dp, dp)
        diag = np.einsum("rii->ri", info) + 1e-9
        # Levenberg-Marquardt: damped Fisher scoring, damping adapted per replicate
        step = -np.linalg.solve(info + damp[:, None, None] * (diag[:, :, None] * np.eye(3)), grad[..., None])[..., 0]
        cand = theta + step
        cand[:, :2] = np.clip(cand[:, :2], -60, 60)
        cand[:, 2] = np.clip(cand[:, 2], -30, 30)
        fc = nll(cand)[0]
        better = (fc < f) & active
        theta[better] = cand[better]
        rel = np.abs(f - fc) / (1 + np.abs(f))
        damp = np.where(better, np.maximum(damp / 4, 1e-9), np.minimum(damp * 4, 1e9))
        active &= ~((rel < 1e-10) & better) & (damp < 1e9)
        if not active.any():
            break
        f, p, s = nll(theta)
    a_z, b_z, u = theta.T
    return np.stack([a_z - b_z * mu / sd, b_z / sd, lapse_max * special.expit(u)], axis=1)


def _flat_start(t: np.ndarray, fit: "PsychometricFit") -> tuple[float, float, float]:
    """A second bootstrap start: a nearly flat curve at the observed mean level (a, b on the t scale)."""
    mean_p = float(np.clip(np.average(fit.levels["p"], weights=fit.levels["n"]), 0.51, 0.99))
    q = (mean_p - fit.gamma) / (1 - fit.gamma - 0.01)
    return (float(special.logit(min(q, 0.999))), 0.0, 0.01)


@_one_blas_thread
def _best_batch(t: np.ndarray, k: np.ndarray, n: np.ndarray, gamma: float, lapse_max: float,
                starts: Sequence[tuple[float, float, float]]) -> np.ndarray:
    """``_fit_batch`` from several starts; per replicate the fit with the highest likelihood."""
    fits = [_fit_batch(t, k, n, gamma, lapse_max, s0) for s0 in starts]
    nll = []
    for prm in fits:
        sfit = special.expit(prm[:, 0:1] + prm[:, 1:2] * t)
        pfit = np.clip(gamma + (1 - gamma - prm[:, 2:3]) * sfit, 1e-12, 1 - 1e-12)
        nll.append(-(k * np.log(pfit) + (n - k) * np.log1p(-pfit)).sum(axis=1))
    best = np.argmin(np.stack(nll), axis=0)
    return np.stack(fits)[best, np.arange(k.shape[0])]


@_one_blas_thread
def fit_psychometric(df: pd.DataFrame, x: str, log_x: bool | None = None, gamma: float = 0.5, lapse_max: float = 0.1,
                     balanced: bool = True) -> PsychometricFit:
    """Fit ``p(x) = gamma + (1 - gamma - lapse) * logistic(a + b t(x))`` to one system's predictions.

    Maximum likelihood with ``scipy.optimize`` (L-BFGS-B, analytic gradient, ``lapse`` bounded in
    ``[0, lapse_max]``), started from a ``statsmodels`` binomial GLM (logit link) fitted to the
    proportions rescaled by the guess rate, ``(p - gamma) / (1 - gamma)``, and from fixed starts; a
    Levenberg-Marquardt fit (``_fit_batch``) from further starts is kept instead when its likelihood is
    higher (ceiling data and few levels give the likelihood ridges where one optimiser can stall). With ``balanced`` each class
    carries half the weight at every level, so the fitted quantity is balanced accuracy: level ``j``
    enters the binomial likelihood with ``n_j`` trials and ``n_j * BA_j`` successes.
    ``log_x`` defaults to True for a column whose name holds ``duration``.
    """
    log_x = ("duration" in x) if log_x is None else log_x
    lv = psychometric_levels(df, x, balanced)
    lv = lv[lv["x"] > 0] if log_x else lv
    if len(lv) < 2:
        raise ValueError(f"a psychometric fit needs at least two levels of {x}; found {len(lv)}")
    t = np.log(lv["x"].values) if log_x else lv["x"].values
    k, n = lv["k"].values, lv["n"].values
    (a, b, lapse), nll, ok = _fit_core(t, k, n, gamma, lapse_max)
    # the likelihood can have ridges (ceiling data, few levels): also try Levenberg-Marquardt from
    # several starts and keep whichever optimiser found the higher likelihood
    starts = [(a, b, lapse), (float(special.logit(0.8)), 0.0, 0.01), (-float(np.mean(t)), 1.0, 0.02)]
    alt = _best_batch(t, k[None], n[None], gamma, lapse_max, starts)[0]
    alt_nll = _nll_and_grad(np.array([alt[0], alt[1], alt[2]]), t, k, n, gamma)[0]
    if alt_nll < nll - 1e-9:
        (a, b, lapse), nll = alt, alt_nll
    return PsychometricFit(a=float(a), b=float(b), lapse=float(lapse), gamma=gamma, x=x, log_x=log_x, levels=lv,
                           loglik=-nll, converged=ok, lapse_max=lapse_max)


@_one_blas_thread
def psychometric_threshold(df: pd.DataFrame, x: str, target: float, log_x: bool | None = None, gamma: float = 0.5,
                           lapse_max: float = 0.1, balanced: bool = True, level: float = 0.95,
                           n_boot: int = DEFAULT_N_BOOT, seed: int = 0, stratify: bool = True,
                           fit: PsychometricFit | None = None) -> dict[str, Any]:
    """Threshold of ``x`` for ``target`` with a cluster-bootstrap interval (groups resampled as in
    ``metrics_table``, the fit redone on every replicate, started from the full-data fit).

    Replicate thresholds keep their sentinels (``-inf`` below / ``+inf`` above the tested range), so an
    interval end is infinite when more than ``alpha/2`` of the replicates fall outside the range: it
    then says "beyond what was tested" instead of inventing a value. ``not_increasing`` replicates are
    dropped and counted. Quantiles use ``method="inverted_cdf"`` (no interpolation across infinities).
    """
    fit = fit or fit_psychometric(df, x, log_x, gamma, lapse_max, balanced)
    value, flag = fit.threshold(target)
    d = df[np.isfinite(df[x].astype(float))]
    if fit.log_x:
        d = d[d[x].astype(float) > 0]
    groups, unit = _groups(d)
    label = d["label"].astype(str).values
    boot = ClusterBootstrap.draw(groups, n_boot, seed, strata=label if stratify else None, unit=unit)
    xs = fit.levels["x"].values
    lev_idx = np.searchsorted(xs, d[x].astype(float).values)
    s, ok = label == POSITIVE, _correct(d)
    L = len(xs)
    per_clip = np.zeros((len(d), 4 * L))
    for j, col in enumerate([s, ok & s, ~s, ok & ~s]):
        per_clip[np.arange(len(d)), lev_idx * 4 + j] = col
    reps = boot.aggregate(per_clip).reshape(boot.n_boot, L, 4)
    ns, ks, nn, kn = (reps[..., i] for i in range(4))
    n = ns + nn
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = (ks + kn) / n
        ba = np.where((ns > 0) & (nn > 0), (ks / np.where(ns > 0, ns, 1) + kn / np.where(nn > 0, nn, 1)) / 2, acc)
    p = ba if balanced else acc
    t_all = np.log(xs) if fit.log_x else xs
    k_eff = np.nan_to_num(p * n)
    starts = [(fit.a, fit.b, fit.lapse), _flat_start(t_all, fit), (-float(np.mean(t_all)), 1.0, 0.02)]
    params = _best_batch(t_all, k_eff, n, gamma, fit.lapse_max, starts)
    thr, flags = np.full(boot.n_boot, math.nan), []
    for r in range(boot.n_boot):
        if (n[r] > 0).sum() < 2:
            flags.append("not_increasing")
            continue
        thr[r], f = _threshold(*params[r], gamma, target, fit.tested_range, fit.log_x)
        flags.append(f)
    flags_arr = np.array(flags)
    finite_or_inf = thr[~np.isnan(thr)]
    alpha = 1 - level
    if finite_or_inf.size:
        lo, hi = (float(v) for v in np.quantile(finite_or_inf, [alpha / 2, 1 - alpha / 2], method="inverted_cdf"))
    else:
        lo = hi = math.nan
    return {
        "x": x, "target": target, "threshold": value, "flag": flag, "boot_lo": lo, "boot_hi": hi,
        "tested_min": fit.tested_range[0], "tested_max": fit.tested_range[1], "n_boot": boot.n_boot, "boot_unit": unit,
        "share_outside_range": float(np.isin(flags_arr, ["below_range", "above_range", "unreachable"]).mean()),
        "share_not_increasing": float((flags_arr == "not_increasing").mean()),
        "a": fit.a, "b": fit.b, "lapse": fit.lapse, "gamma": fit.gamma, "log_x": fit.log_x,
    }


def describe_threshold(res: Mapping[str, Any], unit: str = "", fmt: str = "{:.0f}") -> str:
    """Words for a threshold result: a value with its interval, or where it lies relative to the tested range."""
    u = f" {unit}" if unit else ""
    lo_t, hi_t = fmt.format(res["tested_min"]) + u, fmt.format(res["tested_max"]) + u
    flag = res["flag"]
    if flag == "below_range":
        return f"below the shortest/lowest level tested ({lo_t}): the target is met everywhere in the tested range"
    if flag in ("above_range", "unreachable"):
        why = "the fitted ceiling 1 - lapse is below the target" if flag == "unreachable" else "not reached within the tested range"
        return f"above the highest level tested ({hi_t}): {why}"
    if flag == "not_increasing":
        return "undefined: performance does not increase along this axis"

    def end(v: float) -> str:
        if v == -math.inf:
            return f"< {lo_t}"
        if v == math.inf:
            return f"> {hi_t}"
        return fmt.format(v) + u if np.isfinite(v) else "n/a"

    return f"{fmt.format(res['threshold'])}{u} (interval {end(res['boot_lo'])} to {end(res['boot_hi'])})"


# ----------------------------------------------------------------------------------------------------
# Calibration and ROC
# ----------------------------------------------------------------------------------------------------
def brier_score(y: Sequence[bool], p: Sequence[float]) -> float:
    """Mean squared error of ``p_speech`` against the 0/1 truth (``sklearn.metrics.brier_score_loss``)."""
    from sklearn.metrics import brier_score_loss

    return float(brier_score_loss(np.asarray(y, int), np.asarray(p, float), pos_label=1))


def reliability_table(y: Sequence[bool], p: Sequence[float], n_bins: int = 10, strategy: str = "uniform",
                      level: float = 0.95) -> pd.DataFrame:
    """Reliability-diagram data for ``p_speech``: per bin, count, mean predicted probability, observed
    share of speech with its Wilson interval. Bins: ``uniform`` (equal width on [0, 1], right-closed
    last bin) or ``quantile``. Empty bins are left out."""
    y, p = np.asarray(y, bool), np.asarray(p, float)
    if strategy == "quantile":
        edges = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1)))
        edges[0], edges[-1] = 0.0, 1.0
    elif strategy == "uniform":
        edges = np.linspace(0, 1, n_bins + 1)
    else:
        raise ValueError("strategy must be 'uniform' or 'quantile'")
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for j in range(len(edges) - 1):
        m = idx == j
        if not m.any():
            continue
        k, n = int(y[m].sum()), int(m.sum())
        lo, hi = wilson_interval(k, n, level)
        rows.append({"bin": j, "bin_lo": edges[j], "bin_hi": edges[j + 1], "n": n, "mean_p": float(p[m].mean()),
                     "frac_speech": k / n, "wilson_lo": lo, "wilson_hi": hi})
    return pd.DataFrame(rows)


def expected_calibration_error(y: Sequence[bool], p: Sequence[float], n_bins: int = 10, strategy: str = "uniform",
                               kind: str = "speech") -> float:
    """ECE = sum over bins of (n_bin / N) * |observed frequency - mean predicted probability|.

    ``kind="speech"``: the probability is ``p_speech`` and the frequency the share of speech (the
    reliability diagram's ECE). ``kind="confidence"``: top-label ECE, with confidence ``max(p, 1-p)``
    against the share of correct decisions at threshold 0.5.
    """
    y, p = np.asarray(y, bool), np.asarray(p, float)
    if kind == "confidence":
        pred = p >= 0.5
        y, p = pred == y, np.where(pred, p, 1 - p)
    elif kind != "speech":
        raise ValueError("kind must be 'speech' or 'confidence'")
    t = reliability_table(y, p, n_bins, strategy)
    return float((t["n"] / len(p) * (t["frac_speech"] - t["mean_p"]).abs()).sum())


def calibration_table(predictions: pd.DataFrame, n_bins: int = 10) -> pd.DataFrame:
    """Per system: Brier score, ECE (speech-probability and top-label), AUC."""
    rows = []
    for key in system_keys(predictions):
        part = select(predictions, key)
        y, p = part["label"].astype(str).values == POSITIVE, part["p_speech"].astype(float).values
        rows.append({**dict(zip(SYSTEM_KEY, key)), "n": len(part), "brier": brier_score(y, p),
                     "ece": expected_calibration_error(y, p, n_bins),
                     "ece_confidence": expected_calibration_error(y, p, n_bins, kind="confidence"),
                     "auc": float(weighted_auc(y, p)), "mean_p_speech": float(p.mean())})
    return pd.DataFrame(rows)


def reliability_frame(predictions: pd.DataFrame, n_bins: int = 10, strategy: str = "uniform") -> pd.DataFrame:
    """``reliability_table`` for every system, stacked with the system key columns."""
    parts = []
    for key in system_keys(predictions):
        part = select(predictions, key)
        t = reliability_table(part["label"].astype(str).values == POSITIVE, part["p_speech"].astype(float).values, n_bins, strategy)
        parts.append(t.assign(**dict(zip(SYSTEM_KEY, key))))
    return pd.concat(parts, ignore_index=True)


def roc_frame(predictions: pd.DataFrame) -> pd.DataFrame:
    """ROC curve points of every system (``sklearn.metrics.roc_curve``) with its AUC."""
    from sklearn.metrics import roc_auc_score, roc_curve

    parts = []
    for key in system_keys(predictions):
        part = select(predictions, key)
        y, p = (part["label"].astype(str).values == POSITIVE).astype(int), part["p_speech"].astype(float).values
        if len(set(y)) < 2:
            continue
        fpr, tpr, thr = roc_curve(y, p)
        parts.append(pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr, "auc": roc_auc_score(y, p), **dict(zip(SYSTEM_KEY, key))}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["fpr", "tpr", "threshold", "auc"] + SYSTEM_KEY)


# ----------------------------------------------------------------------------------------------------
# Power analysis
# ----------------------------------------------------------------------------------------------------
def mcnemar_sample_size(delta: float, discordance: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Clips (pairs) needed to detect an accuracy difference ``delta`` between two systems scored on the
    same clips, by McNemar's test (Connor 1987, Biometrics 43:207-211):

        n = ( z_{1-alpha/2} * sqrt(psi) + z_{power} * sqrt(psi - delta^2) )^2 / delta^2

    with ``psi`` the discordance rate (share of clips where exactly one system is right, ``p10 + p01``)
    and ``delta = p10 - p01`` the accuracy difference; ``|delta| <= psi`` is required. Rounded up.
    The clips are assumed independent: multiply by a design effect (``design_effect``) for clustered clips.
    """
    delta = abs(float(delta))
    if not 0 < delta <= discordance <= 1:
        raise ValueError(f"need 0 < |delta| ({delta}) <= discordance ({discordance}) <= 1")
    za, zb = sps.norm.ppf(1 - alpha / 2), sps.norm.ppf(power)
    n = (za * math.sqrt(discordance) + zb * math.sqrt(discordance - delta ** 2)) ** 2 / delta ** 2
    return int(math.ceil(n - 1e-9))


def mcnemar_detectable_difference(n: float, discordance: float, alpha: float = 0.05, power: float = 0.8,
                                  deff: float = 1.0) -> float:
    """The smallest accuracy difference ``delta`` that ``n`` clips detect with the given power, at
    discordance rate ``discordance``: the inverse of ``mcnemar_sample_size`` (its formula solved for
    ``delta`` with ``scipy.optimize.brentq``), with the clips worth ``n / deff`` independent ones.
    ``nan`` when even ``delta = discordance`` (every discordant clip one way) needs more clips."""
    if not 0 < discordance <= 1 or n <= 0 or deff < 1:
        raise ValueError(f"need 0 < discordance ({discordance}) <= 1, n ({n}) > 0 and deff ({deff}) >= 1")
    za, zb = sps.norm.ppf(1 - alpha / 2), sps.norm.ppf(power)
    n_eff = n / deff

    def need(delta: float) -> float:  # Connor's n, continuous, decreasing in delta on (0, psi]
        return (za * math.sqrt(discordance) + zb * math.sqrt(max(discordance - delta ** 2, 0.0))) ** 2 / delta ** 2

    if need(discordance) > n_eff:
        return math.nan
    if need(1e-9) <= n_eff:
        return 1e-9
    return float(optimize.brentq(lambda d: need(d) - n_eff, 1e-9, discordance, xtol=1e-12))


def mcnemar_exact_power(n: int, p10: float, p01: float, alpha: float = 0.05) -> float:
    """Exact power of the two-sided exact McNemar test with ``n`` pairs: sum over the number of
    discordant pairs ``D ~ Binom(n, p10 + p01)`` of ``P(reject | D)`` with ``B | D ~ Binom(D, p10 / psi)``.
    Checks ``mcnemar_sample_size`` without the normal approximation."""
    psi = p10 + p01
    if psi <= 0:
        return 0.0
    theta = p10 / psi
    power = 0.0
    d_all = np.arange(n + 1)
    pd_ = sps.binom.pmf(d_all, n, psi)
    for d in d_all[pd_ > 1e-12]:
        b = np.arange(d + 1)
        k = np.minimum(b, d - b)
        pval = np.minimum(1.0, 2 * sps.binom.cdf(k, d, 0.5)) if d > 0 else np.ones(1)
        power += pd_[d] * sps.binom.pmf(b, d, theta)[pval <= alpha].sum()
    return float(power)


def power_table(deltas: Sequence[float], discordances: Sequence[float], alpha: float = 0.05, power: float = 0.8,
                deff: float = 1.0) -> pd.DataFrame:
    """``mcnemar_sample_size`` over a grid: clips needed for each accuracy difference and discordance
    rate, and the same times the design effect ``deff`` (clips that share sources carry less information).
    Impossible cells (``|delta| > discordance``) are left out."""
    rows = []
    for psi in discordances:
        for d in deltas:
            if 0 < abs(d) <= psi:
                n = mcnemar_sample_size(d, psi, alpha, power)
                rows.append({"delta": d, "discordance": psi, "n_independent": n, "deff": deff,
                             "n_clips": int(math.ceil(n * deff - 1e-9))})
    return pd.DataFrame(rows)


def two_proportion_sample_size(p1: float, p2: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Clips *per system* to tell accuracies ``p1`` and ``p2`` apart when the systems are scored on
    independent clip sets (two-sided z-test on Cohen's h = 2 asin sqrt(p1) - 2 asin sqrt(p2);
    ``statsmodels`` ``NormalIndPower``): ``n = 2 ((z_{1-alpha/2} + z_{power}) / h)^2``, rounded up.
    Paired designs (same clips) need fewer: see ``mcnemar_sample_size``."""
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    h = proportion_effectsize(p1, p2)
    return int(math.ceil(NormalIndPower().solve_power(effect_size=abs(h), alpha=alpha, power=power, ratio=1.0) - 1e-9))


def design_effect(correct: Sequence[bool], groups: Sequence[Any]) -> dict[str, float]:
    """Design effect of clustering for a proportion: ``deff = 1 + (m0 - 1) * icc`` with the one-way
    ANOVA intraclass correlation of the 0/1 correctness and ``m0 = (N - sum m_g^2 / N) / (G - 1)``
    (the ANOVA average cluster size). ``icc`` is floored at 0. Independent clips needed x ``deff``
    = clustered clips needed."""
    y = np.asarray(correct, float)
    g = pd.Series(y).groupby(np.asarray(groups).astype(str))
    m = g.size().values.astype(float)
    N, G = len(y), len(m)
    if G < 2 or N <= G:
        return {"icc": 0.0, "deff": 1.0, "m0": float(N / max(G, 1))}
    means = g.mean().values
    ssb = float((m * (means - y.mean()) ** 2).sum())
    ssw = float(((y - g.transform("mean").values) ** 2).sum())
    msb, msw = ssb / (G - 1), ssw / (N - G)
    m0 = (N - (m ** 2).sum() / N) / (G - 1)
    denom = msb + (m0 - 1) * msw
    icc = max(0.0, (msb - msw) / denom) if denom > 0 else 0.0
    return {"icc": float(icc), "deff": float(1 + (m0 - 1) * icc), "m0": float(m0)}


def discordance(predictions: pd.DataFrame, system_a: Any, system_b: Any) -> dict[str, float]:
    """Observed ``p10`` (a right, b wrong), ``p01`` and discordance ``psi`` of two systems (the power
    analysis's inputs, taken from a run)."""
    r = mcnemar_test(predictions, system_a, system_b)
    return {"p10": r["a_only"] / r["n"], "p01": r["b_only"] / r["n"], "psi": (r["a_only"] + r["b_only"]) / r["n"], "n": r["n"]}
