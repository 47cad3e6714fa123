"""Chapters 03-05 in functions: score splits, break results down by condition (training is ``lib.train``).

System names: ``qwen2audio-zeroshot`` (the base model, no adapter) and ``qwen2audio-<variant>`` for a
fine-tuned one (``lib.systems.trained_system_name``: ``-fullloss`` appended when the loss covers the whole sequence,
the ablation). Every system writes the predictions table of DESIGN.md for the test split; nothing here
chooses anything on the test split.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from . import data, results
from .stats import SYSTEM_KEY, binary_metrics, wilson_intervals
from .systems import ZERO_SHOT, is_study_system, list_systems, read_system_yaml, scoring_normalization
from .data import split_rows

AXES = ("duration_ms", "snr_db", "noise_type", "rt60_s", "filter", "bandlimit")


def score_split(scorer: Any, bank: pd.DataFrame, manifest: str | Path, cfg: Mapping[str, Any], system: str,
                split: str = "test", variant: str = "", seed: int | None = None) -> pd.DataFrame:
    """Score one split with any Scorer and return its predictions table (bank columns not joined).

    Clips are loaded under the scorer's own level normalization (``scorer.normalization``: the one a saved
    system was trained with, read from its system.yaml), so that every system is scored as it was trained;
    ``cfg["normalization"]`` only for a scorer that records none (the zero-shot model, a built-in VAD).
    """
    rows = split_rows(bank, split)
    mode = scoring_normalization(scorer, default=cfg["normalization"])
    audios = data.load_clips(rows, manifest, normalization=mode)
    p = np.asarray(scorer.score(audios), dtype=float)
    return results.predictions_frame(run_id=cfg["run_id"], system=system, variant=variant, seed=seed,
                                     clip_ids=rows["clip_id"].tolist(), labels=rows["label"].tolist(), p_speech=p,
                                     model=getattr(scorer, "model_label", ""))


def evaluate_run(cfg: Mapping[str, Any], manifest: str | Path, include_zero_shot: bool = True) -> pd.DataFrame:
    """Score the test split with the zero-shot model and every fine-tuned system of the run; write predictions."""
    from .model import zero_shot_scorer
    from .systems import load_system

    bank = data.load_bank(manifest)
    run_dir = Path(cfg["run_dir"])
    frames = []
    if include_zero_shot:
        zs = zero_shot_scorer(cfg["model_name_or_path"], prompt=cfg["prompt"], name=ZERO_SHOT, quantization=cfg["quantization"],
                              torch_dtype=cfg["torch_dtype"], short_encoder=bool(cfg["short_encoder"]), batch_size=int(cfg["eval_batch_size"]))
        # The base model does not depend on the training seed: one row set (seed -1) however many seeds run.
        frames.append(score_split(zs, bank, manifest, cfg, ZERO_SHOT, variant="prompt=hand-written"))
    for name in list_systems(run_dir, kind="lora"):
        if is_study_system(name):  # the normalization / LoRA-variant studies score their own (chapters 02 and 04)
            continue
        scorer = load_system(f"{run_dir}:{name}")  # scored under its own normalization (score_split)
        tc = read_system_yaml(run_dir / "systems" / name).get("train_config", {})
        frames.append(score_split(scorer, bank, manifest, cfg, name, variant=tc.get("lora_variant", ""), seed=tc.get("seed")))
    preds = pd.concat(frames, ignore_index=True)
    results.write_predictions(run_dir, preds)
    return preds


def breakdown(predictions: pd.DataFrame, bank: pd.DataFrame, axis: str, level: float = 0.95) -> pd.DataFrame:
    """Per system and level of one bank axis: n, accuracy and balanced accuracy, with Wilson intervals
    (for balanced accuracy the Bonferroni combination of the two recalls' intervals, ``stats.wilson_intervals``).
    A level that holds one class only gets that class's recall as its balanced accuracy."""
    df = predictions.merge(bank[["clip_id", axis]], on="clip_id", how="left")
    rows = []
    for keys, part in df.groupby([*SYSTEM_KEY, axis], sort=True):
        m = binary_metrics(part["label"], part["pred"], absent_class="other")
        ci = wilson_intervals(part["label"], part["pred"], level, absent_class="other")
        rows.append({**dict(zip([*SYSTEM_KEY, axis], keys)), "n": len(part), "accuracy": m["accuracy"],
                     "accuracy_lo": ci["accuracy"][0], "accuracy_hi": ci["accuracy"][1], "balanced_accuracy": m["balanced_accuracy"],
                     "balanced_accuracy_lo": ci["balanced_accuracy"][0], "balanced_accuracy_hi": ci["balanced_accuracy"][1]})
    return pd.DataFrame(rows)


def present_axes(bank: pd.DataFrame, axes: Sequence[str] = AXES) -> list[str]:
    """The degradation axes that vary in this bank (the others have one level and break nothing down)."""
    return [a for a in axes if a in bank.columns and bank[a].nunique(dropna=False) > 1]


def breakdown_long(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The ``breakdown`` tables of several axes stacked for reading: axis and level in words (levels in
    reading order), system, clips, balanced accuracy with its Wilson interval, as one text column."""
    from .plots import axis_name, level_text, ordered_levels
    from .tables import interval_text

    rows = []
    for axis, t in tables.items():
        levels = ordered_levels(axis, t[axis].tolist())
        for level in levels:
            for _, r in t[t[axis] == level].iterrows():
                rows.append({"axis": axis_name(axis), "level": level_text(axis, level),
                             "system": system_label_of(r), "clips": int(r["n"]),
                             "balanced accuracy [Wilson]": interval_text(r["balanced_accuracy"], r.get("balanced_accuracy_lo", np.nan),
                                                                         r.get("balanced_accuracy_hi", np.nan))})
    return pd.DataFrame(rows)


def system_label_of(row: Mapping[str, Any]) -> str:
    from .stats import system_label

    return system_label(row["system"], row.get("variant", ""), row.get("seed", -1), show_seed=False)


def describe_breakdown(tables: Mapping[str, pd.DataFrame]) -> str:
    """Markdown sentences on how balanced accuracy moves along each axis, per system: for a numeric axis
    from its lowest to its highest level (in numeric order), for a categorical one its best and worst
    level, each with its Wilson interval; says when the two ends' intervals overlap."""
    from .plots import axis_name, level_text, ordered_levels
    from .tables import interval_text

    lines = []
    for axis, t in tables.items():
        levels = ordered_levels(axis, t[axis].tolist())
        numeric = all(isinstance(v, (int, float, np.integer, np.floating)) for v in levels)
        for system, part in t.groupby([c for c in SYSTEM_KEY if c in t.columns], sort=False):
            part = part.set_index(axis).loc[[v for v in levels if v in set(part[axis])]]
            name = system_label_of(part.iloc[0].to_dict() | dict(zip(SYSTEM_KEY, system)))
            unit = {"duration_ms": " ms", "snr_db": " dB", "rt60_s": " s"}.get(axis, "")
            if numeric:
                a, b = part.iloc[0], part.iloc[-1]
                what = (f"from {interval_text(a['balanced_accuracy'], a['balanced_accuracy_lo'], a['balanced_accuracy_hi'])} "
                        f"at {level_text(axis, part.index[0])}{unit} to "
                        f"{interval_text(b['balanced_accuracy'], b['balanced_accuracy_lo'], b['balanced_accuracy_hi'])} "
                        f"at {level_text(axis, part.index[-1])}{unit}")
            else:
                a = part.loc[part["balanced_accuracy"].idxmin()]
                b = part.loc[part["balanced_accuracy"].idxmax()]
                what = (f"lowest at {level_text(axis, a.name)} "
                        f"({interval_text(a['balanced_accuracy'], a['balanced_accuracy_lo'], a['balanced_accuracy_hi'])}), "
                        f"highest at {level_text(axis, b.name)} "
                        f"({interval_text(b['balanced_accuracy'], b['balanced_accuracy_lo'], b['balanced_accuracy_hi'])})")
            if np.isclose(part["balanced_accuracy"].min(), part["balanced_accuracy"].max()):
                lines.append(f"- `{name}`, {axis_name(axis)}: {part['balanced_accuracy'].iloc[0]:.3f} at every level.")
                continue
            overlap = a["balanced_accuracy_hi"] >= b["balanced_accuracy_lo"] and b["balanced_accuracy_hi"] >= a["balanced_accuracy_lo"]
            lines.append(f"- `{name}`, {axis_name(axis)}: {what}"
                         + ("; the two intervals overlap, so this split cannot tell these levels apart." if overlap else "."))
    return "Balanced accuracy along each axis (95% Wilson intervals, the two classes' intervals combined):\n" + "\n".join(lines)
