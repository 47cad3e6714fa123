"""What every figure says: its title and the caption line (:class:`Source`: run, model, seeds), and saving it."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from .. import io
from .style import SMOKE_MARK


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
