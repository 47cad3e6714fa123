"""lib.seed_claims.replication: chapter 08's reading of the seed-design predictions, on hand-made predictions."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lib import results
from lib.seed_claims import replication as R

A, B = R.MASKED_ATTN, R.MASKED_MLP


def _bank(n: int, prefix: str) -> pd.DataFrame:
    return pd.DataFrame({"clip_id": [f"{prefix}{i}" for i in range(n)], "label": ["speech", "nonspeech"] * (n // 2),
                         "group_id": [f"{prefix}g{i // 2}" for i in range(n)], "split": "test",
                         "duration_ms": [200, 1000] * (n // 2), "snr_db": 0.0})


def _preds(bank: pd.DataFrame, system: str, seed: int, wrong: set[int]) -> pd.DataFrame:
    labels = bank["label"].tolist()
    pred = [("nonspeech" if lab == "speech" else "speech") if i in wrong else lab for i, lab in enumerate(labels)]
    return results.predictions_frame(run_id="r", system=system, variant="v", seed=seed, clip_ids=bank["clip_id"].tolist(),
                                     labels=labels, p_speech=[0.9 if x == "speech" else 0.1 for x in pred], pred=pred)


@pytest.fixture
def design():
    seed_bank, book_bank = _bank(96, "s"), _bank(40, "b")
    splits = {"train": seed_bank.iloc[:0], "test32": seed_bank.iloc[:32], "extended96": seed_bank}
    return R.SeedDesign(Path("book.csv"), book_bank, Path("seed.csv"), seed_bank, splits, book_bank,
                        {"epochs": 1, "normalization": "peak"}, [42, 7])


@pytest.fixture
def preds(design):
    # attn: seed 42 wrong on 1 clip, seed 7 on 3; attn_mlp: 4 wrong at both seeds
    def arms(bank, rows):
        return pd.concat([_preds(bank[bank["clip_id"].isin(rows)].reset_index(drop=True), s, seed, w)
                          for s, seed, w in ((A, 42, {0}), (A, 7, {0, 1, 2}), (B, 42, {0, 1, 2, 3}), (B, 7, {0, 1, 2, 3}))])
    return {"test32": arms(design.seed_bank, set(design.splits["test32"]["clip_id"])),
            "extended96": arms(design.seed_bank, set(design.seed_bank["clip_id"])),
            "book_test": arms(design.book_bank, set(design.book_bank["clip_id"]))}


def test_metrics_spread_and_its_words(design, preds):
    tables = R.metric_tables(preds, design, level=0.95, n_boot=50, seed=0)
    assert set(tables) == set(R.SETS) and (tables["extended96"]["n"] == 96).all()
    assert (tables["book_test"]["set"] == "book_test").all()
    spread = R.seed_spread(tables)
    acc = spread[(spread["metric"] == "accuracy")].set_index(["set", "system"])
    assert acc.loc[("extended96", A), "range"] == pytest.approx(2 / 96)  # 1 against 3 wrong clips
    assert acc.loc[("extended96", B), "range"] == 0
    text = R.spread_text(spread, n_book_test=40)
    assert "a range of 2 clip(s)" in text and "(96 clips)" in text and "book test split (40 clips)" in text


def test_pair_tests_power_and_conclusions(design, preds):
    pairs = R.comparison_pairs({"seed_replication_fullloss_variants": ["attn"]})
    assert pairs == [(A, B), (A, A + "-fullloss")]
    tests = R.pair_tests(preds["extended96"], pairs, design.seed_bank)
    clips = tests[tests["unit"] == "clips"].set_index("seed")
    assert set(tests["b"]) == {B}  # no full-loss predictions: that pair is left out
    assert (clips.loc[42, "a_only"], clips.loc[42, "b_only"]) == (3, 0) and (clips.loc[7, "a_only"], clips.loc[7, "b_only"]) == (1, 0)
    psi, power = R.power_table(tests, pairs[0])
    assert psi == pytest.approx((3 + 1) / 2 / 96)
    assert power["discordance"].dropna().tolist() == [0.0312, 0.1]  # 3/96 rounded; the observed 2/96 < 3 points is impossible
    assert "times too few" in R.power_text(psi, power)
    found = R.findings(R.metric_tables(preds, design, 0.95, 50, 0), R.verdicts(tests),
                       R.verdicts(R.pair_tests(preds["book_test"], pairs, design.book_bank)))
    assert found.verdict96.iloc[0]["seeds_a_higher"] == 2 and found.extended.loc[A, "min"] == pytest.approx(93 / 96)
    claim, _ = R.seed_claim()
    words = R.conclusions(found, design, "tiny", float(claim["p_exact"].min()), power)
    assert "attn averages 0.979" in words and "at least 0.25" in words and "holds in direction here." in words
    summary = R.summary(found, design, "tiny", 0.25, psi, power, pd.DataFrame(), 1.0)
    assert summary["seeds"] == [42, 7] and summary["attn_vs_attn_mlp_book_test"][0]["seeds"] == 2


def test_verdicts_of_no_tests_is_empty():
    assert R.verdicts(pd.DataFrame()).empty
