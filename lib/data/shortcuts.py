"""Shortcuts: how well one trivial feature (bandwidth, level) alone tells speech from non-speech, with
and without the treatment that should defuse it (the band-limit treatment, load-time normalization).

``shortcut_report`` measures; ``shortcut_findings`` says what the numbers mean, in words (chapter 01).
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from .. import audio
from .loading import load_bank, load_clips


def _separability(y: np.ndarray, f: np.ndarray) -> tuple[float, float]:
    """(ROC AUC for 'speech' as the higher feature, best balanced accuracy over thresholds and sides)."""
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(y, f)) if len(set(y)) == 2 else float("nan")
    order = np.argsort(f, kind="stable")
    fs, ys = f[order], y[order]
    pos, neg = ys.sum(), len(ys) - ys.sum()
    # predict speech above threshold t: sweep t over distinct values
    cum_pos = np.concatenate([[0], np.cumsum(ys)])
    cum_neg = np.concatenate([[0], np.cumsum(1 - ys)])
    cuts = np.concatenate([[0], np.nonzero(np.diff(fs))[0] + 1, [len(fs)]])
    tpr = (pos - cum_pos[cuts]) / pos
    tnr = cum_neg[cuts] / neg
    ba = (tpr + tnr) / 2
    return auc, float(max(ba.max(), (1 - ba).max()))


def shortcut_report(bank_df: pd.DataFrame, manifest: str | os.PathLike | None = None, normalization: str = "rms") -> pd.DataFrame:
    """How well one trivial feature alone separates speech from non-speech, with and without the
    treatment that should defuse it:

    * bandwidth, as the 95% spectral roll-off and as the share of energy above 4 kHz (dB): on the
      clean source window (the corpus' own shortcut), on the mixture before the band-limit treatment,
      and after it (``bandlimit``);
    * RMS level: stored (``none``) vs after load-time ``normalization``.

    ``band_limited`` is the cue itself, from the metadata: the clip's source is of 8-11 kHz origin
    (or, with the treatment, the clip was band-limited). Bandwidth is measured on the clean source component (what the corpus brings) and on the mixture
    (what a model hears), each without and with the treatment.

    Columns: feature, measured_on, treatment, n, auc (speech scored by the feature), separability
    (``max(auc, 1 - auc)``: 0.5 = no information, 1 = perfect shortcut), best_balanced_accuracy.
    """
    df = bank_df
    if "audio_path" not in df.columns and manifest is not None:
        loaded = load_bank(manifest)
        df = df.merge(loaded[["clip_id", "audio_path"]], on="clip_id", how="left")
    y = (df["label"].values == "speech").astype(int)
    rows = []

    def add(feature, measured_on, treatment, values):
        v = np.asarray(values, dtype=float)
        v = np.where(np.isfinite(v), v, -200.0)
        auc, ba = _separability(y, v)
        rows.append({"feature": feature, "measured_on": measured_on, "treatment": treatment, "n": len(v), "auc": auc,
                     "separability": max(auc, 1 - auc), "best_balanced_accuracy": ba})

    treated = bool((df.get("bandlimit", pd.Series(["none"])) != "none").any())
    after = "bandlimit_augment" if treated else "bandlimit_augment (off)"
    if "bandlimited_origin" in df.columns:  # the cue itself: is the clip band-limited at all?
        origin = df["bandlimited_origin"].astype(str).str.lower().isin(["true", "1"]).values
        add("band_limited", "metadata", "none", origin.astype(float))
        add("band_limited", "metadata", after, (origin | (df.get("bandlimit", "none") != "none").values).astype(float))
    for feat in ("rolloff95_hz", "highband_db"):
        if f"{feat}_untreated" not in df.columns:
            continue
        if f"{feat}_source" in df.columns:
            add(feat, "clean source", "none", df[f"{feat}_source"])
            add(feat, "clean source", after, df[f"{feat}_source_treated"])
        add(feat, "mixture", "none", df[f"{feat}_untreated"])
        add(feat, "mixture", after, df[feat])
    add("rms_dbfs", "mixture", "none", df["rms_dbfs"])
    if normalization != "none":
        levels = [audio.rms_dbfs(c) for c in load_clips(df, manifest, normalization=normalization)]
        add("rms_dbfs", "mixture", f"{normalization} normalization", levels)
    return pd.DataFrame(rows)


def _strength(separability: float) -> str:
    return ("a strong shortcut" if separability >= 0.75 else "a moderate shortcut" if separability >= 0.65
            else "a weak cue" if separability >= 0.55 else "close to no information")


def _row(report: pd.DataFrame, feature: str, measured_on: str, treated: bool) -> pd.Series | None:
    part = report[(report["feature"] == feature) & (report["measured_on"] == measured_on)]
    part = part[part["treatment"] != "none"] if treated else part[part["treatment"] == "none"]
    return part.iloc[0] if len(part) else None


def shortcut_findings(report: pd.DataFrame, bank: pd.DataFrame, normalization: str) -> str:
    """What ``shortcut_report(bank, ..., normalization)`` says, as Markdown bullets built from its numbers:
    how many clips are band-limited per class, and how much each trivial feature separates the classes
    before and after its treatment (``a strong shortcut`` from separability 0.75, ``a moderate shortcut``
    from 0.65, ``a weak cue`` from 0.55, else ``close to no information``)."""
    origin = bank["bandlimited_origin"].astype(str).str.lower().isin(["true", "1"])
    shares = bank.assign(origin=origin, after=origin | (bank["bandlimit"] != "none")).groupby("label")[["origin", "after"]].mean()
    lines = [
        f"* **Band-limited clips.** Of this bank's clips, {shares.loc['speech', 'origin']:.0%} of speech and "
        f"{shares.loc['nonspeech', 'origin']:.0%} of non-speech come from 8-11 kHz recordings"
        + (f"; with the treatment, {shares.loc['speech', 'after']:.0%} and {shares.loc['nonspeech', 'after']:.0%} "
           "of the clips are band-limited." if bank["bandlimit"].ne("none").any() else "; the treatment is off in this run.")
    ]
    b0, b1 = _row(report, "band_limited", "metadata", False), _row(report, "band_limited", "metadata", True)
    lines.append(f"* Knowing only whether a clip is band-limited separates the classes with {b0.separability:.2f} before the "
                 f"treatment ({_strength(b0.separability)}) and {b1.separability:.2f} after it ({_strength(b1.separability)}).")
    for feat, name in [("highband_db", "Energy above 4 kHz"), ("rolloff95_hz", "95% roll-off")]:
        c0, c1 = _row(report, feat, "clean source", False), _row(report, feat, "clean source", True)
        m0, m1 = _row(report, feat, "mixture", False), _row(report, feat, "mixture", True)
        lines.append(
            f"* **{name}**: on the clean sources {c0.separability:.2f} → {c1.separability:.2f} with the treatment; on the "
            f"mixtures the model hears {m0.separability:.2f} → {m1.separability:.2f} ({_strength(m1.separability)})."
            + (" Full-band noise already hides much of the source's bandwidth in the mixture."
               if m0.separability < c0.separability - 0.02 else "")
        )
    l0, l1 = _row(report, "rms_dbfs", "mixture", False), _row(report, "rms_dbfs", "mixture", True)
    lines.append(
        f"* **Level**: the stored RMS level separates the classes with {l0.separability:.2f} (best balanced accuracy "
        f"{l0.best_balanced_accuracy:.2f}: {_strength(max(l0.separability, l0.best_balanced_accuracy))})"
        + (f"; after {normalization} normalization {l1.separability:.2f} (best balanced accuracy "
           f"{l1.best_balanced_accuracy:.2f}); what is left comes from clips whose peak limited the gain."
           if l1 is not None else "; with normalization 'none' the model hears the stored level.")
    )
    treated = report[(report["treatment"] != "none") & (report["measured_on"] != "clean source")]
    top = treated.loc[treated["separability"].idxmax()]
    lines.append(
        f"\nWith the treatments, the most informative single trivial feature of what the model hears is {top.feature} "
        f"({top.measured_on}, separability {top.separability:.2f}; 0.5 = chance). A model that does much better than that "
        "has learned more than bandwidth or level; one that does about as well may have learned nothing else."
    )
    return "\n".join(lines)
