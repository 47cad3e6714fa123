"""lib.seed_claims: the seed project's claims tested with the book's code (issue 14)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lib import config, results, systems
from lib import seed_claims as S


def test_seed_claim_95_vs_92_of_96_is_never_significant():
    t = S.accuracy_pair_tables(96, 95, 92)
    # a right 95 / wrong 1, b right 92 / wrong 4: only two tables are possible
    assert list(zip(t["a_only"], t["b_only"])) == [(3, 0), (4, 1)]
    assert t["p_exact"].tolist() == pytest.approx([0.25, 0.375])
    assert (t["both_right"] + t["a_only"] + t["b_only"] + t["both_wrong"] == 96).all()
    with pytest.raises(ValueError):
        S.accuracy_pair_tables(10, 11, 3)


def test_clips_to_detect_three_points():
    t = S.clips_to_detect(0.03, [0.03, 0.1, 0.01], accuracy=0.99)
    paired = t[t["design"].str.startswith("paired")]
    assert paired["discordance"].tolist() == [0.03, 0.1]  # |delta| > discordance is impossible: left out
    assert paired["n_clips"].iloc[0] < paired["n_clips"].iloc[1]  # more disagreement needs more clips
    assert (t["n_clips"] > 96).all()  # no design detects 3 points with the seed's 96 clips
    assert t[~t["design"].str.startswith("paired")]["n_independent"].iloc[0] > 300  # 0.99 vs 0.96: about 380 clips per system


def test_lora_parameters_of_the_7b_explain_the_seeds_figures():
    t = S.lora_parameter_table().set_index("targets")
    lm = t.loc["attn, language model only (the book)"]
    assert lm["params"] == 32 * 4 * 16 * (4096 + 4096)  # 32 layers, q/k/v/o 4096x4096 (no grouped KV in Qwen-7B)
    assert lm["params"] / 1e6 == pytest.approx(16.8, abs=0.05) and lm["mb_fp32"] == pytest.approx(67.1, abs=0.1)
    anywhere = t.loc["attn, anywhere (a plain target list)"]
    assert anywhere["params_audio_tower"] == 32 * 3 * 16 * (1280 + 1280)  # Whisper's q/k/v; its out_proj is not o_proj
    assert bool(anywhere["matches_seed"]) and not bool(lm["matches_seed"])
    assert bool(t.loc["attn_mlp, anywhere (a plain target list)"]["matches_seed"])
    assert not bool(t.loc["attn_mlp, language model only (the book)"]["matches_seed"])


def test_study_names_and_recipe():
    name = systems.study_system_name("attn_mlp", "peak")
    assert name == "qwen2audio-attn_mlp-peak-study" and "+" not in name
    assert systems.is_study_system(name) and systems.is_study_system(name + "-seed3") and not systems.is_study_system("qwen2audio-attn")
    with pytest.raises(ValueError):
        systems.study_system_name("attn", "loud")
    cfg = config.resolve("cpu", {"max_train_clips": 1000})
    r = S.study_recipe(cfg)
    assert r["max_train_clips"] == cfg["study_max_train_clips"] and r["epochs"] == cfg["study_epochs"] and r["reduced"]
    assert str(cfg["study_max_train_clips"]) in r["text"]
    same = S.study_recipe({**cfg, "study_max_train_clips": None, "study_epochs": None})
    assert not same["reduced"] and same["epochs"] == cfg["epochs"] and same["max_train_clips"] == 1000
    assert S.study_seeds({**cfg, "seed": 0, "study_seeds": [1, 0, 2]}) == [0, 1, 2]


def test_seed_design_arms_follow_the_profile():
    cfg = config.resolve("cpu", {})
    arms = S.seed_design_arms(cfg)
    masked = [a for a in arms if a["loss_masking"]]
    assert len(masked) == len(cfg["seed_replication_seeds"]) * len(cfg["seed_replication_variants"])
    full = [a for a in arms if not a["loss_masking"]]
    assert {a["seed"] for a in full} == set(cfg["seed_replication_fullloss_seeds"])
    assert {a["lora_variant"] for a in full} == set(cfg["seed_replication_fullloss_variants"])


def _seed_bank(per_cell: int = 6) -> pd.DataFrame:
    rows, i = [], 0
    for split, k in (("train", 3 * per_cell), ("dev", per_cell), ("test", per_cell)):
        for d in S.SEED_TRAIN_DURATIONS_MS:
            for snr in S.SEED_TRAIN_SNRS_DB:
                for label in results.LABELS:
                    for j in range(k):
                        rows.append({"clip_id": f"c{i:05d}", "split": split, "duration_ms": d, "snr_db": float(snr),
                                     "label": label, "group_id": f"{split}-{label}-{j % 7}"})
                        i += 1
    return pd.DataFrame(rows)


def test_seed_design_splits_have_the_seeds_shape():
    bank = _seed_bank()
    sp = S.seed_design_splits(bank, seed=42)
    assert len(sp["train"]) == 128 and (sp["train"]["label"].value_counts() == 64).all()
    assert set(sp["train"]["split"]) == {"train"}
    cells = sp["train"].groupby(["duration_ms", "snr_db", "label"]).size()
    assert len(cells) == 50 and cells.max() - cells.min() <= 1  # spread evenly over the factorial
    ext = sp["extended96"]
    assert len(ext) == 96 and (ext["label"].value_counts() == 48).all()
    assert set(ext["duration_ms"]) == {200, 1000} and set(ext["snr_db"]) == {0, 5, 10, 20}
    assert (ext.groupby(["duration_ms", "snr_db", "label"]).size() == 6).all()
    t32 = sp["test32"]
    assert len(t32) == 32 and (t32["label"].value_counts() == 16).all() and set(t32["split"]) == {"test"}
    assert not set(t32["clip_id"]) & set(ext["clip_id"])
    again = S.seed_design_splits(bank, seed=42)
    assert all(again[k]["clip_id"].tolist() == sp[k]["clip_id"].tolist() for k in sp)
    assert S.seed_design_splits(bank, seed=1)["train"]["clip_id"].tolist() != sp["train"]["clip_id"].tolist()
    with pytest.raises(ValueError, match="seed_replication_clips_per_cell"):
        S.seed_design_splits(_seed_bank(per_cell=5), seed=0)


def test_no_shared_sources_check():
    a = pd.DataFrame({"group_id": ["g1", "g2"]})
    S.check_no_shared_sources(a, pd.DataFrame({"group_id": ["g3"]}))
    with pytest.raises(ValueError, match="g2"):
        S.check_no_shared_sources(a, pd.DataFrame({"group_id": ["g2"]}))


def _preds(bank: pd.DataFrame, system: str, seed: int, wrong: set[int]) -> pd.DataFrame:
    labels = bank["label"].tolist()
    pred = [("nonspeech" if lab == "speech" else "speech") if i in wrong else lab for i, lab in enumerate(labels)]
    p = [0.9 if x == "speech" else 0.1 for x in pred]
    return results.predictions_frame(run_id="r", system=system, variant="attn", seed=seed, clip_ids=bank["clip_id"].tolist(),
                                     labels=labels, p_speech=p, pred=pred)


def test_pairwise_mcnemar_counts_holm_and_seeds():
    n = 40
    bank = pd.DataFrame({"clip_id": [f"c{i}" for i in range(n)], "label": ["speech", "nonspeech"] * (n // 2),
                         "group_id": [f"g{i // 2}" for i in range(n)]})
    preds = pd.concat([
        _preds(bank, "a", 0, set()), _preds(bank, "b", 0, set(range(0, 20, 2))), _preds(bank, "c", 0, {1}),
        _preds(bank, "a", 1, {3}), _preds(bank, "b", 1, {3}),  # seed 1: c absent, a and b identical
    ])
    t = S.pairwise_mcnemar(preds, ["a", "b", "c"], bank)
    clips = t[t["unit"] == "clips"]
    assert len(clips) == 4 and len(t[t["unit"] == "sources"]) == 4  # seed 0: 3 pairs; seed 1: 1 pair
    ab0 = clips[(clips["seed"] == 0) & (clips["a"] == "a") & (clips["b"] == "b")].iloc[0]
    assert (ab0["a_only"], ab0["b_only"]) == (10, 0) and ab0["p_exact"] == pytest.approx(2 * 0.5 ** 10)
    assert (clips["p_exact_adj"] >= clips["p_exact"] - 1e-12).all()
    assert ab0["p_exact_adj"] == pytest.approx(min(1, 4 * ab0["p_exact"]))  # Holm: smallest of 4 times 4
    ab1 = clips[(clips["seed"] == 1)].iloc[0]
    assert (ab1["a_only"], ab1["b_only"], ab1["p_exact"]) == (0, 0, 1.0)
    v = S.pair_verdicts(t).set_index(["a", "b", "unit"])
    r = v.loc[("a", "b", "clips")]
    assert r["seeds"] == 2 and r["seeds_a_higher"] == 1 and r["significant_a"] == 1 and r["significant_b"] == 0
