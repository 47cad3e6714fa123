"""Baselines (lib.baselines): Silero and WebRTC VADs as clip scorers, the energy detector and the log-mel
classifier. Unit tests on synthetic audio; integration tests on a few real corpus clips (DATA_DIR or
../shared/data; skipped with the reason when the corpus is absent)."""
from __future__ import annotations

import inspect
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib import baselines as bl
from lib.config import PROJECT_ROOT
from lib.results import predictions_frame
from lib.stats.metrics import balanced_accuracy
from lib.systems import load_system

SR = 16000


def tone(ms: float, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(SR * ms / 1000)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(ms: float, amp: float = 0.05, seed: int = 0) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(SR * ms / 1000))).astype(np.float32)


# --------------------------------------------------------------------------------- corpus fixtures
# ``data_dir`` (tests/conftest.py) is the real corpus; tests that need it skip with the reason when it is absent.
def _read(data_dir: Path, rel: str) -> np.ndarray:
    import soundfile as sf

    x, sr = sf.read(str(data_dir / rel), dtype="float32")
    assert sr == SR and x.ndim == 1
    return x


@pytest.fixture(scope="module")
def vad_clips(data_dir: Path) -> dict[str, np.ndarray]:
    """Two clearly labelled real clips: LibriSpeech speech and a stationary non-speech sound (rain/wind...)."""
    m = pd.read_csv(data_dir / "manifest.csv")
    speech = m[(m.label == "speech") & m.source.str.contains("LibriSpeech", na=False)].sort_values("path").iloc[0]
    quiet = m[(m.label == "nonspeech") & m.category.isin(["rain", "wind", "water_drops", "engine", "vacuum_cleaner", "pouring_water"])]
    if quiet.empty:
        quiet = m[m.label == "nonspeech"]
    non = quiet.sort_values("path").iloc[0]
    return {"speech": _read(data_dir, speech.path)[:SR], "nonspeech": _read(data_dir, non.path)[:SR]}


@pytest.fixture(scope="module")
def small_corpus(data_dir: Path) -> dict[str, tuple[list[np.ndarray], list[str]]]:
    """~300 real 500 ms crops (middle of each file, RMS-normalized), split by speaker / file so no source
    crosses train, dev and test."""
    from lib.audio import normalize

    m = pd.read_csv(data_dir / "manifest.csv", keep_default_na=False)
    parts = []
    for label in ("speech", "nonspeech"):
        parts.append(m[m.label == label].sample(150, random_state=0))
    m = pd.concat(parts)
    out: dict[str, tuple[list, list]] = {"train": ([], []), "dev": ([], []), "test": ([], [])}
    for row in m.itertuples():
        group = row.speaker or row.original_path.split(" [segment")[0]
        split = ["train", "train", "dev", "test"][zlib.crc32(group.encode()) % 4]
        x = _read(data_dir, row.path)
        c = len(x) // 2
        out[split][0].append(normalize(x[max(0, c - 4000) : c + 4000], "rms"))
        out[split][1].append(row.label)
    return out


# ---------------------------------------------------------------------------------- threshold rule
def test_choose_threshold_maximises_balanced_accuracy_and_prefers_half():
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    y = np.array([0, 0, 1, 0, 1, 1])
    t = bl.choose_threshold(p, y)
    assert balanced_accuracy(y, p >= t) == pytest.approx(2 / 3 + 1 / 6)  # best achievable: 5/6 at t in (0.2,0.3] or (0.6,0.7]
    # two cut-offs tie: the one nearest 0.5 (0.65) wins over 0.25
    assert t == pytest.approx(0.65)
    assert bl.choose_threshold(np.array([0.1, 0.9]), np.array([0, 1])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="both classes"):
        bl.choose_threshold(p, np.ones(6))


