"""Psychometric functions: balanced accuracy against a clip's duration or SNR, and the thresholds they give.

``p(x) = gamma + (1 - gamma - lapse) * logistic(a + b * t(x))``, ``t`` = log (duration) or identity, fitted
by maximum likelihood; a threshold is where the curve reaches a target, with a cluster-bootstrap interval,
and is never extrapolated beyond the levels tested.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import special

from .bootstrap import DEFAULT_N_BOOT, ClusterBootstrap
from .intervals import wilson_interval
from .metrics import POSITIVE, class_counts, metrics_from_counts
from .predictions import checked_correct, cluster_units
from .threads import one_blas_thread

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
    d = df.assign(_c=checked_correct(df), _s=df["label"].astype(str).values == POSITIVE)
    d = d[np.isfinite(d[x].astype(float))]
    rows = []
    for xv, part in d.groupby(x):
        c = class_counts(part["_s"].values, part["_c"].values)
        m = metrics_from_counts(c)
        n = c[0] + c[2]
        # a level with one class: its balanced accuracy is that class's recall, which is then its accuracy
        p = float(metrics_from_counts(c, absent_class="other")["balanced_accuracy"]) if balanced else float(m["accuracy"])
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


@one_blas_thread
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
    from scipy import optimize

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


@one_blas_thread
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


@one_blas_thread
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


@one_blas_thread
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
    groups, unit = cluster_units(d)
    label = d["label"].astype(str).values
    boot = ClusterBootstrap.draw(groups, n_boot, seed, strata=label if stratify else None, unit=unit)
    xs = fit.levels["x"].values
    lev_idx = np.searchsorted(xs, d[x].astype(float).values)
    s, ok = label == POSITIVE, checked_correct(d)
    L = len(xs)
    per_clip = np.zeros((len(d), 4 * L))
    for j, col in enumerate([s, ok & s, ~s, ok & ~s]):
        per_clip[np.arange(len(d)), lev_idx * 4 + j] = col
    reps = boot.aggregate(per_clip).reshape(boot.n_boot, L, 4)
    n = reps[..., 0] + reps[..., 2]
    rep_metrics = metrics_from_counts(reps, absent_class="other")  # as psychometric_levels, per replicate and level
    p = rep_metrics["balanced_accuracy"] if balanced else rep_metrics["accuracy"]
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
