"""What load-time normalization does to the level cue: the RMS and peak level of every clip under
``none``, ``peak`` and ``rms``, and how much each level alone says about the class and about the SNR.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib.figure
import numpy as np
import pandas as pd
import seaborn as sns
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from .. import audio, data, plots

NORMS = tuple(audio.NORMALIZATIONS)
LEVEL_FEATURES = ("rms_dbfs", "peak_dbfs")


def clips_by_normalization(bank: pd.DataFrame, manifest: str | Path) -> dict[str, list[np.ndarray]]:
    """Every clip of the bank, read once at its stored level (``none``) and normalized in memory to the others
    with the very ``lib.audio.normalize`` that ``lib.data.load_clips`` applies on load (so the arrays are
    identical to what a loader would give)."""
    raw = data.load_clips(bank, manifest, normalization="none")
    return {n: raw if n == "none" else [audio.normalize(x, n) for x in raw] for n in NORMS}


def split_clips(clips: Mapping[str, Sequence[np.ndarray]], bank: pd.DataFrame, normalization: str,
                split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """The clips (under ``normalization``) and labels of one split, in bank order."""
    idx = np.flatnonzero(bank["split"].values == split)
    return [clips[normalization][i] for i in idx], bank["label"].values[idx]


def level_table(bank: pd.DataFrame, clips: Mapping[str, Sequence[np.ndarray]]) -> pd.DataFrame:
    """One row per clip and normalization: ``rms_dbfs``, ``peak_dbfs``, the clip's class, SNR (and as text,
    ``snr``), duration and split."""
    levels = pd.concat(
        pd.DataFrame({"clip_id": bank["clip_id"], "normalization": n,
                      "rms_dbfs": [audio.rms_dbfs(x) for x in clips[n]],
                      "peak_dbfs": [audio.peak_dbfs(x) for x in clips[n]]})
        for n in NORMS
    ).merge(bank[["clip_id", "label", "snr_db", "duration_ms", "split"]], on="clip_id")
    levels["snr"] = levels["snr_db"].map(lambda v: f"{v:g} dB")
    return levels


def long_levels(levels: pd.DataFrame) -> pd.DataFrame:
    """``level_table`` with one row per clip, normalization and level feature (columns ``feature``, ``dBFS``)."""
    return levels.melt(id_vars=["clip_id", "normalization", "label", "snr", "snr_db"], value_vars=list(LEVEL_FEATURES),
                       var_name="feature", value_name="dBFS")


def level_cue_table(levels: pd.DataFrame) -> pd.DataFrame:
    """Per normalization and level feature: the ROC AUC of the feature for speech vs non-speech (``auc_speech``)
    and the separability ``max(AUC, 1 - AUC)``; the same for the distance from the median level
    (``separability_extremes``: does "unusually loud or quiet" give the class away?); per class the spread
    (``sd_<class>_db``) and Spearman's rank correlation with the SNR (``spearman_snr_<class>``)."""
    rows = []
    for (n, feat), part in long_levels(levels).groupby(["normalization", "feature"], sort=False):
        y = (part["label"] == "speech").values
        v = part["dBFS"].values
        row = {"normalization": n, "feature": feat, "auc_speech": roc_auc_score(y, v)}
        row["separability"] = max(row["auc_speech"], 1 - row["auc_speech"])
        dist = np.abs(v - np.median(v))  # distance from the typical level: catches "too loud or too quiet"
        auc_d = roc_auc_score(y, dist) if dist.max() > 0 else 0.5
        row["separability_extremes"] = max(auc_d, 1 - auc_d)
        for lab in data.LABELS:
            sub = part[part["label"] == lab]
            row[f"sd_{lab}_db"] = sub["dBFS"].std()
            row[f"spearman_snr_{lab}"] = spearmanr(sub["snr_db"], sub["dBFS"]).statistic if sub["dBFS"].nunique() > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def cue(level_cue: pd.DataFrame, normalization: str, feature: str, column: str) -> float:
    """One number of ``level_cue_table``."""
    return float(level_cue.loc[(level_cue.normalization == normalization) & (level_cue.feature == feature), column].iloc[0])