# ------------------------------------------------------------------------------------------- Silero
def test_silero_restores_torch_threads_in_a_fresh_process():
    code = (
        "import torch; torch.set_num_threads(2); "
        "from lib.baselines import SileroVAD; SileroVAD(); "
        "import silero_vad; print(torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "2"


def test_silero_restores_threads_in_process():
    import torch

    n = torch.get_num_threads()
    vad = bl.SileroVAD()
    assert torch.get_num_threads() == n
    vad.score([tone(100)])  # scores on one thread, then gives the caller's count back
    assert torch.get_num_threads() == n


def test_silero_scores_are_probabilities_and_short_clips_are_padded():
    vad = bl.SileroVAD()
    short = tone(10)  # 160 samples < one 512-sample window
    s = vad.score([short, tone(300), noise(1000)])
    assert s.shape == (3,) and ((0 <= s) & (s <= 1)).all()
    padded = np.zeros(512, np.float32)
    padded[: len(short)] = short
    assert vad.score([padded])[0] == pytest.approx(s[0], abs=1e-6)
    assert len(vad.frame_probs([tone(1000)])[0]) == 32  # ceil(16000 / 512)
    with pytest.raises(ValueError, match="clip 1"):
        vad.score([tone(100), np.zeros((2, 100), np.float32)])


def test_silero_state_reset_makes_scores_order_independent():
    vad = bl.SileroVAD()
    a, b = tone(500, 200, 0.5) + noise(500, 0.02), noise(500, 0.1, seed=3)
    alone = bl.SileroVAD().score([b])[0]
    assert vad.score([a, b])[1] == pytest.approx(alone, abs=1e-5)  # batched with A
    vad.score([a])
    assert vad.score([b])[0] == pytest.approx(alone, abs=1e-6)  # after A on the same object
    one_by_one = bl.SileroVAD(batch_size=1)
    assert np.allclose(one_by_one.score([a, b, a]), vad.score([a, b, a]), atol=1e-5)


@pytest.mark.data
def test_silero_real_speech_high_nonspeech_lower(vad_clips):
    vad = bl.SileroVAD()
    sp, ns = vad.score([vad_clips["speech"], vad_clips["nonspeech"]])
    assert sp > 0.9
    assert ns < sp - 0.3
    # order independence on real clips too
    assert vad.score([vad_clips["nonspeech"], vad_clips["speech"]])[::-1] == pytest.approx([sp, ns], abs=1e-5)


# ------------------------------------------------------------------------------------------- WebRTC
def test_webrtc_int16_conversion():
    x = np.array([1.0, -1.0, 0.5, 2.0, -3.0, 0.0, 1e-5], dtype=np.float32)
    assert bl.WebRTCVAD.to_int16(x).tolist() == [32767, -32767, 16384, 32767, -32767, 0, 0]


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_webrtc_modes_and_frames(mode, frame_ms):
    vad = bl.WebRTCVAD(mode=mode, frame_ms=frame_ms)
    assert vad.settings == f"mode{mode}-{frame_ms}ms"
    clip = tone(200, 300, 0.3) + noise(200, 0.01)
    frames = vad.voiced_frames(clip)
    assert len(frames) == 200 // frame_ms
    s = vad.score([clip, np.zeros(SR // 5, np.float32), tone(5)])
    assert ((0 <= s) & (s <= 1)).all()
    assert s[1] == 0.0  # digital silence is never voiced
    assert s[2] in (0.0, 1.0)  # 5 ms clip: one zero-padded frame


def test_webrtc_fresh_detector_per_clip_and_bad_settings():
    vad = bl.WebRTCVAD(mode=1, frame_ms=10)
    a, b = tone(300, 250, 0.4), noise(300, 0.2, seed=1)
    assert vad.score([a, b])[1] == vad.score([b])[0] == bl.WebRTCVAD(mode=1, frame_ms=10).score([b])[0]
    with pytest.raises(ValueError, match="0, 1, 2 or 3"):
        bl.WebRTCVAD(mode=4)
    with pytest.raises(ValueError, match="10, 20 or 30"):
        bl.WebRTCVAD(frame_ms=25)


@pytest.mark.data
def test_webrtc_real_clips_more_aggressive_modes_call_fewer_frames_voiced(vad_clips):
    clips = [vad_clips["speech"], vad_clips["nonspeech"]]
    scores = np.array([bl.WebRTCVAD(mode=m).score(clips) for m in range(4)])  # rows: modes 0..3
    assert (scores[:, 0] > 0.3).all()  # real speech has voiced frames in every mode
    assert (np.diff(scores, axis=0) <= 1e-9).all()  # never more voiced frames in a more aggressive mode
    # (WebRTC calls much stationary noise voiced, e.g. rain: so no claim that noise scores low)


def test_builtins_load_through_the_registry():
    s = load_system("silero")
    w = load_system("webrtc")
    assert s.name == "silero_vad" and w.name == "webrtc_vad"
    assert s.normalization is None and w.normalization is None
    assert 0 <= s.score([tone(100)])[0] <= 1 and 0 <= w.score([tone(100)])[0] <= 1
    assert load_system("webrtc", mode=0, frame_ms=20).settings == "mode0-20ms"


# ------------------------------------------------------------------------------------ fitted: synthetic
def _synthetic(n: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """'speech' = amplitude-modulated harmonic tone in noise; 'nonspeech' = stationary noise."""
    rng = np.random.default_rng(seed)
    audios, labels = [], []
    for i in range(n):
        ms = rng.choice([100, 200, 500])
        t = np.arange(int(SR * ms / 1000)) / SR
        bg = rng.standard_normal(len(t)) * 0.02
        if i % 2 == 0:
            f0 = rng.uniform(100, 250)
            env = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 6) * t))
            x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6)) * env * 0.1 + bg
            labels.append("speech")
        else:
            x = bg * rng.uniform(1, 5)
            labels.append("nonspeech")
        audios.append(x.astype(np.float32))
    return audios, labels


