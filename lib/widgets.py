"""The listening tool: browse a run's misclassified clips, hear them and see their spectrograms.

    from lib.widgets import listening_tool
    listening_tool("results/cpu/<run_id>")            # every system in the run's predictions.csv

or, from tables already in memory::

    ListeningTool(predictions, bank, manifest, normalization="rms", smoke=True)

The clips listed are the rows of the predictions table (one system at a time) whose ``pred`` differs
from ``label``, joined with the bank's axes, filtered by the widgets (true class, category, duration,
SNR, noise type, RT60, filter, split) and sorted by confidence: the probability the system gave to the
class it wrongly chose, most confidently wrong first. ``tool.filtered()`` returns exactly the table
listed; it is the pure function :func:`filter_clips` applied to the widgets' values, so tests drive the
tool by setting ``tool.class_filter.value = "nonspeech"`` and reading ``tool.filtered()``.

Each shown clip has its true and predicted label, ``p_speech``, its bank axes, a spectrogram (librosa
STFT drawn with matplotlib, as PNG in an ``ipywidgets.Image``) and an audio player
(``ipywidgets.Audio`` holding 16-bit WAV bytes, i.e. an HTML ``<audio>`` element in JupyterLab). Audio
is read through ``lib.data.load_clip(row, normalization, root=<the manifest's folder>)`` (float32,
16 kHz), imported only when a clip is first shown.
"""
from __future__ import annotations

import io as _io
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd

SR = 16_000
NO_MATCH = "No clips match these filters."
# Bank columns offered as multiple-choice filters when they hold at least two distinct values.
CHOICE_AXES = ("noise_type", "rt60_s", "filter", "bandlimit", "split")
SORTS = {
    "most confidently wrong first": ("confidence", False),
    "least confident first": ("confidence", True),
    "p_speech, high to low": ("p_speech", False),
    "p_speech, low to high": ("p_speech", True),
    "clip id": ("clip_id", True),
}
DEFAULT_SORT = "most confidently wrong first"
ALL = "all"
_NONE = "none"


# ----------------------------------------------------------------------------------------------
# Pure table logic (no widgets): what the tool lists
# ----------------------------------------------------------------------------------------------
def system_label(system: Any, variant: Any = "", seed: Any = -1) -> str:
    """How a (system, variant, seed) key is named in the system menu: ``lora / attn / seed 0``."""
    parts = [str(system)]
    if isinstance(variant, str) and variant.strip() and variant.strip().lower() != "nan":
        parts.append(variant.strip())
    try:
        if seed is not None and not (isinstance(seed, float) and math.isnan(seed)) and int(seed) >= 0:
            parts.append(f"seed {int(seed)}")
    except (TypeError, ValueError):
        parts.append(f"seed {seed}")
    return " / ".join(parts)


def axis_text(value: Any) -> str:
    """The text a choice filter shows (and matches on) for one cell: ``0.3``, ``pink``, ``none``."""
    if value is None:
        return _NONE
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return _NONE
        return f"{float(value):g}"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    text = str(value)
    return text if text.strip() else _NONE


def join_bank(predictions: pd.DataFrame, bank: pd.DataFrame | None) -> pd.DataFrame:
    """The predictions table with the bank's columns joined on ``clip_id`` (predictions' own win).

    The bank's generation ``seed`` is kept as ``clip_seed`` so it never shadows the system's seed.
    Adds ``system_label``, ``correct`` and ``confidence`` (the probability given to the predicted
    class: ``p_speech`` when the prediction is speech, ``1 - p_speech`` otherwise).
    """
    df = predictions.copy()
    df["clip_id"] = df["clip_id"].astype(str)
    if bank is not None and len(bank.columns):
        b = bank.copy()
        b["clip_id"] = b["clip_id"].astype(str)
        if "seed" in b.columns:
            b = b.rename(columns={"seed": "clip_seed"})
        extra = [c for c in b.columns if c == "clip_id" or c not in df.columns]
        b = b[extra].drop_duplicates("clip_id")
        df = df.merge(b, on="clip_id", how="left", validate="many_to_one")
    for col, default in (("variant", ""), ("seed", -1)):
        if col not in df.columns:
            df[col] = default
    df["system_label"] = [system_label(s, v, e) for s, v, e in zip(df["system"], df["variant"], df["seed"])]
    df["p_speech"] = df["p_speech"].astype(float)
    df["correct"] = df["pred"].astype(str) == df["label"].astype(str)
    df["confidence"] = np.where(df["pred"].astype(str) == "speech", df["p_speech"], 1.0 - df["p_speech"])
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
) -> pd.DataFrame:
    """The clips listed for these filter values, in listing order (a pure function of its inputs).

    ``df`` comes from :func:`join_bank`. ``system`` is a ``system_label`` (None: every system);
    ``label`` the true class (None or ``"all"``: both); empty ``categories`` or ``choices[axis]`` mean
    no filter on that axis; a range of None means no filter (rows with a missing value stay in).
    ``snr_limits`` are the slider's ends, so that a range reaching an end keeps ``inf`` dB rows.
    """
    keep = pd.Series(True, index=df.index)
    if errors_only:
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
    out = df[keep]
    column, ascending = SORTS[sort]
    # A stable sort with clip_id as the tie-break makes the order reproducible.
    out = out.sort_values([column, "clip_id"], ascending=[ascending, True], kind="mergesort")
    return out.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# Audio and pictures
