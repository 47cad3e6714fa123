"""Rendering: one bank clip from its manifest row alone, bit for bit reproducible.

    source context -> reverberation (rt60_s) -> + noise at exactly snr_db over the clip
    -> channel filter (filter) -> band-limit treatment (bandlimit) -> cut to duration_ms

``snr_db`` is the acoustic SNR at the mixing point: mean power of the (reverberant) signal over the
clip divided by that of the scaled noise over the clip. The channel filter and the band-limit
treatment act afterwards on the whole mixture, as a telephone line would. Stored audio is the
mixture before level normalization (``lib.data.loading`` applies it).

``ClipParts`` and ``regenerate`` re-render clips of a built bank (what a listener compares a clip with;
checks of the SNR and of reproducibility).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import audio
from .loading import load_bank
from .sources import bank_sources

BANDLIMITS = ("none", "telephone", "lowpass_4000", "lowpass_5500")


class SourceAudio:
    """Source and noise audio by source_id (the segment ``start_s..end_s`` of the file, at ``audio.SR``, mono),
    decoded on first use and kept."""

    def __init__(self, table: pd.DataFrame):
        self.table = table.drop_duplicates("source_id").set_index("source_id")
        self.cache: dict[str, np.ndarray] = {}

    def path_of(self, sid: str) -> str:
        return str(self.table.loc[sid, "path"]) if sid in self.table.index else "?"

    def get(self, row_or_id) -> np.ndarray:
        sid = row_or_id if isinstance(row_or_id, str) else row_or_id["source_id"]
        if sid not in self.cache:
            if sid not in self.table.index:
                raise KeyError(f"source {sid!r} is not in the sources table")
            r = self.table.loc[sid]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", audio.AudioNote)
                x = _load_file(r["path"])
            a = int(round(float(r["start_s"] or 0) * audio.SR))
            end = float(r["end_s"]) if r["end_s"] is not None and np.isfinite(float(r["end_s"])) else None
            whole = end is None or (a == 0 and abs(end * audio.SR - len(x)) <= audio.SR * 0.01)
            b = len(x) if whole else min(len(x), int(round(end * audio.SR)))
            self.cache[sid] = x if whole else x[a:b].copy()  # a copy: do not keep long recordings alive
        return self.cache[sid]


_FILE_CACHE: dict[str, np.ndarray] = {}


def _load_file(path: str) -> np.ndarray:
    # long recordings (VoxConverse) give many segments: keep the last few files decoded
    if path not in _FILE_CACHE:
        if len(_FILE_CACHE) >= 4:
            _FILE_CACHE.pop(next(iter(_FILE_CACHE)))
        _FILE_CACHE[path] = audio.load_audio(path)
    return _FILE_CACHE[path]


def render_clip(row: Mapping[str, Any], cache: SourceAudio, with_treated_signal: bool = False) -> dict[str, np.ndarray]:
    """Render one bank clip from its row alone. Returns ``mixture`` (what is stored), ``signal`` and
    ``noise`` (the two components at the mixing point, cut to the clip: their SNR is ``snr_db``), and
    ``untreated`` (the clip before the band-limit treatment); with ``with_treated_signal`` also
    ``signal_treated`` (the clean component through the channel filter and the treatment)."""
    x = cache.get(row["source_id"])
    n = audio.n_samples(row["duration_ms"])
    start, pre, post = int(row["source_offset"]), int(row["context_pre"]), int(row["context_post"])
    if start - pre < 0 or start + n + post > len(x):
        raise ValueError(
            f"source {row['source_id']} ({len(x)} samples) is too short for clip {row.get('clip_id', '')}: it needs samples "
            f"{start - pre}..{start + n + post}; rebuild the bank (the source changed?)"
        )
    ctx = np.asarray(x[start - pre : start + n + post], dtype=np.float64)
    rng = np.random.default_rng(int(row["seed"]))
    sig = audio.reverberate(ctx, float(row["rt60_s"]), seed=int(row["seed"]))
    kind = row["noise_type"]
    if kind == "white":
        nz = audio.white_noise(len(ctx), rng)
    elif kind == "pink":
        nz = audio.pink_noise(len(ctx), rng)
    elif kind == "real":
        y = cache.get(row["noise_source_id"])
        off = int(row["noise_offset"])
        nz = np.resize(np.asarray(y[off:], dtype=np.float64) if len(y) - off >= len(ctx) else np.asarray(y, dtype=np.float64), len(ctx))
    else:
        raise ValueError(f"unknown noise_type {kind!r}; valid: {', '.join(audio.NOISE_TYPES)}")
    window = slice(pre, pre + n)
    try:
        mix, s_c, n_c = audio.mix_at_snr(sig, nz, float(row["snr_db"]), return_components=True, window=window)
    except ValueError as e:  # e.g. a silent window: say which clip, source and file
        what = row["noise_source_id"] if "noise is silent" in str(e) else row["source_id"]
        raise ValueError(f"clip {row.get('clip_id', '')} from {what} ({cache.path_of(what)}): {e}") from e
    mix = audio.band_filter(mix, row["filter"])
    untreated = mix
    bl = row.get("bandlimit", "none") or "none"
    mix = apply_bandlimit(mix, bl)
    out = {
        "mixture": np.ascontiguousarray(mix[window], dtype=np.float32),
        "untreated": np.ascontiguousarray(untreated[window], dtype=np.float32),
        "signal": s_c[window],
        "noise": n_c[window],
    }
    if with_treated_signal:  # the clean component through the same channel and treatment (shortcut report)
        out["signal_treated"] = np.ascontiguousarray(apply_bandlimit(audio.band_filter(s_c, row["filter"]), bl)[window], dtype=np.float32)
    return out


def apply_bandlimit(x: np.ndarray, kind: str) -> np.ndarray:
    """The band-limit treatment ``kind`` (``BANDLIMITS``) applied to a whole (context) signal."""
    if kind == "none":
        return x
    if kind == "telephone":
        return audio.band_filter(x, "telephone")
    if kind.startswith("lowpass_"):
        return audio.band_filter(x, "lowpass", cutoff_hz=float(kind.split("_")[1]))
    raise ValueError(f"unknown bandlimit {kind!r}; valid: {', '.join(BANDLIMITS)}")


class ClipParts:
    """What a listener compares a bank clip with, rendered from its manifest row and the corpus:

    * ``clean``: the source's samples under the clip's window, before any degradation;
    * ``context``: the source around the window (``context_pre`` before, ``context_post`` after, as the
      bank recorded them), clean; ``context_window`` gives the window's (start, end) sample in it;
    * ``noise``: the noise component as it was mixed in (at the clip's SNR, cut to the window);
    * ``noise_recording``: for real noise, the noise recording's own samples at the offset used (before
      scaling); None for synthetic noise;
    * ``mixture``: the clip re-rendered (equal to the stored audio before normalization).

    The corpus is read on first use (the bank's ``bank.yaml`` says which one), then kept.
    """

    def __init__(self, manifest: str | os.PathLike):
        self.manifest = Path(manifest)
        if self.manifest.is_dir():
            self.manifest = self.manifest / "manifest.csv"
        self._cache: SourceAudio | None = None

    def _audio(self) -> SourceAudio:
        if self._cache is None:
            self._cache = bank_source_audio(self.manifest)
        return self._cache

    def parts(self, row: Mapping[str, Any]) -> dict[str, Any]:
        cache = self._audio()
        x = cache.get(row["source_id"])
        n = audio.n_samples(row["duration_ms"])
        start, pre, post = int(row["source_offset"]), int(row["context_pre"]), int(row["context_post"])
        rendered = render_clip(row, cache)
        out: dict[str, Any] = {
            "clean": np.asarray(x[start:start + n], dtype=np.float32),
            "context": np.asarray(x[start - pre:start + n + post], dtype=np.float32),
            "context_window": (pre, pre + n),
            "noise": np.asarray(rendered["noise"], dtype=np.float32),
            "mixture": rendered["mixture"],
            "noise_recording": None,
            "noise_source_id": str(row.get("noise_source_id") or ""),
        }
        if row["noise_type"] == "real" and row.get("noise_source_id"):
            y = cache.get(row["noise_source_id"])
            off = int(row["noise_offset"])
            out["noise_recording"] = np.asarray(y[off:off + n], dtype=np.float32)
        return out


def bank_source_audio(manifest: str | os.PathLike) -> SourceAudio:
    """The clean sources and noise recordings a built bank was rendered from (its ``bank.yaml`` says which)."""
    return SourceAudio(pd.concat(bank_sources(manifest), ignore_index=True))


def regenerate(manifest: str | os.PathLike, clip_ids: Sequence[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Re-render clips of a built bank from their rows (to check SNRs or reproducibility)."""
    df = load_bank(manifest)
    cache = bank_source_audio(manifest)
    rows = df if clip_ids is None else df[df["clip_id"].isin(list(clip_ids))]
    return {r["clip_id"]: render_clip(r, cache) for r in rows.to_dict("records")}