@pytest.mark.parametrize("cls", [bl.EnergyDetector, bl.LogMelClassifier])
def test_fit_api_has_no_place_for_test_data(cls):
    params = list(inspect.signature(cls.fit).parameters)
    assert params == ["self", "train_audios", "train_labels", "dev_audios", "dev_labels"]


@pytest.mark.parametrize("cls", [bl.EnergyDetector, bl.LogMelClassifier])
def test_threshold_comes_from_dev(cls):
    tr, dv = _synthetic(60, 0), _synthetic(30, 1)
    sys_ = cls().fit(*tr, *dv)
    y_dev = np.array(dv[1]) == "speech"
    assert sys_.threshold == bl.choose_threshold(sys_.score(dv[0]), y_dev)
    assert sys_.fit_info["threshold_chosen_on"] == "dev"
    # the same training data with other dev labels gives the same model but (here) another threshold
    flipped = ["nonspeech" if l == "speech" else "speech" for l in dv[1]]
    other = cls().fit(*tr, dv[0], flipped)
    assert np.allclose(other.score(dv[0]), sys_.score(dv[0]))
    assert other.threshold != sys_.threshold


def test_fit_rejects_one_class_and_bad_labels():
    tr, dv = _synthetic(20, 0), _synthetic(10, 1)
    with pytest.raises(ValueError, match="both classes"):
        bl.EnergyDetector().fit(tr[0], ["speech"] * 20, *dv)
    with pytest.raises(ValueError, match="unknown labels"):
        bl.EnergyDetector().fit(tr[0], ["talk"] * 20, *dv)
    with pytest.raises(ValueError, match="normalization"):
        bl.EnergyDetector(normalization="loud")
    with pytest.raises(RuntimeError, match="fit"):
        bl.LogMelClassifier().score([tone(100)])


