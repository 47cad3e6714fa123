"""Scenes (lib.recordings.scenes) with exact RTTM references from one split's sources, and their measurement
(lib.recordings.detection: pyannote.metrics, frame AUC, bootstrap over recordings; lib.recordings.study: error
analysis)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from lib.recordings import detection, output, scenes, study, windows
from lib.recordings import segment as S
from lib.data import rttm as rttm_io

SR = 16000


def scene_params(**changes) -> scenes.SceneParams:
    """The cpu profile's scene parameters (lib/profiles, where they are defined), with some changed."""
    from lib import config

    return dataclasses.replace(scenes.SceneParams.from_cfg(config.resolve("cpu"), "test"), **changes)


# ------------------------------------------------------------------------------------------ detection
def test_components_agree_with_pyannotes_detection_error_rate():
    from pyannote.core import Segment, Timeline
    from pyannote.metrics.detection import DetectionErrorRate

    rng = np.random.default_rng(3)
    for _ in range(20):
        ref = sorted((a, a + rng.uniform(0.1, 2)) for a in np.cumsum(rng.uniform(0.5, 3, 5)))
        hyp = sorted((a, a + rng.uniform(0.1, 2)) for a in np.cumsum(rng.uniform(0.5, 3, 5)))
        dur = 25.0
        for collar in (0.0, 0.5):
            c = detection.recording_components(ref, hyp, dur, collar)
            der = DetectionErrorRate(collar=collar)(detection.annotation(ref, "r"), detection.annotation(hyp, "r"),
                                                   uem=Timeline([Segment(0, dur)], uri="r"), detailed=True)
            assert c["false_alarm_s"] == pytest.approx(der["false alarm"], abs=1e-9)
            assert c["missed_s"] == pytest.approx(der["miss"], abs=1e-9)
            assert c["reference_s"] == pytest.approx(der["total"], abs=1e-9)
            assert detection.rates(c)["detection_error_rate"] == pytest.approx(der["detection error rate"], abs=1e-9)


def test_known_errors_and_the_whole_recording_as_uem():
    c = detection.recording_components([(1, 3), (5, 6)], [(0.5, 3), (7, 8)], 10.0, collar_s=0.0)
    assert c == {"duration_s": 10.0, "reference_s": 3.0, "false_alarm_s": 1.5, "missed_s": 1.0, "hypothesis_s": 3.5,
                 "true_positive_s": 2.0}
    # false alarms before the first and after the last reference segment count (uem = whole recording)
    assert detection.recording_components([(4, 5)], [(0, 1), (9, 10)], 10.0, 0.0)["false_alarm_s"] == 2.0
    # a collar of 0.5 s takes 0.25 s either side of each reference boundary out of scoring
    c = detection.recording_components([(1, 3)], [(0.8, 3.2)], 10.0, collar_s=0.5)
    assert c["false_alarm_s"] == 0 and c["missed_s"] == 0 and c["reference_s"] == pytest.approx(1.5)


def test_evaluate_pools_recordings_and_bootstraps_over_them():
    per = pd.DataFrame([
        {"recording_id": "a", **detection.recording_components([(1, 3)], [(1, 3)], 10.0, 0.0)},
        {"recording_id": "b", **detection.recording_components([(1, 3)], [(1, 2)], 10.0, 0.0)},
        {"recording_id": "c", **detection.recording_components([(1, 3)], [(1, 3), (5, 7)], 10.0, 0.0)},
    ])
    frames = {r: (detection.frame_labels([(1, 3)], 1000, 0.01), np.r_[np.zeros(100), np.ones(200), np.zeros(700)])
              for r in "abc"}
    out = detection.evaluate(per, frames, n_boot=300, seed=1)
    assert out["detection_error_rate"] == pytest.approx((2 + 1) / 6)
    assert out["false_alarm_rate"] == pytest.approx(2 / 6) and out["miss_rate"] == pytest.approx(1 / 6)
    assert out["precision"] == pytest.approx(5 / 7) and out["recall"] == pytest.approx(5 / 6)
    assert out["frame_auc"] == 1.0 and out["frame_auc_lo"] == 1.0
    assert out["detection_error_rate_lo"] <= out["detection_error_rate"] <= out["detection_error_rate_hi"]
    assert out["detection_error_rate_lo"] < out["detection_error_rate_hi"]  # recordings differ: the interval is not a point
    assert detection.interval_text(out, "frame_auc") == "1.000 [1.000, 1.000]"


def test_frame_labels_coverage_and_event_errors():
    assert detection.frame_labels([(0.02, 0.05)], 7, 0.01).tolist() == [0, 0, 1, 1, 1, 0, 0]
    assert detection.coverage([(0, 2), (4, 6)], [(1, 5)]) == pytest.approx(0.5)
    events = pd.DataFrame([
        {"scene_id": "s", "kind": "speech", "onset_s": 1.0, "end_s": 3.0, "regions": [(1.0, 2.0), (2.5, 3.0)]},
        {"scene_id": "s", "kind": "nonspeech", "onset_s": 2.0, "end_s": 6.0, "regions": []},
    ])
    err = study.event_errors(events, {"s": [(1.5, 5.0)]}, {"s": [(1.0, 2.0), (2.5, 3.0)]})
    assert err.loc[0, "missed_share"] == pytest.approx(1 - 1.0 / 1.5)
    # the non-speech event outside reference speech: 2.0-2.5 and 3.0-6.0 (3.5 s), called speech over 0.5 + 2.0 s
    assert err.loc[1, "false_alarm_share"] == pytest.approx(2.5 / 3.5)


