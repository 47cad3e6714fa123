"""Accuracy under each normalization, read back from the run's predictions: metrics with intervals, per SNR,
McNemar tests against the stored level (Holm-adjusted), and what they say, in words built from the numbers.

Variants of the baselines are named ``<normalization>/<settings>`` (``rms/mode3-30ms``) or just the
normalization; ``split_variant`` reads them back.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.figure
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .. import plots, stats
from ..systems import SystemKey
from .levels import NORMS

BASELINES = ("energy", "logmel", "silero_vad", "firered_vad", "webrtc_vad")
TRAINED = ("energy", "logmel")
WEBRTC_SHOWN = "mode3-30ms"  # WebRTC's most aggressive mode stands for it in the per-SNR figure
TABLE_COLUMNS = ["baseline", "normalization", "n", "accuracy", "accuracy_wilson_lo", "accuracy_wilson_hi",
                 "balanced_accuracy", "balanced_accuracy_boot_lo", "balanced_accuracy_boot_hi", "recall_speech",
                 "recall_nonspeech", "auc", "auc_boot_lo", "auc_boot_hi"]


def palette() -> dict[str, Any]:
    """One colour per normalization, the same in every figure of the chapter."""
    return dict(zip(NORMS, sns.color_palette("colorblind", 3)))


def split_variant(variant: Any) -> tuple[str, str]:
    """``rms/mode3-30ms`` -> ``("rms", "mode3-30ms")``; a variant that does not start with a normalization
    -> ``("", variant)``."""
    head, _, rest = str(variant).partition("/")
    return (head, rest) if head in NORMS else ("", str(variant))


def test_predictions(predictions: pd.DataFrame, bank: pd.DataFrame) -> pd.DataFrame:
    """The baselines' and the fine-tuned model's predictions on the bank's test clips."""
    test_clips = set(bank.loc[bank["split"] == "test", "clip_id"])
    keep = predictions["system"].isin(BASELINES) | predictions["system"].map(lambda s: SystemKey(s).is_qwen2audio)
    return predictions[keep & predictions["clip_id"].isin(test_clips)]


def with_normalization(table: pd.DataFrame) -> pd.DataFrame:
    """A table with a ``variant`` column, plus ``normalization``, ``settings`` and ``baseline`` (the system
    with its settings) read from it."""
    out = table.copy()
    out["normalization"], out["settings"] = zip(*out["variant"].map(split_variant)) if len(out) else ([], [])
    out["baseline"] = [s + (f" {st}" if st else "") for s, st in zip(out["system"], out["settings"])]
    return out


def metrics_by_normalization(selected: pd.DataFrame, bank: pd.DataFrame, level: float, n_boot: int, seed: int) -> pd.DataFrame:
    """``stats.metrics_table`` of the selected predictions (Wilson and cluster-bootstrap intervals), each row
    with its normalization, settings and baseline name."""
    return with_normalization(stats.metrics_table(selected, bank, level=level, n_boot=n_boot, seed=seed))


def interval_grid(base_table: pd.DataFrame) -> pd.DataFrame:
    """Balanced accuracy with its bootstrap interval as text, one row per baseline, one column per normalization."""
    cells = [f"{r.balanced_accuracy:.3f} [{r.balanced_accuracy_boot_lo:.3f}, {r.balanced_accuracy_boot_hi:.3f}]"
             for r in base_table.itertuples()]
    return base_table.assign(cell=cells).pivot(index="baseline", columns="normalization", values="cell")[list(NORMS)]


