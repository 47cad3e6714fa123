"""Clips in, clips out: loading and writing, level measurements and normalization, mixing at an exact SNR,
noise, band filters and exact cuts, on float32 mono arrays at ``SR`` (the book's one sample rate). Room
reverberation is ``lib.audio.reverb``; the conventions are in ``lib.audio``'s docstring.
"""
from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import io

SR = 16000  # the book's one sample rate (Hz): every clip, model input and detector works at it
SNR_RANGE_DB = (-10.0, 20.0)
DURATION_RANGE_MS = (20, 1000)
RT60_RANGE_S = (0.0, 2.5)
NORMALIZATIONS = ("none", "peak", "rms")
FILTERS = ("none", "telephone", "lowpass", "highpass")
NOISE_TYPES = ("white", "pink", "real")
TARGET_PEAK = 0.99
TARGET_RMS_DBFS = -20.0
SILENCE_PEAK = 1e-8  # a clip whose largest |sample| is below this counts as all-silent
TELEPHONE_BAND_HZ = (300.0, 3400.0)
LOWPASS_HZ = 4000.0
HIGHPASS_HZ = 500.0

# Formats soundfile (libsndfile) decodes, by file extension.
AUDIO_EXTENSIONS = {
    ".wav": "WAV", ".wave": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".oga": "OGG", ".opus": "OGG",
    ".mp3": "MP3", ".aif": "AIFF", ".aiff": "AIFF", ".aifc": "AIFF", ".au": "AU", ".snd": "AU",
    ".caf": "CAF", ".w64": "W64", ".rf64": "RF64",
}


class AudioError(ValueError):
    """An audio file cannot be used; the message names the file and says why and what to do."""


class AudioNote(UserWarning):
    """Input was converted on load (channels averaged, sample rate changed); names the file."""


# --------------------------------------------------------------------------------------- loading


def load_audio(path: str | os.PathLike, sr: int = SR) -> np.ndarray:
    """Read an audio file as float32 mono at ``sr`` Hz.

    Multi-channel files are averaged to mono and any other sample rate is resampled (soxr, high
    quality); each conversion emits an ``AudioNote`` warning naming the file. Raises ``AudioError``
    (a ``ValueError``) naming the file for: a missing file, an unsupported format, a file that is not
    audio although its extension says so, a corrupt or truncated file, a file with no samples, and
    NaN or infinite samples.
    """
    import soundfile as sf

    path = io.check_regular_file(path, AudioError, {
        "broken_link": "{path} is a broken symbolic link or a link loop; fix the link, or drop its row from the manifest",
        "missing": "audio file not found: {path} (check the path, or the manifest row that names it)",
        "folder": "{path} is a folder, not an audio file; check the path, or drop its row from the manifest",
        "special": "{path} is not a regular file (a FIFO, device or socket); copy the audio into a file first",
    })
    ext = path.suffix.lower()
    if ext not in AUDIO_EXTENSIONS:
        raise AudioError(
            f"unsupported audio format {ext or '(no extension)'!r} for {path}; supported extensions: "
            f"{', '.join(sorted(AUDIO_EXTENSIONS))}. Convert it first, e.g. `ffmpeg -i in{ext} -ac 1 -ar 16000 out.flac`"
        )
    if path.stat().st_size == 0:
        raise AudioError(f"audio file {path} is empty (0 bytes); re-download or re-export it")
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile: "Format not recognised", "Error in WAV file" ...
        raise AudioError(
            f"cannot read {path} as audio ({_short(e)}): the file is corrupt, truncated, or not {AUDIO_EXTENSIONS[ext]} "
            "audio despite its extension; re-download or re-export it"
        ) from e
    if "(should be" in (info.extra_info or ""):  # libsndfile found a header length larger than the data
        raise AudioError(f"audio file {path} is truncated (its header promises more data than the file holds); re-download it")
    try:
        data, file_sr = sf.read(str(path), dtype="float64", always_2d=True)
    except Exception as e:  # e.g. "flac decoder lost sync" on a truncated FLAC
        raise AudioError(f"cannot decode {path} ({_short(e)}): the file is corrupt or truncated; re-download or re-export it") from e
    if info.frames > 0 and data.shape[0] < info.frames:
        raise AudioError(
            f"audio file {path} is truncated: {data.shape[0]} of {info.frames} frames could be read; re-download or re-export it"
        )
    if data.shape[0] == 0:
        raise AudioError(f"audio file {path} holds no samples (zero length); re-export it, or drop its row from the manifest")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioError(
            f"audio file {path} has {bad} NaN or infinite samples; it cannot be used as is: re-export it from its "
            "source, or drop its row from the manifest"
        )
    x = data.mean(axis=1)
    if data.shape[1] > 1:
        loudest = float(np.abs(data).max())
        if loudest >= SILENCE_PEAK and float(np.abs(x).max()) <= loudest * 1e-6:
            raise AudioError(
                f"{path}: its {data.shape[1]} channels cancel out when averaged to mono (one is the other inverted, peak "
                f"{loudest:.3g} per channel, 0 after mixing): re-export it with one channel, e.g. "
                f"`ffmpeg -i {path.name} -af 'pan=mono|c0=c0' mono.wav`, or drop its row from the manifest"
            )
        warnings.warn(f"{path}: {data.shape[1]} channels averaged to mono", AudioNote, stacklevel=2)
    if file_sr != sr:
        warnings.warn(f"{path}: resampled from {file_sr} Hz to {sr} Hz", AudioNote, stacklevel=2)
        x = resample(x, file_sr, sr)
    return np.ascontiguousarray(x, dtype=np.float32)


