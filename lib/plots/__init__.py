"""The book's figures, drawn with seaborn in one house style from ``lib.stats`` tables.

Every function returns the matplotlib figure and, given ``path`` (a file stem such as
``figures/06_metrics``), saves it as PNG and PDF through ``lib.io.save_figure``.

Every figure says what it shows: a bold title (distinct per figure) and, under it, a caption line from
:class:`Source`: which run, which model (a label the caller takes from the run, e.g.
``lib.book.model_label(cfg)``: this module never guesses it) and which seed(s). ``smoke=True`` marks the
caption as a smoke result. The house style (:func:`house_style`): seaborn ``whitegrid``, the
colour-blind palette while it has colours enough and a 20-colour categorical palette beyond ten systems
(:func:`system_palette`), words on the axes (:data:`AXIS_NAMES`), legends outside the data area, and
intervals wherever a number has uncertainty.

Modules, by what they draw: :mod:`.style` (the house style and shared drawing helpers), :mod:`.captions`
(titles, caption lines, saving), :mod:`.forest` (forest plots), :mod:`.curves` (psychometric, reliability, ROC,
confidence, training curves) and :mod:`.by_axis` (breakdowns by degradation axis). Every public name is here too:
``from lib import plots; plots.metrics_plot(...)``.
"""
from __future__ import annotations

from .by_axis import by_axis_plot, level_text, ordered_levels
from .captions import Source, caption, caption_of, finish, title
from .curves import confidence_hist, psychometric_plot, reliability_plot, roc_plot, training_plot
from .forest import category_plot, metrics_plot, seed_plot
from .style import (AXIS_NAMES, CONTEXT, LEVEL_ORDER, METRIC_NAMES, RC, SMOKE_MARK, STYLE, axis_name, house_style,
                    set_house_style, system_palette)

__all__ = [
    "AXIS_NAMES", "CONTEXT", "LEVEL_ORDER", "METRIC_NAMES", "RC", "SMOKE_MARK", "STYLE", "Source", "axis_name",
    "by_axis_plot", "caption", "caption_of", "category_plot", "confidence_hist", "finish", "house_style",
    "level_text", "metrics_plot", "ordered_levels", "psychometric_plot", "reliability_plot", "roc_plot", "seed_plot",
    "set_house_style", "system_palette", "title", "training_plot",
]
