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
"""
from __future__ import annotations

import datetime as _dt
import io as _io
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from .audio import SR  # the book's one sample rate

NO_MATCH = "No clips match these filters."
HEADLESS_ENV = "SPEECHBOOK_HEADLESS"
TAGS = ("fine", "ambiguous", "mislabeled")
TAGS_FILE = "listening_tags.csv"
EXPORT_DIR = "listening_exports"
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
KEY_ACTIONS = ("next", "previous", "sources", "tag:fine", "tag:ambiguous", "tag:mislabeled", "tag:")
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
    Adds ``system_label``, ``correct``, ``confidence`` (the probability given to the predicted class)
    and ``p_wrong`` (the probability given to the wrong class: high for a confident mistake, low for a
    confident correct answer).
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
    from .stats import mcnemar_exact

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


# ----------------------------------------------------------------------------------------------
# Tags: one CSV per run folder
# ----------------------------------------------------------------------------------------------
class TagStore:
    """Clip tags (``fine``, ``ambiguous``, ``mislabeled``) kept in ``path`` (``<run>/listening_tags.csv``:
    ``clip_id, tag, system, label, tagged_at``), written atomically at every change. A tag belongs to
    the clip (its label or audio), not to a system; ``system`` records which system was being listened to.
    ``path=None`` keeps the tags in memory only."""

    COLUMNS = ["clip_id", "tag", "system", "label", "tagged_at"]

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.exists():
            t = pd.read_csv(self.path, dtype=str, keep_default_na=False)
            missing = [c for c in ("clip_id", "tag") if c not in t.columns]
            if missing:
                raise ValueError(f"{self.path}: no column(s) {missing}; a tags file has {', '.join(self.COLUMNS)}. "
                                 "Move it away to start a new one.")
            bad = sorted(set(t["tag"]) - set(TAGS))
            if bad:
                raise ValueError(f"{self.path}: unknown tag(s) {bad}; valid: {', '.join(TAGS)}")
            self.rows = {r["clip_id"]: dict(r) for r in t.to_dict("records")}

    def get(self, clip_id: str) -> str:
        return self.rows.get(str(clip_id), {}).get("tag", "")

    def as_dict(self) -> dict[str, str]:
        return {k: v["tag"] for k, v in self.rows.items()}

    def set(self, clip_id: str, tag: str, system: str = "", label: str = "") -> bool:
        """Tag a clip (``""`` removes its tag); returns whether anything changed (then the file is written)."""
        if tag not in ("",) + TAGS:
            raise ValueError(f"tag {tag!r}; valid: {', '.join(TAGS)} (or '' to clear)")
        clip_id = str(clip_id)
        if self.get(clip_id) == tag:
            return False
        if tag:
            self.rows[clip_id] = {"clip_id": clip_id, "tag": tag, "system": system, "label": label,
                                  "tagged_at": _dt.datetime.now().isoformat(timespec="seconds")}
        else:
            self.rows.pop(clip_id, None)
        self.save()
        return True

    def save(self) -> None:
        if self.path is None:
            return
        from . import io

        io.write_csv(self.path, pd.DataFrame(list(self.rows.values()), columns=self.COLUMNS))


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


def duration_text(n_samples: int, sr: int = SR) -> str:
    """``200 ms`` below 10 s, else ``12.3 s``: the players of short clips say 0:00."""
    ms = 1000.0 * n_samples / sr
    return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


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


def default_parts_loader(manifest: str | Path | None) -> Callable[[Mapping[str, Any]], Mapping[str, Any]]:
    """``lib.data.ClipParts(manifest).parts``: the clean source, context and noise of a bank clip."""
    state: dict[str, Any] = {}

    def load(row: Mapping[str, Any]) -> Mapping[str, Any]:
        if manifest is None:
            raise FileNotFoundError("no bank manifest given: pass manifest=<bank manifest.csv> to hear the sources")
        if "parts" not in state:
            from .data import ClipParts

            state["parts"] = ClipParts(manifest)
        return state["parts"].parts(row)

    return load


# ----------------------------------------------------------------------------------------------
# Keyboard: a few lines of JavaScript through anywidget
# ----------------------------------------------------------------------------------------------
KEYBOARD_ESM = r"""
const KEYS = {"j": "next", "ArrowRight": "next", "ArrowDown": "next", "k": "previous", "ArrowLeft": "previous",
              "ArrowUp": "previous", " ": "play", "s": "sources", "1": "tag:fine", "2": "tag:ambiguous",
              "3": "tag:mislabeled", "0": "tag:"};
