"""The book's figures, drawn with seaborn in one house style from ``lib.stats`` tables.

Every function returns the matplotlib figure and, given ``path`` (a file stem such as
``figures/06_metrics``), saves it as PNG and PDF through ``lib.io.save_figure``.

Every figure says what it shows: a bold title (distinct per figure) and, under it, a caption line from
:class:`Source`: which run, which model (a label the caller takes from the run, e.g.
``lib.book.model_label(cfg)``: this module never guesses it) and which seed(s). ``smoke=True`` marks the
caption as a smoke result. The house style (:func:`house_style`): seaborn ``whitegrid``, the
colour-blind palette while it has colours enough and a 20-colour categorical palette beyond ten systems
(:func:`system_palette`), words on the axes (:data:`AXIS_NAMES`), legends outside the data area, and
intervals wherever a number has uncertainty.
"""
from __future__ import annotations

import contextlib
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import io
from .stats import METRICS, PsychometricFit, add_system_label, system_label

STYLE = "whitegrid"
CONTEXT = "notebook"
SMOKE_MARK = "SMOKE result"
METRIC_NAMES = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "recall_speech": "recall (speech)",
    "recall_nonspeech": "recall (non-speech)",
    "auc": "ROC AUC",
}
# Bank columns in words, for axes, titles and prose.
AXIS_NAMES = {
    "duration_ms": "duration (ms)",
    "snr_db": "SNR (dB)",
    "noise_type": "noise type",
    "rt60_s": "reverberation RT60 (s)",
    "filter": "channel filter",
    "bandlimit": "band-limit treatment",
    "category": "category",
    "split": "split",
}
# Levels of categorical axes in a meaningful order (no degradation first), not alphabetical.
LEVEL_ORDER = {
    "noise_type": ["white", "pink", "real"],
    "filter": ["none", "telephone", "lowpass", "highpass"],
    "bandlimit": ["none", "telephone", "lowpass_5500", "lowpass_4000"],
}
# Kelly's colours of maximum contrast (less white, black and the greys): beyond the colour-blind palette's 10.
_MANY_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#882255",
                 "#44AA99", "#999933", "#AA4499", "#332288", "#88CCEE", "#117733", "#661100", "#6699CC",
                 "#AA4466", "#4477AA", "#228833", "#EE6677", "#DDCC77", "#F0E442"]  # the pale yellows last


# --------------------------------------------------------------------------------------------------
# House style, palette, captions
# --------------------------------------------------------------------------------------------------
RC = {
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "axes.titlesize": "medium",
    "axes.titleweight": "bold",
    "legend.frameon": False,
    "legend.fontsize": "small",
    "axes.spines.top": False,
    "axes.spines.right": False,
}


@contextlib.contextmanager
def house_style() -> Iterator[None]:
    """The book's seaborn theme for the figures drawn inside the ``with`` block."""
    with sns.plotting_context(CONTEXT), sns.axes_style(STYLE), plt.rc_context(RC):
        yield


def set_house_style() -> None:
    """Make the house style the default for every figure of this process (chapters call it once)."""
    sns.set_theme(style=STYLE, context=CONTEXT, palette="colorblind")
    plt.rcParams.update(RC)


def system_palette(names: Sequence[str]) -> dict[str, Any]:
    """One distinct colour per name: seaborn's colour-blind palette up to 10, a 22-colour set beyond."""
    names = list(dict.fromkeys(names))
    colours = sns.color_palette("colorblind", len(names)) if len(names) <= 10 else \
        sns.color_palette(_MANY_COLOURS[:len(names)] if len(names) <= len(_MANY_COLOURS) else sns.color_palette("husl", len(names)))
    return dict(zip(names, colours))


def axis_name(column: str) -> str:
    """A bank or metrics column in words: ``snr_db`` -> ``SNR (dB)``; unknown columns lose their underscores."""
    return AXIS_NAMES.get(column) or METRIC_NAMES.get(column) or column.replace("_", " ")


@dataclass(frozen=True)
class Source:
    """Which run, model and seed(s) a figure shows; its :meth:`text` is the figure's caption line.

    ``model`` is a label the caller takes from the run (``lib.book.model_label(cfg)``); ``None`` for a
    figure of data or baselines only. ``seeds``: a seed, a list of seeds, or text ("seeds 0-2").
    """

    run: str
    model: str | None = None
    seeds: Any = None
    smoke: bool = False
    note: str | None = None

    def text(self) -> str:
        parts = [f"run {self.run}"]
        if self.model:
            parts.append(f"model: {self.model}")
        seeds = _seed_text(self.seeds)
        if seeds:
            parts.append(seeds)
        if self.note:
            parts.append(self.note)
        text = " · ".join(parts)
        return f"{SMOKE_MARK} · {text}" if self.smoke else text


