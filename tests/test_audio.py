"""lib.audio on synthetic audio: loading (and every bad input), normalization, mixing, noise, reverb,
filters, cuts. Each bad input must raise an error that names the file or the parameter."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf

from lib import audio
from lib.audio import SR, AudioError, AudioNote

# ----------------------------------------------------------------------------------------- loading


def test_load_mono_16k_float32(write_wav, sine):
    x = sine(dur_s=0.5)
    p = write_wav("a.wav", x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no note for a file that needs no conversion
        y = audio.load_audio(p)
    assert y.dtype == np.float32 and y.ndim == 1 and len(y) == len(x)
    np.testing.assert_array_equal(y, x)


def test_stereo_is_averaged_with_a_note(write_wav, sine):
    left, right = sine(440, 0.25, 0.5), sine(880, 0.25, 0.25)
    p = write_wav("stereo.wav", np.stack([left, right], axis=1))
    with pytest.warns(AudioNote, match=r"stereo\.wav: 2 channels averaged"):
        y = audio.load_audio(p)
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-6)


def test_multichannel_is_averaged(write_wav, rng):
    x = rng.standard_normal((800, 6)).astype(np.float32) * 0.1
    p = write_wav("six.wav", x)
    with pytest.warns(AudioNote, match="6 channels"):
        y = audio.load_audio(p)
    np.testing.assert_allclose(y, x.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("sr", [8000, 11025, 22050, 44100, 48000])
def test_any_rate_is_resampled_with_a_note(write_wav, sine, sr):
    x = sine(440, 0.5, 0.5, sr=sr)
    p = write_wav(f"r{sr}.flac", x, sr=sr, subtype="PCM_16")
    with pytest.warns(AudioNote, match=rf"r{sr}\.flac: resampled from {sr} Hz to 16000 Hz"):
        y = audio.load_audio(p)
    assert len(y) == round(len(x) * SR / sr)
    # the tone survives: its energy sits at 440 Hz
    spec = np.abs(np.fft.rfft(y))
    assert abs(np.fft.rfftfreq(len(y), 1 / SR)[spec.argmax()] - 440) < 5


def test_missing_file_names_it(tmp_path):
    with pytest.raises(AudioError, match=r"not found: .*nothere\.wav"):
        audio.load_audio(tmp_path / "nothere.wav")


def test_empty_file_names_it(tmp_path):
    p = tmp_path / "empty.flac"
    p.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.flac is empty"):
        audio.load_audio(p)


def test_zero_length_audio_names_it(write_wav):
    p = write_wav("zero.wav", np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioError, match=r"zero\.wav holds no samples"):
        audio.load_audio(p)


def test_non_audio_with_audio_extension(tmp_path):
    p = tmp_path / "notes.wav"
    p.write_text("this is a text file, not audio\n" * 20)
    with pytest.raises(AudioError, match=r"notes\.wav.*(corrupt|not WAV)"):
        audio.load_audio(p)


def test_unsupported_format_names_file_and_alternatives(tmp_path):
    p = tmp_path / "clip.m4a"
    p.write_bytes(b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 100)
    with pytest.raises(AudioError, match=r"unsupported audio format '\.m4a' for .*clip\.m4a; supported extensions: .*\.flac"):
        audio.load_audio(p)


@pytest.mark.parametrize("ext,subtype", [("wav", "PCM_16"), ("flac", "PCM_16")])
def test_truncated_file_names_it(write_wav, rng, ext, subtype):
    p = write_wav(f"cut.{ext}", rng.standard_normal(16000).astype(np.float32) * 0.1, subtype=subtype)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=rf"cut\.{ext}.*truncated"):
        audio.load_audio(p)


def test_corrupt_body_names_it(write_wav, rng):
    p = write_wav("garbled.flac", rng.standard_normal(16000).astype(np.float32) * 0.1, subtype="PCM_16")
    data = bytearray(p.read_bytes())
    data[200:4000] = bytes(rng.integers(0, 256, 3800, dtype=np.uint8))
    p.write_bytes(bytes(data))
    with pytest.raises(AudioError, match=r"garbled\.flac"):
        audio.load_audio(p)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_samples_name_the_file(write_wav, bad):
    x = np.zeros(1000, dtype=np.float32)
    x[10] = bad
    p = write_wav("bad.wav", x)
    with pytest.raises(AudioError, match=r"bad\.wav has 1 NaN or infinite"):
        audio.load_audio(p)


def test_audio_error_is_a_value_error():
    assert issubclass(AudioError, ValueError)


# ------------------------------------------------------------------------------------ normalization


def test_normalize_modes(speechlike):
    x = speechlike(0.5) * 0.01
    np.testing.assert_array_equal(audio.normalize(x, "none"), x)
    p = audio.normalize(x, "peak")
    assert np.isclose(np.abs(p).max(), 0.99, atol=1e-6)
    r = audio.normalize(x, "rms")
    assert np.isclose(audio.rms_dbfs(r), -20.0, atol=0.01)
    assert np.abs(r).max() <= 0.99


def test_rms_normalization_limits_the_peak():
    x = np.zeros(16000, dtype=np.float32)
    x[100] = 1e-3  # one click: a crest factor of 42 dB
    y = audio.normalize(x, "rms")
    assert np.abs(y).max() <= 0.99 + 1e-7
    assert audio.rms_dbfs(y) < -20.0


@pytest.mark.parametrize("mode", ["peak", "rms"])
def test_all_silent_audio_raises_naming_the_clip(mode):
    with pytest.raises(ValueError, match=rf"clip c000042 is all-silent.*{mode} normalization"):
        audio.normalize(np.zeros(800, dtype=np.float32), mode, name="c000042")


def test_silent_audio_is_fine_without_normalization():
    assert not audio.normalize(np.zeros(10), "none").any()


def test_unknown_normalization_names_the_parameter():
    with pytest.raises(ValueError, match=r"unknown normalization 'loud'.*none, peak, rms.*parameter 'normalization'"):
        audio.normalize(np.ones(10), "loud")


# ------------------------------------------------------------------------------------------ mixing


@pytest.mark.parametrize("snr", [-10, -5, 0, 5, 10, 20, 3.7])
@pytest.mark.parametrize("kind", ["white", "pink"])
def test_mix_reaches_the_requested_snr(speechlike, snr, kind):
    s = speechlike(1.0, seed=3)
    n = audio.white_noise(len(s), 5) if kind == "white" else audio.pink_noise(len(s), 5)
    mix, sc, nc = audio.mix_at_snr(s, n, snr, return_components=True)
    assert abs(audio.snr_db(sc, nc) - snr) < 1e-3
    np.testing.assert_allclose(mix, sc + nc, atol=1e-6)
    np.testing.assert_array_equal(sc, s)


def test_mix_snr_over_a_window(speechlike):
    s = speechlike(1.0)
    n = audio.white_noise(len(s), 1)
    w = slice(4000, 8000)
    mix, sc, nc = audio.mix_at_snr(s, n, 6.0, return_components=True, window=w)
    assert abs(audio.snr_db(sc[w], nc[w]) - 6.0) < 1e-3


@pytest.mark.parametrize("snr", [-10.5, 20.01, 30, -40, np.nan, np.inf])
def test_snr_out_of_range_names_the_parameter(snr):
    with pytest.raises(ValueError, match=r"snr_db=.* outside the allowed range -10 to 20 dB"):
        audio.mix_at_snr(np.ones(100), np.ones(100), snr)


def test_silent_inputs_to_mix_raise():
    with pytest.raises(ValueError, match="signal is silent"):
        audio.mix_at_snr(np.zeros(100), np.ones(100), 0)
    with pytest.raises(ValueError, match="noise is silent"):
        audio.mix_at_snr(np.ones(100), np.zeros(100), 0)
    with pytest.raises(ValueError, match="one length"):
        audio.mix_at_snr(np.ones(100), np.ones(99), 0)


def test_noise_generators_are_seeded_and_shaped():
    np.testing.assert_array_equal(audio.white_noise(1000, 3), audio.white_noise(1000, 3))
    assert not np.array_equal(audio.white_noise(1000, 3), audio.white_noise(1000, 4))
    p = audio.pink_noise(1 << 15, 1)
    np.testing.assert_array_equal(p, audio.pink_noise(1 << 15, 1))
    spec = np.abs(np.fft.rfft(p)) ** 2
    f = np.fft.rfftfreq(len(p), 1 / SR)
    low = spec[(f > 100) & (f < 200)].mean()
    high = spec[(f > 3200) & (f < 6400)].mean()
    # 1/f: a decade-and-a-half higher band has ~30x less power per bin
    assert 10 < low / high < 100
    assert abs(p.std() - 1) < 1e-3


# ------------------------------------------------------------------------------------------- reverb


def test_reverberation_keeps_length_and_alignment(speechlike):
    x = speechlike(0.5)
    assert np.array_equal(audio.reverberate(x, 0.0), x)
    y = audio.reverberate(x, 0.6, seed=1)
    assert len(y) == len(x) and y.dtype == np.float32
    assert np.isfinite(y).all()
    # aligned on the direct path: an impulse comes out at its own position, followed by its tail
    imp = np.zeros(8000, dtype=np.float32)
    imp[100] = 1.0
    z = audio.reverberate(imp, 0.6, seed=1)
    assert int(np.argmax(np.abs(z))) == 100 and np.abs(z[:100]).max() < 1e-6
    assert np.abs(z[2000:]).max() > 0  # the reverberant tail


def test_rir_matches_the_requested_rt60():
    for rt in (0.3, 1.0):
        measured = audio.rir_rt60(rt, seed=2)
        assert abs(measured - rt) / rt < 0.2, (rt, measured)


def test_rir_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHBOOK_CACHE", "off")
    audio.room_impulse_response.cache_clear()
    a = np.array(audio.room_impulse_response(0.4, 5))
    audio.room_impulse_response.cache_clear()
    b = np.array(audio.room_impulse_response(0.4, 5))
    np.testing.assert_array_equal(a, b)
    audio.room_impulse_response.cache_clear()


@pytest.mark.parametrize("rt", [-0.1, 2.6, 10])
def test_rt60_out_of_range_names_the_parameter(rt):
    with pytest.raises(ValueError, match=r"rt60_s=.* outside the allowed range 0 to 2.5 s"):
        audio.reverberate(np.ones(100), rt)


# ------------------------------------------------------------------------------------------ filters


def test_band_filters_shape_the_spectrum():
    x = audio.white_noise(SR * 2, 0)
    f = np.fft.rfftfreq(len(x), 1 / SR)

    def band_power(y, lo, hi):
        s = np.abs(np.fft.rfft(y)) ** 2
        return s[(f >= lo) & (f < hi)].mean()

    tel = audio.band_filter(x, "telephone")
    assert band_power(tel, 1000, 3000) / band_power(tel, 5000, 8000) > 1e3
    assert band_power(tel, 1000, 3000) / band_power(tel, 20, 100) > 100
    lp = audio.band_filter(x, "lowpass")
    assert band_power(lp, 500, 3000) / band_power(lp, 6000, 8000) > 1e4
    hp = audio.band_filter(x, "highpass")
    assert band_power(hp, 2000, 6000) / band_power(hp, 20, 150) > 1e3
    np.testing.assert_array_equal(audio.band_filter(x, "none"), x)
    assert len(audio.band_filter(x[:320], "telephone")) == 320
    assert audio.rolloff_hz(lp) < 4500 < audio.rolloff_hz(x)


def test_unknown_filter_names_the_parameter():
    with pytest.raises(ValueError, match=r"unknown filter 'radio'.*parameter 'filter'"):
        audio.band_filter(np.ones(100), "radio")


# --------------------------------------------------------------------------------------------- cuts


@pytest.mark.parametrize("ms", [20, 25, 50, 100, 333, 1000])
def test_cut_is_exact_to_the_sample(ms, rng):
    x = rng.standard_normal(SR * 2).astype(np.float32)
    y = audio.cut(x, ms, start=17)
    assert len(y) == round(ms * SR / 1000)
    np.testing.assert_array_equal(y, x[17 : 17 + len(y)])


def test_cut_from_too_short_a_source_names_it():
    with pytest.raises(ValueError, match=r"source speech/abc\.flac is too short for a 500 ms clip"):
        audio.cut(np.zeros(4000), 500, name="speech/abc.flac")


@pytest.mark.parametrize("ms", [19, 10, 0, 1001, 5000, -20])
def test_duration_out_of_range_names_the_parameter(ms):
    with pytest.raises(ValueError, match=r"duration_ms=.* outside the allowed range 20 to 1000 ms"):
        audio.cut(np.zeros(SR * 10), ms)


def test_write_audio_is_float_and_lossless(tmp_path, rng):
    x = (rng.standard_normal(1234) * 1.7).astype(np.float32)  # beyond full scale: must not clip
    p = audio.write_audio(tmp_path / "x.wav", x)
    y, sr = sf.read(p, dtype="float32")
    assert sr == SR and sf.info(p).subtype == "FLOAT"
    np.testing.assert_array_equal(x, y)