def test_logmel_handles_clips_shorter_than_a_window():
    clf = bl.LogMelClassifier(hop_length=160)
    f = clf.features([tone(20), tone(5), tone(1000)])
    assert f.shape == (3, 120) and np.isfinite(f).all()
    assert bl.EnergyDetector().features([tone(5)]).shape == (1, 1)


def test_energy_feature_values():
    x = np.concatenate([np.zeros(1600, np.float32), np.full(1600, 0.1, np.float32)])
    e = bl.EnergyDetector(statistic="max").features([x])[0, 0]
    assert e == pytest.approx(-20.0, abs=1e-6)  # a frame of constant 0.1: 10 log10(0.01)
    r = bl.EnergyDetector(statistic="range").features([x])[0, 0]
    assert r == pytest.approx(80.0, abs=1e-3)  # -20 dB minus the -100 dB floor of silence


@pytest.mark.parametrize("cls,kwargs", [(bl.EnergyDetector, {"statistic": "range"}), (bl.LogMelClassifier, {}),
                                        (bl.LogMelClassifier, {"model": "hgb"})])
def test_save_load_round_trip_gives_identical_scores(tmp_path, cls, kwargs):
    tr, dv = _synthetic(60, 0), _synthetic(30, 1)
    sys_ = cls(normalization="rms", seed=3, **kwargs).fit(*tr, *dv)
    folder = sys_.save_to_run(tmp_path)
    assert (folder / "system.yaml").exists() and (folder / bl.MODEL_FILE).exists()
    back = load_system(str(tmp_path))  # the run folder holds one system: no name needed
    probe = _synthetic(20, 2)[0]
    assert np.array_equal(back.score(probe), sys_.score(probe))
    assert back.threshold == sys_.threshold and back.normalization == "rms" and back.seed == 3
    assert back.name == sys_.name and back.params() == sys_.params()


def test_load_system_picks_a_named_system_from_a_run_folder(tmp_path):
    tr, dv = _synthetic(40, 0), _synthetic(20, 1)
    e = bl.EnergyDetector().fit(*tr, *dv)
    m = bl.LogMelClassifier().fit(*tr, *dv)
    e.save_to_run(tmp_path)
    m.save_to_run(tmp_path)
    m.save_to_run(tmp_path, name="logmel_copy")
    with pytest.raises(ValueError, match="several systems"):
        load_system(str(tmp_path))
    probe = _synthetic(10, 5)[0]
    assert np.array_equal(load_system(f"{tmp_path}:logmel").score(probe), m.score(probe))
    assert np.array_equal(load_system(f"{tmp_path}:energy").score(probe), e.score(probe))
    assert load_system(f"{tmp_path}:logmel_copy").name == "logmel_copy"
    spec = load_system(str(tmp_path / "systems" / "energy"))
    assert spec.kind == "energy"


