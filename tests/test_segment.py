"""``python -m lib segment`` (lib.recordings.segment): windows -> frames -> segments, RTTM, the output folder, bad
input, and every kind of system (a VAD's own frames, a fitted baseline, a trained LoRA system of the tiny model)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lib.recordings import detection, output, windows
from lib.recordings import segment as S
from lib.data import rttm as rttm_io
from lib.__main__ import main
from lib.audio import write_audio

SR = 16000


class LoudWindows:
    """A clip system for tests: p_speech = 1 when the clip holds a 10 ms stretch louder than -30 dBFS, else 0 --
    an ideal 'is there any burst in this window' detector. Counts the clips it was given."""

    name = "loud_windows"
    normalization = None
    threshold = 0.5

    def __init__(self) -> None:
        self.seen = 0

    def score(self, audios):
        self.seen += len(audios)
        out = []
        for x in audios:
            n = len(x) // 160
            e = np.mean(np.asarray(x[: n * 160]).reshape(n, 160) ** 2, axis=1) if n else np.array([np.mean(x ** 2)])
            out.append(float((10 * np.log10(e + 1e-12)).max() > -30))
        return np.array(out)


def bursts(spans_s, total_s, seed=0):
    """Low noise with loud 300 Hz bursts at ``spans_s``."""
    r = np.random.default_rng(seed)
    x = 0.001 * r.standard_normal(int(total_s * SR))
    t = np.arange(len(x)) / SR
    for a, b in spans_s:
        i, j = int(a * SR), int(b * SR)
        x[i:j] += 0.3 * np.sin(2 * np.pi * 300 * t[i:j])
    return x.astype(np.float32)


SPANS = [(1.0, 2.5), (4.0, 4.3), (6.2, 9.0)]


# ------------------------------------------------------------------------------------------ windows
def test_window_starts_cover_the_recording():
    s = windows.window_starts(10_000, 4_000, 1_000)
    assert s[0] == 0 and s[-1] + 4_000 == 10_000 and np.all(np.diff(s) <= 1_000)
    s = windows.window_starts(10_500, 4_000, 1_000)
    assert s[-1] == 6_500 and s[-2] == 6_000  # the regular windows fall short: one more ends at the end
    assert windows.window_starts(3_000, 4_000, 1_000).tolist() == [0]  # shorter than a window: the whole recording


@pytest.mark.parametrize("agg", ["mean", "max", "min"])
def test_aggregation_of_an_ideal_detector(agg):
    """An ideal 'any speech in the window' detector: min recovers the true extent, mean at 0.5 widens each side by
    about half a window, max by a whole window."""
    n, win, hop, frame = 10 * SR, SR, SR // 10, SR // 100
    speech = (3 * SR, 5 * SR)
    starts = windows.window_starts(n, win, hop)
    scores = np.array([float(s < speech[1] and s + win > speech[0]) for s in starts])
    p = windows.frames_from_windows(scores, starts, win, n, frame, agg)
    segs = S.binarize(p, 0.01, 0.5, 0.5)
    assert len(segs) == 1
    a, b = segs[0][0] * 0.01, segs[0][1] * 0.01
    widen = {"min": 0.0, "mean": 0.5, "max": 1.0}[agg]
    assert a == pytest.approx(3.0 - widen, abs=0.11) and b == pytest.approx(5.0 + widen, abs=0.11)


def test_frames_from_windows_means_the_covering_windows():
    # two windows of 4 frames, overlapping on frames 2-3
    p = windows.frames_from_windows(np.array([1.0, 0.0]), np.array([0, 320]), 640, 960, 160, "mean")
    assert p.tolist() == [1.0, 1.0, 0.5, 0.5, 0.0, 0.0]
    # a recording shorter than a frame still gets its one frame
    assert windows.frames_from_windows(np.array([0.7]), np.array([0]), 100, 100, 160, "mean").tolist() == [pytest.approx(0.7)]


# ------------------------------------------------------------------------------------------ decisions
def test_hysteresis_and_minimum_durations():
    p = np.array([0, .6, .4, .4, .2, .6, 0, 0, 0, .9, 0, 0, 0, 0, .9, .9, .9, 0])
    assert S.runs(S.hysteresis(p, 0.5, 0.3)) == [(1, 4), (5, 6), (9, 10), (14, 17)]
    assert S.runs(S.hysteresis(p, 0.5, 0.5)) == [(1, 2), (5, 6), (9, 10), (14, 17)]
    # silences shorter than 2 frames filled first, then segments shorter than 2 frames dropped
    assert S.binarize(p, 1.0, 0.5, 0.3, min_speech_s=2, min_silence_s=2) == [(1, 6), (14, 17)]
    assert S.binarize(p, 1.0, 0.5, 0.3, min_speech_s=0, min_silence_s=4) == [(1, 10), (14, 17)]
    assert S.binarize(np.zeros(5), 0.01, 0.5, 0.5) == []


def test_params_are_checked_with_the_parameter_named():
    with pytest.raises(ValueError, match="hop_ms"):
        S.SegmentParams(window_ms=200, hop_ms=500)
    with pytest.raises(ValueError, match="offset"):
        S.SegmentParams(onset=0.4, offset=0.6)
    with pytest.raises(ValueError, match="aggregate"):
        S.SegmentParams(aggregate="median")
    with pytest.raises(ValueError, match="min_speech_ms"):
        S.SegmentParams(min_speech_ms=-1)
    with pytest.raises(ValueError, match="window_ms"):
        S.SegmentParams(window_ms=10, hop_ms=10, frame_ms=10)


# ------------------------------------------------------------------------------------------ RTTM
def test_rttm_round_trip_is_exact(tmp_path):
    segs = [(0.0, 0.25), (1.01, 3.333), (59.99, 61.0)]
    rttm_io.write_rttm(tmp_path / "r.rttm", "rec-1", segs)
    back = rttm_io.read_rttm_segments(tmp_path / "r.rttm")
    assert list(back) == ["rec-1"] and back["rec-1"] == segs
    line = (tmp_path / "r.rttm").read_text().splitlines()[1]
    assert line == "SPEAKER rec-1 1 1.010 2.323 <NA> <NA> speech <NA> <NA>"
    with pytest.raises(ValueError, match="recording id"):
        rttm_io.write_rttm(tmp_path / "bad.rttm", "has space", segs)


def test_a_synthetic_recording_is_recovered_within_the_collar():
    x = bursts(SPANS, 11.0)
    params = S.SegmentParams(window_ms=400, hop_ms=50, aggregate="min", onset=0.5, offset=0.5)
    res = S.segment_audio(LoudWindows(), x, params)
    hyp = res.segments_s()
    assert len(hyp) == len(SPANS)
    for (a, b), (c, d) in zip(SPANS, hyp):
        assert abs(a - c) <= 0.06 and abs(b - d) <= 0.06  # a hop and a frame at most
    comp = detection.recording_components(SPANS, hyp, 11.0, collar_s=0.5)
    assert comp["false_alarm_s"] == 0 and comp["missed_s"] == 0
    # the mean of the windows widens each segment; pyannote's false alarm sees it
    wide = S.segment_audio(LoudWindows(), x, params.replace(aggregate="mean")).segments_s()
    assert detection.recording_components(SPANS, wide, 11.0, collar_s=0.0)["false_alarm_s"] > 0.5


def test_windows_are_batched_and_silent_windows_not_scored():
    x = np.concatenate([np.zeros(3 * SR, np.float32), bursts([(0.2, 0.8)], 1.0)])
    sys_ = LoudWindows()
    sys_.normalization = "rms"  # digital silence cannot be rms-normalized: those windows are 0 without the system
    probs, info = S.frame_probabilities(sys_, x, S.SegmentParams(window_ms=500, hop_ms=250))
    assert info["silent_windows"] > 0 and sys_.seen == info["n_windows"] - info["silent_windows"]
    assert probs[: 2 * 100].max() == 0 and probs.max() == 1


# ------------------------------------------------------------------------------------------ the command
def _two_recordings(tmp_path):
    folder = tmp_path / "recs"
    write_audio(folder / "a.wav", bursts(SPANS, 11.0))
    import soundfile as sf

    # any rate and channel count, as predict reads clips: 44.1 kHz stereo
    y = bursts([(0.5, 1.5)], 3.0, seed=1).astype(np.float64)
    from lib.audio import resample

    y44 = resample(y, SR, 44100)
    sf.write(str(folder / "b.flac"), np.stack([y44, y44], axis=1), 44100)
    return folder


def test_segment_command_writes_rttm_frames_and_the_segments_table(tmp_path):
    folder = _two_recordings(tmp_path)
    out = tmp_path / "out"
    assert main(["segment", "--system", "webrtc", "--audio", str(folder), "--out", str(out), "--no-progress",
                 "--min-speech-ms", "100"]) == 0
    seg = pd.read_csv(out / "segments.csv")
    assert list(seg.columns) == output.SEGMENT_COLUMNS
    assert set(seg["recording_id"]) <= {"a", "b"} and set(seg["system"]) == {"webrtc_vad"}
    assert (seg["end_s"] > seg["start_s"]).all() and seg["p_speech_mean"].between(0, 1).all()
    for rid in ("a", "b"):
        rttm = rttm_io.read_rttm_segments(out / "rttm" / f"{rid}.rttm").get(rid, [])
        mine = seg[seg.recording_id == rid]
        assert [(round(a, 3), round(b, 3)) for a, b in rttm] == [(round(a, 3), round(b, 3)) for a, b in zip(mine.start_s, mine.end_s)]
        probs, frame_s, n = output.read_frames(out / "frames" / f"{rid}.npz")
        assert frame_s == 0.01 and len(probs) == -(-n // 160)
    recs = pd.read_csv(out / "recordings.csv")
    assert recs.set_index("recording_id").loc["b", "duration_s"] == pytest.approx(3.0, abs=1e-3)
    # the same folder may be written again (it holds segment.yaml); a second run replaces its files
    assert main(["segment", "--system", "webrtc", "--audio", str(folder / "a.wav"), "--out", str(out), "--no-progress"]) == 0


def test_segment_with_a_fitted_baseline_from_a_run_folder(tmp_path):
    from lib.baselines import EnergyDetector

    rng = np.random.default_rng(0)
    loud = [bursts([(0.0, 0.5)], 0.5, seed=i) for i in range(12)]
    quiet = [(0.001 * rng.standard_normal(SR // 2)).astype(np.float32) for _ in range(12)]
    det = EnergyDetector().fit(loud[:8] + quiet[:8], ["speech"] * 8 + ["nonspeech"] * 8,
                               loud[8:] + quiet[8:], ["speech"] * 4 + ["nonspeech"] * 4)
    run = tmp_path / "run"
    det.save_to_run(run, "energy")
    write_audio(tmp_path / "rec.wav", bursts(SPANS, 11.0))
    out = S.segment_recordings(f"{run}:energy", tmp_path / "rec.wav", tmp_path / "out",
                               S.SegmentParams(window_ms=500, hop_ms=100, aggregate="min"), progress=False)
    hyp = rttm_io.read_rttm_segments(out / "rttm" / "rec.rttm")["rec"]
    assert detection.recording_components(SPANS, hyp, 11.0, collar_s=0.5)["missed_s"] == 0
    assert pd.read_csv(out / "segments.csv")["system"].unique().tolist() == ["energy"]


def test_segment_with_a_trained_lora_system_of_the_tiny_model(tmp_path):
    """The LoRA path (the tiny model until the mini model lands): windows go through the system's own batched score,
    each window at the system's normalization, exactly as the clips would through predict."""
    from lib import config
    from lib import train as T
    from lib.audio import normalize
    from lib.systems import load_system

    cfg = config.resolve("cpu")
    cfg.update(epochs=1, micro_batch_size=4, grad_accum_steps=1, checkpoint_every_steps=100, eval_batch_size=16,
               extra_trainable=["multi_modal_projector"])
    clips = [bursts([(0.0, 0.5)], 0.5, seed=i) for i in range(4)] + [bursts([], 0.5, seed=i) for i in range(4)]
    T.train_system(cfg, tmp_path / "run", "qwen2audio-attn", clips, ["speech"] * 4 + ["nonspeech"] * 4, progress=False)
    x = bursts([(0.5, 1.5)], 3.0)
    write_audio(tmp_path / "rec.wav", x)
    params = S.SegmentParams(window_ms=1000, hop_ms=500)
    out = S.segment_recordings(f"{tmp_path / 'run'}:qwen2audio-attn", tmp_path / "rec.wav", tmp_path / "out", params,
                               progress=False)
    scorer = load_system(f"{tmp_path / 'run'}:qwen2audio-attn")
    starts = windows.window_starts(len(x), SR, SR // 2)
    direct = scorer.score([normalize(x[s : s + SR], scorer.normalization) for s in starts])
    expect = windows.frames_from_windows(direct, starts, SR, len(x), 160, "mean")
    probs, _, _ = output.read_frames(out / "frames" / "rec.npz")
    np.testing.assert_allclose(probs, expect, atol=1e-5)
    assert pd.read_csv(out / "segments.csv")["system"].unique().tolist() in ([], ["qwen2audio-attn"])


# ------------------------------------------------------------------------------------------ bad input
def _no_system(monkeypatch):
    import lib.systems

    def refuse(*a, **k):
        raise AssertionError("the system was loaded before the input was checked")

    monkeypatch.setattr(lib.systems, "load_system", refuse)


def test_bad_input_is_named_before_a_system_is_loaded(tmp_path, monkeypatch, capsys):
    _no_system(monkeypatch)
    folder = _two_recordings(tmp_path)
    out = str(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        S.segment_recordings("silero", tmp_path / "nope.wav", out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no audio files"):
        S.segment_recordings("silero", tmp_path / "empty", out)
    pd.DataFrame({"file": ["a.wav"]}).to_csv(tmp_path / "m1.csv", index=False)
    with pytest.raises(ValueError, match="lacks a path column"):
        S.segment_recordings("silero", tmp_path / "m1.csv", out, audio_root=folder)
    pd.DataFrame({"path": ["a.wav", "../../etc/passwd"]}).to_csv(tmp_path / "m2.csv", index=False)
    with pytest.raises(ValueError, match="row 3.*outside the audio root"):
        S.segment_recordings("silero", tmp_path / "m2.csv", out, audio_root=folder)
    pd.DataFrame({"path": ["a.wav", "gone.wav"]}).to_csv(tmp_path / "m3.csv", index=False)
    with pytest.raises(FileNotFoundError, match="row 3 \\('gone.wav'\\)"):
        S.segment_recordings("silero", tmp_path / "m3.csv", out, audio_root=folder)
    pd.DataFrame({"path": ["a.wav", "b.flac"], "recording_id": ["x", "x"]}).to_csv(tmp_path / "m4.csv", index=False)
    with pytest.raises(ValueError, match="duplicated recording id"):
        S.segment_recordings("silero", tmp_path / "m4.csv", out, audio_root=folder)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not an audio file"):
        S.segment_recordings("silero", tmp_path / "notes.txt", out)
    # the output: not a file, not someone else's folder, never the inputs' folder
    with pytest.raises(ValueError, match="is a file"):
        S.segment_recordings("silero", folder, tmp_path / "notes.txt")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="did not write"):
        S.segment_recordings("silero", folder, tmp_path / "theirs")
    assert (tmp_path / "theirs" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="holds the input"):
        S.segment_recordings("silero", folder / "a.wav", folder.parent)
    # the command line says it in one line, exit code 2
    assert main(["segment", "--system", "silero", "--audio", str(tmp_path / "m3.csv"), "--audio-root", str(folder),
                 "--out", out]) == 2
    assert "gone.wav" in capsys.readouterr().err


def test_unreadable_audio_is_named_and_nothing_half_written(tmp_path):
    folder = tmp_path / "recs"
    write_audio(folder / "good.wav", bursts(SPANS, 11.0))
    (folder / "zbroken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="zbroken.wav"):
        S.segment_recordings("webrtc", folder, out, progress=False)
    assert not (out / "segments.csv").exists()  # the table is written only when every recording is done
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_bad_parameters_on_the_command_line(tmp_path, capsys):
    write_audio(tmp_path / "r.wav", bursts(SPANS, 11.0))
    assert main(["segment", "--system", "webrtc", "--audio", str(tmp_path / "r.wav"), "--out", str(tmp_path / "o"),
                 "--hop-ms", "2000"]) == 2
    assert "hop_ms" in capsys.readouterr().err
    assert main(["segment", "--system", "nosuch", "--audio", str(tmp_path / "r.wav"), "--out", str(tmp_path / "o")]) == 2
    assert "built-ins" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["silero", "webrtc", "firered"])
def test_every_vad_segments_through_its_own_frames(spec, tmp_path):
    from lib.systems import load_system

    system = load_system(spec)
    x = bursts(SPANS, 11.0)
    res = S.segment_audio(system, x, S.SegmentParams(onset=0.5, offset=0.3, min_silence_ms=200))
    assert res.source == "vad-frames" and res.n_windows == 0
    assert len(res.probs) == -(-len(x) // 160) and ((res.probs >= 0) & (res.probs <= 1)).all()
    assert all(0 <= a < b <= 11.0 for a, b in res.segments_s())


def test_segment_measures_against_rttm_references(tmp_path, capsys):
    write_audio(tmp_path / "recs" / "a.wav", bursts(SPANS, 11.0))
    rttm_io.write_rttm(tmp_path / "refs" / "a.rttm", "a", SPANS)
    out = tmp_path / "out"
    assert main(["segment", "--system", "webrtc", "--audio", str(tmp_path / "recs"), "--out", str(out), "--no-progress",
                 "--reference", str(tmp_path / "refs"), "--collar", "0.5", "--min-speech-ms", "100"]) == 0
    import json

    m = json.loads((out / "metrics.json").read_text())
    per = pd.read_csv(out / "metrics_by_recording.csv")
    hyp = rttm_io.read_rttm_segments(out / "rttm" / "a.rttm").get("a", [])
    expect = detection.rates(detection.recording_components(SPANS, hyp, 11.0, 0.5))
    assert m["detection_error_rate"] == pytest.approx(expect["detection_error_rate"]) and m["collar_s"] == 0.5
    assert per["recording_id"].tolist() == ["a"] and "detection error rate" in capsys.readouterr().out
    rttm_io.write_rttm(tmp_path / "other.rttm", "zzz", SPANS)
    with pytest.raises(ValueError, match="name none of the recordings"):
        S.segment_recordings("webrtc", tmp_path / "recs", tmp_path / "out2", reference=tmp_path / "other.rttm")
