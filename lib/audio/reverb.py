"""Room reverberation: shoebox-room impulse responses at a requested RT60 (pyroomacoustics), simulated once
per (RT60, room) and kept on disk, and the convolution that reverberates a clip."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from .. import io
from .clips import RT60_RANGE_S, SR


def check_rt60(rt60_s: float, name: str = "rt60_s") -> float:
    lo, hi = RT60_RANGE_S
    if rt60_s is None or not np.isfinite(rt60_s) or not (lo <= float(rt60_s) <= hi):
        raise ValueError(f"{name}={rt60_s!r} is outside the allowed range {lo:g} to {hi:g} s")
    return float(rt60_s)


@functools.lru_cache(maxsize=256)
def room_impulse_response(rt60_s: float, seed: int = 0, sr: int = SR) -> np.ndarray:
    """A shoebox-room impulse response with the given RT60, from pyroomacoustics.

    The room (4-10 m x 3-8 m x 2.5-4 m) and the source/microphone positions (1-4 m apart) are drawn
    from ``seed``; the wall absorption comes from Sabine's formula (``pra.inverse_sabine``). The
    response is simulated with pyroomacoustics' hybrid method (image sources up to order 3 for the
    early reflections, ray tracing for the tail), which is fast even at 2.5 s. Sabine's formula
    overestimates the decay the simulation then shows, so the requested RT60 is corrected once from
    the measured one (``pra`` ``measure_rt60``); the result lies within a few percent of the request.
    The response starts at its direct path and has unit energy, so reverberation keeps the level
    about equal. Deterministic: pyroomacoustics' random generators are seeded from ``seed`` (and
    numpy's global state is restored afterwards). Cached: a bank draws from a few rooms per RT60.
    """
    rt60_s = check_rt60(rt60_s)
    if rt60_s == 0.0:
        return np.ones(1)
    cache = _rir_cache_path(rt60_s, seed, sr)
    if cache is not None and cache.exists():
        try:
            h = np.load(cache)
            h.setflags(write=False)
            return h
        except Exception:
            pass  # unreadable cache entry: simulate again
    rng = np.random.default_rng([int(seed), int(round(rt60_s * 1000))])
    dim = rng.uniform([4.0, 3.0, 2.5], [10.0, 8.0, 4.0])
    src = rng.uniform([0.5, 0.5, 1.0], dim - 0.5)
    mic = src
    for _ in range(1000):
        mic = rng.uniform([0.5, 0.5, 1.0], dim - 0.5)
        if 1.0 <= np.linalg.norm(mic - src) <= 4.0:
            break
    sim_seed = int(rng.integers(2**31))
    target = rt60_s
    h = _simulate_rir(dim, target, src, mic, sr, sim_seed)
    measured = _measure_rt60(h, sr)
    if measured > 0:
        target = target * rt60_s / measured
        h = _simulate_rir(dim, target, src, mic, sr, sim_seed)
    start = int(np.argmax(np.abs(h)))  # the direct path (the strongest arrival at 1-4 m)
    h = h[start:]
    h = h / np.sqrt(np.sum(h * h))
    if cache is not None:
        try:
            with io.atomic_path(cache) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, h)
        except OSError:
            pass  # a read-only cache folder only costs time
    h.setflags(write=False)
    return h


def _rir_cache_path(rt60_s: float, seed: int, sr: int) -> Path | None:
    """Simulated responses are deterministic, so they are kept on disk (``$SPEECHBOOK_CACHE`` or
    ``data/cache/rir``); set ``SPEECHBOOK_CACHE=off`` to disable."""
    base = os.environ.get("SPEECHBOOK_CACHE")
    if base == "off":
        return None
    try:
        import pyroomacoustics as pra

        version = pra.__version__
    except Exception:
        version = "unknown"
    root = Path(base) if base else Path(__file__).resolve().parents[2] / "data" / "cache"  # <project>/data/cache
    return root / "rir" / f"rir-v1-pra{version}-sr{sr}-rt{int(round(rt60_s * 1000))}ms-room{int(seed)}.npy"


def _simulate_rir(dim, rt60_s, src, mic, sr, sim_seed):
    import pyroomacoustics as pra

    try:
        absorption, _ = pra.inverse_sabine(rt60_s, dim)
    except ValueError:  # RT60 too short for this room: the most absorbing walls it allows
        absorption = 0.99
    absorption = float(min(max(absorption, 1e-3), 0.99))
    state = np.random.get_state()
    try:
        pra.random.seed(sim_seed)
        room = pra.ShoeBox(dim, fs=sr, materials=pra.Material(absorption), max_order=3, ray_tracing=True, air_absorption=False)
        room.set_ray_tracing(receiver_radius=0.5, n_rays=10000, energy_thres=1e-7)
        room.add_source(list(src))
        room.add_microphone(list(mic))
        room.compute_rir()
        return np.asarray(room.rir[0][0], dtype=np.float64)
    finally:
        np.random.set_state(state)


def _measure_rt60(h: np.ndarray, sr: int) -> float:
    import pyroomacoustics as pra

    try:
        return float(pra.experimental.measure_rt60(h, fs=sr, decay_db=30))
    except Exception:
        return 0.0


def rir_rt60(rt60_s: float, seed: int = 0, sr: int = SR) -> float:
    """The RT60 measured (30 dB decay, extrapolated) on the response ``reverberate`` uses."""
    return _measure_rt60(np.asarray(room_impulse_response(rt60_s, int(seed) % 8, sr)), sr)


def reverberate(x: np.ndarray, rt60_s: float, seed: int = 0, sr: int = SR) -> np.ndarray:
    """Convolve with a room impulse response of ``rt60_s`` (0..2.5 s; 0 = dry, returned unchanged).

    The output has exactly ``len(x)`` samples, aligned on the direct path (no delay); the tail past
    the end of the clip is cut. To give a short clip the reverberation of what came before it,
    reverberate a longer context and cut afterwards (``lib.data`` does).
    """
    rt60_s = check_rt60(rt60_s)
    x = np.asarray(x, dtype=np.float64)
    if rt60_s == 0.0:
        return x.astype(np.float32)
    from scipy.signal import fftconvolve

    h = room_impulse_response(rt60_s, int(seed) % 8, sr)  # 8 rooms per RT60 value
    return fftconvolve(x, h)[: len(x)].astype(np.float32)
