"""Audio in, audio out: loading, level normalization, mixing at an exact SNR, noise, reverberation,
band filters and exact cuts. Everything works on float32 mono arrays at 16 kHz: ``SR``, the book's one
sample rate, defined once (in ``clips``) and read as ``lib.audio.SR`` by the data, the models, the
detectors and the listening tool.

* ``clips``: reading and writing, levels, normalization, mixing, noise, band filters, cuts;
* ``reverb``: room impulse responses at a requested RT60 and the reverberation of a clip.

Conventions
-----------
* Every function that can fail on bad input raises a ``ValueError`` subclass whose message names the
  file (``AudioError``) or the parameter (``ValueError``) and says what to do.
* ``load_audio`` accepts any sample rate and channel count: channels are averaged and other rates are
  resampled to 16 kHz with soxr; both emit an ``AudioNote`` warning naming the file, so nothing is
  changed silently.
* SNR is the ratio of mean powers over the whole clip, ``10 log10(P_signal / P_noise)``, computed in
  float64; ``mix_at_snr`` scales the noise so that this is exact.

``from lib import audio; audio.load_audio(path)`` keeps working: the public names are re-exported here.
"""
from __future__ import annotations

from .clips import (
    SR, SNR_RANGE_DB, DURATION_RANGE_MS, RT60_RANGE_S, NORMALIZATIONS, FILTERS, NOISE_TYPES, TARGET_PEAK,
    TARGET_RMS_DBFS, SILENCE_PEAK, TELEPHONE_BAND_HZ, LOWPASS_HZ, HIGHPASS_HZ, AUDIO_EXTENSIONS, AudioError, AudioNote,
    load_audio, resample, write_audio, power, rms_dbfs, peak_dbfs, snr_db, rolloff_hz, highband_db, normalize,
    check_snr, mix_at_snr, white_noise, pink_noise, band_filter, check_duration, n_samples, cut,
)
from .reverb import check_rt60, reverberate, rir_rt60, room_impulse_response