# ----------------------------------------------------------------------------------------------
def default_loader() -> Callable[..., np.ndarray]:
    """``lib.data.load_clip(row, normalization, root)``, imported only when a clip is first shown."""
    from .data import load_clip

    return load_clip


def wav_bytes(audio: np.ndarray, sr: int = SR) -> bytes:
    """16-bit PCM WAV bytes for an ``<audio>`` element (values beyond +-1 are clipped, as a DAC would)."""
    import soundfile as sf

    buf = _io.BytesIO()
    sf.write(buf, np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def spectrogram_png(audio: np.ndarray, sr: int = SR, title: str = "", width_in: float = 4.2, height_in: float = 2.4) -> bytes:
    """PNG of the clip's waveform over its log-magnitude STFT spectrogram (librosa + matplotlib).

    The window is 16 ms (256 samples) so that a 20 ms clip still has frames; hops are at most 4 ms.
    """
    import librosa
    from matplotlib.figure import Figure  # no pyplot: nothing leaks into the notebook's figure state

    audio = np.asarray(audio, dtype=np.float32)
    if audio.size == 0:
        audio = np.zeros(256, dtype=np.float32)
    n_fft = 256
    hop = int(min(64, max(8, audio.size // 200)))
    padded = audio if audio.size >= n_fft else np.pad(audio, (0, n_fft - audio.size))
    spec = np.abs(librosa.stft(padded, n_fft=n_fft, hop_length=hop, center=True))
    # dB re a full-scale sine: a Hann-windowed sine of amplitude 1 peaks at n_fft / 4 in |STFT|.
    db = librosa.amplitude_to_db(spec / (n_fft / 4), ref=1.0, amin=1e-6, top_db=None)
    db = np.maximum(db, db.max() - 80.0)
    dur = audio.size / sr

    fig = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    ax_w, ax_s = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 3]})
    t = np.arange(audio.size) / sr
    ax_w.plot(t, audio, lw=0.6, color="#1f4e79")
    ax_w.set_xlim(0, max(dur, n_fft / sr))
    lim = max(float(np.max(np.abs(audio))), 1e-4)
    ax_w.set_ylim(-lim * 1.05, lim * 1.05)
    ax_w.set_yticks([])
    if title:
        ax_w.set_title(title, fontsize=8)
    extent = (0.0, padded.size / sr, 0.0, sr / 2000.0)
    im = ax_s.imshow(db, origin="lower", aspect="auto", extent=extent, cmap="magma", interpolation="nearest")
    ax_s.set_ylabel("kHz", fontsize=7)
    ax_s.set_xlabel("time (s)", fontsize=7)
    ax_s.tick_params(labelsize=6)
    cbar = fig.colorbar(im, ax=[ax_w, ax_s], fraction=0.04, pad=0.01)
    cbar.set_label("dBFS", fontsize=6)
    cbar.ax.tick_params(labelsize=6)
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# The widget
# ----------------------------------------------------------------------------------------------
class ListeningTool:
    """Widgets to browse, hear and look at the misclassified clips of one or more systems.

    ``predictions``: the predictions table (DESIGN.md, table 3), one or more systems.
    ``bank``: the bank manifest table (joined on ``clip_id`` for its axes and ``path``); may be None
    when ``predictions`` already carries those columns. ``manifest``: the bank's manifest.csv path
    (audio paths are relative to its folder). ``normalization``: how clips are leveled for playback
    and spectrograms (none | peak | rms; the run's own setting is the honest default). ``smoke``:
    label what is shown as a smoke result (cpu profile). ``loader``: replaces ``lib.data.load_clip``
    (same call: ``loader(row, normalization, root)``).
    """

    def __init__(
        self,
        predictions: pd.DataFrame,
        bank: pd.DataFrame | None = None,
        manifest: str | Path | None = None,
        normalization: str = "none",
        smoke: bool = False,
        *,
        page_size: int = 5,
        system: str | None = None,
        title: str = "Listening tool: misclassified clips",
        loader: Callable[..., np.ndarray] | None = None,
    ) -> None:
        import ipywidgets as w

        if predictions is None or not len(predictions):
            raise ValueError("the predictions table is empty: nothing to listen to")
        self.table = join_bank(predictions, bank)
        self.manifest = Path(manifest) if manifest is not None else None
        self.smoke = bool(smoke)
        self._loader = loader
        self._cache: dict[tuple[str, str, str], Any] = {}
        self.page = 0

        systems = sorted(self.table["system_label"].unique())
        if system is not None and system not in systems:
            by_name = [s for s in systems if s.split(" / ")[0] == system]
            if not by_name:
                raise ValueError(f"system {system!r} is not in the predictions; they hold: {', '.join(systems)}")
            system = by_name[0]
        self.system_filter = w.Dropdown(options=systems, value=system or systems[0], description="system")
        self.class_filter = w.Dropdown(
            options=[("all", ALL), ("speech (true class)", "speech"), ("nonspeech (true class)", "nonspeech")],
            value=ALL,
            description="true class",
        )
        self.sort = w.Dropdown(options=list(SORTS), value=DEFAULT_SORT, description="sort")
        self.errors_only = w.Checkbox(value=True, description="misclassified only", indent=False)
        norms = ["none", "peak", "rms"]
        self.normalization = w.Dropdown(
            options=norms if normalization in norms else norms + [normalization],
            value=normalization,
            description="playback",
            tooltip="level normalization applied when a clip is loaded",
        )
        cats = sorted({axis_text(v) for v in self.table.get("category", pd.Series(dtype=object))})
        self.category_filter = w.SelectMultiple(
            options=cats, value=(), rows=min(6, max(2, len(cats))), description="category"
        )
        self.choice_filters: dict[str, Any] = {}
        for axis in CHOICE_AXES:
            if axis in self.table.columns:
                vals = sorted({axis_text(v) for v in self.table[axis]}, key=_natural_key)
                if len(vals) >= 2:
                    self.choice_filters[axis] = w.SelectMultiple(
                        options=vals, value=(), rows=min(6, len(vals)), description=axis
                    )
        self.duration_filter = self._range_slider(w, "duration_ms", "duration (ms)", integer=True)
        self.snr_filter = self._range_slider(w, "snr_db", "SNR (dB)", integer=False)
        self.page_size = w.Dropdown(options=[3, 5, 10, 20, 50], value=page_size if page_size in (3, 5, 10, 20, 50) else 5,
                                    description="per page")
        self.prev_button = w.Button(description="◀ previous", layout=w.Layout(width="110px"))
        self.next_button = w.Button(description="next ▶", layout=w.Layout(width="110px"))
        self.status = w.HTML()
        self.status.add_class("speechbook-status")
        self.clips_box = w.VBox()
        self.empty_message = w.HTML(
            f"<div style='padding:12px;color:#a00;font-size:14px'><b>{NO_MATCH}</b> Widen the filters, pick "
            "another system, or untick <i>misclassified only</i>.</div>"
        )
        self.empty_message.add_class("speechbook-empty")
        self.clips_box.add_class("speechbook-clips")

        for ctl in self._filter_controls():
            ctl.observe(self._on_filter, names="value")
        self.normalization.observe(self._on_view, names="value")
        self.page_size.observe(self._on_filter, names="value")
        self.prev_button.on_click(lambda _: self.go_to_page(self.page - 1))
        self.next_button.on_click(lambda _: self.go_to_page(self.page + 1))

        banner = f"<h3 style='margin:4px 0'>{_esc(title)}</h3>"
        if self.smoke:
            banner += (
                "<div style='background:#fff3cd;border:1px solid #e0c36c;padding:4px 8px;margin-bottom:4px'>"
                "<b>SMOKE RESULT</b>: cpu profile (tiny locally built model, small bank). These clips show the "
                "machinery, not what the real model gets wrong.</div>"
            )
        help_text = w.HTML(
            "<small>Empty category / axis selections mean <i>all</i>; ctrl/shift-click selects several. "
            "Confidence = probability the system gave to the class it chose.</small>"
        )
        choice_row = [self.category_filter, *self.choice_filters.values()]
        sliders = [s for s in (self.duration_filter, self.snr_filter) if s is not None]
        self.widget = w.VBox(
            [
                w.HTML(banner),
                w.HBox([self.system_filter, self.class_filter, self.errors_only]),
                w.HBox([self.sort, self.normalization]),
                w.HBox(choice_row, layout=w.Layout(flex_flow="row wrap")),
                w.HBox(sliders, layout=w.Layout(flex_flow="row wrap")),
                help_text,
                w.HBox([self.prev_button, self.next_button, self.page_size], layout=w.Layout(align_items="center")),
                self.status,
                self.clips_box,
            ]
        )
        self.widget.add_class("speechbook-listening-tool")
        self.refresh()

    # -- construction helpers -----------------------------------------------------------------
    def _range_slider(self, w: Any, column: str, description: str, integer: bool) -> Any:
        if column not in self.table.columns:
            return None
        v = pd.to_numeric(self.table[column], errors="coerce").astype(float)
        v = v[np.isfinite(v)]
        if v.empty:
            return None
        lo, hi = float(v.min()), float(v.max())
        if integer:
            lo, hi = math.floor(lo), math.ceil(hi)
            if hi <= lo:
                hi = lo + 1
            slider = w.IntRangeSlider(min=lo, max=hi, value=(lo, hi), step=1, description=description,
                                      continuous_update=False)
        else:
            lo, hi = math.floor(lo), math.ceil(hi)
            if hi <= lo:
                hi = lo + 1
            slider = w.FloatRangeSlider(min=lo, max=hi, value=(lo, hi), step=0.5, description=description,
                                        continuous_update=False, readout_format=".1f")
        slider.style.description_width = "initial"
        slider.layout.width = "420px"
        slider.layout.margin = "2px 32px 2px 0"
        return slider

    def _filter_controls(self) -> list[Any]:
        ctls = [self.system_filter, self.class_filter, self.sort, self.errors_only, self.category_filter,
                *self.choice_filters.values()]
        return ctls + [s for s in (self.duration_filter, self.snr_filter) if s is not None]

    @staticmethod
    def _slider_range(slider: Any) -> tuple[float, float] | None:
        """The slider's range, or None when it spans everything (then it filters nothing)."""
        if slider is None:
            return None
        lo, hi = slider.value
        if lo <= slider.min and hi >= slider.max:
            return None
        return (lo, hi)

    # -- the listing ---------------------------------------------------------------------------
    def filter_values(self) -> dict[str, Any]:
        """The widgets' current values, as :func:`filter_clips` keyword arguments."""
        return dict(
            system=self.system_filter.value,
            label=self.class_filter.value,
            categories=tuple(self.category_filter.value),
            duration_ms=self._slider_range(self.duration_filter),
            snr_db=self._slider_range(self.snr_filter),
            choices={axis: tuple(sel.value) for axis, sel in self.choice_filters.items()},
            errors_only=bool(self.errors_only.value),
            sort=self.sort.value,
            snr_limits=None if self.snr_filter is None else (self.snr_filter.min, self.snr_filter.max),
        )

    def filtered(self) -> pd.DataFrame:
        """Every clip the current filters list, in listing order (all pages)."""
        return filter_clips(self.table, **self.filter_values())

    def _pages(self, n_rows: int) -> int:
        return max(1, math.ceil(n_rows / self.page_size.value))

    @property
    def n_pages(self) -> int:
        return self._pages(len(self.filtered()))

    def page_rows(self) -> pd.DataFrame:
        """The clips on the page being shown."""
        return self._page_of(self.filtered())

    def _page_of(self, rows: pd.DataFrame) -> pd.DataFrame:
        size = self.page_size.value
        return rows.iloc[self.page * size:(self.page + 1) * size]

    def go_to_page(self, page: int) -> None:
        self.page = int(min(max(page, 0), self.n_pages - 1))
        self.refresh()

    def _on_filter(self, change: Any) -> None:
        self.page = 0
        self.refresh()

    def _on_view(self, change: Any) -> None:
        self.refresh()

    def status_text(self, rows: pd.DataFrame | None = None) -> str:
        """The line above the clips: how many match, which page, or that none match."""
        rows = self.filtered() if rows is None else rows
        sys_rows = self.table[self.table["system_label"] == self.system_filter.value]
        n_err = int((~sys_rows["correct"]).sum())
        overall = f"{self.system_filter.value} misclassifies {n_err} of {len(sys_rows)} scored clips"
        if rows.empty:
            return f"{NO_MATCH} ({overall}; widen the filters.)"
        what = "misclassified clips" if self.errors_only.value else "clips"
        size, pages = self.page_size.value, self._pages(len(rows))
        first, last = self.page * size + 1, min((self.page + 1) * size, len(rows))
        return f"{len(rows)} {what} match · showing {first}–{last} · page {self.page + 1} of {pages} · {overall}"

    def refresh(self) -> None:
        """Recompute the list and redraw the current page."""
        rows = self.filtered()
        pages = self._pages(len(rows))
        self.page = min(self.page, pages - 1)
        shown = self._page_of(rows)
        colour = "#a00" if rows.empty else "#222"
        self.status.value = f"<span style='color:{colour}'>{_esc(self.status_text(rows))}</span>"
        self.prev_button.disabled = self.page <= 0
        self.next_button.disabled = self.page >= pages - 1
        if rows.empty:
            self.clips_box.children = [self.empty_message]
        else:
            self.clips_box.children = [self._card(row) for _, row in shown.iterrows()]

    # -- one clip ------------------------------------------------------------------------------
    def load_audio(self, row: Mapping[str, Any]) -> np.ndarray:
        """The clip as the chosen normalization leaves it (float32, 16 kHz)."""
        has_path = "audio_path" in row and isinstance(row["audio_path"], str) and row["audio_path"]
        if not has_path and not ("path" in row and isinstance(row["path"], str) and row["path"]):
            raise KeyError(f"clip {row['clip_id']} is not in the bank manifest (no path to its audio)")
        if self.manifest is None and not has_path:
            raise FileNotFoundError("no bank manifest given: pass manifest=<bank manifest.csv> to hear clips")
        root = None if self.manifest is None else (self.manifest if self.manifest.is_dir() else self.manifest.parent)
        loader = self._loader or default_loader()
        return np.asarray(loader(row, self.normalization.value, root), dtype=np.float32)

    def _card(self, row: pd.Series) -> Any:
        import ipywidgets as w

        key = (str(row["system_label"]), str(row["clip_id"]), str(self.normalization.value))
        if key in self._cache:
            return self._cache[key]
        info = w.HTML(_describe(row))
        parts: list[Any] = [info]
        try:
            audio = self.load_audio(row)
            player = w.Audio(value=wav_bytes(audio), format="wav", autoplay=False, loop=False,
                             layout=w.Layout(width="320px"))
            player.add_class("speechbook-audio")
            picture = w.Image(value=spectrogram_png(audio, title=str(row["clip_id"])), format="png",
                              layout=w.Layout(width="420px"))
            parts.append(player)
            card = w.HBox([picture, w.VBox(parts)], layout=w.Layout(border="1px solid #ddd", margin="4px 0",
                                                                     padding="4px"))
        except Exception as exc:  # a missing or unreadable file must not break the whole tool
            parts.append(w.HTML(f"<span style='color:#a00'>cannot load audio: {_esc(type(exc).__name__)}: "
                                f"{_esc(str(exc))}</span>"))
            card = w.VBox(parts, layout=w.Layout(border="1px solid #ddd", margin="4px 0", padding="4px"))
        card.add_class("speechbook-clip")
        self._cache[key] = card
        return card

    # -- display -------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def _natural_key(text: str) -> tuple[int, float, str]:
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def _esc(text: Any) -> str:
    import html

    return html.escape(str(text))


def _describe(row: Mapping[str, Any]) -> str:
    label, pred, p = str(row["label"]), str(row["pred"]), float(row["p_speech"])
    ok = label == pred
    mark = "<span style='color:#080'>correct</span>" if ok else "<span style='color:#a00'><b>wrong</b></span>"
    lines = [
        f"<b>{_esc(row['clip_id'])}</b> · {mark}",
        f"true: <b>{_esc(label.upper())}</b> · predicted: <b>{_esc(pred.upper())}</b>",
        f"p_speech = <b>{p:.3f}</b> · confidence {float(row['confidence']):.3f}",
    ]
    meta = []
    if "category" in row and axis_text(row["category"]) != _NONE:
        meta.append(f"category: {_esc(row['category'])}")
    if "duration_ms" in row and pd.notna(row["duration_ms"]):
        meta.append(f"{float(row['duration_ms']):g} ms")
    if "snr_db" in row and pd.notna(row["snr_db"]):
        snr = float(row["snr_db"])
        meta.append("clean" if np.isinf(snr) else f"SNR {snr:g} dB")
    if "noise_type" in row and axis_text(row["noise_type"]) != _NONE:
        meta.append(f"noise: {_esc(row['noise_type'])}")
    if "rt60_s" in row and pd.notna(row["rt60_s"]):
        meta.append(f"RT60 {float(row['rt60_s']):g} s")
    if "filter" in row and axis_text(row["filter"]) != _NONE:
        meta.append(f"filter: {_esc(row['filter'])}")
    if "bandlimit" in row and axis_text(row["bandlimit"]) != _NONE:
        meta.append(f"band-limit: {_esc(row['bandlimit'])}")
    if "split" in row and axis_text(row["split"]) != _NONE:
        meta.append(f"split: {_esc(row['split'])}")
    if meta:
        lines.append(" · ".join(meta))
    for col, name in (("source_id", "source"), ("group_id", "group")):
        if col in row and axis_text(row[col]) != _NONE:
            lines.append(f"<small>{name}: {_esc(row[col])}</small>")
    return "<div class='speechbook-clip-info' style='font-size:13px;line-height:1.5'>" + "<br>".join(lines) + "</div>"


# ----------------------------------------------------------------------------------------------
# From a run folder
# ----------------------------------------------------------------------------------------------
def listening_tool(
    run_dir: str | Path,
    system: str | None = None,
    *,
    bank_manifest: str | Path | None = None,
    normalization: str | None = None,
    smoke: bool | None = None,
    **kwargs: Any,
) -> ListeningTool:
    """The listening tool on a run folder: its ``predictions.csv`` and the bank recorded in ``bank.yaml``.

    ``system`` picks the system shown first (a name such as ``silero`` or a full ``system / variant /
    seed 0`` label). ``normalization`` and ``smoke`` default to the run's ``params.yaml``
    (``normalization``, ``smoke``), else ``none`` and False.
    """
    from . import results

    run_dir = Path(run_dir)
    preds = results.read_predictions(run_dir)
    if preds.empty:
        raise FileNotFoundError(f"{run_dir / 'predictions.csv'} is missing or empty: score a system in this run first")
    manifest = Path(bank_manifest) if bank_manifest is not None else results.read_bank_pointer(run_dir)
    params: dict[str, Any] = {}
    if (run_dir / "params.yaml").exists():
        import yaml

        params = yaml.safe_load((run_dir / "params.yaml").read_text()) or {}
        params = _flatten(params)
    if normalization is None:
        normalization = str(params.get("normalization", "none"))
    if smoke is None:
        smoke = bool(params.get("smoke", False))
    return ListeningTool(preds, load_bank_table(manifest), manifest, normalization=normalization, smoke=smoke,
                         system=system, **kwargs)


def load_bank_table(manifest: str | Path) -> pd.DataFrame:
    """The bank through ``lib.data.load_bank``; a missing clip file shows on its card, not here."""
    from .data import load_bank

    return load_bank(manifest, check_files=False)


def _flatten(d: Mapping[str, Any]) -> dict[str, Any]:
    """params.yaml may group keys in sections (as profiles do); every key is unique, so flatten."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v))
        else:
            out[k] = v
    return out