def resample(x: np.ndarray, orig_sr: int, target_sr: int = SR) -> np.ndarray:
    """Resample with soxr (high quality); the output has ``round(len * target / orig)`` samples."""
    if orig_sr == target_sr:
        return np.asarray(x)
    import soxr

    return soxr.resample(np.asarray(x, dtype=np.float64), orig_sr, target_sr, quality="HQ")


def write_audio(path: str | os.PathLike, x: np.ndarray, sr: int = SR) -> Path:
    """Write 32-bit float WAV (IEEE float: no quantization, no clipping), atomically.

    Written with ``scipy.io.wavfile`` rather than libsndfile, whose float WAVs carry a PEAK chunk with
    a time stamp: the same audio must give the same bytes (banks are compared by file hashes).
    """
    from scipy.io import wavfile

    from .. import io

    path = Path(path)
    with io.atomic_path(path) as tmp:
        wavfile.write(str(tmp), int(sr), np.ascontiguousarray(x, dtype=np.float32))
    return path


def _short(e: Exception) -> str:
    return str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__


# --------------------------------------------------------------------------------- measurements


def power(x: np.ndarray) -> float:
    """Mean power over the clip, in float64."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.mean(x * x)) if x.size else 0.0


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level in dB relative to full scale (a full-scale sine is -3 dBFS); -inf for silence."""
    p = power(x)
    return 10.0 * np.log10(p) if p > 0 else -np.inf


def peak_dbfs(x: np.ndarray) -> float:
    """Peak level ``20 log10 max|x|`` in dB relative to full scale (a full-scale sample is 0 dBFS); -inf for silence."""
    p = float(np.max(np.abs(x))) if np.size(x) else 0.0
    return 20 * np.log10(p) if p > 0 else -np.inf


def snr_db(signal: np.ndarray, noise: np.ndarray) -> float:
    """The SNR of two components, ``10 log10(P_signal / P_noise)`` over the clip."""
    return 10.0 * np.log10(power(signal) / power(noise))


def rolloff_hz(x: np.ndarray, sr: int = SR, fraction: float = 0.95) -> float:
    """Frequency below which ``fraction`` of the clip's spectral energy lies (a bandwidth measure)."""
    x = np.asarray(x, dtype=np.float64)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    total = spec.sum()
    if total <= 0:
        return 0.0
    cum = np.cumsum(spec) / total
    freqs = np.fft.rfftfreq(len(x), 1.0 / sr)
    return float(freqs[min(int(np.searchsorted(cum, fraction)), len(freqs) - 1)])


def highband_db(x: np.ndarray, sr: int = SR, cutoff_hz: float = 4000.0) -> float:
    """Share of the clip's spectral energy above ``cutoff_hz``, in dB (about -60 dB or less for a clip
    of 8 kHz origin, -15 to -30 dB for full-band speech): the sharpest single detector of band-limiting."""
    x = np.asarray(x, dtype=np.float64)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    total = spec.sum()
    if total <= 0:
        return -np.inf
    freqs = np.fft.rfftfreq(len(x), 1.0 / sr)
    high = spec[freqs >= cutoff_hz].sum()
    return float(10.0 * np.log10(max(high / total, 1e-12)))