def _seed_text(seeds: Any) -> str:
    if seeds is None or (isinstance(seeds, str) and not seeds):
        return ""
    if isinstance(seeds, str):
        return seeds
    if isinstance(seeds, (int, np.integer)):
        return f"seed {int(seeds)}"
    vals = sorted({int(s) for s in seeds if s is not None and int(s) >= 0})
    if not vals:
        return ""
    return f"seed {vals[0]}" if len(vals) == 1 else "seeds " + ", ".join(map(str, vals))


def caption(run: str, model: str | None = None, seeds: Any = None, smoke: bool = False) -> str:
    """The caption line of a figure: ``run ci/book · model: <label> · seed 0`` (see :class:`Source`)."""
    return Source(run, model, seeds, smoke).text()


def title(text: str, smoke: bool = False) -> str:
    """A figure title, marked as a smoke result when ``smoke``."""
    return f"{SMOKE_MARK}: {text}" if smoke else text


def _caption_text(source: Source | str | None, smoke: bool) -> str:
    if isinstance(source, Source):
        return source.text() if (source.smoke or not smoke) else Source(source.run, source.model, source.seeds, True, source.note).text()
    if source:
        return f"{SMOKE_MARK} · {source}" if smoke and SMOKE_MARK not in source else str(source)
    return SMOKE_MARK if smoke else ""


def finish(fig: matplotlib.figure.Figure, text: str, source: Source | str | None = None, path: str | Path | None = None,
           *, smoke: bool = False, grid: Any = None) -> matplotlib.figure.Figure:
    """Lay the figure out, put its title and caption line above the axes, and save it (PNG + PDF) at ``path``.

    Chapters that draw a figure of their own end with this call, so every figure of the book carries the
    same title and caption layout.
    """
    (grid or fig).tight_layout()  # a FacetGrid's own tight_layout leaves room for its outside legend
    width_in, height_in = fig.get_size_inches()
    cap = _caption_text(source, smoke)
    cap_lines = textwrap.wrap(cap, width=max(40, int(width_in * 15))) if cap else []
    line = 0.19 / height_in  # one caption line, in figure height
    y = 1.0 + 0.08 / height_in  # above the laid-out axes (and their titles): saved with bbox_inches="tight"
    for k, cline in enumerate(reversed(cap_lines)):
        fig.text(0.5, y + k * line, cline, ha="center", va="bottom", fontsize=9, color="0.3",
                 gid="speechbook-caption")
    fig.suptitle(text, x=0.5, y=y + len(cap_lines) * line + 0.004, ha="center", va="bottom", fontweight="bold",
                 fontsize=12)
    if path is not None:
        io.save_figure(fig, path)
    return fig


def caption_of(fig: matplotlib.figure.Figure) -> str:
    """The caption line(s) :func:`finish` wrote on ``fig`` (for tests and for checking a figure)."""
    return " ".join(t.get_text() for t in reversed(fig.texts) if t.get_gid() == "speechbook-caption")


def _legend_outside(ax: Any, title: str | None = "", loc: str = "right", ncol: int = 1, handles: Any = None,
                    labels: Any = None) -> None:
    """Move (or make) the legend outside the axes so it never covers data."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if not handles:
        return
    if loc == "below":
        ax.legend(handles, labels, title=title, loc="upper center", bbox_to_anchor=(0.5, -0.24), ncol=ncol,
                  borderaxespad=0.0)
    else:
        ax.legend(handles, labels, title=title, loc="upper left", bbox_to_anchor=(1.02, 1.0), ncol=ncol,
                  borderaxespad=0.0)


def _names(df: pd.DataFrame) -> pd.DataFrame:
    return df if "name" in df.columns else add_system_label(df)


def _err(est: Any, lo: Any, hi: Any) -> list[np.ndarray]:
    """Error-bar lengths, clipped at 0 (an estimate of 1 may sit a rounding error above its upper bound)."""
    est, lo, hi = (np.asarray(v, float) for v in (est, lo, hi))
    return [np.nan_to_num(np.clip(est - lo, 0, None)), np.nan_to_num(np.clip(hi - est, 0, None))]


def _shade_rows(ax: Any, n: int) -> None:
    """Light bands on every other row of a forest plot, so a point's row is easy to follow."""
    for i in range(0, n, 2):
        ax.axhspan(i - 0.5, i + 0.5, color="0.94", zorder=0, lw=0)
    ax.set_ylim(n - 0.5, -0.5)
    ax.grid(axis="y", visible=False)


def _interval_words(interval: str, level: float | None) -> str:
    lvl = f"{level:.0%} " if level else ""
    return f"{lvl}cluster-bootstrap interval" if interval == "boot" else f"{lvl}Wilson interval"


