"""Property-based tests (hypothesis) of the audio functions: for any input that is not silent, mixing
reaches the requested SNR, normalization never yields NaN or exceeds its peak target, and cuts always
have the requested length."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lib import audio

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=32)


def signals(min_size: int = 1, max_size: int = 2000):
    return st.integers(min_size, max_size).flatmap(lambda n: arrays(np.float32, n, elements=finite))


def not_silent(x: np.ndarray) -> bool:
    # float32 mixtures: signals whose power underflows float32 arithmetic cannot be mixed meaningfully
    return audio.power(x) > 1e-20


@SETTINGS
@given(data=st.data(), snr=st.floats(min_value=-10, max_value=20))
def test_mixing_reaches_the_requested_snr(data, snr):
    s = data.draw(signals(1, 1500), label="signal")
    n = data.draw(arrays(np.float32, len(s), elements=finite), label="noise")
    assume(not_silent(s) and not_silent(n))
    mix, sc, nc = audio.mix_at_snr(s, n, snr, return_components=True)
    assert np.isfinite(mix).all()
    assert abs(audio.snr_db(sc, nc) - snr) < 0.01


@SETTINGS
@given(x=signals(), mode=st.sampled_from(["peak", "rms"]), peak=st.floats(0.1, 1.0), rms_db=st.floats(-40, -3))
def test_normalization_never_nan_or_above_target(x, mode, peak, rms_db):
    assume(np.abs(x).max() >= audio.SILENCE_PEAK)
    y = audio.normalize(x, mode, target_peak=peak, target_rms_dbfs=rms_db)
    assert y.dtype == np.float32 and len(y) == len(x)
    assert np.isfinite(y).all()
    assert np.abs(y).max() <= np.float32(peak)
    if mode == "peak":
        assert np.isclose(np.abs(y).max(), peak, rtol=1e-5)
    else:  # at the rms target unless the peak limit lowered it
        assert audio.rms_dbfs(y) <= rms_db + 0.01


@SETTINGS
@given(x=signals(), mode=st.sampled_from(["peak", "rms"]))
def test_silent_input_always_raises(x, mode):
    import pytest

    with pytest.raises(ValueError, match="all-silent"):
        audio.normalize(np.zeros_like(x), mode)


@SETTINGS
@given(ms=st.floats(min_value=20, max_value=1000), extra=st.integers(0, 5000), frac=st.floats(0, 1))
def test_cut_never_returns_the_wrong_length(ms, extra, frac):
    n = audio.n_samples(ms)
    x = np.arange(n + extra, dtype=np.float32)
    start = int(frac * extra)
    y = audio.cut(x, ms, start)
    assert len(y) == n
    assert y[0] == start


@SETTINGS
@given(ms=st.floats(min_value=20, max_value=1000), short=st.integers(1, 300))
def test_cut_from_a_short_source_always_raises(ms, short):
    import pytest

    n = audio.n_samples(ms)
    with pytest.raises(ValueError, match="too short"):
        audio.cut(np.zeros(max(n - short, 0), dtype=np.float32), ms, 0, name="src")
