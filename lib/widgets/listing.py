"""What the listening tool lists: the predictions joined with the bank, filtered and sorted (pure table
logic, no widgets). ``tool.filtered()`` is :func:`filter_clips` applied to the widgets' values."""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from ..stats import mcnemar_exact, system_label, with_bank

NO_MATCH = "No clips match these filters."
# Bank columns offered as multiple-choice filters when they hold at least two distinct values.
CHOICE_AXES = ("noise_type", "rt60_s", "filter", "bandlimit", "split")
CHOICE_NAMES = {"noise_type": "noise", "rt60_s": "RT60 (s)", "filter": "filter", "bandlimit": "band-limit",
                "split": "split"}
SORTS = {
    "most confidently wrong first": ("p_wrong", False),
    "least confident first": ("confidence", True),
    "p_speech, high to low": ("p_speech", False),
    "p_speech, low to high": ("p_speech", True),
    "clip id": ("clip_id", True),
}
DEFAULT_SORT = "most confidently wrong first"
COMPARE_MODES = {
    "A wrong, B right": "a_wrong_b_right",
    "A right, B wrong": "a_right_b_wrong",
    "either (discordant)": "discordant",
    "both wrong": "both_wrong",
}
TAG_FILTERS = {"any tag": None, "untagged": "", "fine": "fine", "ambiguous": "ambiguous", "mislabeled": "mislabeled"}
ALL = "all"
NONE = "none"


def label_of(system: Any, variant: Any = "", seed: Any = -1) -> str:
    """How a (system, variant, seed) key is named in the system menu: the book's one system label."""
    return system_label(system, variant, seed)


def system_name(df: pd.DataFrame, label: str) -> str:
    """The ``system`` column's value of the rows a menu label names (the label itself if none)."""
    names = df.loc[df["system_label"] == label, "system"].astype(str)
    return names.iloc[0] if len(names) else label


def axis_text(value: Any) -> str:
    """The text a choice filter shows (and matches on) for one cell: ``0.3``, ``pink``, ``none``."""
    if value is None:
        return NONE
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return NONE
        return f"{float(value):g}"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    text = str(value)
    return text if text.strip() else NONE


def join_bank(predictions: pd.DataFrame, bank: pd.DataFrame | None) -> pd.DataFrame:
    """The predictions table with the bank's columns joined on ``clip_id`` (``lib.stats.with_bank``, the book's
    one join: predictions' own columns win, so the bank's generation ``seed`` never shadows the system's).

    Adds ``system_label``, ``correct``, ``confidence`` (the probability given to the predicted class)
    and ``p_wrong`` (the probability given to the wrong class: high for a confident mistake, low for a
    confident correct answer).
    """
    df = predictions.copy()
    df["clip_id"] = df["clip_id"].astype(str)
    for col, default in (("variant", ""), ("seed", -1)):  # before the join, so the bank's seed is not taken
        if col not in df.columns:
            df[col] = default
    if bank is not None and len(bank.columns):
        # A clip the bank lacks stays listed (its card names the missing clip); the rest take the bank's columns.
        in_bank = df["clip_id"].isin(set(bank["clip_id"].astype(str)))
        joined = with_bank(df[in_bank], bank)
        joined.index = df.index[in_bank]
        df = pd.concat([joined, df[~in_bank]]).sort_index()
    df["system_label"] = [label_of(s, v, e) for s, v, e in zip(df["system"], df["variant"], df["seed"])]
    df["p_speech"] = df["p_speech"].astype(float)
    df["correct"] = df["pred"].astype(str) == df["label"].astype(str)
    df["confidence"] = np.where(df["pred"].astype(str) == "speech", df["p_speech"], 1.0 - df["p_speech"])
    # rounded so that 1 - 0.8 and 0.2 tie (and the tie goes by clip id) instead of differing in the 17th digit
    df["p_wrong"] = np.round(np.where(df["label"].astype(str) == "speech", 1.0 - df["p_speech"], df["p_speech"]), 12)
    return df


def _in_range(values: pd.Series, lo: float, hi: float, full_lo: float | None, full_hi: float | None) -> pd.Series:
    v = pd.to_numeric(values, errors="coerce").astype(float)
    keep = (v >= lo) & (v <= hi)
    # An end of the slider pulled to its limit keeps the infinite values beyond it (e.g. clean = +inf dB).
    if full_hi is not None and hi >= full_hi:
        keep |= np.isposinf(v)
    if full_lo is not None and lo <= full_lo:
        keep |= np.isneginf(v)
    return keep


