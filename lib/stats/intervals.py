"""Intervals that need no resampling: Wilson score intervals, and the percentile interval of replicates.

* **Wilson** (``*_wilson_lo/hi``): score interval for a binomial proportion,
  ``statsmodels.stats.proportion.proportion_confint(method="wilson")`` on clip counts. It treats clips as
  independent, so it is too narrow when clips share sources; it is shown because it is the textbook
  interval and because the gap to the bootstrap shows how much clustering matters.
  For **balanced accuracy** (the mean of the two recalls, which is not one binomial proportion) the
  Wilson columns hold a *Bonferroni-combined* interval: each recall gets a Wilson interval at level
  ``1 - alpha/2`` and the bounds are averaged. Both recalls lie in their intervals together with
  probability >= ``1 - alpha`` (Bonferroni), and then their mean lies between the averaged bounds, so the
  interval is conservative (coverage >= level) under clip independence.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .metrics import AbsentClass, class_counts, truth_and_correct


def wilson_interval(successes: float, n: float, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``successes / n`` (statsmodels); ``(nan, nan)`` when ``n == 0``."""
    from statsmodels.stats.proportion import proportion_confint

    if n <= 0:
        return (math.nan, math.nan)
    lo, hi = proportion_confint(successes, n, alpha=1 - level, method="wilson")
    return float(lo), float(hi)


def wilson_intervals(label: Sequence[Any], pred: Sequence[Any], level: float = 0.95,
                     absent_class: AbsentClass = "undefined") -> dict[str, tuple[float, float]]:
    """Wilson intervals for every metric (balanced accuracy: Bonferroni-combined, see the module doc).

    With one class absent, balanced accuracy's interval is ``(nan, nan)`` (``absent_class="undefined"``) or
    the present class's recall interval at ``level`` (``"other"``, as ``metrics.metrics_from_counts``)."""
    ns, ks, nn, kn = class_counts(*truth_and_correct(label, pred))
    out = {
        "accuracy": wilson_interval(ks + kn, ns + nn, level),
        "recall_speech": wilson_interval(ks, ns, level),
        "recall_nonspeech": wilson_interval(kn, nn, level),
    }
    if absent_class == "other" and not (ns > 0 and nn > 0):
        out["balanced_accuracy"] = out["recall_speech"] if ns > 0 else out["recall_nonspeech"]
        return out
    per_class_level = 1 - (1 - level) / 2
    s_lo, s_hi = wilson_interval(ks, ns, per_class_level)
    n_lo, n_hi = wilson_interval(kn, nn, per_class_level)
    out["balanced_accuracy"] = ((s_lo + n_lo) / 2, (s_hi + n_hi) / 2)
    return out


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaN replicates, e.g. a class absent, are ignored)."""
    v = np.asarray(values, float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return (math.nan, math.nan)
    a = (1 - level) / 2
    lo, hi = np.quantile(v, [a, 1 - a])
    return float(lo), float(hi)
