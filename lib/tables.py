"""Tables as the chapters show them: readable headers, one number format per kind of number, no cut-off.

``show(df)`` returns a pandas ``Styler`` (rendered as HTML in JupyterLab and in executed notebooks):

* headers in words (:data:`HEADERS`, else the column name without underscores), wrapped rather than
  widening the table;
* numbers formatted by kind: counts as integers with thousands separators, p-values to 3 significant
  digits (``< 0.001`` below), differences with a sign, every other number to 3 decimals; no
  ``6.149194e-02``;
* an estimate and its interval joined into one cell by :func:`with_interval` (``0.812 [0.771, 0.850]``),
  which halves a table's width;
* a horizontal scroll bar instead of clipping when a table is still wider than the page.

The CSV files the chapters write keep the full snake_case columns and full precision: this module only
changes how a table reads.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

HEADERS = {
    "n": "clips",
    "n_groups": "sources",
    "balanced_accuracy": "balanced accuracy",
    "accuracy": "accuracy",
    "recall_speech": "recall (speech)",
    "recall_nonspeech": "recall (non-speech)",
    "auc": "ROC AUC",
    "brier": "Brier score",
    "ece": "ECE",
    "ece_confidence": "ECE (confidence)",
    "mean_p_speech": "mean p(speech)",
    "p_exact": "p (exact)",
    "p_midp": "p (mid-p)",
    "p_exact_adj": "p (exact, Holm)",
    "a_only": "only the reference right",
    "b_only": "only the other right",
    "n_seeds": "number of seeds",
    "sd": "sd",
    "psi": "discordance",
    "duration_ms": "duration (ms)",
    "snr_db": "SNR (dB)",
    "noise_type": "noise type",
    "rt60_s": "RT60 (s)",
    "wilson_lo": "Wilson low",
    "wilson_hi": "Wilson high",
    "n_correct": "correct",
}
P_VALUE_PREFIXES = ("p_", "p ", "p(")
SIGNED = ("difference", "dev_gain", "delta")


def header(column: str) -> str:
    """A column name in words: ``recall_speech`` -> ``recall (speech)``, ``dev_gain`` -> ``dev gain``."""
    return HEADERS.get(column, str(column).replace("_", " "))


def is_p_value(column: str) -> bool:
    c = str(column).lower()
    return c.startswith(P_VALUE_PREFIXES) or c in ("p", "p_value")


def p_text(p: float) -> str:
    """A p-value to 3 significant digits; below 0.001 as ``< 0.001``."""
    if p is None or not np.isfinite(p):
        return ""
    return "< 0.001" if p < 0.001 else f"{p:.3g}"  # the space keeps HTML from reading a tag


def interval_text(est: float, lo: float, hi: float, digits: int = 3) -> str:
    """``0.812 [0.771, 0.850]``; an empty string for a missing estimate, the estimate alone without bounds."""
    if est is None or not np.isfinite(est):
        return ""
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{est:.{digits}f}"
    return f"{est:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def with_interval(df: pd.DataFrame, metric: str, kind: str = "boot", name: str | None = None, digits: int = 3,
                  lo: str | None = None, hi: str | None = None) -> pd.Series:
    """One text column ``estimate [lo, hi]`` from ``metric`` and its ``<metric>_<kind>_lo/hi`` columns
    (or the columns ``lo``/``hi`` named)."""
    lo = lo or f"{metric}_{kind}_lo"
    hi = hi or f"{metric}_{kind}_hi"
    vals = [interval_text(float(e), float(a), float(b), digits)
            for e, a, b in zip(df[metric], df.get(lo, pd.Series(np.nan, index=df.index)),
                               df.get(hi, pd.Series(np.nan, index=df.index)))]
    return pd.Series(vals, index=df.index, name=name or f"{header(metric)} [{'bootstrap' if kind == 'boot' else kind}]")


def _formatter(column: str, values: pd.Series, digits: int) -> Any:
    if is_p_value(column):
        return p_text
    if pd.api.types.is_bool_dtype(values):
        return lambda v: "yes" if v else "no"
    if pd.api.types.is_integer_dtype(values):
        return lambda v: f"{int(v):,}"
    if pd.api.types.is_float_dtype(values):
        finite = values[np.isfinite(values.astype(float))]
        if len(finite) and (finite == finite.round()).all() and finite.abs().max() >= 10:
            return lambda v: "" if not np.isfinite(v) else f"{int(v):,}"  # counts stored as floats (NaN elsewhere)
        if any(str(column).startswith(s) or str(column).endswith(s) for s in SIGNED):
            return lambda v: "" if not np.isfinite(v) else f"{v:+.{digits}f}"
        return lambda v: "" if not np.isfinite(v) else f"{v:.{digits}f}"
    return None


TABLE_CSS = [
    {"selector": "", "props": "display: block; overflow-x: auto; max-width: 100%; border-collapse: collapse;"},
    {"selector": "th", "props": "white-space: normal; max-width: 9em; text-align: center; vertical-align: bottom;"
                                " font-weight: 600; padding: 2px 6px;"},
    {"selector": "td", "props": "white-space: nowrap; text-align: right; padding: 2px 6px;"},
    {"selector": "td.col0", "props": "text-align: left;"},
    {"selector": "caption", "props": "caption-side: top; text-align: left; font-weight: 600; padding: 4px 0;"},
]


def show(df: pd.DataFrame, columns: Sequence[str] | Mapping[str, str] | None = None, *, digits: int = 3,
         caption: str | None = None, formats: Mapping[str, Any] | None = None, index: bool = False,
         max_rows: int | None = None) -> Any:
    """``df`` as a readable table (a pandas ``Styler``): the ``columns`` chosen (a list, or a mapping
    from column to header), headers in words, numbers formatted by kind (see the module doc).

    ``formats`` overrides the format of some columns (a format string or a function), by source column.
    """
    if columns is None:
        cols, names = list(df.columns), {}
    elif isinstance(columns, Mapping):
        cols, names = list(columns), dict(columns)
    else:
        cols, names = list(columns), {}
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"tables.show: no column(s) {missing} in the table; it has {list(df.columns)}")
    out = df[cols].copy()
    if max_rows is not None:
        out = out.head(max_rows)
    fmt: dict[str, Any] = {}
    for c in cols:
        f = (formats or {}).get(c) or _formatter(c, out[c], digits)
        if f is not None:
            fmt[c] = f
    rename = {c: names.get(c) or header(c) for c in cols}
    seen: set[str] = set()
    for c in cols:  # two columns must never read alike (formats are applied by header)
        name, k = rename[c], 2
        while name in seen:
            name, k = f"{rename[c]} ({k})", k + 1
        rename[c] = name
        seen.add(name)
    out = out.rename(columns=rename)
    styler = out.style.format({rename[c]: f for c, f in fmt.items()}, na_rep="")
    styler = styler.set_table_styles(TABLE_CSS)
    if not index:
        styler = styler.hide(axis="index")
    if caption:
        styler = styler.set_caption(caption)
    return styler


def is_balanced(labels: Iterable[Any]) -> bool:
    """Whether a split holds as many speech as non-speech clips: then accuracy equals balanced accuracy,
    and a table shows only the latter."""
    s = pd.Series(list(labels)).astype(str)
    return len(s) > 0 and int((s == "speech").sum()) == int((s == "nonspeech").sum())


def order_by_family(df: pd.DataFrame, family: Sequence[str] | pd.Series, families: Sequence[str],
                    then: Sequence[str] = ("system", "variant", "seed")) -> pd.DataFrame:
    """Rows ordered by family (in the order ``families`` lists them), then by ``then``: never by a result."""
    out = df.assign(_family=pd.Categorical(list(family), list(families), ordered=True))
    keys = ["_family"] + [c for c in then if c in out.columns]
    return out.sort_values(keys, kind="mergesort").drop(columns="_family").reset_index(drop=True)


def metrics_summary(table: pd.DataFrame, *, balanced: bool, intervals: Sequence[str] = ("boot",),
                    name: str | None = None, extra: Sequence[str] = ()) -> pd.DataFrame:
    """A ``stats.metrics_table`` as a reader sees it: one row per system, each metric with its interval in
    one cell (``[bootstrap]`` and, if asked, ``[Wilson]``); accuracy only where the split is not
    ``balanced`` (on a balanced split it equals balanced accuracy); AUC and Brier where present.
    ``name``: the column that names systems (default ``name`` if present, else ``system``)."""
    name = name or ("name" if "name" in table.columns else "system")
    out = pd.DataFrame({"system": table[name].astype(str)}, index=table.index)
    for col in extra:
        out[header(col)] = table[col]
    out["clips"] = table["n"].astype(int)
    if "n_groups" in table.columns:
        out["sources"] = table["n_groups"].astype(int)
    metrics = ["balanced_accuracy"] + ([] if balanced else ["accuracy"]) + ["recall_speech", "recall_nonspeech"]
    for m in metrics:
        for kind in intervals:
            if f"{m}_{kind}_lo" in table.columns:
                out[f"{header(m)} [{'bootstrap' if kind == 'boot' else kind}]"] = with_interval(table, m, kind)
    if "auc" in table.columns:
        out["ROC AUC [bootstrap]"] = with_interval(table, "auc", "boot")
    if "brier" in table.columns:
        out["Brier score"] = table["brier"].astype(float)
    return out.reset_index(drop=True)
