"""Paired comparisons of two systems on the same clips: McNemar's test, on clips or on sources, and Holm.

McNemar's exact test (``statsmodels``'s ``mcnemar(exact=True)``, the two-sided binomial test on the discordant
pairs) and its mid-p version (``scipy.stats.binom``), on clips and on sources collapsed by majority vote (a tie
within a source broken by the mean probability of the true class: ``collapse_majority``). Several comparisons
at once are adjusted by Holm's step-down method (``holm``, ``adjust_within``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from .metrics import POSITIVE
from .predictions import select, system_keys, system_label, with_bank


def adjust_p(p_values: Sequence[float], method: str = "holm") -> np.ndarray:
    """Adjusted p-values of one family of tests (``statsmodels.stats.multitest.multipletests``; ``method``
    is any of its names: ``holm``, ``bonferroni``, ``fdr_bh`` ...)."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, float)
    return multipletests(p, method=method)[1] if p.size else p


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment: the ``i``-th smallest of ``m`` p-values becomes
    ``max_{j <= i} min(1, (m - j + 1) p_(j))``; the family-wise error stays at the level for any dependence."""
    return adjust_p(p_values, "holm")


def adjust_within(table: pd.DataFrame, by: str | Sequence[str], column: str = "p_exact", method: str = "holm") -> pd.Series:
    """``column`` adjusted within each group of rows that share ``by`` (each group one family of tests,
    e.g. the comparisons made on clips and those made on sources), aligned with ``table``'s index."""
    out = pd.Series(np.nan, index=table.index, dtype=float)
    for _, idx in table.groupby(by).groups.items():
        out.loc[idx] = adjust_p(table.loc[idx, column].values, method)
    return out


def mcnemar_midp(b: int, c: int) -> float:
    """Two-sided mid-p McNemar test: ``2 * (P(X < min) + P(X = min)/2)`` with ``X ~ Binom(b + c, 1/2)``,
    capped at 1 (Fagerland, Lydersen & Laake 2013). 1 when there are no discordant pairs."""
    from scipy import stats as sps

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

    ``p_exact_adj``: Holm-adjusted exact p within each unit (``adjust_within``), because the table makes
    several comparisons.
    """
    df = with_bank(predictions, bank) if bank is not None else predictions
    ref = system_keys(select(df, reference))[0]
    others = [system_keys(select(df, o))[0] for o in others] if others is not None else [k for k in system_keys(df) if k != ref]
    rows = [mcnemar_test(df, ref, o, collapse=c) for c in collapse for o in others]
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_exact_adj"] = adjust_within(out, "unit", "p_exact", adjust)
    return out