def paired(df: pd.DataFrame, system: str, compare: str) -> pd.DataFrame:
    """System A's rows (``system``) on the clips system B (``compare``) also scored, with B's ``pred_b``,
    ``p_speech_b`` and ``correct_b`` beside them."""
    a = df[df["system_label"] == system]
    b = df[df["system_label"] == compare][["clip_id", "pred", "p_speech", "correct"]]
    b = b.drop_duplicates("clip_id").rename(columns={"pred": "pred_b", "p_speech": "p_speech_b", "correct": "correct_b"})
    return a.merge(b, on="clip_id", how="inner")


def discordant_counts(df: pd.DataFrame, system: str, compare: str) -> dict[str, Any]:
    """McNemar on the clips both systems scored: ``n``, ``a_only`` (A right, B wrong), ``b_only``,
    ``both_wrong`` and the exact two-sided ``p`` (``lib.stats.mcnemar_exact``)."""
    p = paired(df, system, compare)
    a_only = int((p["correct"] & ~p["correct_b"]).sum())
    b_only = int((~p["correct"] & p["correct_b"]).sum())
    return {"n": len(p), "a_only": a_only, "b_only": b_only, "both_wrong": int((~p["correct"] & ~p["correct_b"]).sum()),
            "p": mcnemar_exact(a_only, b_only)}


def filter_clips(
    df: pd.DataFrame,
    *,
    system: str | None = None,
    label: str | None = None,
    categories: Iterable[str] = (),
    duration_ms: tuple[float, float] | None = None,
    snr_db: tuple[float, float] | None = None,
    choices: Mapping[str, Iterable[str]] | None = None,
    errors_only: bool = True,
    sort: str = DEFAULT_SORT,
    snr_limits: tuple[float, float] | None = None,
    compare: str | None = None,
    compare_mode: str = "a_wrong_b_right",
    tags: Mapping[str, str] | None = None,
    tag: str | None = None,
) -> pd.DataFrame:
    """The clips listed for these filter values, in listing order (a pure function of its inputs).

    ``df`` comes from :func:`join_bank`. ``system`` is a ``system_label`` (None: every system);
    ``label`` the true class (None or ``"all"``: both); empty ``categories`` or ``choices[axis]`` mean
    no filter on that axis; a range of None means no filter (rows with a missing value stay in).
    ``snr_limits`` are the slider's ends, so that a range reaching an end keeps ``inf`` dB rows.
    ``compare``: a second system's label; then ``compare_mode`` (``COMPARE_MODES``' values) replaces
    ``errors_only`` and the rows carry B's columns (:func:`paired`). ``tags`` maps clip ids to their
    tag; ``tag`` keeps one tag (``""``: untagged; None: any).
    """
    if compare is not None:
        if system is None:
            raise ValueError("comparing needs system A: pass system=<label> with compare=<label>")
        df = paired(df, system, compare)
    keep = pd.Series(True, index=df.index)
    if compare is not None:
        a, b = df["correct"], df["correct_b"]
        masks = {"a_wrong_b_right": ~a & b, "a_right_b_wrong": a & ~b, "discordant": a != b, "both_wrong": ~a & ~b}
        if compare_mode not in masks:
            raise ValueError(f"compare_mode {compare_mode!r}; valid: {', '.join(masks)}")
        keep &= masks[compare_mode]
    elif errors_only:
        keep &= ~df["correct"]
    if system is not None:
        keep &= df["system_label"] == system
    if label not in (None, ALL):
        keep &= df["label"].astype(str) == label
    categories = list(categories)
    if categories and "category" in df.columns:
        keep &= df["category"].map(axis_text).isin(categories)
    if duration_ms is not None and "duration_ms" in df.columns:
        keep &= _in_range(df["duration_ms"], duration_ms[0], duration_ms[1], None, None)
    if snr_db is not None and "snr_db" in df.columns:
        lo, hi = snr_limits if snr_limits is not None else (None, None)
        keep &= _in_range(df["snr_db"], snr_db[0], snr_db[1], lo, hi)
    for axis, picked in (choices or {}).items():
        picked = list(picked)
        if picked and axis in df.columns:
            keep &= df[axis].map(axis_text).isin(picked)
    if tag is not None:
        keep &= df["clip_id"].map(lambda c: (tags or {}).get(c, "")) == tag
    out = df[keep]
    column, ascending = SORTS[sort]
    # A stable sort with clip_id as the tie-break makes the order reproducible.
    out = out.sort_values([column, "clip_id"], ascending=[ascending, True], kind="mergesort")
    return out.reset_index(drop=True)


def categories_of(df: pd.DataFrame, label: str | None) -> list[str]:
    """The categories the category filter offers: those of the true class chosen (all for ``"all"``)."""
    if "category" not in df.columns:
        return []
    part = df if label in (None, ALL) else df[df["label"].astype(str) == label]
    return sorted({axis_text(v) for v in part["category"]})




def natural_key(text: str) -> tuple[int, float, str]:
    """Numbers in numeric order, then words: how the choice filters list their values."""
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)