function render({ model, el }) {
  const hint = document.createElement("div");
  hint.className = "speechbook-keys";
  hint.tabIndex = 0;
  hint.textContent = "⌨ click the tool, then: j / → next clip · k / ← previous · space play / pause · " +
                     "s sources · 1 fine · 2 ambiguous · 3 mislabeled · 0 clear tag";
  el.appendChild(hint);
  let root = null;
  const onKey = (e) => {
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA" || t.isContentEditable)) return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const action = KEYS[e.key];
    if (!action) return;
    e.preventDefault();
    e.stopPropagation();
    if (action === "play") {
      const a = root.querySelector(".speechbook-selected audio.speechbook-audio") || root.querySelector("audio.speechbook-audio");
      if (a) { if (a.paused) { a.currentTime = 0; a.play().catch(() => {}); } else { a.pause(); } }
      return;
    }
    model.send({ action });
  };
  // the tool's box draws its children one by one: wait until this view sits inside it
  let tries = 0;
  const attach = () => {
    root = el.closest(".speechbook-listening-tool");
    if (!root) { if (tries++ < 100) setTimeout(attach, 50); return; }
    root.setAttribute("data-lm-suppress-shortcuts", "true");  // JupyterLab's notebook keys stay out of the tool
    if (!root.hasAttribute("tabindex")) root.tabIndex = 0;
    root.addEventListener("keydown", onKey);
    root.classList.add("speechbook-keys-ready");
  };
  attach();
  return () => { if (root) root.removeEventListener("keydown", onKey); };
}
export default { render };
"""
KEYBOARD_CSS = """
.speechbook-keys { font-size: 12px; color: #555; padding: 2px 6px; border: 1px dashed #bbb; border-radius: 3px; }
.speechbook-listening-tool:focus-within .speechbook-keys { border-color: #1f77b4; color: #1f4e79; }
.speechbook-listening-tool:focus { outline: 2px solid #1f77b4; outline-offset: 2px; }
.speechbook-selected { box-shadow: 0 0 0 3px #1f77b4; }
"""


def keyboard_widget() -> Any:
    """The keyboard control (an anywidget), or None where anywidget is missing (the buttons still work)."""
    try:
        import anywidget
    except ImportError:
        return None

    class KeyboardControl(anywidget.AnyWidget):
        _esm = KEYBOARD_ESM
        _css = KEYBOARD_CSS

    return KeyboardControl()


# ----------------------------------------------------------------------------------------------
# The widget
# ----------------------------------------------------------------------------------------------
class ListeningTool:
    """Widgets to browse, hear, compare and tag the clips of one or more systems.

    ``predictions``: the predictions table (DESIGN.md, table 3), one or more systems.
    ``bank``: the bank manifest table (joined on ``clip_id`` for its axes and ``path``); may be None
    when ``predictions`` already carries those columns. ``manifest``: the bank's manifest.csv path
    (audio paths are relative to its folder). ``normalization``: how clips are leveled for playback
    and spectrograms (none | peak | rms; the run's own setting is the honest default). ``smoke``:
    label what is shown as a smoke result. ``system``/``compare``: the system shown first and the one
    it is compared with. ``run_dir``: where tags and exports are written (None: tags in memory only,
    no export). ``loader`` replaces ``lib.data.load_clip`` (same call: ``loader(row, normalization,
    root)``); ``parts_loader(row)`` replaces :class:`lib.data.ClipParts` for the sources.
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
        compare: str | None = None,
        title: str = "Listening tool",
        loader: Callable[..., np.ndarray] | None = None,
        parts_loader: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
        run_dir: str | Path | None = None,
        model: str | None = None,
    ) -> None:
        import ipywidgets as w

        if predictions is None or not len(predictions):
            raise ValueError("the predictions table is empty: nothing to listen to")
        self.table = join_bank(predictions, bank)
        self.manifest = Path(manifest) if manifest is not None else None
        self.smoke = bool(smoke)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.tags = TagStore(self.run_dir / TAGS_FILE if self.run_dir is not None else None)
        self._loader = loader
        self._parts_loader = parts_loader or default_parts_loader(self.manifest)
        self._cache: dict[tuple[str, ...], Any] = {}
        self._tag_buttons: dict[str, Any] = {}
        self._parts_boxes: dict[str, Any] = {}
        self._busy = False
        self.page = 0
        self.selected = 0
        self.last_export: Path | None = None

        systems = sorted(self.table["system_label"].unique())
        self.systems = systems
        system = self._resolve_system(system, systems) if system is not None else systems[0]
        compare = self._resolve_system(compare, systems) if compare is not None else None
        self.system_filter = w.Dropdown(options=systems, value=system, description="system A")
        self.compare_filter = w.Dropdown(options=[("(none)", None)] + [(s, s) for s in systems], value=compare,
                                         description="compare with B", style={"description_width": "initial"})
        self.compare_mode = w.Dropdown(options=list(COMPARE_MODES.items()), value="a_wrong_b_right",
                                       description="list", disabled=compare is None)
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
        cats = categories_of(self.table, ALL)
        self.category_filter = w.SelectMultiple(options=cats, value=(), rows=min(6, max(2, len(cats))),
                                                description="category")
        self.choice_filters: dict[str, Any] = {}
        for axis in CHOICE_AXES:
            if axis in self.table.columns:
                vals = sorted({axis_text(v) for v in self.table[axis]}, key=_natural_key)
                if len(vals) >= 2:
                    self.choice_filters[axis] = w.SelectMultiple(
                        options=vals, value=(), rows=min(4, len(vals)), description=CHOICE_NAMES.get(axis, axis)
                    )
        self.duration_filter = self._level_slider(w, "duration_ms", "duration", "ms")
        self.snr_filter = self._level_slider(w, "snr_db", "SNR", "dB")
        self.tag_filter = w.Dropdown(options=list(TAG_FILTERS.items()), value=None, description="tag")
        self.page_size = w.Dropdown(options=[3, 5, 10, 20, 50], value=page_size if page_size in (3, 5, 10, 20, 50) else 5,
                                    description="per page")
        self.prev_button = w.Button(description="◀ previous page", layout=w.Layout(width="140px"))
        self.next_button = w.Button(description="next page ▶", layout=w.Layout(width="140px"))
        self.reset_button = w.Button(description="reset filters", icon="undo", layout=w.Layout(width="130px"),
                                     tooltip="every filter back to its default (the systems stay)")
        self.export_button = w.Button(description="export list", icon="download", layout=w.Layout(width="120px"),
                                      disabled=self.run_dir is None,
                                      tooltip="write the listed clips (all pages) to a CSV in the run folder"
                                      if self.run_dir is not None else "no run folder: nothing to export to")
        self.status = w.HTML()
        self.status.add_class("speechbook-status")
        self.summary = w.HTML()
        self.summary.add_class("speechbook-summary")
        self.message = w.HTML()
        self.message.add_class("speechbook-message")
        self.clips_box = w.VBox()
        self.empty_message = w.HTML(
            f"<div style='padding:12px;color:#a00;font-size:14px'><b>{NO_MATCH}</b> Widen the filters, pick "
            "another system, untick <i>misclassified only</i>, or press <i>reset filters</i>.</div>"
        )
        self.empty_message.add_class("speechbook-empty")
        self.clips_box.add_class("speechbook-clips")
        self.keyboard = keyboard_widget()

        for ctl in self._filter_controls():
            ctl.observe(self._on_filter, names="value")
        self.class_filter.observe(self._on_class, names="value")
        self.compare_filter.observe(self._on_compare, names="value")
        self.normalization.observe(self._on_view, names="value")
        self.page_size.observe(self._on_filter, names="value")
        self.prev_button.on_click(lambda _: self.go_to_page(self.page - 1))
        self.next_button.on_click(lambda _: self.go_to_page(self.page + 1))
        self.reset_button.on_click(lambda _: self.reset())
        self.export_button.on_click(lambda _: self.export())
        if self.keyboard is not None:
            self.keyboard.on_msg(lambda _w, content, _b: self.handle_key(str(content.get("action", ""))))

        banner = f"<h3 style='margin:4px 0'>{_esc(title)}</h3>"
        if model:
            banner += f"<div style='color:#555;font-size:12px'>model: {_esc(model)}</div>"
        if self.smoke:
            banner += (
                "<div style='background:#fff3cd;border:1px solid #e0c36c;padding:4px 8px;margin:4px 0'>"
                "<b>SMOKE RESULT</b>: a small model and bank. These clips show the machinery, not what "
                "Qwen2-Audio-7B gets wrong.</div>"
            )
        help_text = w.HTML(
            "<small>Empty category / axis selections mean <i>all</i>; ctrl/shift-click selects several. "
            "Confidence = probability the system gave to the class it chose. Tags are saved to "
            + (f"<code>{_esc(self.run_dir / TAGS_FILE)}</code>" if self.run_dir is not None else "memory only (no run folder)")
            + ".</small>"
        )
        choice_row = [self.category_filter, *self.choice_filters.values()]
        sliders = [s for s in (self.duration_filter, self.snr_filter) if s is not None]
        self.widget = w.VBox(
            [
                w.HTML(banner),
                w.HBox([self.system_filter, self.compare_filter, self.compare_mode], layout=w.Layout(flex_flow="row wrap")),
                w.HBox([self.class_filter, self.errors_only, self.tag_filter], layout=w.Layout(flex_flow="row wrap")),
                w.HBox([self.sort, self.normalization], layout=w.Layout(flex_flow="row wrap")),
                w.HBox(choice_row, layout=w.Layout(flex_flow="row wrap")),
                w.HBox(sliders, layout=w.Layout(flex_flow="row wrap")),
                help_text,
                *([self.keyboard] if self.keyboard is not None else []),
                w.HBox([self.prev_button, self.next_button, self.page_size, self.reset_button, self.export_button],
                       layout=w.Layout(align_items="center", flex_flow="row wrap")),
                self.summary,
                self.status,
                self.message,
                self.clips_box,
            ]
        )
        self.widget.add_class("speechbook-listening-tool")
        self.refresh()

    # -- construction helpers -----------------------------------------------------------------
    @staticmethod
    def _resolve_system(name: str, systems: list[str]) -> str:
        if name in systems:
            return name
        by_name = [s for s in systems if s.split(" / ")[0] == name]
        if not by_name:
            raise ValueError(f"system {name!r} is not in the predictions; they hold: {', '.join(systems)}")
        return by_name[0]

    def _level_slider(self, w: Any, column: str, description: str, unit: str) -> Any:
        """A range slider over the levels the bank really has (discrete steps, no values in between)."""
        if column not in self.table.columns:
            return None
        v = pd.to_numeric(self.table[column], errors="coerce").astype(float)
        levels = sorted(set(v[~np.isnan(v)].tolist()))
        if not levels:
            return None
        options = [("clean" if np.isinf(x) and x > 0 else f"{x:g} {unit}", x) for x in levels]
        slider = w.SelectionRangeSlider(options=options, index=(0, len(options) - 1), description=description,
                                        continuous_update=False, disabled=len(options) < 2)
        slider.style.description_width = "initial"
        slider.layout.width = "420px"
        slider.layout.margin = "2px 32px 2px 0"
        return slider

    def _filter_controls(self) -> list[Any]:
        ctls = [self.system_filter, self.compare_mode, self.class_filter, self.sort, self.errors_only,
                self.category_filter, self.tag_filter, *self.choice_filters.values()]
        return ctls + [s for s in (self.duration_filter, self.snr_filter) if s is not None]

    @staticmethod
    def _slider_range(slider: Any) -> tuple[float, float] | None:
        """The slider's range, or None when it spans every level (then it filters nothing)."""
        if slider is None:
            return None
        lo, hi = slider.value
        levels = [v for _, v in slider.options]
        if lo <= levels[0] and hi >= levels[-1]:
            return None
        return (lo, hi)

    # -- the listing ---------------------------------------------------------------------------
    def filter_values(self) -> dict[str, Any]:
        """The widgets' current values, as :func:`filter_clips` keyword arguments."""
        snr_levels = [v for _, v in self.snr_filter.options] if self.snr_filter is not None else None
        return dict(
            system=self.system_filter.value,
            label=self.class_filter.value,
            categories=tuple(self.category_filter.value),
            duration_ms=self._slider_range(self.duration_filter),
            snr_db=self._slider_range(self.snr_filter),
            choices={axis: tuple(sel.value) for axis, sel in self.choice_filters.items()},
            errors_only=bool(self.errors_only.value),
            sort=self.sort.value,
            snr_limits=None if snr_levels is None else (snr_levels[0], snr_levels[-1]),
            compare=self.compare_filter.value,
            compare_mode=self.compare_mode.value,
            tags=self.tags.as_dict(),
            tag=self.tag_filter.value,
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
        self.selected = self.page * self.page_size.value
        self.refresh()

    def select(self, index: int) -> None:
        """Select the ``index``-th listed clip (0-based, over all pages), turning the page as needed."""
        n = len(self.filtered())
        self.selected = int(min(max(index, 0), max(n - 1, 0)))
        self.page = self.selected // self.page_size.value
        self.refresh()

    def selected_row(self) -> pd.Series | None:
        rows = self.filtered()
        return rows.iloc[self.selected] if len(rows) else None

    def _on_filter(self, change: Any) -> None:
        if self._busy:
            return
        self.page = 0
        self.selected = 0
        self.refresh()

    def _on_class(self, change: Any) -> None:
        """The category list offers the chosen class's own categories (a selection that stays valid stays)."""
        cats = categories_of(self.table, change["new"])
        keep = tuple(c for c in self.category_filter.value if c in cats)
        self._busy = True
        try:
            self.category_filter.value = ()
            self.category_filter.options = cats
            self.category_filter.value = keep
            self.category_filter.rows = min(6, max(2, len(cats)))
        finally:
            self._busy = False
        self._on_filter(change)

    def _on_compare(self, change: Any) -> None:
        self.compare_mode.disabled = change["new"] is None
        self.errors_only.disabled = change["new"] is not None  # the comparison mode says what is listed
        self._on_filter(change)

    def _on_view(self, change: Any) -> None:
        self.refresh()

    def reset(self) -> None:
        """Every filter back to its default; the systems (A and B) stay."""
        self._busy = True
        try:
            self.class_filter.value = ALL
            self.category_filter.value = ()
            for sel in self.choice_filters.values():
                sel.value = ()
            for slider in (self.duration_filter, self.snr_filter):
                if slider is not None:
                    slider.index = (0, len(slider.options) - 1)
            self.errors_only.value = True
            self.sort.value = DEFAULT_SORT
            self.tag_filter.value = None
            self.compare_mode.value = "a_wrong_b_right"
        finally:
            self._busy = False
        self.message.value = ""
        self._on_filter(None)

    def filter_summary(self) -> str:
        """The filters in force, in words: ``non-speech clips · categories: dog, rain · 100-200 ms · ...``."""
        v = self.filter_values()
        parts = [{"speech": "speech clips", "nonspeech": "non-speech clips"}.get(v["label"], "both classes")]
        if v["categories"]:
            cats = list(v["categories"])
            shown = ", ".join(cats[:6]) + (f" and {len(cats) - 6} more" if len(cats) > 6 else "")
            parts.append(f"categories: {shown} ({len(cats)} of {len(self.category_filter.options)})")
        else:
            parts.append(f"all {len(self.category_filter.options)} categories")
        for slider, unit in ((self.duration_filter, "ms"), (self.snr_filter, "dB")):
            rng = self._slider_range(slider)
            if rng is not None:
                lo, hi = slider.label
                parts.append(f"{slider.description} {lo} to {hi}" if lo != hi else f"{slider.description} {lo}")
        for axis, picked in v["choices"].items():
            if picked:
                parts.append(f"{CHOICE_NAMES.get(axis, axis)}: {', '.join(picked)}")
        if v["compare"] is not None:
            mode = {m: k for k, m in COMPARE_MODES.items()}[v["compare_mode"]]
            parts.append(f"A = {v['system']}, B = {v['compare']}: {mode}")
        elif v["errors_only"]:
            parts.append("misclassified only")
        if v["tag"] is not None:
            parts.append("untagged" if v["tag"] == "" else f"tagged {v['tag']}")
        parts.append(f"sorted: {v['sort']}")
        return " · ".join(parts)

    def status_text(self, rows: pd.DataFrame | None = None) -> str:
        """The line above the clips: how many match, which page, or that none match."""
        rows = self.filtered() if rows is None else rows
        a = self.system_filter.value
        sys_rows = self.table[self.table["system_label"] == a]
        n_err = int((~sys_rows["correct"]).sum())
        overall = f"{a} misclassifies {n_err} of {len(sys_rows)} scored clips"
        if self.compare_filter.value is not None:
            d = discordant_counts(self.table, a, self.compare_filter.value)
            overall = (f"on the {d['n']} clips both scored, only A is right on {d['a_only']}, only B on {d['b_only']} "
                       f"(exact McNemar p = {d['p']:.3g}); both wrong on {d['both_wrong']}")
        if rows.empty:
            return f"{NO_MATCH} ({overall}; widen the filters.)"
        what = "clips" if (self.compare_filter.value is not None or not self.errors_only.value) else "misclassified clips"
        size, pages = self.page_size.value, self._pages(len(rows))
        first, last = self.page * size + 1, min((self.page + 1) * size, len(rows))
        return (f"{len(rows)} {what} match · showing {first}–{last} · page {self.page + 1} of {pages} · "
                f"clip {self.selected + 1} selected · {overall}")

    def refresh(self) -> None:
        """Recompute the list and redraw the current page."""
        rows = self.filtered()
        pages = self._pages(len(rows))
        self.page = min(self.page, pages - 1)
        self.selected = min(max(self.selected, 0), max(len(rows) - 1, 0))
        if not (self.page * self.page_size.value <= self.selected < (self.page + 1) * self.page_size.value):
            self.selected = self.page * self.page_size.value
        shown = self._page_of(rows)
        colour = "#a00" if rows.empty else "#222"
        self.status.value = f"<span style='color:{colour}'>{_esc(self.status_text(rows))}</span>"
        self.summary.value = f"<div style='font-size:13px;color:#333'><b>Showing:</b> {_esc(self.filter_summary())}</div>"
        self.prev_button.disabled = self.page <= 0
        self.next_button.disabled = self.page >= pages - 1
        if rows.empty:
            self.clips_box.children = [self.empty_message]
            return
        cards = []
        for i, (_, row) in enumerate(shown.iterrows()):
            card = self._card(row)
            if self.page * self.page_size.value + i == self.selected:
                card.add_class("speechbook-selected")
            else:
                card.remove_class("speechbook-selected")
            cards.append(card)
        self.clips_box.children = cards

    # -- keyboard, tags, export ----------------------------------------------------------------
    def handle_key(self, action: str) -> None:
        """What a key does (the keyboard widget sends its action here): ``next``, ``previous``,
        ``sources`` (show the selected clip's sources), ``tag:<tag>`` (``tag:`` clears)."""
        if action not in KEY_ACTIONS:
            return
        if action == "next":
            self.select(self.selected + 1)
        elif action == "previous":
            self.select(self.selected - 1)
        elif action == "sources":
            row = self.selected_row()
            if row is not None:
                self.show_sources(row)
        elif action.startswith("tag:"):
            row = self.selected_row()
            if row is not None:
                self.tag(row["clip_id"], action.split(":", 1)[1])

    def tag(self, clip_id: str, tag: str) -> None:
        """Tag a clip (``""`` clears) and save the run's tags file; the card's buttons follow."""
        row = self.table[self.table["clip_id"] == str(clip_id)]
        label = str(row["label"].iloc[0]) if len(row) else ""
        changed = self.tags.set(str(clip_id), tag, system=self.system_filter.value, label=label)
        buttons = self._tag_buttons.get(str(clip_id))
        if buttons is not None and buttons.value != (tag or None):
            self._busy = True
            try:
                buttons.value = tag or None
            finally:
                self._busy = False
        if changed:
            where = self.tags.path if self.tags.path is not None else "memory"
            self.message.value = f"<small>{_esc(clip_id)}: {_esc(tag or 'tag cleared')} (saved to {_esc(where)})</small>"
            if self.tag_filter.value is not None:
                self.refresh()

    def export(self, path: str | Path | None = None) -> Path:
        """Write the listed clips (all pages, in order, with their tags and the filters in force) to a CSV:
        ``<run>/listening_exports/listening_<time>.csv`` unless ``path`` is given."""
        from . import io

        if path is None:
            if self.run_dir is None:
                raise ValueError("no run folder: pass path=<csv> to export")
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            path = self.run_dir / EXPORT_DIR / f"listening_{stamp}.csv"
        rows = self.filtered()
        cols = [c for c in ("clip_id", "system", "variant", "seed", "label", "pred", "p_speech", "pred_b", "p_speech_b",
                            "category", "duration_ms", "snr_db", "noise_type", "rt60_s", "filter", "bandlimit", "split",
                            "source_id", "group_id", "path") if c in rows.columns]
        out = rows[cols].assign(tag=[self.tags.get(c) for c in rows["clip_id"]], filters=self.filter_summary())
        if self.compare_filter.value is not None:
            out = out.assign(system_b=self.compare_filter.value)
        path = io.write_csv(Path(path), out)
        self.last_export = Path(path)
        self.message.value = f"<small>exported {len(out)} clips to <code>{_esc(path)}</code></small>"
        return Path(path)

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

    def _player(self, audio: np.ndarray, what: str, main: bool = False) -> Any:
        import ipywidgets as w

        player = w.Audio(value=wav_bytes(audio), format="wav", autoplay=False, loop=False, layout=w.Layout(width="300px"))
        player.add_class("speechbook-audio" if main else "speechbook-part-audio")
        label = w.HTML(f"<span style='font-size:12px'><b>{_esc(what)}</b> · {duration_text(len(audio))}</span>",
                       layout=w.Layout(width="230px"))
        label.add_class("speechbook-duration")
        return w.HBox([label, player], layout=w.Layout(align_items="center"))

    def show_sources(self, row: Mapping[str, Any]) -> None:
        """Fill the card's sources box: clean source under the window, context, noise as mixed, noise
        recording. Window parts get the mixture's own playback gain, so their levels compare."""
        import ipywidgets as w

        from .audio import normalize

        box = self._parts_boxes.get(str(row["clip_id"]))
        if box is None:
            return
        try:
            parts = self._parts_loader(row)
            mix = np.asarray(parts["mixture"], dtype=np.float64)
            heard = normalize(mix.astype(np.float32), self.normalization.value)
            gain = float(np.dot(heard, mix) / np.dot(mix, mix)) if np.dot(mix, mix) > 0 else 1.0
            a, b = parts["context_window"]
            n_ctx = len(parts["context"])
            children = [
                self._player(gain * np.asarray(parts["clean"]), "clean source (the window)"),
                self._player(gain * np.asarray(parts["context"]),
                             f"source in context ({duration_text(a)} before, {duration_text(n_ctx - b)} after)"),
                self._player(gain * np.asarray(parts["noise"]),
                             f"noise as mixed ({row.get('noise_type', '')}, SNR {axis_text(row.get('snr_db'))} dB)"),
            ]
            rec = parts.get("noise_recording")
            if rec is not None and len(rec):
                children.append(self._player(normalize(np.asarray(rec, dtype=np.float32), "rms"),
                                             f"noise recording {parts.get('noise_source_id', '')} (rms)"))
            else:
                children.append(w.HTML(f"<small>noise: synthetic {_esc(row.get('noise_type', ''))} noise, no recording</small>"))
            note = w.HTML(f"<small>window parts at the mixture's {_esc(self.normalization.value)} playback gain</small>")
            box.children = [note, *children]
        except Exception as exc:  # the corpus may be missing here: say so on the card
            box.children = [w.HTML(f"<span style='color:#a00'>cannot load the sources: {_esc(type(exc).__name__)}: "
                                   f"{_esc(str(exc))}</span>")]
        box.add_class("speechbook-sources-shown")

    def _card(self, row: pd.Series) -> Any:
        import ipywidgets as w

        compare = self.compare_filter.value
        key = (str(row["system_label"]), str(compare), str(row["clip_id"]), str(self.normalization.value))
        if key in self._cache:
            card, buttons, parts_box = self._cache[key]
            buttons.value = self.tags.get(row["clip_id"]) or None
            self._tag_buttons[str(row["clip_id"])] = buttons
            self._parts_boxes[str(row["clip_id"])] = parts_box
            return card
        info = w.HTML(_describe(row, compare))
        parts: list[Any] = [info]
        buttons = w.ToggleButtons(options=[(t, t) for t in TAGS], value=self.tags.get(row["clip_id"]) or None,
                                  tooltips=["the label and the audio agree", "hard to say, even listening",
                                            "the clip's label is wrong"],
                                  style={"button_width": "110px"})
        buttons.add_class("speechbook-tags")
        clip_id = str(row["clip_id"])
        buttons.observe(lambda ch: None if self._busy else self.tag(clip_id, ch["new"] or ""), names="value")
        clear = w.Button(description="clear tag", layout=w.Layout(width="90px"))
        clear.on_click(lambda _: self.tag(clip_id, ""))
        parts_box = w.VBox()
        parts_box.add_class("speechbook-sources")
        sources_button = w.Button(description="clean source, context, noise", icon="music",
                                  layout=w.Layout(width="240px"))
        sources_button.add_class("speechbook-sources-button")
        row_dict = row.to_dict()
        sources_button.on_click(lambda _: self.show_sources(row_dict))
        try:
            audio = self.load_audio(row)
            parts.append(self._player(audio, f"mixture as heard ({self.normalization.value})", main=True))
            picture = w.Image(value=spectrogram_png(audio, title=str(row["clip_id"])), format="png",
                              layout=w.Layout(width="420px"))
            parts += [w.HBox([buttons, clear]), sources_button, parts_box]
            card = w.HBox([picture, w.VBox(parts)], layout=w.Layout(border="1px solid #ddd", margin="4px 0",
                                                                     padding="4px"))
        except Exception as exc:  # a missing or unreadable file must not break the whole tool
            parts.append(w.HTML(f"<span style='color:#a00'>cannot load audio: {_esc(type(exc).__name__)}: "
                                f"{_esc(str(exc))}</span>"))
            parts.append(w.HBox([buttons, clear]))
            card = w.VBox(parts, layout=w.Layout(border="1px solid #ddd", margin="4px 0", padding="4px"))
        card.add_class("speechbook-clip")
        self._cache[key] = (card, buttons, parts_box)
        self._tag_buttons[clip_id] = buttons
        self._parts_boxes[clip_id] = parts_box
        return card

    # -- display -------------------------------------------------------------------------------
    def open_call(self) -> str:
        """The one call that opens this tool on its run in a live kernel."""
        where = _display_path(self.run_dir) if self.run_dir is not None else "<run folder>"

        def short(label: str) -> str:  # the bare system name where it names one menu entry, else the full label
            name = label.split(" / ")[0]
            return name if sum(s.split(" / ")[0] == name for s in self.systems) == 1 else label

        args = [repr(where), f"system={short(self.system_filter.value)!r}"]
        if self.compare_filter.value is not None:
            args.append(f"compare={short(self.compare_filter.value)!r}")
        return f"from lib.widgets import listening_tool\nlistening_tool({', '.join(args)})"

    def live_kernel_note(self) -> str:
        return ("The listening tool needs a live Python kernel: this output was saved without one (an executed "
                "copy of the chapter, or a viewer that cannot draw widgets). Open the chapter in JupyterLab "
                "(`make lab`) and run its cells, or run in any notebook of the project:\n\n" + self.open_call())

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        note = self.live_kernel_note()
        if os.environ.get(HEADLESS_ENV) == "1":
            return {"text/plain": note,
                    "text/html": "<div style='border:1px solid #e0c36c;background:#fff8e1;padding:6px 10px'>"
                                 + _esc(note.split("\n\n")[0]) + f"<pre>{_esc(self.open_call())}</pre></div>"}
        bundle = self.widget._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        if isinstance(data, dict):
            data["text/plain"] = note
        return bundle


def _display_path(path: Path) -> str:
    """A run folder relative to the project root when it lies inside it (what a reader types)."""
    from .config import PROJECT_ROOT

    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def _natural_key(text: str) -> tuple[int, float, str]:
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def _esc(text: Any) -> str:
    import html

    return html.escape(str(text))


def _describe(row: Mapping[str, Any], compare: str | None = None) -> str:
    label, pred, p = str(row["label"]), str(row["pred"]), float(row["p_speech"])
    ok = label == pred
    mark = "<span style='color:#080'>correct</span>" if ok else "<span style='color:#a00'><b>wrong</b></span>"
    lines = [
        f"<b>{_esc(row['clip_id'])}</b> · {mark}",
        f"true: <b>{_esc(label.upper())}</b> · predicted: <b>{_esc(pred.upper())}</b>",
        f"p_speech = <b>{p:.3f}</b> · confidence {float(row['confidence']):.3f}",
    ]
    if compare is not None and "p_speech_b" in row and pd.notna(row["p_speech_b"]):
        ok_b = bool(row["correct_b"])
        lines[0] = f"<b>{_esc(row['clip_id'])}</b>"
        lines[2] = (f"A {_esc(row['system_label'])}: p_speech = <b>{p:.3f}</b> · {mark}<br>"
                    f"B {_esc(compare)}: p_speech = <b>{float(row['p_speech_b']):.3f}</b> · "
                    + ("<span style='color:#080'>correct</span>" if ok_b else "<span style='color:#a00'><b>wrong</b></span>"))
        lines[1] = f"true: <b>{_esc(label.upper())}</b> · A says <b>{_esc(pred.upper())}</b> · B says <b>{_esc(str(row['pred_b']).upper())}</b>"
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
    compare: str | None = None,
    bank_manifest: str | Path | None = None,
    normalization: str | None = None,
    smoke: bool | None = None,
    **kwargs: Any,
) -> ListeningTool:
    """The listening tool on a run folder: its ``predictions.csv``, the bank recorded in ``bank.yaml``,
    tags and exports in the folder. One call opens it on any run.

    ``system`` picks system A (a name such as ``silero_vad`` or a full ``system / variant / seed 0``
    label); by default the run's own fine-tuned system (``qwen2audio-<lora_variant>`` of its seed) when
    it has one. ``compare`` opens the comparison with system B. ``normalization`` and ``smoke`` default
    to the run's ``params.yaml`` (``normalization``, ``smoke``), else ``none`` and False.
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
    if system is None:
        system = _run_system(preds, params)
    if "model" not in kwargs and params.get("model_name_or_path"):
        from .book import model_label

        kwargs["model"] = model_label(params)
    return ListeningTool(preds, load_bank_table(manifest), manifest, normalization=normalization, smoke=smoke,
                         system=system, compare=compare, run_dir=run_dir, **kwargs)


def _run_system(preds: pd.DataFrame, params: Mapping[str, Any]) -> str | None:
    """The run's own fine-tuned system (``qwen2audio-<lora_variant>``, its seed) as a menu label, if scored."""
    variant, seed = params.get("lora_variant"), params.get("seed")
    if not variant:
        return None
    name = f"qwen2audio-{variant}"
    part = preds[preds["system"] == name]
    if part.empty:
        return None
    if seed is not None and (part["seed"].astype(int) == int(seed)).any():
        part = part[part["seed"].astype(int) == int(seed)]
    r = part.iloc[0]
    return system_label(r["system"], r.get("variant", ""), r.get("seed", -1))


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
