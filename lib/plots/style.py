"""The house style: seaborn theme, palettes, words on the axes, and the drawing helpers every figure shares."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..stats import add_system_label

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


def legend_outside(ax: Any, title: str | None = "", loc: str = "right", ncol: int = 1, handles: Any = None,
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


def with_names(df: pd.DataFrame) -> pd.DataFrame:
    return df if "name" in df.columns else add_system_label(df)


def error_bars(est: Any, lo: Any, hi: Any) -> list[np.ndarray]:
    """Error-bar lengths, clipped at 0 (an estimate of 1 may sit a rounding error above its upper bound)."""
    est, lo, hi = (np.asarray(v, float) for v in (est, lo, hi))
    return [np.nan_to_num(np.clip(est - lo, 0, None)), np.nan_to_num(np.clip(hi - est, 0, None))]


def shade_rows(ax: Any, n: int) -> None:
    """Light bands on every other row of a forest plot, so a point's row is easy to follow."""
    for i in range(0, n, 2):
        ax.axhspan(i - 0.5, i + 0.5, color="0.94", zorder=0, lw=0)
    ax.set_ylim(n - 0.5, -0.5)
    ax.grid(axis="y", visible=False)


def interval_words(interval: str, level: float | None) -> str:
    lvl = f"{level:.0%} " if level else ""
    return f"{lvl}cluster-bootstrap interval" if interval == "boot" else f"{lvl}Wilson interval"
