"""A clip's sound and picture for the cards: WAV bytes for a player, a spectrogram PNG, the clip and its
parts (clean source, context, noise) loaded through ``lib.data``."""
from __future__ import annotations

import io as _io
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..audio import SR  # the book's one sample rate


def default_loader() -> Callable[..., np.ndarray]:
    """``lib.data.load_clip(row, normalization, root)``, imported only when a clip is first shown."""
    from ..data import load_clip

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
            from ..data import ClipParts

            state["parts"] = ClipParts(manifest)
        return state["parts"].parts(row)

    return load