# -------------------------------------------------------------------------------- normalization


def normalize(
    x: np.ndarray,
    mode: str = "rms",
    *,
    target_peak: float = TARGET_PEAK,
    target_rms_dbfs: float = TARGET_RMS_DBFS,
    name: str | None = None,
) -> np.ndarray:
    """Level normalization, applied at load time.

    * ``none``: the stored level, unchanged.
    * ``peak``: scale so that the largest |sample| is ``target_peak`` (0.99).
    * ``rms``: scale to ``target_rms_dbfs`` (-20 dBFS), then, if that would push the peak above
      ``target_peak``, lower the gain so the peak is exactly ``target_peak``. So the output never
      exceeds ``target_peak``; clips with a crest factor above ~20 dB end up below -20 dBFS RMS.

    Raises ``ValueError`` naming the clip (``name``) for all-silent audio under ``peak``/``rms``
    (there is no level to scale) and for NaN or infinite samples.
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {mode!r}; valid: {', '.join(NORMALIZATIONS)} (parameter 'normalization')")
    what = f"clip {name}" if name else "clip"
    x64 = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x64).all():
        raise ValueError(f"{what} has NaN or infinite samples; cannot normalize")
    if mode == "none":
        return x64.astype(np.float32)
    if x64.size == 0:
        raise ValueError(f"{what} is empty; cannot apply {mode} normalization")
    peak = float(np.max(np.abs(x64)))
    if peak < SILENCE_PEAK:
        raise ValueError(
            f"{what} is all-silent (peak {peak:.3g}); {mode} normalization has no level to scale. "
            "Drop the clip or use normalization='none'"
        )
    if mode == "peak":
        gain = target_peak / peak
    else:
        rms = float(np.sqrt(np.mean(x64 * x64)))
        gain = min(10.0 ** (target_rms_dbfs / 20.0) / rms, target_peak / peak)
    y = x64 * gain
    # float32 rounding must not push the peak above the target
    y32 = y.astype(np.float32)
    over = np.abs(y32) > np.float32(target_peak)
    if over.any():
        y32[over] = np.sign(y32[over]) * np.nextafter(np.float32(target_peak), np.float32(0))
    return y32


# ---------------------------------------------------------------------------------------- mixing


def check_snr(snr_db: float, name: str = "snr_db") -> float:
    lo, hi = SNR_RANGE_DB
    if snr_db is None or not np.isfinite(snr_db) or not (lo <= float(snr_db) <= hi):
        raise ValueError(f"{name}={snr_db!r} is outside the allowed range {lo:g} to {hi:g} dB")
    return float(snr_db)


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float, *, return_components: bool = False, window: slice | None = None):
    """Add ``noise`` scaled so that ``10 log10(P_signal / P_scaled_noise) == snr_db`` exactly.

    Powers are means over the clip (or over ``window`` of both arrays, when the clip is cut from a
    longer context afterwards). ``snr_db`` must lie in -10..+20 dB. Both inputs must have the same
    length and neither may be silent. Returns the float32 mixture, or ``(mixture, signal, scaled_noise)``
    with ``return_components=True``.
    """
    check_snr(snr_db)
    s = np.asarray(signal, dtype=np.float64)
    n = np.asarray(noise, dtype=np.float64)
    if s.shape != n.shape or s.ndim != 1:
        raise ValueError(f"signal and noise must be 1-D arrays of one length; got {s.shape} and {n.shape}")
    w = window if window is not None else slice(None)
    ps, pn = power(s[w]), power(n[w])
    if not np.isfinite(ps) or not np.isfinite(pn):
        raise ValueError("signal or noise has NaN or infinite samples")
    if ps <= 0:
        raise ValueError("signal is silent: the SNR is undefined (parameter 'signal')")
    if pn <= 0:
        raise ValueError("noise is silent: the SNR is undefined (parameter 'noise')")
    gain = np.sqrt(ps / (pn * 10.0 ** (snr_db / 10.0)))
    scaled = n * gain
    mix = (s + scaled).astype(np.float32)
    if return_components:
        return mix, s.astype(np.float32), scaled.astype(np.float32)
    return mix


def white_noise(n: int, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Gaussian white noise, unit variance, float32."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(int(n)).astype(np.float32)


def pink_noise(n: int, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Pink (1/f power) noise by spectral shaping of white noise, unit variance, float32."""
    rng = np.random.default_rng(seed)
    n = int(n)
    m = max(n, 2)
    spec = np.fft.rfft(rng.standard_normal(m))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    spec = spec / np.sqrt(f)
    spec[0] = 0.0
    y = np.fft.irfft(spec, m)[:n]
    sd = y.std()
    return (y / sd if sd > 0 else y).astype(np.float32)