def test_unsaved_or_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="fit"):
        bl.EnergyDetector().save(tmp_path / "x")
    tr, dv = _synthetic(20, 0), _synthetic(10, 1)
    bl.EnergyDetector().fit(*tr, *dv).save_to_run(tmp_path)
    (tmp_path / "systems" / "energy" / bl.MODEL_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        load_system(str(tmp_path))


# ---------------------------------------------------------------------------------- fitted: real clips
@pytest.mark.data
@pytest.mark.parametrize("cls,kwargs,floor", [(bl.EnergyDetector, {"statistic": "range"}, 0.55),
                                              (bl.LogMelClassifier, {}, 0.75)])
def test_fitted_baselines_beat_chance_on_held_out_real_clips(small_corpus, cls, kwargs, floor):
    (xtr, ytr), (xdv, ydv), (xte, yte) = small_corpus["train"], small_corpus["dev"], small_corpus["test"]
    assert min(len(ytr), len(ydv), len(yte)) >= 40
    sys_ = cls(normalization="rms", **kwargs).fit(xtr, ytr, xdv, ydv)
    p = sys_.score(xte)
    y = np.array(yte) == "speech"
    bacc = balanced_accuracy(y, p >= sys_.threshold)
    assert bacc > floor, f"{sys_.name}: held-out balanced accuracy {bacc:.3f}"
    # held-out labels play no part: other test labels change neither scores nor decisions
    a = predictions_frame(run_id="r", system=sys_.name, clip_ids=[str(i) for i in range(len(yte))], labels=yte,
                          p_speech=p, threshold=sys_.threshold)
    shuffled = list(np.random.default_rng(0).permutation(yte))
    again = cls(normalization="rms", **kwargs).fit(xtr, ytr, xdv, ydv)
    b = predictions_frame(run_id="r", system=again.name, clip_ids=[str(i) for i in range(len(yte))], labels=shuffled,
                          p_speech=again.score(xte), threshold=again.threshold)
    assert again.threshold == sys_.threshold
    assert a["p_speech"].tolist() == b["p_speech"].tolist() and a["pred"].tolist() == b["pred"].tolist()


# ------------------------------------------------------------------------------------------ score_bank
@pytest.fixture()
def tiny_bank(tmp_path):
    """A bank manifest of 12 synthetic clips (4 per split) written as float WAV, as lib.data stores them."""
    from lib.audio import write_audio

    audios, labels = _synthetic(12, 7)
    rows = []
    for i, (x, lab) in enumerate(zip(audios, labels)):
        write_audio(tmp_path / "audio" / f"c{i:03d}.wav", x * 3)  # louder than full scale, as stored mixtures may be
        rows.append({"clip_id": f"c{i:03d}", "label": lab, "split": ["train", "dev", "test"][i // 4],
                     "group_id": f"g{i}", "path": f"audio/c{i:03d}.wav"})
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return pd.DataFrame(rows), manifest


def test_score_bank_scores_the_split_at_the_asked_normalization(tiny_bank):
    from lib.data import load_clips

    bank, manifest = tiny_bank
    vad = bl.WebRTCVAD(mode=2, frame_ms=20)
    preds = bl.score_bank(vad, bank, manifest, "peak", run_id="r1", progress=False)
    test = bank[bank.split == "test"]
    assert preds["clip_id"].tolist() == test["clip_id"].tolist()
    assert preds["label"].tolist() == test["label"].tolist()
    assert set(preds["variant"]) == {"peak/mode2-20ms"} and set(preds["system"]) == {"webrtc_vad"}
    assert set(preds["run_id"]) == {"r1"} and set(preds["seed"]) == {-1}
    expected = vad.score(load_clips(test, manifest, normalization="peak"))
    assert np.allclose(preds["p_speech"], expected)
    assert (preds["pred"] == np.where(expected >= 0.5, "speech", "nonspeech")).all()
    with pytest.raises(ValueError, match="which load-time normalization"):
        bl.score_bank(vad, bank, manifest, run_id="r1", progress=False)
    assert len(bl.score_bank(vad, bank, manifest, "none", split=None, run_id="r1", progress=False)) == 12


def test_score_bank_uses_a_fitted_systems_own_normalization_and_threshold(tiny_bank, tmp_path):
    from lib.data import load_clips

    bank, manifest = tiny_bank
    tr, dv = _synthetic(40, 0), _synthetic(20, 1)
    e = bl.EnergyDetector(normalization="rms", seed=5).fit(*tr, *dv)
    preds = bl.score_bank(e, bank, manifest, run_id="r2", progress=False)
    assert set(preds["variant"]) == {"rms"} and set(preds["seed"]) == {5}
    p = e.score(load_clips(bank[bank.split == "test"], manifest, normalization="rms"))
    assert np.allclose(preds["p_speech"], p)
    assert (preds["pred"] == np.where(p >= e.threshold, "speech", "nonspeech")).all()
    with pytest.raises(ValueError, match="mismatch"):
        bl.score_bank(e, bank, manifest, "peak", run_id="r2", progress=False)