# --------------------------------------------------------------------------------------------------
# Forest plots: one row per point
# --------------------------------------------------------------------------------------------------
def metrics_plot(table: pd.DataFrame, metrics: Sequence[str] = METRICS, interval: str = "boot", smoke: bool = False,
                 path: str | Path | None = None, level: float | None = None, source: Source | str | None = None,
                 what: str = "Metrics per system") -> matplotlib.figure.Figure:
    """Point estimate and interval (``boot`` or ``wilson``) of each metric: one panel per metric, one row
    per system (in the table's order), so every row holds one point."""
    t = _names(table)
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
            _shade_rows(ax, len(names))
            ax.errorbar(rows[m], y, xerr=_err(rows[m], lo, hi), fmt="o", color=c, ecolor=c, elinewidth=1.5,
                        capsize=3, ms=5, zorder=3)
            ax.axvline(0.5, color="0.5", ls=":", lw=1)
            ax.set_xlim(xmin, 1.03)
            ax.set_title(METRIC_NAMES.get(m, m))
            ax.set_xlabel("")
        axes[0][0].set_yticks(range(len(names)), names)
        fig.supxlabel(f"estimate with {_interval_words(interval, level)} (dotted: chance, 0.5)", fontsize=10)
    return finish(fig, what, source, path, smoke=smoke)