def baselines_figure(base_table: pd.DataFrame, level: float, source: Any, path: str | Path | None) -> matplotlib.figure.Figure:
    """Balanced accuracy of each baseline under each normalization, with its cluster-bootstrap interval."""
    order = list(dict.fromkeys(base_table["baseline"]))
    colours = palette()
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    for n, offset in zip(NORMS, (-0.22, 0.0, 0.22)):
        d = base_table[base_table["normalization"] == n].set_index("baseline").reindex(order)
        ax.errorbar(np.arange(len(order)) + offset, d["balanced_accuracy"],
                    yerr=[d["balanced_accuracy"] - d["balanced_accuracy_boot_lo"], d["balanced_accuracy_boot_hi"] - d["balanced_accuracy"]],
                    fmt="o", capsize=3, color=colours[n], label=n)
    ax.axhline(0.5, color="grey", lw=1, ls="--")
    ax.set_xticks(np.arange(len(order)), order, rotation=25, ha="right")
    ax.set_ylabel(f"balanced accuracy (test)\n{level:.0%} cluster-bootstrap interval")
    ax.legend(title="normalization", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return plots.finish(fig, "Baselines by load-time normalization", source, path)


def by_snr_table(selected: pd.DataFrame, bank: pd.DataFrame, level: float) -> pd.DataFrame:
    """Balanced accuracy of each baseline (WebRTC in its most aggressive mode only) per normalization and SNR,
    with its Bonferroni-combined Wilson interval (``lo``, ``hi``) and the number of clips."""
    joined = with_normalization(stats.with_bank(selected[selected["system"].isin(BASELINES)], bank, columns=["snr_db", "group_id"]))
    joined = joined[(joined["system"] != "webrtc_vad") | (joined["settings"] == WEBRTC_SHOWN)]
    rows = []
    for (baseline, n, snr), d in joined.groupby(["baseline", "normalization", "snr_db"]):
        lab, pr = d["label"].values, d["pred"].values
        lo, hi = stats.wilson_intervals(lab, pr, level)["balanced_accuracy"]
        rows.append({"baseline": baseline, "normalization": n, "snr_db": snr,
                     "balanced_accuracy": stats.binary_metrics(lab, pr)["balanced_accuracy"], "lo": lo, "hi": hi, "n": len(d)})
    return pd.DataFrame(rows)


def by_snr_figure(by_snr: pd.DataFrame, source: Any, path: str | Path | None) -> matplotlib.figure.Figure:
    """One panel per baseline: balanced accuracy against SNR, a line per normalization, Wilson-based intervals
    nudged sideways so they do not overlap."""
    colours = palette()
    g = sns.relplot(data=by_snr, x="snr_db", y="balanced_accuracy", hue="normalization", hue_order=list(NORMS), col="baseline",
                    col_wrap=4, kind="line", marker="o", height=2.8, aspect=1.0, palette=colours)
    for name, ax in g.axes_dict.items():
        ax.axhline(0.5, color="grey", lw=1, ls="--")
        for k, n in enumerate(NORMS):
            d = by_snr[(by_snr.baseline == name) & (by_snr.normalization == n)]
            ax.errorbar(d["snr_db"] + (k - 1) * 0.6, d["balanced_accuracy"],
                        yerr=[d["balanced_accuracy"] - d["lo"], d["hi"] - d["balanced_accuracy"]],
                        fmt="none", ecolor=colours[n], elinewidth=1, capsize=2, alpha=0.7)
    g.set_axis_labels("SNR (dB)", "balanced accuracy")
    g.set_titles("{col_name}")
    return plots.finish(g.figure, "Baselines: balanced accuracy per SNR and normalization (test split)", source, path, grid=g)


def mcnemar_against_stored_level(selected: pd.DataFrame, bank: pd.DataFrame) -> pd.DataFrame:
    """McNemar's exact test of each trained baseline under ``peak`` and ``rms`` against itself under ``none``,
    on clips and on sources (majority vote), with ``p_holm``: Holm over the four comparisons of each unit."""
    rows = []
    for name in TRAINED:
        for n in ("peak", "rms"):
            for collapse in (None, "group_id"):
                r = stats.mcnemar_test(selected, (name, "none"), (name, n), bank=bank, collapse=collapse)
                rows.append({"baseline": name, "versus": f"none vs {n}", **r})
    mcn = pd.DataFrame(rows)
    mcn["p_holm"] = stats.adjust_within(mcn, "unit", "p_exact", "holm")
    return mcn


def finetuned_section(table: pd.DataFrame, profile_normalization: str) -> list[str | pd.DataFrame]:
    """What the run's fine-tuned model predictions say per normalization: Markdown text and tables, in the
    order to show them."""
    finetuned = table[table["system"].map(lambda s: SystemKey(s).is_qwen2audio)]
    if not len(finetuned):
        return ["No fine-tuned model predictions (`qwen2audio*`) are in this run yet: chapter 05 adds them "
                "to the run's `predictions.csv`, and chapter 06 sets them beside these baselines."]
    out: list[str | pd.DataFrame] = [
        "The fine-tuned model's predictions in this run (variants as chapter 05 named them; "
        "where a variant starts with a normalization name it is that normalization):",
        finetuned[["system", "variant", "normalization", "n", "accuracy", "balanced_accuracy",
                   "balanced_accuracy_boot_lo", "balanced_accuracy_boot_hi", "auc"]].round(3),
    ]
    named = sorted(set(finetuned["normalization"]) - {""})
    if len(named) < 2:
        out.append(f"The model was evaluated under {'only ' + named[0] if named else 'no named'} normalization in this run "
                   f"(the profile's is {profile_normalization}), so its accuracy per normalization is not available here.")
    else:
        out.append(finetuned.pivot_table(index=["system", "settings"], columns="normalization", values="balanced_accuracy").round(3))
    return out
