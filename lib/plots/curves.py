"""Curves: psychometric fits, reliability, ROC, confidence histograms and training curves."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..stats import PsychometricFit
from .captions import Source, finish
from .style import axis_name, error_bars, house_style, legend_outside, system_palette, with_names


def psychometric_plot(fits: Mapping[str, PsychometricFit], thresholds: Mapping[str, Mapping[str, Any]] | None = None,
                      target: float | None = None, xlabel: str | None = None, smoke: bool = False,
                      path: str | Path | None = None, source: Source | str | None = None) -> matplotlib.figure.Figure:
    """Observed balanced accuracy per level (points sized by clip count) and the fitted curves of one axis.

    ``thresholds``: results of ``stats.psychometric_threshold`` by system name; thresholds inside the
    tested range are marked with their bootstrap interval (shaded), others are named in the legend.
    """
    names = list(fits)
    palette = system_palette(names)
    any_fit = next(iter(fits.values()))
    xlabel = xlabel or axis_name(any_fit.x)
    with house_style():
        fig, ax = plt.subplots(figsize=(8.6, 4.6))
        handles, labels = [], []
        n_all = np.concatenate([f.levels["n"].to_numpy(float) for f in fits.values()])
        for name, fit in fits.items():
            c = palette[name]
            lo, hi = fit.tested_range
            grid = np.geomspace(lo, hi, 200) if fit.log_x else np.linspace(lo, hi, 200)
            (line,) = ax.plot(grid, fit.predict(grid), color=c, lw=2)
            lv = fit.levels
            size = 20 + 100 * (lv["n"].to_numpy(float) - n_all.min()) / max(1.0, np.ptp(n_all))
            ax.scatter(lv["x"], lv["p"], s=size, color=c, edgecolor="white", zorder=3)
            res = (thresholds or {}).get(name, {})
            label = name
            if res.get("flag") == "ok":
                ax.axvline(res["threshold"], color=c, ls="--", lw=1)
                blo, bhi = res.get("boot_lo", math.nan), res.get("boot_hi", math.nan)
                blo = lo if blo == -math.inf else blo
                bhi = hi if bhi == math.inf else bhi
                if np.isfinite(blo) and np.isfinite(bhi):
                    ax.axvspan(blo, bhi, color=c, alpha=0.08)
                label += f" (threshold {res['threshold']:.3g})"
            elif res.get("flag"):
                label += f" (threshold: {res['flag'].replace('_', ' ')})"
            handles.append(line)
            labels.append(label)
        if any_fit.log_x:
            ax.set_xscale("log")
        levels = np.sort(np.unique(np.concatenate([f.levels["x"].to_numpy(float) for f in fits.values()])))
        if len(levels) <= 12:
            ax.set_xticks(levels, [f"{v:g}" for v in levels])
            ax.minorticks_off()
        ax.axhline(any_fit.gamma, color="0.5", ls=":", lw=1)
        if target is not None:
            ax.axhline(target, color="0.3", ls="--", lw=1)
            ax.text(levels[0], target + 0.005, f"target {target:.0%}", fontsize=8, color="0.3", va="bottom")
        ax.set_ylim(0.4, 1.02)
        ax.set_xlabel(xlabel + ("\n(dashed line and band: a threshold and its bootstrap interval)" if thresholds else ""))
        ax.set_ylabel("balanced accuracy")
        handles.append(plt.Line2D([], [], ls="none", marker="o", color="0.4"))
        labels.append("observed (size ~ clips)")
        legend_outside(ax, title="system", handles=handles, labels=labels)
    what = f"Psychometric curves over {xlabel}" + (f", target {target:.0%}" if target else "")
    return finish(fig, what, source, path, smoke=smoke)


def reliability_plot(reliability: pd.DataFrame, smoke: bool = False, path: str | Path | None = None,
                     col_wrap: int = 4, source: Source | str | None = None) -> matplotlib.figure.Figure:
    """Reliability diagram per system (``stats.reliability_frame``): observed share of speech against the
    mean predicted ``p_speech`` per bin, Wilson intervals, the diagonal of perfect calibration."""
    r = with_names(reliability)
    names = list(dict.fromkeys(r["name"]))
    with house_style():
        g = sns.FacetGrid(r, col="name", col_wrap=min(col_wrap, len(names)), height=2.8, aspect=1.2, xlim=(0, 1),
                          ylim=(0, 1), col_order=names)
        g.map_dataframe(sns.lineplot, x="mean_p", y="frac_speech", marker="o")

        def _extras(data: pd.DataFrame, **_: Any) -> None:
            ax = plt.gca()
            ax.plot([0, 1], [0, 1], color="0.5", ls=":", lw=1)
            ax.errorbar(data["mean_p"], data["frac_speech"], yerr=error_bars(data["frac_speech"], data["wilson_lo"], data["wilson_hi"]),
                        fmt="none", ecolor="0.4", elinewidth=1)

        g.map_dataframe(_extras)
        g.set_axis_labels("mean p(speech) in the bin", "share of speech")
        g.set_titles("{col_name}", size="small")
        g.figure.supxlabel("bars: 95% Wilson interval of the share; dotted: perfect calibration", fontsize=10, y=-0.01)
    return finish(g.figure, "Calibration: reliability diagrams", source, path, smoke=smoke, grid=g)


def roc_plot(roc: pd.DataFrame, smoke: bool = False, path: str | Path | None = None, source: Source | str | None = None,
             what: str = "ROC curves") -> matplotlib.figure.Figure:
    """ROC curves of every system (``stats.roc_frame``), AUC in the legend (outside the axes); one
    distinct colour per system, however many (:func:`system_palette`). ``what`` titles the figure."""
    r = with_names(roc)
    r = r.assign(legend=[f"{n} (AUC {a:.3f})" for n, a in zip(r["name"], r["auc"])])
    entries = list(dict.fromkeys(r["legend"]))
    palette = system_palette(entries)
    styles = ["-", "--", "-.", ":"]
    with house_style():
        fig, ax = plt.subplots(figsize=(8.8, 5.4))
        for i, (entry, part) in enumerate(r.groupby("legend", sort=False)):
            ax.step(part["fpr"], part["tpr"], where="post", color=palette[entry], lw=1.6, label=entry,
                    ls=styles[(i // 10) % len(styles)])
        ax.plot([0, 1], [0, 1], color="0.5", ls=":", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (non-speech called speech)",
               ylabel="true positive rate (speech recall)")
        ax.set_aspect("equal")
        legend_outside(ax, title="system (AUC)")
    return finish(fig, what, source, path, smoke=smoke)


def confidence_hist(predictions: pd.DataFrame, smoke: bool = False, path: str | Path | None = None,
                    col_wrap: int = 4, bins: int = 20, source: Source | str | None = None) -> matplotlib.figure.Figure:
    """Histograms of ``p_speech`` per system, split by the true label."""
    p = with_names(predictions)
    names = list(dict.fromkeys(p["name"]))
    with house_style():
        g = sns.displot(data=p.assign(**{"true class": p["label"]}), x="p_speech", hue="true class", col="name",
                        col_wrap=min(col_wrap, len(names)), col_order=names, bins=bins, binrange=(0, 1), height=2.8,
                        element="step", common_norm=False, hue_order=["speech", "nonspeech"],
                        facet_kws={"sharey": False})
        g.set_titles("{col_name}", size="small")
        g.set_axis_labels("predicted p(speech)", "clips")
        sns.move_legend(g, "upper left", bbox_to_anchor=(1.0, 0.95))
    return finish(g.figure, "Confidence: p(speech) by true class", source, path, smoke=smoke, grid=g)


def training_plot(history: pd.DataFrame, dev: pd.DataFrame | None = None, chosen_epoch: int | None = None,
                  smoke: bool = False, path: str | Path | None = None, source: Source | str | None = None,
                  window: int | None = None) -> matplotlib.figure.Figure:
    """Training loss per optimizer step (faint) with its running mean over ``window`` steps (default about
    a twentieth of the run), dev loss and dev balanced accuracy per epoch, epoch boundaries, and the epoch
    whose adapter was kept (``chosen_epoch``, 1-based) marked in both panels."""
    h = history.sort_values("step")
    window = window or max(3, len(h) // 20)
    smooth = h["loss"].rolling(window, min_periods=1, center=True).mean()
    d = dev if dev is not None else pd.DataFrame()
    with house_style():
        fig, (ax_l, ax_d) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1.5, 1]})
        ax_l.plot(h["step"], h["loss"], color="C0", alpha=0.25, lw=0.8, label="per step")
        ax_l.plot(h["step"], smooth, color="C0", lw=2.2, label=f"running mean over {window} steps")
        if len(d) and "dev_loss" in d:
            ax_l.plot(d["step"], d["dev_loss"], "o-", color="C1", label="dev loss (answer token)")
        for _, r in d.iterrows():
            ax_l.axvline(r["step"], color="0.75", lw=0.8, ls=":", zorder=0)
        chosen = d[d["epoch"] == chosen_epoch] if len(d) and chosen_epoch is not None else pd.DataFrame()
        if len(chosen):
            ax_l.axvline(chosen["step"].iloc[0], color="C3", lw=1.5, ls="--", label=f"kept: epoch {chosen_epoch}")
        ax_l.set(xlabel="optimizer step (dotted: end of an epoch)", ylabel="cross-entropy", title="training loss")
        top = float(np.nanpercentile(h["loss"], 99)) if len(h) else 1.0
        ax_l.set_ylim(0, max(top, float(smooth.max()) if len(h) else 1.0) * 1.05)
        legend_outside(ax_l, title=None, loc="below", ncol=2)
        if len(d):
            ax_d.plot(d["epoch"], d["dev_balanced_accuracy"], "o-", color="C2", label="dev balanced accuracy")
            ax_d.axhline(0.5, ls=":", c="grey", label="chance")
            if len(chosen):
                ax_d.plot(chosen["epoch"], chosen["dev_balanced_accuracy"], "o", ms=13, mfc="none", mec="C3", mew=2,
                          label=f"kept: epoch {chosen_epoch}")
            ax_d.set_xticks(d["epoch"].astype(int).tolist())
            legend_outside(ax_d, title=None, loc="below", ncol=2)
        ax_d.set(xlabel="epoch", ylabel="balanced accuracy", ylim=(0.3, 1.02), title="dev split, after each epoch")
    return finish(fig, "Training: loss and dev accuracy", source, path, smoke=smoke)