# ------------------------------------------------------------------------------------------ scenes
@pytest.fixture(scope="module")
def synthetic_bank(synthetic_corpus, tmp_path_factory):
    from lib import config, data

    cfg = config.resolve("cpu", data_dir=str(synthetic_corpus), bank_dir=str(tmp_path_factory.mktemp("banks")),
                         durations_ms=[200], snrs_db=[10], noise_types=["real"], clips_per_cell=12,
                         max_sources_per_class=None, bandlimit_augment=False)
    return data.build_bank(cfg, progress=False)


def test_scenes_come_from_one_split_with_exact_references(synthetic_bank, tmp_path):
    from lib import data

    params = scene_params(n_scenes=2, duration_s=12.0, seed=5, rt60s_s=(0.0,), overlap_prob=0.5)
    folder = scenes.build_scenes(synthetic_bank, "test", params, scenes_dir=tmp_path / "a")
    sc, ev = scenes.read_scenes(folder)
    assert len(sc) == 2 and (ev["kind"] == "speech").any() and (ev["kind"] == "nonspeech").any()
    bank = data.load_bank(synthetic_bank)
    split_of = bank.drop_duplicates("group_id").set_index("group_id")["split"]
    assert set(split_of.reindex(ev["group_id"].unique())) == {"test"}  # no train or dev speaker or recording
    for r in sc.itertuples(index=False):
        regions = rttm_io.read_rttm_segments(folder / r.rttm).get(r.recording_id, [])
        mine = ev[(ev.scene_id == r.recording_id) & (ev.kind == "speech")]
        placed = sorted(x for rs in mine["regions"] for x in rs)
        assert len(regions) >= 1
        from lib.data.rttm import merge_intervals as _union

        # the RTTM says exactly where speech was placed (boundaries on whole milliseconds: 3 decimals are exact)
        np.testing.assert_allclose(np.array(regions), np.array(_union(placed)), rtol=0, atol=1e-9)
        assert all(abs(v * 1000 - round(v * 1000)) < 1e-6 for rg in placed for v in rg)
        for rg, (a, b) in zip(mine["regions"], zip(mine["onset_s"], mine["end_s"])):
            assert all(a - 1e-9 <= x <= y <= b + 1e-9 for x, y in rg)  # speech lies within its utterance
        x = S.load_recording(folder / r.path)
        assert len(x) == int(12.0 * SR) and np.max(np.abs(x)) <= 0.99
    # seeded: the same scenes again, byte for byte; another seed gives others
    again = scenes.build_scenes(synthetic_bank, "test", params, scenes_dir=tmp_path / "b")
    for r in sc.itertuples(index=False):
        assert (folder / r.path).read_bytes() == (again / r.path).read_bytes()
        assert (folder / r.rttm).read_text() == (again / r.rttm).read_text()
    other = scenes.build_scenes(synthetic_bank, "test", params.__class__(**{**params.__dict__, "seed": 6}), scenes_dir=tmp_path / "a")
    assert other != folder
    assert scenes.build_scenes(synthetic_bank, "test", params, scenes_dir=tmp_path / "a") == folder  # reused


def test_dev_and_test_scenes_share_no_group(synthetic_bank, tmp_path):
    params = scene_params(n_scenes=2, duration_s=10.0, rt60s_s=(0.0,))
    groups = {s: set(scenes.read_scenes(scenes.build_scenes(synthetic_bank, s, params, scenes_dir=tmp_path))[1]["group_id"])
              for s in ("dev", "test")}
    assert groups["dev"] and groups["test"] and not groups["dev"] & groups["test"]


def test_speech_activity_splits_at_long_pauses_only():
    t = np.arange(3 * SR) / SR
    x = np.where((t < 0.5) | ((t > 0.6) & (t < 1.0)) | (t > 2.0), np.sin(2 * np.pi * 200 * t), 1e-6)
    regions = scenes.speech_activity(x, activity_db=35, min_pause_s=0.25)
    assert regions == [(0, 16000), (32000, 48000)]  # the 100 ms pause bridged, the 1 s one not


def test_scene_params_are_checked():
    with pytest.raises(ValueError, match="scene count"):
        scene_params(n_scenes=0)
    with pytest.raises(ValueError, match="rt60"):
        scene_params(rt60s_s=(5.0,))
    with pytest.raises(ValueError, match="bed"):
        scene_params(bed="brown")


