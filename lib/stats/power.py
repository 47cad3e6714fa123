"""Power analysis: how many clips a comparison needs, and what difference a test split can detect.

McNemar's test on paired systems (Connor 1987) with its exact power, the two-proportion z-test for systems
on separate clips, and the design effect of clips that share a source.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .paired import mcnemar_test


def mcnemar_sample_size(delta: float, discordance: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Clips (pairs) needed to detect an accuracy difference ``delta`` between two systems scored on the
    same clips, by McNemar's test (Connor 1987, Biometrics 43:207-211):

        n = ( z_{1-alpha/2} * sqrt(psi) + z_{power} * sqrt(psi - delta^2) )^2 / delta^2

    with ``psi`` the discordance rate (share of clips where exactly one system is right, ``p10 + p01``)
    and ``delta = p10 - p01`` the accuracy difference; ``|delta| <= psi`` is required. Rounded up.
    The clips are assumed independent: multiply by a design effect (``design_effect``) for clustered clips.
    """
    from scipy import stats as sps

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
    from scipy import optimize
    from scipy import stats as sps

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
    from scipy import stats as sps

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


def design_effect_within_class(values: Sequence[float], labels: Sequence[Any], groups: Sequence[Any]) -> dict[str, float]:
    """``design_effect`` of ``values`` centred within each class (each value minus its class's mean).

    The bank fixes how many sources each class has, so a difference between the classes is design, not
    sampling noise: left in, it would count as agreement within sources (every source holds one class)."""
    v = pd.Series(np.asarray(values, float))
    centred = (v - v.groupby(np.asarray(labels)).transform("mean")).values
    return design_effect(centred, groups)


def paired_power(tests: pd.DataFrame, deff: float = 1.0, alpha: float = 0.05, power: float = 0.8) -> pd.DataFrame:
    """For McNemar tests on clips (rows of ``mcnemar_table``): the discordance ``psi``, the clips a difference
    of the size observed would need (``mcnemar_sample_size`` x ``deff``; NaN when both systems made the same
    errors), the smallest difference these clips detect (``mcnemar_detectable_difference``), and whether the
    split is ``large_enough`` (None where no difference was seen)."""
    out = tests.copy()
    out["psi"] = (out["a_only"] + out["b_only"]) / out["n"]
    need = []
    for _, r in out.iterrows():
        d, psi = abs(r["a_only"] - r["b_only"]) / r["n"], r["psi"]  # from the counts: |delta| <= psi exactly
        need.append(int(np.ceil(mcnemar_sample_size(d, psi, alpha, power) * deff)) if d > 0 else np.nan)
    out["clips_needed"] = need
    out["detectable"] = [mcnemar_detectable_difference(r["n"], r["psi"], alpha, power, deff=deff) if r["psi"] > 0 else np.nan
                         for _, r in out.iterrows()]
    out["large_enough"] = [None if not np.isfinite(c) else bool(c <= n) for c, n in zip(out["clips_needed"], out["n"])]
    return out
