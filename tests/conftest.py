"""Shared fixtures. Keep this file generic: each helper adds its fixtures in its own section below.

* ``data_dir``: the real corpus (``$DATA_DIR``, else ``../shared/data`` beside the project); tests
  that use it skip with a clear reason when it is absent.
* ``sine``, ``speechlike``, ``write_wav``: synthetic audio for unit tests.
* ``small_bank_cfg`` / ``corpus_bank``: a small real bank built on the corpus (session-scoped, in a
  temporary folder), for integration tests.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SR = 16000

# ------------------------------------------------------------------------------------- the corpus


def find_data_dir() -> Path | None:
    env = os.environ.get("DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(PROJECT_ROOT.parent / "shared" / "data")
    for c in candidates:
        if (c / "manifest.csv").exists():
            return c.resolve()
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real corpus folder (manifest.csv + audio); skips the test when it is absent."""
    d = find_data_dir()
    if d is None:
        pytest.skip(
            "no corpus: set DATA_DIR to a folder with manifest.csv (e.g. ../shared/data); "
            f"looked at {os.environ.get('DATA_DIR') or '(DATA_DIR unset)'} and {PROJECT_ROOT.parent / 'shared' / 'data'}"
        )
    return d


# ---------------------------------------------------------------------------------- synthetic audio


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def sine():
    """``sine(freq=440, dur_s=1.0, amp=0.5, sr=16000)`` -> float32 array."""

    def make(freq: float = 440.0, dur_s: float = 1.0, amp: float = 0.5, sr: int = SR) -> np.ndarray:
        t = np.arange(int(round(dur_s * sr))) / sr
        return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)

    return make


@pytest.fixture
def speechlike():
    """``speechlike(dur_s=1.0, seed=0)``: harmonic bursts with a 4 Hz syllable envelope, float32."""

    def make(dur_s: float = 1.0, seed: int = 0, sr: int = SR) -> np.ndarray:
        r = np.random.default_rng(seed)
        t = np.arange(int(round(dur_s * sr))) / sr
        f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
        phase = 2 * np.pi * np.cumsum(f0) / sr
        x = sum(np.sin(k * phase) / k for k in range(1, 12))
        env = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
        return (0.3 * x * env + 0.001 * r.standard_normal(len(t))).astype(np.float32)

    return make


@pytest.fixture
def write_wav(tmp_path):
    """``write_wav(name, x, sr=16000, subtype='FLOAT')`` -> path of a file written under tmp_path."""
    import soundfile as sf

    def write(name: str, x: np.ndarray, sr: int = SR, subtype: str = "FLOAT") -> Path:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(p), np.asarray(x), sr, subtype=subtype)
        return p

    return write


# ------------------------------------------------------------------------------------------- banks


@pytest.fixture(scope="session")
def small_bank_cfg(tmp_path_factory):
    """``small_bank_cfg(data_dir, **overrides)`` -> a resolved cpu config for a small, fast bank in a
    session temp folder (two durations, two SNRs, a few sources per class)."""
    from lib import config

    bank_dir = tmp_path_factory.mktemp("banks")

    def make(data_dir, **overrides):
        base = dict(
            data_dir=str(data_dir), bank_dir=str(bank_dir), durations_ms=[50, 500], snrs_db=[0, 20],
            noise_types=["white", "pink", "real"], clips_per_cell=10, max_sources_per_class=60,
        )
        base.update(overrides)
        return config.resolve("cpu", **base)

    return make


@pytest.fixture(scope="session")
def corpus_bank(data_dir, small_bank_cfg):
    """The manifest path of a small factorial bank built on the real corpus (built once per session)."""
    from lib import data

    return data.build_bank(small_bank_cfg(data_dir), progress=False)
