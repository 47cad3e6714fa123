"""The book's statistical figures, drawn with seaborn from ``lib.stats`` tables.

Every function returns the matplotlib figure and, given ``path`` (a file stem such as
``figures/06_metrics``), saves it as PNG and PDF through ``lib.io.save_figure``. ``smoke=True`` prefixes
the title with ``SMOKE (tiny model)``: results of the cpu profile's tiny model are smoke results and
every figure that shows them says so.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import io
from .stats import METRICS, PsychometricFit, add_system_label, system_label

SMOKE_PREFIX = "SMOKE (tiny model)"
STYLE = "whitegrid"
METRIC_NAMES = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "recall_speech": "recall (speech)",
    "recall_nonspeech": "recall (non-speech)",
    "auc": "ROC AUC",
}


def title(text: str, smoke: bool = False) -> str:
    """``text``, prefixed with ``SMOKE (tiny model)`` for results of the tiny model."""
    return f"{SMOKE_PREFIX}: {text}" if smoke else text


def _finish(fig: matplotlib.figure.Figure, text: str, smoke: bool, path: str | Path | None, grid: Any = None) -> matplotlib.figure.Figure:
    fig.suptitle(title(text, smoke), fontweight="bold" if smoke else None)
    (grid or fig).tight_layout()  # a FacetGrid's own tight_layout leaves room for its outside legend
    if path is not None:
        io.save_figure(fig, path)
    return fig


def _names(df: pd.DataFrame) -> pd.DataFrame:
    return df if "name" in df.columns else add_system_label(df)


def _err(est: pd.Series, lo: pd.Series, hi: pd.Series) -> list[np.ndarray]:
    """Error-bar lengths, clipped at 0 (an estimate of 1 may sit a rounding error above its upper bound)."""
    est, lo, hi = (np.asarray(v, float) for v in (est, lo, hi))
    return [np.clip(est - lo, 0, None), np.clip(hi - est, 0, None)]


def _dodge(n: int, width: float = 0.6) -> np.ndarray:
    return np.zeros(1) if n == 1 else np.linspace(-width / 2, width / 2, n)


def metrics_plot(table: pd.DataFrame, metrics: Sequence[str] = METRICS, interval: str = "boot", smoke: bool = False,
                 path: str | Path | None = None, level: float | None = None) -> matplotlib.figure.Figure:
    """Point estimate and interval (``boot`` or ``wilson``) of each metric, one row per system."""
    t = _names(table)
    rows = []
    for _, r in t.iterrows():
        for m in metrics:
            lo_col, hi_col = (f"{m}_{interval}_lo", f"{m}_{interval}_hi")
            rows.append({"name": r["name"], "metric": METRIC_NAMES.get(m, m), "estimate": r[m],
                         "lo": r.get(lo_col, np.nan), "hi": r.get(hi_col, np.nan)})
    long = pd.DataFrame(rows)
    names = list(dict.fromkeys(t.sort_values(metrics[0] if metrics[0] in t else t.columns[0])["name"]))
    mnames = list(dict.fromkeys(long["metric"]))
    palette = dict(zip(mnames, sns.color_palette("colorblind", len(mnames))))
    with sns.axes_style(STYLE):
        fig, ax = plt.subplots(figsize=(8, 0.55 * len(names) * max(1, len(mnames) / 2) + 1.5))
        offsets = dict(zip(mnames, _dodge(len(mnames))))
        long["y"] = [names.index(n) + offsets[m] for n, m in zip(long["name"], long["metric"])]
        for m, part in long.groupby("metric", sort=False):
            ax.errorbar(part["estimate"], part["y"], xerr=_err(part["estimate"], part["lo"], part["hi"]),
                        fmt="none", ecolor=palette[m], elinewidth=1.5, capsize=3)
        sns.scatterplot(data=long, x="estimate", y="y", hue="metric", palette=palette, s=45, ax=ax, zorder=3)
        ax.set_yticks(range(len(names)), names)
        ax.axvline(0.5, color="0.5", ls=":", lw=1)
        ax.set_xlabel("estimate with " + ("cluster-bootstrap" if interval == "boot" else "Wilson")
                      + (f" {level:.0%}" if level else "") + " interval")
        ax.set_ylabel("")
        ax.set_xlim(min(0.45, np.nanmin(long["lo"].values) - 0.02) if long["lo"].notna().any() else 0.45, 1.01)
        ax.legend(title="", loc="lower left", fontsize="small")
    return _finish(fig, "Metrics per system", smoke, path)


def psychometric_plot(fits: Mapping[str, PsychometricFit], thresholds: Mapping[str, Mapping[str, Any]] | None = None,
                      target: float | None = None, xlabel: str | None = None, smoke: bool = False,
                      path: str | Path | None = None) -> matplotlib.figure.Figure:
    """Observed balanced accuracy per level (points sized by clip count) and the fitted curves of one axis.

    ``thresholds``: results of ``stats.psychometric_threshold`` by system name; thresholds inside the
    tested range are marked with their bootstrap interval, others are named in the legend only.
    """
    pts, curves = [], []
    for name, fit in fits.items():
        lv = fit.levels
        pts.append(pd.DataFrame({"name": name, "x": lv["x"], "p": lv["p"], "n": lv["n"]}))
        lo, hi = fit.tested_range
        grid = np.geomspace(lo, hi, 200) if fit.log_x else np.linspace(lo, hi, 200)
        curves.append(pd.DataFrame({"name": name, "x": grid, "p": fit.predict(grid)}))
    pts_df, cur_df = pd.concat(pts, ignore_index=True), pd.concat(curves, ignore_index=True)
    names = list(fits)
    palette = dict(zip(names, sns.color_palette("colorblind", len(names))))
    any_fit = next(iter(fits.values()))
    with sns.axes_style(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        sns.lineplot(data=cur_df, x="x", y="p", hue="name", palette=palette, ax=ax, legend=False)
        sized = {"size": "n", "sizes": (20, 120)} if pts_df["n"].nunique() > 1 else {"s": 50}
        sns.scatterplot(data=pts_df, x="x", y="p", hue="name", palette=palette, ax=ax, legend="brief", **sized)
        if any_fit.log_x:
            ax.set_xscale("log")
        levels = np.sort(pts_df["x"].unique())
        if len(levels) <= 12:
            ax.set_xticks(levels, [f"{v:g}" for v in levels])
            ax.minorticks_off()
        ax.axhline(any_fit.gamma, color="0.5", ls=":", lw=1)
        if target is not None:
            ax.axhline(target, color="0.3", ls="--", lw=1)
        for name, res in (thresholds or {}).items():
            if res.get("flag") == "ok":
                c = palette.get(name, "k")
                ax.axvline(res["threshold"], color=c, ls="--", lw=1)
                lo, hi = res.get("boot_lo", math.nan), res.get("boot_hi", math.nan)
                lo = any_fit.tested_range[0] if lo == -math.inf else lo
                hi = any_fit.tested_range[1] if hi == math.inf else hi
                if np.isfinite(lo) and np.isfinite(hi):
                    ax.axvspan(lo, hi, color=c, alpha=0.08)
        ax.set_ylim(0.4, 1.02)
        ax.set_xlabel(xlabel or any_fit.x)
        ax.set_ylabel("balanced accuracy")
        ax.legend(fontsize="small", loc="lower right")
    what = f"Psychometric curves: {xlabel or any_fit.x}" + (f" (target {target:.0%})" if target else "")
    return _finish(fig, what, smoke, path)


def reliability_plot(reliability: pd.DataFrame, smoke: bool = False, path: str | Path | None = None,
                     col_wrap: int = 4) -> matplotlib.figure.Figure:
    """Reliability diagram per system (``stats.reliability_frame``): observed share of speech against the
    mean predicted ``p_speech`` per bin, Wilson intervals, the diagonal of perfect calibration."""
    r = _names(reliability)
    names = list(dict.fromkeys(r["name"]))
    with sns.axes_style(STYLE):
        g = sns.FacetGrid(r, col="name", col_wrap=min(col_wrap, len(names)), height=2.8, xlim=(0, 1), ylim=(0, 1), col_order=names)
        g.map_dataframe(sns.lineplot, x="mean_p", y="frac_speech", marker="o")

        def _extras(data: pd.DataFrame, **_: Any) -> None:
            ax = plt.gca()
            ax.plot([0, 1], [0, 1], color="0.5", ls=":", lw=1)
            ax.errorbar(data["mean_p"], data["frac_speech"], yerr=_err(data["frac_speech"], data["wilson_lo"], data["wilson_hi"]),
                        fmt="none", ecolor="0.4", elinewidth=1)

        g.map_dataframe(_extras)
        g.set_axis_labels("mean predicted p_speech", "share of speech")
        g.set_titles("{col_name}")
    return _finish(g.figure, "Reliability diagrams", smoke, path, grid=g)


def roc_plot(roc: pd.DataFrame, smoke: bool = False, path: str | Path | None = None) -> matplotlib.figure.Figure:
    """ROC curves of every system (``stats.roc_frame``), AUC in the legend."""
    r = _names(roc)
    r = r.assign(legend=[f"{n} (AUC {a:.3f})" for n, a in zip(r["name"], r["auc"])])
    with sns.axes_style(STYLE):
        fig, ax = plt.subplots(figsize=(6, 5.5))
        sns.lineplot(data=r, x="fpr", y="tpr", hue="legend", estimator=None, sort=False, ax=ax,
                     palette=sns.color_palette("colorblind", r["legend"].nunique()), drawstyle="steps-post")
        ax.plot([0, 1], [0, 1], color="0.5", ls=":", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (non-speech called speech)",
               ylabel="true positive rate (speech recall)")
        ax.legend(title="", fontsize="small", loc="lower right")
    return _finish(fig, "ROC curves", smoke, path)


def confidence_hist(predictions: pd.DataFrame, smoke: bool = False, path: str | Path | None = None,
                    col_wrap: int = 4, bins: int = 20) -> matplotlib.figure.Figure:
    """Histograms of ``p_speech`` per system, split by the true label."""
    p = _names(predictions)
    names = list(dict.fromkeys(p["name"]))
    with sns.axes_style(STYLE):
        g = sns.displot(data=p, x="p_speech", hue="label", col="name", col_wrap=min(col_wrap, len(names)), col_order=names,
                        bins=bins, binrange=(0, 1), height=2.6, element="step", common_norm=False,
                        hue_order=["speech", "nonspeech"], facet_kws={"sharey": False})
        g.set_titles("{col_name}")
        g.set_axis_labels("p_speech", "clips")
    return _finish(g.figure, "Confidence (p_speech) by true label", smoke, path, grid=g)


def category_plot(categories: pd.DataFrame, label: str | None = "nonspeech", top: int = 15, smoke: bool = False,
                  path: str | Path | None = None, by: str = "category") -> matplotlib.figure.Figure:
    """Accuracy per category (``stats.category_table``) with Wilson intervals, hardest first (ordered by
    the mean accuracy over the systems shown); ``label`` restricts to one class."""
    c = _names(categories)
    if label is not None and "label" in c.columns:
        c = c[c["label"] == label]
    order = c.groupby(by)["accuracy"].mean().sort_values().index[:top].tolist()
    c = c[c[by].isin(order)]
    names = list(dict.fromkeys(c["name"]))
    palette = dict(zip(names, sns.color_palette("colorblind", len(names))))
    offsets = dict(zip(names, _dodge(len(names), 0.7)))
    c = c.assign(y=[order.index(k) + offsets[n] for k, n in zip(c[by], c["name"])])
    with sns.axes_style(STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(order) * max(1, len(names) / 3) + 1.5))
        for n, part in c.groupby("name", sort=False):
            ax.errorbar(part["accuracy"], part["y"], xerr=_err(part["accuracy"], part["wilson_lo"], part["wilson_hi"]),
                        fmt="none", ecolor=palette[n], elinewidth=1.2, capsize=2)
        sns.scatterplot(data=c, x="accuracy", y="y", hue="name", palette=palette, ax=ax, zorder=3, s=40)
        ax.set_yticks(range(len(order)), order)
        ax.set(xlim=(-0.02, 1.02), xlabel="accuracy (Wilson 95% interval)", ylabel="")
        ax.invert_yaxis()
        ax.legend(title="", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    what = f"Hardest {'non-speech ' if label == 'nonspeech' else ''}categories"
    return _finish(fig, what, smoke, path)


def seed_plot(table: pd.DataFrame, metric: str = "balanced_accuracy", smoke: bool = False,
              path: str | Path | None = None) -> matplotlib.figure.Figure:
    """One dot per seed for each (system, variant), with the mean and +-1 sd over seeds."""
    t = table.assign(name=[system_label(s, v, show_seed=False) for s, v in zip(table["system"], table["variant"])])
    t = t.assign(seed=t["seed"].astype(str))
    with sns.axes_style(STYLE):
        fig, ax = plt.subplots(figsize=(7, 0.6 * t["name"].nunique() + 1.5))
        sns.stripplot(data=t, x=metric, y="name", hue="seed", ax=ax, size=7, jitter=0.1, palette="colorblind")
        sns.pointplot(data=t, x=metric, y="name", ax=ax, errorbar="sd", color="k", markers="|", linestyles="none", capsize=0.2,
                      err_kws={"linewidth": 1.2})
        ax.set(xlabel=METRIC_NAMES.get(metric, metric) + " (mean +- sd over seeds)", ylabel="")
        ax.legend(title="seed", fontsize="small", loc="lower right")
    return _finish(fig, f"Per-seed {METRIC_NAMES.get(metric, metric)}", smoke, path)
