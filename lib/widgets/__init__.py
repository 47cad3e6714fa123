"""The listening tool: browse a run's clips, hear them (with their clean source, context and noise), see
their spectrograms, compare two systems and tag what you hear.

    from lib.widgets import listening_tool
    listening_tool("results/cpu/<run_id>")                         # the run's own fine-tuned system
    listening_tool("results/cpu/<run_id>", system="silero_vad", compare="qwen2audio-attn")

or, from tables already in memory::

    ListeningTool(predictions, bank, manifest, normalization="rms", smoke=True, run_dir=...)

The clips listed are the rows of the predictions table (one system at a time) joined with the bank's
axes, filtered by the widgets (true class, the class's own categories, duration, SNR, noise type,
RT60, filter, split, tag) and sorted (by default the most confidently wrong first: the probability the
system gave to the wrong class, so with *misclassified only* off the confident mistakes still come
first). With a second system in *compare with*, the list holds the McNemar discordant clips (A wrong
and B right, or the reverse) and each card shows both systems' ``p_speech``. ``tool.filtered()`` returns
exactly the table listed; it is the pure function :func:`filter_clips` applied to the widgets' values,
so tests drive the tool by setting widget values and reading ``tool.filtered()``.

Each card has the clip's labels, ``p_speech``, bank axes and duration, a spectrogram, a player for the
mixture as the model heard it, and on request (button or key ``s``) players for the clean source under
the window, the source with its context around the window, the noise as mixed and the noise recording
(:class:`lib.data.ClipParts`). Tags (fine / ambiguous / mislabeled) go to ``listening_tags.csv`` in the
run folder at once (atomic writes); *export* writes the listed clips to ``listening_exports/``.

Keyboard (click the tool first): ``j``/``→`` next clip, ``k``/``←`` previous, space play/pause, ``s`` the
clip's sources, ``1``/``2``/``3`` tag fine/ambiguous/mislabeled, ``0`` clear the tag. The keys are read
by a small anywidget (:class:`KeyboardControl`) that also stops JupyterLab's own notebook shortcuts
while focus is in the tool.

A widget needs a live kernel. In a chapter executed headless by ``lib.book`` (``SPEECHBOOK_HEADLESS=1``)
the cell's output is a message saying so, with the one call that opens the tool on that run; the
``text/plain`` form of a live tool says the same, for viewers that cannot draw widgets.

The package, one idea per module: ``listing`` (the pure table logic: join, filters, sort, McNemar counts),
``tags`` (the run's tags file), ``media`` (players' WAV bytes, spectrograms, the clip's parts), ``keyboard``
(the anywidget that reads keys), ``cards`` (one clip's card), ``tool`` (the widget), ``headless`` (what it shows
without a live kernel) and ``run`` (the tool on a run folder).
"""
from .headless import HEADLESS_ENV
from .listing import DEFAULT_SORT, NO_MATCH, discordant_counts, filter_clips, join_bank
from .media import duration_text
from .run import listening_tool
from .tags import TAGS_FILE, TagStore
from .tool import EXPORT_DIR, ListeningTool

__all__ = [
    "DEFAULT_SORT", "EXPORT_DIR", "HEADLESS_ENV", "NO_MATCH", "TAGS_FILE", "ListeningTool", "TagStore",
    "discordant_counts", "duration_text", "filter_clips", "join_bank", "listening_tool",
]