@pytest.mark.data
def test_silero_recovers_speech_in_a_clean_scene_within_the_collar(corpus_bank, tmp_path):
    """Real speech from the corpus's test split in quiet pink noise at 20 dB, no reverberation: Silero's own frames
    through segment find it (detection error rate under 0.35 with the book's collar; short letters and digits
    are the hard part)."""
    from lib.systems import load_system

    params = scene_params(n_scenes=2, duration_s=30.0, snr_range_db=(20.0, 20.0), rt60s_s=(0.0,), bed="pink",
                                overlap_prob=0.0)
    folder = scenes.build_scenes(corpus_bank, "test", params, scenes_dir=tmp_path)
    recs, refs = study.recordings_of(folder)
    out = study.run_on_test(load_system("silero"), "silero", S.SegmentParams(onset=0.5, offset=0.35, min_silence_ms=200),
                                 recs, tmp_path / "out", "t")
    pooled, per, _ = output.measure(out, refs, collar_s=0.5, n_boot=50, level=0.95, seed=0)
    assert pooled["detection_error_rate"] < 0.35 and pooled["frame_auc"] > 0.9


def test_choose_settings_finds_the_setting_that_recovers_an_ideal_detector():
    """Frames of an ideal 'any speech in the window' detector: the min aggregation at any onset recovers the
    reference exactly; the dev choice must find a setting with zero error, and the table is sorted."""
    n, win, hop, frame = 12 * SR, SR, SR // 4, SR // 100
    ref = [(2.0, 4.0), (7.0, 7.5)]
    starts = windows.window_starts(n, win, hop)
    scores = np.array([float(any(s / SR < b and (s + win) / SR > a for a, b in ref)) for s in starts])
    frames = {(1000, agg): {"r": windows.frames_from_windows(scores, starts, win, n, frame, agg)} for agg in ("mean", "max", "min")}
    table = study.choose_settings(frames, {"r": ref}, {"r": 12.0}, 10, [0.5, 0.9], [0.0], [0, 250], [0], collar_s=0.5)
    assert len(table) == 3 * 2 * 2 and table["detection_error_rate"].is_monotonic_increasing
    best = table.iloc[0]
    assert best["detection_error_rate"] == 0 and best["aggregate"] in ("min", "mean")
    assert table[table["aggregate"] == "max"]["detection_error_rate"].min() > 0  # max widens each segment by a window
    p = study.params_from_row(best, 250, 10)
    assert p.window_ms == 1000 and p.hop_ms == 250 and p.onset == best["onset"]
    vad_params = study.params_from_row({"window_ms": float("nan"), "onset": 0.5, "offset": 0.3, "min_speech_ms": 0,
                                             "min_silence_ms": 100}, 250, 10)
    assert vad_params.offset == 0.3 and vad_params.min_silence_ms == 100


def test_own_helper_output_is_measured_without_frames(tmp_path):
    x = np.concatenate([np.zeros(SR, np.float32), (0.3 * np.sin(2 * np.pi * 200 * np.arange(SR) / SR)).astype(np.float32),
                        np.zeros(SR, np.float32)])
    from lib.audio import write_audio

    write_audio(tmp_path / "r.wav", x)
    recs = pd.DataFrame({"recording_id": ["r"], "path": [str(tmp_path / "r.wav")]})
    out = study.run_own_helper("firered", recs, tmp_path / "own", "t")
    pooled, per, frames = output.measure(out, {"r": [(1.0, 2.0)]}, 0.5, 20, 0.95, 0)
    assert "frame_auc" not in pooled and frames == {} and len(per) == 1 and pooled["rtf"] > 0
    assert list(pd.read_csv(out / "segments.csv").columns) == output.SEGMENT_COLUMNS


def test_weighted_frame_auc_equals_sklearn_on_the_resampled_frames():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    labels = [rng.random(n) < 0.4 for n in (50, 80, 30)]
    probs = [np.round(rng.random(len(y)) * 0.5 + 0.4 * y, 2) for y in labels]  # rounded: ties on purpose
    auc = detection._WeightedAUC(labels, probs)
    assert auc(np.ones(3)) == pytest.approx(roc_auc_score(np.concatenate(labels), np.concatenate(probs)))
    for pick in ([0, 0, 2], [1, 1, 1], [2, 0, 1]):
        y = np.concatenate([labels[i] for i in pick])
        p = np.concatenate([probs[i] for i in pick])
        assert auc(np.bincount(pick, minlength=3)) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_any_folder_of_recordings_with_rttm_references(tmp_path):
    from lib.audio import write_audio

    write_audio(tmp_path / "audio" / "rec1.wav", np.zeros(2 * SR, np.float32))
    rttm_io.write_rttm(tmp_path / "rttm" / "rec1.rttm", "rec1", [(0.5, 1.0)])
    recs, refs = study.recordings_of(tmp_path)
    assert recs["recording_id"].tolist() == ["rec1"] and recs["duration_s"].iloc[0] == pytest.approx(2.0)
    assert refs == {"rec1": [(0.5, 1.0)]}
    write_audio(tmp_path / "audio" / "rec2.wav", np.zeros(SR, np.float32))
    with pytest.raises(FileNotFoundError, match="rec2.wav"):
        study.recordings_of(tmp_path)
