"""Forest plots, one row per point: metrics per system, recall per category, the spread over seeds."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..stats import METRICS, system_label
from .captions import Source, finish
from .style import METRIC_NAMES, error_bars, house_style, interval_words, shade_rows, system_palette, with_names


def metrics_plot(table: pd.DataFrame, metrics: Sequence[str] = METRICS, interval: str = "boot", smoke: bool = False,
                 path: str | Path | None = None, level: float | None = None, source: Source | str | None = None,
                 what: str = "Metrics per system") -> matplotlib.figure.Figure:
    """Point estimate and interval (``boot`` or ``wilson``) of each metric: one panel per metric, one row
    per system (in the table's order), so every row holds one point."""
    t = with_names(table)
    metrics = [m for m in metrics if m in t.columns]
    names = list(dict.fromkeys(t["name"]))
    lows = [t.get(f"{m}_{interval}_lo", pd.Series(np.nan, index=t.index)) for m in metrics]
    lo_all = np.nanmin([np.nanmin(np.r_[t[m].astype(float).values, np.asarray(lo, float)]) for m, lo in zip(metrics, lows)])
    xmin = min(0.45, math.floor((lo_all - 0.02) * 20) / 20) if np.isfinite(lo_all) else 0.45
    colours = sns.color_palette("colorblind", len(metrics))
    with house_style():
        fig, axes = plt.subplots(1, len(metrics), sharey=True, squeeze=False,
                                 figsize=(2.7 * len(metrics) + 2.6, 0.36 * len(names) + 1.6))
        for ax, m, c in zip(axes[0], metrics, colours):
            rows = t.set_index("name").loc[names]
            y = np.arange(len(names))
            lo = rows.get(f"{m}_{interval}_lo", pd.Series(np.nan, index=rows.index))
            hi = rows.get(f"{m}_{interval}_hi", pd.Series(np.nan, index=rows.index))
            shade_rows(ax, len(names))
            ax.errorbar(rows[m], y, xerr=error_bars(rows[m], lo, hi), fmt="o", color=c, ecolor=c, elinewidth=1.5,
                        capsize=3, ms=5, zorder=3)
            ax.axvline(0.5, color="0.5", ls=":", lw=1)
            ax.set_xlim(xmin, 1.03)
            ax.set_title(METRIC_NAMES.get(m, m))
            ax.set_xlabel("")
        axes[0][0].set_yticks(range(len(names)), names)
        fig.supxlabel(f"estimate with {interval_words(interval, level)} (dotted: chance, 0.5)", fontsize=10)
    return finish(fig, what, source, path, smoke=smoke)


def category_plot(categories: pd.DataFrame, label: str | None = "nonspeech", top: int = 15, smoke: bool = False,
                  path: str | Path | None = None, by: str = "category", min_n: int = 1,
                  source: Source | str | None = None) -> matplotlib.figure.Figure:
    """Accuracy per category (``stats.category_table``) with Wilson intervals, hardest first: ranked by
    the upper end of the interval (mean over the systems shown), so a category with three clips and
    a wide interval does not outrank one that is reliably hard. One panel per system; categories with
    fewer than ``min_n`` clips are left out (and the caption says so); tick labels give the clip count."""
    c = with_names(categories)
    if label is not None and "label" in c.columns:
        c = c[c["label"] == label]
    small = c.groupby(by)["n"].min() < min_n
    c = c[~c[by].isin(small[small].index)]
    order = c.groupby(by)["wilson_hi"].mean().sort_values(kind="mergesort").index[:top].tolist()
    c = c[c[by].isin(order)]
    names = list(dict.fromkeys(c["name"]))
    palette = system_palette(names)
    with house_style():
        fig, axes = plt.subplots(1, len(names), sharey=True, squeeze=False,
                                 figsize=(3.6 * len(names) + 2.4, 0.34 * len(order) + 1.6))
        for ax, n in zip(axes[0], names):
            part = c[c["name"] == n].set_index(by).reindex(order)
            y = np.arange(len(order))
            shade_rows(ax, len(order))
            ax.errorbar(part["accuracy"], y, xerr=error_bars(part["accuracy"], part["wilson_lo"], part["wilson_hi"]),
                        fmt="o", color=palette[n], elinewidth=1.3, capsize=2, ms=5, zorder=3)
            ax.set(xlim=(-0.02, 1.02), xlabel="share correct (Wilson 95% interval)", ylabel="")
            if len(names) > 1:
                ax.set_title(n)
        counts = c.groupby(by)["n"].max().reindex(order)
        axes[0][0].set_yticks(range(len(order)), [f"{k} ({int(counts[k])} clips)" for k in order])
    cls = {"nonspeech": "non-speech ", "speech": "speech "}.get(label or "", "")
    what = f"Hardest {cls}categories" + (f" for {names[0]}" if len(names) == 1 else "")
    note = f"categories with at least {min_n} clips" if min_n > 1 else None
    if note and isinstance(source, Source):
        source = Source(source.run, source.model, source.seeds, source.smoke, note)
    elif note:
        source = f"{source} · {note}" if source else note
    return finish(fig, what, source, path, smoke=smoke)


def seed_plot(table: pd.DataFrame, metric: str = "balanced_accuracy", smoke: bool = False,
              path: str | Path | None = None, source: Source | str | None = None,
              min_span: float = 0.2) -> matplotlib.figure.Figure:
    """One row per seed (its cluster-bootstrap interval where the table has one), and per system a row
    with the mean +- 1 sd over seeds. The x axis spans at least ``min_span`` so that a spread of a few
    tenths of a point does not look large."""
    t = table.assign(base=[system_label(s, v, show_seed=False) for s, v in zip(table["system"], table["variant"])])
    rows: list[dict[str, Any]] = []
    for base, part in t.groupby("base", sort=False):
        for _, r in part.sort_values("seed").iterrows():
            rows.append({"row": f"{base} · seed {int(r['seed'])}", "est": r[metric], "base": base, "kind": "seed",
                         "lo": r.get(f"{metric}_boot_lo", np.nan), "hi": r.get(f"{metric}_boot_hi", np.nan)})
        v = part[metric].astype(float)
        sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        rows.append({"row": f"{base} · mean ± sd over {len(v)} seeds", "est": float(v.mean()), "base": base,
                     "kind": "mean", "lo": float(v.mean()) - sd, "hi": float(v.mean()) + sd})
    d = pd.DataFrame(rows)
    lo_all = np.nanmin(np.r_[d["est"].values, d["lo"].astype(float).values])
    hi_all = np.nanmax(np.r_[d["est"].values, d["hi"].astype(float).values])
    mid, span = (lo_all + hi_all) / 2, min(1.0, max(min_span, (hi_all - lo_all) * 1.15))
    xlim = (mid - span / 2, mid + span / 2)
    if xlim[0] < 0.0:  # pushed against 0 or 1: keep the span inside [0, 1]
        xlim = (0.0, span)
    elif xlim[1] > 1.0:
        xlim = (1.0 - span, 1.0)
    palette = system_palette(list(dict.fromkeys(d["base"])))
    with house_style():
        fig, ax = plt.subplots(figsize=(8, 0.38 * len(d) + 1.6))
        shade_rows(ax, len(d))
        for i, r in d.iterrows():
            c = palette[r["base"]]
            ax.errorbar([r["est"]], [i], xerr=error_bars([r["est"]], [r["lo"]], [r["hi"]]), fmt="D" if r["kind"] == "mean" else "o",
                        color="k" if r["kind"] == "mean" else c, ecolor="k" if r["kind"] == "mean" else c,
                        capsize=3, ms=6, zorder=3, elinewidth=1.8 if r["kind"] == "mean" else 1.2)
        ax.set_yticks(range(len(d)), d["row"])
        ax.set_xlim(*xlim)
        ax.set_xlabel(f"{METRIC_NAMES.get(metric, metric)}\n(dots: one seed, 95% cluster-bootstrap interval; "
                      "diamonds: mean ± 1 sd over seeds)")
        ax.set_ylabel("")
    seeds = sorted({int(s) for s in table["seed"]})
    if isinstance(source, Source):  # the figure shows these seeds, whatever the run's own seed is
        source = Source(source.run, source.model, seeds, source.smoke, source.note)
    return finish(fig, f"{METRIC_NAMES.get(metric, metric).capitalize()} per training seed", source, path, smoke=smoke)