def _information(separability: float) -> str:
    return "little" if separability < 0.6 else "some" if separability < 0.7 else "much"


def level_findings(level_cue: pd.DataFrame, levels: pd.DataFrame) -> str:
    """What the level cue table says, as Markdown bullets built from its numbers (one per normalization);
    class information in a level is called ``little`` below separability 0.6, ``some`` below 0.7, else ``much``."""
    c = functools.partial(cue, level_cue)
    at_target = (levels.query("normalization == 'rms'")["rms_dbfs"] > -20.05).mean()
    return "\n".join([
        f"* **Stored level (`none`)**: the RMS level alone separates the classes with AUC {c('none', 'rms_dbfs', 'auc_speech'):.2f} "
        f"(separability {c('none', 'rms_dbfs', 'separability'):.2f}: {_information(c('none', 'rms_dbfs', 'separability'))} class information "
        f"in the level itself). The spread differs by class (sd {c('none', 'rms_dbfs', 'sd_speech_db'):.1f} dB for speech, "
        f"{c('none', 'rms_dbfs', 'sd_nonspeech_db'):.1f} dB for non-speech), and the distance from the median level separates them with "
        f"{c('none', 'rms_dbfs', 'separability_extremes'):.2f} ({_information(c('none', 'rms_dbfs', 'separability_extremes'))} information in "
        f"'unusually loud or quiet'). Its rank correlation with SNR is {c('none', 'rms_dbfs', 'spearman_snr_speech'):+.2f} (speech) and "
        f"{c('none', 'rms_dbfs', 'spearman_snr_nonspeech'):+.2f} (non-speech).",
        f"* **Peak normalization** fixes the peak and leaves RMS to the crest factor: RMS separability becomes "
        f"{c('peak', 'rms_dbfs', 'separability'):.2f} ({c('peak', 'rms_dbfs', 'separability_extremes'):.2f} for extremes), with spreads of "
        f"{c('peak', 'rms_dbfs', 'sd_speech_db'):.1f} dB (speech) and "
        f"{c('peak', 'rms_dbfs', 'sd_nonspeech_db'):.1f} dB (non-speech); the rank correlation of RMS with SNR is "
        f"{c('peak', 'rms_dbfs', 'spearman_snr_speech'):+.2f} / {c('peak', 'rms_dbfs', 'spearman_snr_nonspeech'):+.2f}.",
        f"* **RMS normalization** puts {at_target:.0%} of the clips at −20 dBFS exactly (the rest are peak-limited); the RMS "
        f"cue falls to separability {c('rms', 'rms_dbfs', 'separability'):.2f} ({c('rms', 'rms_dbfs', 'separability_extremes'):.2f} "
        f"for extremes: the peak-limited clips), and the peak level, now a crest-factor measure, "
        f"separates the classes with {c('rms', 'peak_dbfs', 'separability'):.2f}.",
    ])


def levels_figure(levels: pd.DataFrame, source: Any, path: str | Path | None) -> matplotlib.figure.Figure:
    """Box plots of the RMS and peak level per SNR and class, one column per normalization."""
    g = sns.catplot(data=long_levels(levels), x="snr", y="dBFS", hue="label", col="normalization", row="feature", kind="box",
                    col_order=list(NORMS), row_order=list(LEVEL_FEATURES), hue_order=list(data.LABELS),
                    order=sorted(levels["snr"].unique(), key=lambda s: float(s.split()[0])),
                    height=3.0, aspect=1.1, sharey="row", fliersize=1.5, linewidth=0.8)
    for (feat, norm), ax in g.axes_dict.items():
        ax.set_title(f"{'RMS' if feat == 'rms_dbfs' else 'peak'} level · {norm}")
    g.set_axis_labels("SNR", "level (dBFS)")
    return plots.finish(g.figure, "Level features per SNR and class, before and after normalization", source, path, grid=g)