def category_plot(categories: pd.DataFrame, label: str | None = "nonspeech", top: int = 15, smoke: bool = False,
                  path: str | Path | None = None, by: str = "category", min_n: int = 1,
                  source: Source | str | None = None) -> matplotlib.figure.Figure:
    """Accuracy per category (``stats.category_table``) with Wilson intervals, hardest first: ranked by
    the upper end of the interval (mean over the systems shown), so a category with three clips and
    a wide interval does not outrank one that is reliably hard. One panel per system; categories with
    fewer than ``min_n`` clips are left out (and the caption says so); tick labels give the clip count."""
    c = _names(categories)
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
            _shade_rows(ax, len(order))
            ax.errorbar(part["accuracy"], y, xerr=_err(part["accuracy"], part["wilson_lo"], part["wilson_hi"]),
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
        _shade_rows(ax, len(d))
        for i, r in d.iterrows():
            c = palette[r["base"]]
            ax.errorbar([r["est"]], [i], xerr=_err([r["est"]], [r["lo"]], [r["hi"]]), fmt="D" if r["kind"] == "mean" else "o",
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


# --------------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------------
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
        _legend_outside(ax, title="system", handles=handles, labels=labels)
    what = f"Psychometric curves over {xlabel}" + (f", target {target:.0%}" if target else "")
    return finish(fig, what, source, path, smoke=smoke)


def reliability_plot(reliability: pd.DataFrame, smoke: bool = False, path: str | Path | None = None,
                     col_wrap: int = 4, source: Source | str | None = None) -> matplotlib.figure.Figure:
    """Reliability diagram per system (``stats.reliability_frame``): observed share of speech against the
    mean predicted ``p_speech`` per bin, Wilson intervals, the diagonal of perfect calibration."""
    r = _names(reliability)
    names = list(dict.fromkeys(r["name"]))
    with house_style():
        g = sns.FacetGrid(r, col="name", col_wrap=min(col_wrap, len(names)), height=2.8, aspect=1.2, xlim=(0, 1),
                          ylim=(0, 1), col_order=names)
        g.map_dataframe(sns.lineplot, x="mean_p", y="frac_speech", marker="o")

        def _extras(data: pd.DataFrame, **_: Any) -> None:
            ax = plt.gca()
            ax.plot([0, 1], [0, 1], color="0.5", ls=":", lw=1)
            ax.errorbar(data["mean_p"], data["frac_speech"], yerr=_err(data["frac_speech"], data["wilson_lo"], data["wilson_hi"]),
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
    r = _names(roc)
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
        _legend_outside(ax, title="system (AUC)")
    return finish(fig, what, source, path, smoke=smoke)


def confidence_hist(predictions: pd.DataFrame, smoke: bool = False, path: str | Path | None = None,
                    col_wrap: int = 4, bins: int = 20, source: Source | str | None = None) -> matplotlib.figure.Figure:
    """Histograms of ``p_speech`` per system, split by the true label."""
    p = _names(predictions)
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
        _legend_outside(ax_l, title=None, loc="below", ncol=2)
        if len(d):
            ax_d.plot(d["epoch"], d["dev_balanced_accuracy"], "o-", color="C2", label="dev balanced accuracy")
            ax_d.axhline(0.5, ls=":", c="grey", label="chance")
            if len(chosen):
                ax_d.plot(chosen["epoch"], chosen["dev_balanced_accuracy"], "o", ms=13, mfc="none", mec="C3", mew=2,
                          label=f"kept: epoch {chosen_epoch}")
            ax_d.set_xticks(d["epoch"].astype(int).tolist())
            _legend_outside(ax_d, title=None, loc="below", ncol=2)
        ax_d.set(xlabel="epoch", ylabel="balanced accuracy", ylim=(0.3, 1.02), title="dev split, after each epoch")
    return finish(fig, "Training: loss and dev accuracy", source, path, smoke=smoke)


# --------------------------------------------------------------------------------------------------
# Breakdowns by degradation axis
# --------------------------------------------------------------------------------------------------
def ordered_levels(axis: str, values: Sequence[Any]) -> list[Any]:
    """An axis's levels in reading order: numbers ascending, known categories by degradation, the rest sorted."""
    vals = list(dict.fromkeys(values))
    try:
        return sorted(vals, key=float)
    except (TypeError, ValueError):
        known = LEVEL_ORDER.get(axis, [])
        return sorted(vals, key=lambda v: (known.index(v) if v in known else len(known), str(v)))


def level_text(axis: str, value: Any) -> str:
    """One tick label: ``lowpass_4000`` -> ``low-pass 4 kHz``, ``0.5`` -> ``0.5``."""
    if isinstance(value, (float, np.floating, int, np.integer)):
        return "clean" if axis == "snr_db" and np.isinf(float(value)) else f"{float(value):g}"
    text = str(value)
    if text.startswith("lowpass_"):
        return f"low-pass {float(text.split('_')[1]) / 1000:g} kHz"
    return text.replace("_", " ")


def by_axis_plot(tables: Mapping[str, pd.DataFrame], smoke: bool = False, path: str | Path | None = None,
                 source: Source | str | None = None, col_wrap: int = 3) -> matplotlib.figure.Figure:
    """Balanced accuracy per level of each degradation axis (``lib.evaluate.breakdown`` tables, one per
    axis), with Wilson intervals (Bonferroni-combined over the two classes), one panel per axis and one
    colour per system, levels in reading order, the legend below the panels."""
    axes_ = list(tables)
    systems = list(dict.fromkeys(s for t in tables.values() for s in _names(t)["name"]))
    palette = system_palette(systems)
    ncol = min(col_wrap, len(axes_))
    nrow = math.ceil(len(axes_) / ncol)
    offsets = dict(zip(systems, np.linspace(-0.12, 0.12, len(systems)) if len(systems) > 1 else [0.0]))
    lows = [t.get("balanced_accuracy_lo", t["balanced_accuracy"]).min() for t in tables.values()]
    ymin = min(0.3, math.floor((float(np.nanmin(lows)) - 0.02) * 10) / 10) if lows else 0.3
    with house_style():
        fig, grid = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow + 0.6), sharey=True, squeeze=False)
        for ax, axis in zip(grid.flat, axes_):
            t = _names(tables[axis])
            levels = ordered_levels(axis, t[axis].tolist())
            pos = {v: i for i, v in enumerate(levels)}
            for name, part in t.groupby("name", sort=False):
                x = np.array([pos[v] for v in part[axis]], float) + offsets[name]
                order = np.argsort(x)
                est = part["balanced_accuracy"].to_numpy(float)[order]
                lo = part.get("balanced_accuracy_lo", part["balanced_accuracy"]).to_numpy(float)[order]
                hi = part.get("balanced_accuracy_hi", part["balanced_accuracy"]).to_numpy(float)[order]
                ax.errorbar(x[order], est, yerr=_err(est, lo, hi), fmt="o-", color=palette[name], capsize=3, ms=5,
                            lw=1.2, label=name)
            ax.axhline(0.5, ls=":", c="grey", lw=1)
            # long level names wrap onto two lines; many levels stand upright: tick labels never overlap
            labels = ["\n".join(textwrap.wrap(level_text(axis, v), 9)) for v in levels]
            ax.set_xticks(range(len(levels)), labels, rotation=90 if len(levels) > 6 else 0)
            ax.set_xlim(-0.5, len(levels) - 0.5)
            ax.set(ylim=(max(0.0, ymin), 1.02), xlabel="", title=axis_name(axis))
            ax.set_ylabel("balanced accuracy" if ax in grid[:, 0] else "")
        for ax in list(grid.flat)[len(axes_):]:
            ax.set_visible(False)
        handles, labels = grid.flat[0].get_legend_handles_labels()
        fig.tight_layout()
        fig.legend(handles, labels, title="system (bars: 95% Wilson interval, the two classes' intervals combined)",
                   loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(3, len(labels)), frameon=False)
    return finish(fig, "Balanced accuracy by degradation axis", source, path, smoke=smoke)
