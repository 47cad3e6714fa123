"""What a built bank holds, for a reader (chapter 01): its composition as figures and tables, the clips to
listen to, and the shortcut report drawn.

Every figure is finished by ``lib.plots.finish`` (title, caption line, PNG + PDF at ``path``) and returned, so
a chapter shows it with ``plt.show()``; the tables beside them are returned as DataFrames.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import matplotlib.figure
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from . import plots
from .data import LABELS

SHORTCUT_WORDS = {"band_limited": "band-limited", "rolloff95_hz": "95% roll-off", "highband_db": "energy above 4 kHz",
                  "rms_dbfs": "RMS level", "bandlimit_augment": "band-limit treatment", "none": "untreated"}
OTHER_AXES = ("noise_type", "rt60_s", "filter", "bandlimit")


def cell_counts(bank: pd.DataFrame) -> pd.DataFrame:
    """Clips per (split, class, duration, SNR): the factorial design's cells, as rows with a ``clips`` column."""
    return bank.groupby(["split", "label", "duration_ms", "snr_db"]).size().rename("clips").reset_index()


def cells_figure(bank: pd.DataFrame, source: Any, path: str | Path | None) -> tuple[matplotlib.figure.Figure, pd.DataFrame]:
    """Heatmaps of clips per duration x SNR, one per class (all splits), and the same counts per split as a table."""
    cells = cell_counts(bank)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
    for ax, lab in zip(axes, LABELS):
        t = cells[cells["label"] == lab].groupby(["duration_ms", "snr_db"])["clips"].sum().unstack("snr_db").fillna(0).astype(int)
        sns.heatmap(t, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax)
        ax.set_title(f"{lab}: clips per duration × SNR (all splits)")
        ax.set_xlabel("SNR (dB)")
        ax.set_ylabel("duration (ms)")
    plots.finish(fig, "The bank: clips per duration and SNR", source, path)
    table = cells.pivot_table(index=["duration_ms", "snr_db"], columns=["split", "label"], values="clips", aggfunc="sum",
                              fill_value=0).astype(int)
    return fig, table


def axes_figure(bank: pd.DataFrame, source: Any, path: str | Path | None) -> matplotlib.figure.Figure:
    """Clips per level of the other degradation axes (noise type, RT60, channel filter, band-limit), by class."""
    fig, axs = plt.subplots(1, len(OTHER_AXES), figsize=(13, 3.2))
    for ax, col in zip(axs, OTHER_AXES):
        order = plots.ordered_levels(col, bank[col].tolist())  # reading order (no degradation first), not alphabetical
        sns.countplot(data=bank, x=col, hue="label", hue_order=list(LABELS), order=order, ax=ax, legend=ax is axs[-1])
        ax.set_xticks(range(len(order)), ["\n".join(plots.level_text(col, v).split(" ", 1)) for v in order])
        ax.set(title=plots.axis_name(col), xlabel="", ylabel="clips" if ax is axs[0] else "")
    sns.move_legend(axs[-1], "upper left", bbox_to_anchor=(1.02, 1.0), title="class")
    return plots.finish(fig, "The bank: the other degradation axes, by class", source, path)


def categories_figure(bank: pd.DataFrame, source: Any, path: str | Path | None, top: int = 30) -> tuple[matplotlib.figure.Figure, str]:
    """The ``top`` most frequent non-speech categories, and a sentence on how much of the class they hold."""
    cat = bank[bank["label"] == "nonspeech"]["category"].value_counts()
    head = cat.head(top)
    fig, ax = plt.subplots(figsize=(10, 5))
    sns.barplot(x=head.values, y=head.index, ax=ax, color="tab:orange")
    ax.set_xlabel("clips in the bank")
    ax.set_ylabel("")
    ax.set_title(f"non-speech categories (top {len(head)} of {len(cat)})")
    plots.finish(fig, "The bank: non-speech categories", source, path)
    text = f"{len(cat)} non-speech categories; the {len(head)} most frequent hold {head.sum() / cat.sum():.0%} of the non-speech clips"
    return fig, text


def groups_figure(bank: pd.DataFrame, source: Any, path: str | Path | None, top: int = 25) -> tuple[matplotlib.figure.Figure, pd.DataFrame]:
    """Clips per group (speaker or recording) as a histogram, clips per source collection (the ``top`` largest),
    and per class the number of groups and the mean and largest number of clips per group."""
    per_group = bank.groupby(["label", "group_id"]).size().rename("clips").reset_index()
    by_source = bank.groupby(["source_repo", "label"]).size().rename("clips").reset_index()
    order = by_source.groupby("source_repo")["clips"].sum().sort_values(ascending=False).index[:top]
    fig, axs = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1, 1.4]})
    sns.histplot(data=per_group, x="clips", hue="label", hue_order=list(LABELS), multiple="dodge", discrete=True, shrink=0.8, ax=axs[0])
    axs[0].set_title("clips per group (speaker / recording)")
    sns.barplot(data=by_source[by_source["source_repo"].isin(order)], y="source_repo", x="clips", hue="label",
                hue_order=list(LABELS), order=order, ax=axs[1])
    axs[1].set_title("clips per source collection")
    axs[1].set_ylabel("")
    axs[0].set_xlabel("clips per group")
    plots.finish(fig, "The bank: groups and source collections", source, path)
    table = per_group.groupby("label")["clips"].describe()[["count", "mean", "max"]].rename(columns={"count": "groups"})
    return fig, table


def listening_examples(bank: pd.DataFrame, n: int, seed: int = 0) -> list[pd.Series]:
    """Up to ``n`` test clips of the longest duration to listen to: for each class, about ``n / 2`` SNRs spread
    over the range (lowest first), one clip drawn at random (seeded) per SNR."""
    rng = np.random.default_rng(seed)
    test = bank[bank["split"] == "test"]
    picks = []
    for lab in LABELS:
        part = test[test["label"] == lab]
        snrs = sorted(part["snr_db"].unique())
        for snr in snrs[:: max(1, len(snrs) // 2)][: max(1, n // 2)]:
            cand = part[(part["snr_db"] == snr) & (part["duration_ms"] == part["duration_ms"].max())]
            if len(cand):
                picks.append(cand.iloc[int(rng.integers(len(cand)))])
    return picks[:n]


def example_caption(row: Mapping[str, Any], normalization: str) -> str:
    """One Markdown line naming a clip's class, category and every condition it was rendered under."""
    return (f"**{row['label']}** · {row['category']} · {row['duration_ms']} ms · {row['snr_db']:g} dB "
            f"{row['noise_type']} noise · RT60 {row['rt60_s']:g} s · filter {row['filter']} · "
            f"band-limit {row['bandlimit']} · `{row['clip_id']}` ({normalization}-normalized)")


def shortcut_figure(report: pd.DataFrame, source: Any, path: str | Path | None) -> matplotlib.figure.Figure:
    """The separability of each trivial feature of ``lib.data.shortcut_report``, untreated and treated."""
    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"{SHORTCUT_WORDS.get(f, f)} · {m} · {SHORTCUT_WORDS.get(t, t)}"
              for f, m, t in zip(report["feature"], report["measured_on"], report["treatment"])]
    sns.barplot(x=report["separability"], y=labels, ax=ax, color="tab:blue")
    ax.axvline(0.5, color="k", lw=1, ls="--")
    ax.set_xlim(0.45, 1.0)
    ax.set_xlabel("separability max(AUC, 1 − AUC)")
    ax.set_ylabel("")
    return plots.finish(fig, "Shortcuts: how well one trivial feature separates speech from non-speech", source, path)
