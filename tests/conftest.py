"""Shared fixtures. Keep this file generic: each helper adds its fixtures in its own section below.

* ``data_dir``: the real corpus (``$DATA_DIR``, else ``../shared/data`` beside the project); tests
  that use it skip with a clear reason when it is absent.
* ``sine``, ``speechlike``, ``write_wav``: synthetic audio for unit tests.
* ``small_bank_cfg`` / ``corpus_bank``: a small real bank built on the corpus (session-scoped, in a
  temporary folder), for integration tests.
* ``--cpu-durations=N``: the N tests that used the most CPU time (0: all), beside their wall time. The machine
  is shared, so wall time alone says little about what a test costs.
"""
from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import numpy as np
import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SR = 16000

# ------------------------------------------------------------------------------------ test timing


def pytest_addoption(parser):
    parser.addoption("--cpu-durations", type=int, default=None, metavar="N",
                     help="list the N tests that used the most CPU time (this process and the children it waited for: "
                          "kernels, subprocesses), with their wall time; 0 lists all")


_TIMES: list[tuple[str, float, float]] = []  # (test id, CPU seconds, wall seconds): setup + call + teardown


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    cpu, wall = _cpu_seconds(), time.perf_counter()
    yield
    _TIMES.append((item.nodeid, _cpu_seconds() - cpu, time.perf_counter() - wall))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    n = config.getoption("--cpu-durations")
    if n is None or not _TIMES:
        return
    rows = sorted(_TIMES, key=lambda r: -r[1])
    tr = terminalreporter
    tr.write_sep("=", f"CPU time per test ({'all' if n == 0 else f'top {n}'} of {len(rows)})")
    for nodeid, cpu, wall in rows[: n or None]:
        tr.write_line(f"{cpu:9.1f}s cpu {wall:9.1f}s wall  {nodeid}")
    tr.write_line(f"total: {sum(r[1] for r in rows):.0f}s cpu, {sum(r[2] for r in rows):.0f}s wall over {len(rows)} tests")


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


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> Path:
    """A tiny corpus in the format of ../shared/data (manifest.csv + FLAC), made of synthetic sounds:
    12 "speakers" x 3 harmonic clips (speech), 16 recordings of 1-2 segments of noise bursts and
    chirps (nonspeech, some from 8 kHz origins), 8 noise recordings. Labels mean nothing acoustically;
    it exercises the plumbing without the real corpus."""
    import pandas as pd
    import soundfile as sf

    root = tmp_path_factory.mktemp("corpus")
    r = np.random.default_rng(7)
    rows = []

    def put(rel, x, **meta):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(p), np.asarray(x, dtype=np.float32), SR, subtype="PCM_16")
        rows.append({"path": rel, "duration_s": f"{len(x) / SR:.3f}", **meta})

    t = np.arange(int(1.3 * SR)) / SR
    for spk in range(12):
        for k in range(3):
            f0 = 100 + 10 * spk + 5 * k
            x = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 10)) * np.clip(np.sin(2 * np.pi * 3 * t), 0, None)
            put(f"speech/s{spk}_{k}.flac", 0.2 * x + 0.001 * r.standard_normal(len(t)), label="speech", category="speech",
                speaker=f"syn_{spk}", source="synthetic", source_repo="test/speech", original_path=f"s{spk}_{k}.wav",
                license="CC0", sample_rate_original="8000" if spk < 4 else "16000")
    for rec in range(16):
        nseg = 2 if rec % 3 == 0 else 1
        for seg in range(nseg):
            x = r.standard_normal(int(1.2 * SR)) * np.exp(-np.linspace(0, 3, int(1.2 * SR))) * 0.3
            suffix = f" [segment {seg + 1}/{nseg}]" if nseg > 1 else ""
            put(f"nonspeech/n{rec}_{seg}.flac", x, label="nonspeech", category=["dog", "rain", "door", "cough"][rec % 4], speaker="",
                source="synthetic", source_repo="test/nonspeech", original_path=f"n{rec}.ogg{suffix}", license="CC0",
                sample_rate_original="8000" if rec < 3 else "44100")
    for rec in range(8):
        put(f"noise/z{rec}.flac", 0.05 * r.standard_normal(3 * SR), label="noise", category="hum", speaker="", source="synthetic",
            source_repo="test/noise", original_path=f"z{rec}.wav", license="CC0", sample_rate_original="16000")
    put("music_ambiguous/m0.flac", 0.1 * np.sin(2 * np.pi * 440 * t), label="music", category="music_instrumental", speaker="",
        source="synthetic", source_repo="test/music", original_path="m0.wav", license="CC0", sample_rate_original="16000")
    cols = ["path", "label", "category", "speaker", "source", "source_repo", "original_path", "license", "sample_rate_original", "duration_s"]
    pd.DataFrame(rows)[cols].to_csv(root / "manifest.csv", index=False)
    return root
