"""lib.systems: the one system concept (SystemKey, names formed and read in one place), the one scan of a run's
saved systems, and scoring under each system's own normalization."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from lib import evaluate, results, stats, systems
from lib.systems import SystemKey


def test_system_key_round_trips_through_tuples_rows_and_the_predictions_table():
    key = SystemKey("qwen2audio-attn", "attn", 3)
    assert SystemKey.from_tuple(key.as_tuple()) == key
    assert SystemKey.from_row({"system": "qwen2audio-attn", "variant": "attn", "seed": np.int64(3)}) == key
    # missing variant / seed as the table holds them (NaN, None, "") become "" and -1
    assert SystemKey.from_row({"system": "energy", "variant": float("nan"), "seed": None}) == SystemKey("energy")
    assert SystemKey.from_tuple(("energy",)).as_tuple() == ("energy", "", -1)
    frame = results.predictions_frame(run_id="r", system=key.name, variant=key.variant, seed=key.seed, clip_ids=["c"],
                                      labels=["speech"], p_speech=[0.9])
    assert [SystemKey.from_tuple(k) for k in stats.system_keys(frame)] == [key]
    assert SystemKey.from_row(frame.iloc[0]) == key
    with pytest.raises(ValueError):
        SystemKey.from_tuple(("a", "b", 1, 2))
    with pytest.raises(Exception):
        key.name = "other"  # frozen: usable as a dict key


@pytest.mark.parametrize("name, family, base, derivation", [
    ("qwen2audio-attn+vote", "ensemble", "qwen2audio-attn", "vote"),
    ("qwen2audio-attn+mean", "ensemble", "qwen2audio-attn", "mean"),
    ("qwen2audio-attn+opro", "prompt-optimised", "qwen2audio-attn", "opro"),
    ("qwen2audio-zeroshot+template", "prompt-optimised", "qwen2audio-zeroshot", "template"),
    ("qwen2audio-zeroshot", "zero-shot", "qwen2audio-zeroshot", ""),
    ("qwen2audio-attn", "fine-tuned", "qwen2audio-attn", ""),
    ("qwen2audio-attn_mlp-rms-study", "fine-tuned", "qwen2audio-attn_mlp-rms-study", ""),
    ("silero_vad", "baseline", "silero_vad", ""),
    ("energy", "baseline", "energy", ""),
])
def test_family_of_each_kind_of_name(name, family, base, derivation):
    key = SystemKey(name, "v", 0)
    assert (key.family, key.base, key.derivation) == (family, base, derivation)
    assert systems.family(name) == family and family in systems.FAMILIES
    assert key.is_ensemble == (family == "ensemble") and systems.is_ensemble(name) == key.is_ensemble
    assert key.is_qwen2audio == (family != "baseline")


def test_derived_names_are_formed_and_read_in_one_place():
    for how in systems.ENSEMBLE_KINDS + systems.PROMPT_METHODS:
        name = systems.derived_name("qwen2audio-attn", how)
        assert name == f"qwen2audio-attn+{how}"
        assert (SystemKey(name).base, SystemKey(name).derivation) == ("qwen2audio-attn", how)
    with pytest.raises(ValueError, match="unknown derivation"):
        systems.derived_name("qwen2audio-attn", "median")
    with pytest.raises(ValueError, match="plain system name"):
        systems.derived_name("qwen2audio-attn+opro", "vote")
    assert systems.study_system_name("attn", "rms", loss_masking=False) == "qwen2audio-attn-rms-fullloss-study"
    assert systems.family(systems.study_system_name("attn", "rms")) == "fine-tuned"


def test_label():
    assert SystemKey("qwen2audio-attn", "attn", 0).label() == "qwen2audio-attn/attn#0"
    assert SystemKey("qwen2audio-attn", "attn", 0).label(show_seed=False) == "qwen2audio-attn/attn"
    assert SystemKey("qwen2audio-zeroshot", "prompt=hand-written", -1).label() == "qwen2audio-zeroshot/prompt=hand-written"
    assert SystemKey("energy", None, math.nan).label() == "energy"
    # stats.system_label, for loose table values, is the same label
    assert stats.system_label("silero_vad", "rms", "2") == "silero_vad/rms#2"
    assert stats.system_label("silero_vad", "nan", 2, show_seed=False) == "silero_vad"


def test_one_scan_of_a_runs_saved_systems(tmp_path):
    assert systems.list_systems(tmp_path) == [] and systems.find_finetuned_system(tmp_path, "attn") is None
    systems.save_system(tmp_path, "qwen2audio-attn", "lora", base_model="tiny")
    systems.save_system(tmp_path, "energy", "energy")
    systems.save_system(tmp_path, "qwen2audio-attn_mlp", "lora", base_model="tiny")
    assert systems.list_systems(tmp_path) == ["energy", "qwen2audio-attn", "qwen2audio-attn_mlp"]
    assert systems.list_systems(tmp_path, kind="lora") == ["qwen2audio-attn", "qwen2audio-attn_mlp"]
    assert systems.find_finetuned_system(tmp_path, "attn")[0] == "qwen2audio-attn"
    name, folder, info = systems.find_finetuned_system(tmp_path, "attn_mlp")
    assert name == "qwen2audio-attn_mlp" and folder == tmp_path / "systems" / name and info["kind"] == "lora"
    assert systems.find_finetuned_system(tmp_path, "other")[0] == "qwen2audio-attn"
    with pytest.raises(ValueError, match="no LoRA system"):
        systems.find_finetuned_system(tmp_path, name="energy")


class _PeakScorer:
    """Scores a clip by its peak level, so the test sees which normalization its clips were loaded under."""

    model_label = "test"

    def __init__(self, normalization):
        self.normalization = normalization

    def score(self, audios):
        return np.array([float(np.max(np.abs(a))) for a in audios])


def test_score_split_uses_each_systems_own_normalization(tmp_path):
    t = np.arange(1600) / 16000
    for i in range(2):
        sf.write(tmp_path / f"c{i}.wav", (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    bank = pd.DataFrame({"clip_id": ["c0", "c1"], "label": ["speech", "nonspeech"], "split": "test",
                         "path": ["c0.wav", "c1.wav"], "group_id": ["g0", "g1"]})
    manifest = tmp_path / "manifest.csv"
    bank.to_csv(manifest, index=False)
    cfg = {"run_id": "r", "normalization": "none"}
    own = evaluate.score_split(_PeakScorer("peak"), bank, manifest, cfg, "trained-under-peak")
    assert own["p_speech"].to_numpy() == pytest.approx(0.99, abs=1e-3)  # the system's peak, not the run's none
    plain = evaluate.score_split(_PeakScorer(None), bank, manifest, cfg, "records-none")
    assert plain["p_speech"].to_numpy() == pytest.approx(0.1, abs=1e-3)  # no normalization of its own: the run's


def test_one_rule_says_which_normalization_a_system_is_scored_at():
    """lib.systems.scoring_normalization: what was asked for, else the system's own, else the default; used by
    evaluate, predict, segment, chapter 09 and the baselines' scoring."""
    from types import SimpleNamespace

    from lib.systems import scoring_normalization

    trained = SimpleNamespace(name="qwen2audio-attn", normalization="peak")
    vad = SimpleNamespace(name="silero")
    assert scoring_normalization(trained) == "peak"
    assert scoring_normalization(trained, "rms") == "rms"  # an explicit request wins
    assert scoring_normalization(vad) == "none" and scoring_normalization(vad, default="rms") == "rms"
    with pytest.raises(ValueError, match="silero: say which"):
        scoring_normalization(vad, default=None)
    with pytest.raises(ValueError, match="loudness"):
        scoring_normalization(trained, "loudness")
