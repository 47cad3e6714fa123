"""Synthetic 16 kHz clips for the model tests: formant-like "speech" against noises and tones.

Not a stand-in for the corpus: just two families a tiny model can tell apart in a few steps, and a
spread of clip lengths (including odd sample counts) for the equivalence tests.
"""
from __future__ import annotations

import numpy as np

SR = 16000


def speechlike(n: int, rng: np.random.Generator) -> np.ndarray:
    """A voiced harmonic complex (f0 with vibrato), two moving formants, syllabic 4-6 Hz amplitude modulation."""
    t = np.arange(n) / SR
    f0 = rng.uniform(100, 240) * (1 + 0.06 * np.sin(2 * np.pi * rng.uniform(3, 6) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    f1, f2 = rng.uniform(400, 800), rng.uniform(1000, 2200)
    x = np.zeros(n)
    for k in range(1, 30):
        fk = k * f0
        amp = np.exp(-((fk - f1) / 200) ** 2) + 0.6 * np.exp(-((fk - f2) / 300) ** 2) + 0.05
        x += amp * np.sin(k * phase) * (fk < SR / 2)
    x *= 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(4, 6) * t + rng.uniform(0, 6.3)))
    return _rms(x + 0.02 * rng.standard_normal(n))


def nonspeech(n: int, rng: np.random.Generator) -> np.ndarray:
    kind = rng.integers(3)
    if kind == 0:  # white noise
        x = rng.standard_normal(n)
    elif kind == 1:  # pink-ish noise
        x = np.cumsum(rng.standard_normal(n))
        x -= np.convolve(x, np.ones(64) / 64, mode="same")
    else:  # a steady tone with noise
        x = np.sin(2 * np.pi * rng.uniform(300, 4000) * np.arange(n) / SR) + 0.3 * rng.standard_normal(n)
    return _rms(x)


def _rms(x: np.ndarray, target: float = 0.1) -> np.ndarray:
    return (x * target / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def clip_set(n_clips: int, seed: int = 0, lengths: tuple[int, ...] | None = None) -> tuple[list[np.ndarray], list[str]]:
    """Alternating speech-like / non-speech clips of random (or given) lengths, with their labels."""
    rng = np.random.default_rng(seed)
    audios, labels = [], []
    for i in range(n_clips):
        n = lengths[i % len(lengths)] if lengths else int(rng.integers(1600, 16001))
        if i % 2 == 0:
            audios.append(speechlike(n, rng))
            labels.append("speech")
        else:
            audios.append(nonspeech(n, rng))
            labels.append("nonspeech")
    return audios, labels
