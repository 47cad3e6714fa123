"""Chapter 09's lib functions on small synthetic tables: the scene overview, the error tables, the findings, the
figures and the test pass (a fake window system over one recording)."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from lib import config, recordings  # noqa: E402
from lib.data import rttm as rttm_io  # noqa: E402
from lib.recordings import analysis, figures  # noqa: E402
from lib.recordings.segment import SegmentParams  # noqa: E402
from lib.recordings.study import DevChoice, SceneSplit, recordings_of  # noqa: E402

SR = 16000


def _events() -> pd.DataFrame:
    """Two scenes: s1 with a short utterance and a dog over speech, s2 with a long utterance and rain."""
    rows = [
        dict(scene_id="s1", kind="speech", onset_s=1.0, end_s=1.4, regions=[(1.0, 1.4)], speech_s=0.4, snr_db=3.0,
             category="speech", group_id="spk1", overlaps_speech=False),
        dict(scene_id="s1", kind="nonspeech", onset_s=1.2, end_s=2.0, regions=[], speech_s=0.0, snr_db=10.0,
             category="dog", group_id="d1", overlaps_speech=True),
        dict(scene_id="s2", kind="speech", onset_s=0.0, end_s=3.0, regions=[(0.0, 3.0)], speech_s=3.0, snr_db=20.0,
             category="speech", group_id="spk2", overlaps_speech=False),
        dict(scene_id="s2", kind="nonspeech", onset_s=4.0, end_s=5.0, regions=[], speech_s=0.0, snr_db=10.0,
             category="rain", group_id="r1", overlaps_speech=False),
    ]
    return pd.DataFrame(rows)


REFS = {"s1": [(1.0, 1.4)], "s2": [(0.0, 3.0)]}
# system a finds everything and calls the dog speech; system b misses the short utterance
HYPS = {"a": {"s1": [(1.0, 2.0)], "s2": [(0.0, 3.0)]}, "b": {"s2": [(0.0, 3.0)]}}


def _metrics() -> pd.DataFrame:
    base = dict(n_recordings=2, audio_s=120.0, reference_speech_s=60.0, false_alarm_rate=0.1, miss_rate=0.1,
                precision=0.9, recall=0.9, frame_auc=0.95, frame_auc_lo=0.9, frame_auc_hi=0.99, rtf=0.01)
    return pd.DataFrame([
        dict(base, system="qwen2audio-attn", detection_error_rate=0.20, detection_error_rate_lo=0.15, detection_error_rate_hi=0.25),
        dict(base, system="silero_vad", detection_error_rate=0.10, detection_error_rate_lo=0.05, detection_error_rate_hi=0.14,
             frame_auc=np.nan),
    ])


def test_error_tables_say_what_is_missed_and_what_is_called_speech():
    err = analysis.speech_errors(_events(), HYPS, REFS)
    assert set(err["system"]) == {"a", "b"} and len(err) == 8
    missed = analysis.missed_by(err)
    assert missed.loc["b", ("speech duration", "< 0.5 s")] == pytest.approx(1.0)
    assert missed.loc["a", ("speech duration", "< 0.5 s")] == pytest.approx(0.0)
    assert missed.loc["b", ("SNR", "> 15 dB")] == pytest.approx(0.0)
    fa = analysis.false_alarms_by_category(err)
    assert fa.index.tolist() == ["dog", "rain"]  # most called speech first
    assert fa.loc["dog", "a"] == pytest.approx(1.0) and fa.loc["dog", "b"] == pytest.approx(0.0)
    assert analysis.timeline_examples(_events()) == ["s1", "s2"]


def test_scene_overview_counts_each_split():
    recs = pd.DataFrame({"recording_id": ["s1", "s2"], "path": ["x", "y"], "duration_s": [6.0, 6.0]})
    table = analysis.scene_overview({"test": SceneSplit(Path("."), recs, REFS, _events())})
    row = table.iloc[0]
    assert row["scenes"] == 2 and row["minutes"] == pytest.approx(0.2) and row["speech share"] == pytest.approx(3.4 / 12)
    assert (row["utterances"], row["non-speech events"], row["events over speech"]) == (2, 2, 1)
    assert (row["speakers"], row["non-speech categories"]) == (2, 2)


def test_findings_compare_the_fine_tuned_system_with_the_best_vad():
    err = analysis.speech_errors(_events(), {"qwen2audio-attn": HYPS["a"], "silero_vad": HYPS["b"]}, REFS)
    text = analysis.findings(_metrics(), err, 2, 0.5, smoke="SMOKE ", profile="cpu")
    assert text.startswith("SMOKE On 2 test scenes (2.0 min, speech 50% of the time), collar 0.5 s:")
    assert "* **silero_vad**: detection error rate 0.100 [0.050, 0.140]" in text
    assert "frame AUC 0.950 [0.900, 0.990]" in text and text.index("silero_vad") < text.index("* **qwen2audio-attn**")
    assert "against the best VAD here, **silero_vad**: detection error rate 0.200 against 0.100 (worse, intervals apart)" in text
    assert "by 1 of 2 systems" in text and "dog (0.50)" in text and "smoke model" in text


def test_study_parameters_come_from_the_profile():
    study = config.section(config.resolve("cpu"), recordings.RecordingsStudy)
    assert isinstance(study.seg_frame_ms, float) and isinstance(study.bootstrap_reps, int)
    assert study.seg_windows_ms and study.seg_onsets


class _Loud:
    """A window system: speech where the window is loud."""

    name, kind, normalization = "loud", "fake", None

    def score(self, clips):
        return [float(np.abs(c).max() > 0.1) for c in clips]


def test_run_test_and_the_figures_on_one_recording(tmp_path):
    from lib.audio import write_audio

    x = np.zeros(4 * SR, np.float32)
    x[SR:2 * SR] = 0.3 * np.sin(2 * np.pi * 200 * np.arange(SR) / SR)
    write_audio(tmp_path / "scenes" / "s1.wav", x)
    rttm_io.write_rttm(tmp_path / "scenes" / "s1.rttm", "s1", [(1.0, 2.0)])
    recs, refs = recordings_of(tmp_path / "scenes")
    test = SceneSplit(tmp_path / "scenes", recs, refs, _events()[_events()["scene_id"] == "s1"].assign(scene_id="s1"))
    params = SegmentParams(window_ms=250, hop_ms=125, frame_ms=10, aggregate="min")
    choice = DevChoice({"loud": ("loud", _Loud())}, {"loud": pd.DataFrame([{"onset": 0.5}])}, {"loud": params}, {"loud": 0.0})
    study = config.section(config.resolve("cpu"), recordings.RecordingsStudy, bootstrap_reps=20)
    res = recordings.run_test(choice, test, study, tmp_path / "out", "t", own_helpers=())
    m = res.metrics.set_index("system").loc["loud"]
    assert m["detection_error_rate"] == pytest.approx(0.0) and m["setting"] == choice.setting("loud")
    assert (tmp_path / "out" / "metrics.csv").exists() and res.hyps["loud"]["s1"] == [(1.0, 2.0)]
    metrics = res.metrics.assign(detection_error_rate_lo=0.0, detection_error_rate_hi=0.0)
    figs = [figures.detection_figure(metrics, res.frames, "t"),
            figures.scene_timeline("s1", test, res, choice, ["loud"], "t")]
    err = analysis.speech_errors(_events(), HYPS, REFS)
    figs.append(figures.missed_speech_figure(err, ["a", "b"], "t"))
    figs.append(figures.missed_speech_figure(err[err["system"] == "a"], ["a"], "t"))  # one system (seg_systems=[one])
    assert all(len(f.axes) >= 2 for f in figs)
