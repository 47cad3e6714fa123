"""Breakdowns by degradation axis (SNR, reverberation, filter, duration ...): levels in reading order."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .captions import Source, finish
from .style import LEVEL_ORDER, axis_name, error_bars, house_style, system_palette, with_names


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
    systems = list(dict.fromkeys(s for t in tables.values() for s in with_names(t)["name"]))
    palette = system_palette(systems)
    ncol = min(col_wrap, len(axes_))
    nrow = math.ceil(len(axes_) / ncol)
    offsets = dict(zip(systems, np.linspace(-0.12, 0.12, len(systems)) if len(systems) > 1 else [0.0]))
    lows = [t.get("balanced_accuracy_lo", t["balanced_accuracy"]).min() for t in tables.values()]
    ymin = min(0.3, math.floor((float(np.nanmin(lows)) - 0.02) * 10) / 10) if lows else 0.3
    with house_style():
        fig, grid = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow + 0.6), sharey=True, squeeze=False)
        for ax, axis in zip(grid.flat, axes_):
            t = with_names(tables[axis])
            levels = ordered_levels(axis, t[axis].tolist())
            pos = {v: i for i, v in enumerate(levels)}
            for name, part in t.groupby("name", sort=False):
                x = np.array([pos[v] for v in part[axis]], float) + offsets[name]
                order = np.argsort(x)
                est = part["balanced_accuracy"].to_numpy(float)[order]
                lo = part.get("balanced_accuracy_lo", part["balanced_accuracy"]).to_numpy(float)[order]
                hi = part.get("balanced_accuracy_hi", part["balanced_accuracy"]).to_numpy(float)[order]
                ax.errorbar(x[order], est, yerr=error_bars(est, lo, hi), fmt="o-", color=palette[name], capsize=3, ms=5,
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