# ------------------------------------------------------------------------------------ filters


@functools.lru_cache(maxsize=64)
def _sos(kind: str, cutoff: tuple[float, ...], sr: int, order: int) -> np.ndarray:
    from scipy.signal import butter

    if kind == "bandpass":
        return butter(order, cutoff, btype="bandpass", fs=sr, output="sos")
    return butter(order, cutoff[0], btype=kind, fs=sr, output="sos")


def band_filter(x: np.ndarray, kind: str = "none", sr: int = SR, cutoff_hz: float | Sequence[float] | None = None, order: int = 6) -> np.ndarray:
    """Zero-phase Butterworth filtering (``scipy.signal.sosfiltfilt``).

    ``kind``: ``none`` | ``telephone`` (300-3400 Hz band-pass) | ``lowpass`` (default 4 kHz) |
    ``highpass`` (default 500 Hz). ``cutoff_hz`` overrides the default cutoff (a pair for telephone).
    """
    if kind not in FILTERS:
        raise ValueError(f"unknown filter {kind!r}; valid: {', '.join(FILTERS)} (parameter 'filter')")
    x = np.asarray(x, dtype=np.float64)
    if kind == "none":
        return x.astype(np.float32)
    from scipy.signal import sosfiltfilt

    if kind == "telephone":
        cut = tuple(cutoff_hz) if cutoff_hz is not None else TELEPHONE_BAND_HZ
        sos = _sos("bandpass", tuple(float(c) for c in cut), sr, order // 2)
    else:
        c = float(cutoff_hz) if cutoff_hz is not None else (LOWPASS_HZ if kind == "lowpass" else HIGHPASS_HZ)
        if not 0 < c < sr / 2:
            raise ValueError(f"cutoff_hz={c} must lie between 0 and {sr / 2:g} Hz")
        sos = _sos("lowpass" if kind == "lowpass" else "highpass", (c,), sr, order)
    padlen = min(3 * (2 * len(sos) + 1), max(len(x) - 1, 0))
    return sosfiltfilt(sos, x, padlen=padlen).astype(np.float32)


# ---------------------------------------------------------------------------------------- cuts


def check_duration(duration_ms: float, name: str = "duration_ms") -> int:
    lo, hi = DURATION_RANGE_MS
    if duration_ms is None or not np.isfinite(duration_ms) or not (lo <= float(duration_ms) <= hi):
        raise ValueError(f"{name}={duration_ms!r} is outside the allowed range {lo} to {hi} ms")
    return int(round(float(duration_ms)))


def n_samples(duration_ms: float, sr: int = SR) -> int:
    """Samples in ``duration_ms`` at ``sr`` (rounded to the nearest sample)."""
    return int(round(float(duration_ms) * sr / 1000.0))


def cut(x: np.ndarray, duration_ms: float, start: int = 0, *, sr: int = SR, name: str | None = None) -> np.ndarray:
    """The ``duration_ms`` window starting at sample ``start``, exact to the sample.

    ``duration_ms`` must lie in 20..1000 ms. Raises ``ValueError`` naming the source (``name``) when
    the source is shorter than the window would need.
    """
    check_duration(duration_ms)
    n = n_samples(duration_ms, sr)
    x = np.asarray(x)
    start = int(start)
    what = f"source {name}" if name else "source"
    if start < 0:
        raise ValueError(f"start={start} is negative (cutting {what})")
    if start + n > len(x):
        raise ValueError(
            f"{what} is too short for a {duration_ms:g} ms clip at sample {start}: it has {len(x)} samples "
            f"({len(x) / sr * 1000:.1f} ms), the clip needs {start + n}. Use a shorter duration or a longer source"
        )
    return np.array(x[start : start + n], dtype=np.float32)
