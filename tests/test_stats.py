"""lib.stats against hand-computed values. Fast: synthetic tables only, no audio, no model."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from lib import stats


def frame(system, clip_ids, labels, preds, p=None, seed=0, variant="", groups=None):
    df = pd.DataFrame({
        "run_id": "r", "system": system, "variant": variant, "seed": seed, "clip_id": list(clip_ids),
        "label": list(labels), "pred": list(preds),
        "p_speech": list(p) if p is not None else [0.9 if q == "speech" else 0.1 for q in preds],
    })
    if groups is not None:
        df["group_id"] = list(groups)
    return df


def flip(labels, wrong):
    """The labels, with the clips at positions ``wrong`` answered wrongly."""
    other = {"speech": "nonspeech", "nonspeech": "speech"}
    return [other[l] if i in wrong else l for i, l in enumerate(labels)]


# --------------------------------------------------------------------------------------- Wilson
def test_wilson_95_of_96_matches_the_issue():
    lo, hi = stats.wilson_interval(95, 96)
    # the issue: "about [94.3%, 99.8%]"; statsmodels' exact Wilson bounds are 0.943334 and 0.998159
    assert (round(lo, 3), round(hi, 3)) == (0.943, 0.998)
    assert lo == pytest.approx(0.9433338, abs=1e-6)
    assert hi == pytest.approx(0.9981588, abs=1e-6)


def test_wilson_hand_formula():
    # Wilson: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), here 8/10 at 95%
    z, n, p = 1.959963984540054, 10, 0.8
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert stats.wilson_interval(8, 10) == pytest.approx(((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)))
    assert all(math.isnan(v) for v in stats.wilson_interval(0, 0))


# ------------------------------------------------------------------------------ point metrics
def test_balanced_accuracy_hand_case():
    labels = ["speech"] * 8 + ["nonspeech"] * 2
    preds = ["speech"] * 8 + ["speech", "nonspeech"]  # all speech right, 1 of 2 non-speech right
    m = stats.binary_metrics(labels, preds)
    assert m["accuracy"] == pytest.approx(0.9)
    assert m["recall_speech"] == 1.0 and m["recall_nonspeech"] == 0.5
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, preds))
    always = stats.binary_metrics(labels, ["speech"] * 10)  # a constant answer is at chance
    assert always["accuracy"] == pytest.approx(0.8) and always["balanced_accuracy"] == pytest.approx(0.5)


def test_balanced_accuracy_wilson_is_bonferroni_combination():
    labels = ["speech"] * 40 + ["nonspeech"] * 60
    preds = ["speech"] * 36 + ["nonspeech"] * 4 + ["nonspeech"] * 45 + ["speech"] * 15
    w = stats.wilson_intervals(labels, preds, 0.95)
    s, n = stats.wilson_interval(36, 40, 0.975), stats.wilson_interval(45, 60, 0.975)
    assert w["balanced_accuracy"] == pytest.approx(((s[0] + n[0]) / 2, (s[1] + n[1]) / 2))
    assert w["recall_speech"] == pytest.approx(stats.wilson_interval(36, 40))
    assert w["accuracy"] == pytest.approx(stats.wilson_interval(81, 100))


# ------------------------------------------------------------------------------ bootstrap
def _base(n_groups=30):
    labels = ["speech"] * n_groups + ["nonspeech"] * n_groups
    rng = np.random.default_rng(3)
    preds = [l if rng.random() < 0.8 else ("nonspeech" if l == "speech" else "speech") for l in labels]
    return labels, preds, [f"g{i}" for i in range(len(labels))]


def test_cluster_bootstrap_on_copies_matches_the_sources_and_is_wider_than_naive():
    labels, preds, groups = _base()
    copies = 10
    lab10, pred10 = np.repeat(labels, copies), np.repeat(preds, copies)
    grp10 = np.repeat(groups, copies)
    clip_ids = [f"c{i}" for i in range(len(lab10))]
    cluster = stats.cluster_bootstrap_metrics(lab10, pred10, grp10, n_boot=500, seed=1)
    on_sources = stats.cluster_bootstrap_metrics(labels, preds, groups, n_boot=500, seed=1)
    naive = stats.cluster_bootstrap_metrics(lab10, pred10, clip_ids, n_boot=500, seed=1)
    for m in stats.METRICS:
        # identical copies add no information: resampling groups gives exactly the sources' interval
        assert cluster[m] == pytest.approx(on_sources[m])
        wc, wn = cluster[m][1] - cluster[m][0], naive[m][1] - naive[m][0]
        assert wc > 2 * wn, (m, wc, wn)  # about sqrt(10) ~ 3.2 times wider


def test_bootstrap_is_seeded_and_stratified():
    labels, preds, groups = _base(12)
    a = stats.cluster_bootstrap_metrics(labels, preds, groups, n_boot=200, seed=7)
    b = stats.cluster_bootstrap_metrics(labels, preds, groups, n_boot=200, seed=7)
    assert a == b
    boot = stats.ClusterBootstrap.draw(groups, 50, seed=0, strata=labels)
    speech = np.array([g for g, l in sorted(zip(groups, labels)) if l == "speech"])
    in_speech = np.isin(boot.groups, speech)
    assert (boot.weights[:, in_speech].sum(axis=1) == 12).all()  # each replicate keeps 12 speech groups
    assert (boot.weights[:, ~in_speech].sum(axis=1) == 12).all()


def test_weighted_auc_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.4
    s = np.round(rng.random(300) + 0.3 * y, 2)  # rounding makes ties
    w = rng.integers(0, 4, size=(5, 300))
    got = stats.weighted_auc(y, s, w)
    for r in range(5):
        assert got[r] == pytest.approx(roc_auc_score(y, s, sample_weight=w[r]))
    assert stats.weighted_auc(y, s) == pytest.approx(roc_auc_score(y, s))


# ------------------------------------------------------------------------------ metrics table / json
def _two_systems():
    labels = ["speech"] * 6 + ["nonspeech"] * 6
    clips = [f"c{i:02d}" for i in range(12)]
    groups = ["s1", "s1", "s2", "s2", "s3", "s3", "n1", "n1", "n2", "n2", "n3", "n3"]
    a = frame("ft", clips, labels, labels)
    b = frame("energy", clips, labels, flip(labels, {0, 1, 6}))
    bank = pd.DataFrame({"clip_id": clips, "group_id": groups, "label": labels, "category": ["speech"] * 6 + ["dog", "dog", "rain", "rain", "cough", "cough"],
                         "duration_ms": [100, 500] * 6, "snr_db": [0, 20] * 6})
    return pd.concat([a, b], ignore_index=True), bank


def test_metrics_table_rows_columns_and_values():
    preds, bank = _two_systems()
    t = stats.metrics_table(preds, bank, n_boot=200)
    assert list(t["system"]) == ["ft", "energy"]
    for m in stats.METRICS:
        for c in (m, f"{m}_wilson_lo", f"{m}_wilson_hi", f"{m}_boot_lo", f"{m}_boot_hi"):
            assert c in t.columns
    e = t.set_index("system").loc["energy"]
    assert e["n"] == 12 and e["n_groups"] == 6 and e["boot_unit"] == "group_id"
    assert e["accuracy"] == pytest.approx(9 / 12)
    assert e["recall_speech"] == pytest.approx(4 / 6) and e["recall_nonspeech"] == pytest.approx(5 / 6)
    assert e["balanced_accuracy"] == pytest.approx(0.75)
    assert e["accuracy_boot_lo"] <= e["accuracy"] <= e["accuracy_boot_hi"]
    assert t.set_index("system").loc["ft", "auc"] == 1.0
    # group_id from the predictions gives the same table as from the bank
    t2 = stats.metrics_table(preds.merge(bank[["clip_id", "group_id"]], on="clip_id"), n_boot=200)
    pd.testing.assert_frame_equal(t, t2)


def test_metrics_table_refuses_unknown_clips_and_warns_without_groups():
    preds, bank = _two_systems()
    with pytest.raises(ValueError, match="not in the bank"):
        stats.metrics_table(preds, bank.iloc[1:], n_boot=10)
    with pytest.warns(UserWarning, match="no group_id"):
        t = stats.metrics_table(preds, n_boot=10)
    assert set(t["boot_unit"]) == {"clip_id"}


def test_metrics_json_is_plain_json_and_from_the_table():
    preds, bank = _two_systems()
    t = stats.metrics_table(preds, bank, n_boot=100)
    j = stats.metrics_json(preds, bank, n_boot=100, smoke=True)
    text = json.dumps(j)  # serialisable (NaN would be refused below)
    assert "NaN" not in text
    assert j["smoke"] is True and j["n_boot"] == 100 and len(j["systems"]) == 2
    e = next(s for s in j["systems"] if s["system"] == "energy")
    assert e["balanced_accuracy"]["estimate"] == pytest.approx(0.75)
    assert e["accuracy"]["bootstrap"] == pytest.approx([t.loc[1, "accuracy_boot_lo"], t.loc[1, "accuracy_boot_hi"]])


def test_category_table_hardest_first():
    preds, bank = _two_systems()
    c = stats.category_table(preds, bank)
    e = c[c["system"] == "energy"]
    assert e.iloc[0]["category"] in ("dog", "speech") and e.iloc[0]["accuracy"] < 1
    assert list(e["accuracy"]) == sorted(e["accuracy"])


# ------------------------------------------------------------------------------ McNemar
def test_mcnemar_six_discordant_all_one_way():
    assert stats.mcnemar_exact(6, 0) == pytest.approx(0.03125)  # = 2 / 2^6, "p = 0.031"
    assert round(stats.mcnemar_exact(0, 6), 3) == 0.031
    assert stats.mcnemar_midp(6, 0) == pytest.approx(0.015625)  # 2 * (P(X<0) + P(X=0)/2) = 1/64


def test_mcnemar_midp_hand_case():
    # b=3, c=1: X~Bin(4,1/2); P(X<=1)=5/16, P(X=1)=4/16
    assert stats.mcnemar_exact(3, 1) == pytest.approx(2 * 5 / 16)
    assert stats.mcnemar_midp(3, 1) == pytest.approx(2 * (5 / 16 - 0.5 * 4 / 16))
    assert stats.mcnemar_midp(2, 2) == 1.0 and stats.mcnemar_midp(0, 0) == 1.0


def test_mcnemar_test_on_predictions_and_refusal():
    labels = ["speech"] * 10 + ["nonspeech"] * 10
    clips = [f"c{i}" for i in range(20)]
    a = frame("ft", clips, labels, labels)
    b = frame("zs", clips, labels, flip(labels, {0, 1, 2, 10, 11, 12}))
    r = stats.mcnemar_test(pd.concat([a, b]), "ft", "zs")
    assert (r["a_only"], r["b_only"], r["both_correct"], r["both_wrong"]) == (6, 0, 14, 0)
    assert r["p_exact"] == pytest.approx(0.03125) and r["p_midp"] == pytest.approx(0.015625)
    assert r["difference"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="clip sets differ"):
        stats.mcnemar_test(pd.concat([a, b.iloc[1:]]), "ft", "zs")
    with pytest.raises(KeyError, match="ambiguous"):
        stats.select(pd.concat([a, a.assign(seed=1)]), "ft")


def test_collapse_majority_breaks_ties_by_the_probability_of_the_true_class():
    correct = np.array([1, 1, 0, 1, 0, 1, 0, 0, 0])
    groups = np.array(["x", "x", "x", "y", "y", "z", "z", "w", "w"])
    p_true = np.array([0.9, 0.9, 0.2, 0.8, 0.4, 0.3, 0.7, 0.1, 0.2])
    names, out, tied = stats.collapse_majority(correct, groups, p_true)
    got = dict(zip(names, out))
    # x: 2 of 3 right -> right; y: 1-1 tie, mean p_true 0.6 -> right; z: 1-1 tie, mean exactly 0.5 ->
    # undecided; w: 0 of 2 -> wrong (no tie, p ignored)
    assert got["x"] == 1.0 and got["y"] == 1.0 and got["w"] == 0.0 and math.isnan(got["z"])
    assert dict(zip(names, tied)) == {"w": False, "x": False, "y": True, "z": True}
    _, no_p, _ = stats.collapse_majority(correct, groups)  # without probabilities a tie stays undecided
    assert np.isnan(dict(zip(names, no_p))["y"]) and dict(zip(names, no_p))["x"] == 1.0


def test_mcnemar_collapsed_by_majority_vote_with_ties():
    labels = ["speech"] * 9
    clips = [f"c{i}" for i in range(9)]
    groups = ["g1"] * 3 + ["g2"] * 2 + ["g3"] * 2 + ["g4"] * 2
    # a: g1 3/3; g2 1-1 tie, right one sure (0.95), wrong one unsure (p_speech 0.4) -> right; g3 2/2;
    #    g4 1-1 tie with mean p_true exactly 0.5 -> undecided, so g4 leaves the comparison
    a = frame("a", clips, labels, flip(labels, {4, 8}), p=[0.9, 0.9, 0.9, 0.95, 0.4, 0.9, 0.9, 0.8, 0.2], groups=groups)
    # b: g1 1/3 -> wrong; g2 2/2; g3 1-1 tie, wrong one sure (p_speech 0.05), right one unsure (0.6) -> wrong
    b = frame("b", clips, labels, flip(labels, {0, 1, 5}), p=[0.1, 0.1, 0.9, 0.9, 0.9, 0.05, 0.6, 0.9, 0.9], groups=groups)
    r = stats.mcnemar_test(pd.concat([a, b]), "a", "b", collapse="group_id")
    assert r["unit"] == "group_id" and r["n"] == 3 and r["dropped"] == 1
    assert (r["ties_a"], r["ties_b"]) == (2, 1)
    assert (r["a_only"], r["b_only"], r["both_correct"], r["both_wrong"]) == (2, 0, 1, 0)
    assert r["accuracy_a"] == 1.0 and r["accuracy_b"] == pytest.approx(1 / 3)
    assert r["p_exact"] == 0.5  # 2 discordant groups, both one way: 2 * 0.5^2
    # the old rule (a tie counts as wrong) would have scored a's g2 and g4 as misses: 2 vs 2, no difference
    on_clips = stats.mcnemar_test(pd.concat([a, b]), "a", "b")
    assert (on_clips["ties_a"], on_clips["ties_b"], on_clips["dropped"]) == (0, 0, 0) and on_clips["n"] == 9


def test_mcnemar_collapsed_non_speech_uses_one_minus_p_speech():
    labels = ["nonspeech"] * 4
    groups = ["g1", "g1", "g2", "g2"]
    # a errs once per group; its right answers are sure (p_speech 0.05), its wrong ones unsure (0.55)
    a = frame("a", ["c0", "c1", "c2", "c3"], labels, flip(labels, {1, 3}), p=[0.05, 0.55, 0.05, 0.55], groups=groups)
    b = frame("b", ["c0", "c1", "c2", "c3"], labels, flip(labels, {0, 1}), p=[0.9, 0.9, 0.1, 0.1], groups=groups)
    r = stats.mcnemar_test(pd.concat([a, b]), "a", "b", collapse="group_id")
    # a: both ties broken to right (mean p_true 0.7); b: g1 wrong, g2 right
    assert (r["a_only"], r["b_only"], r["both_correct"], r["ties_a"], r["ties_b"]) == (1, 0, 1, 2, 0)


def test_mcnemar_table_against_reference_with_holm():
    preds, bank = _two_systems()
    third = preds[preds["system"] == "ft"].assign(system="zs", pred=flip(["speech"] * 6 + ["nonspeech"] * 6, {3}))
    t = stats.mcnemar_table(pd.concat([preds, third]), "ft", bank)
    assert set(t["unit"]) == {"clip_id", "group_id"} and len(t) == 4
    assert (t["p_exact_adj"] >= t["p_exact"] - 1e-12).all()


# ------------------------------------------------------------------------------ seeds
def test_seed_summary():
    t = pd.DataFrame({"system": "ft", "variant": "attn", "seed": [0, 1, 2], "accuracy": [0.8, 0.9, 1.0],
                      "balanced_accuracy": [0.7, 0.7, 0.7]})
    s = stats.seed_summary(t, metrics=["accuracy", "balanced_accuracy"]).set_index("metric")
    assert s.loc["accuracy", "mean"] == pytest.approx(0.9)
    assert s.loc["accuracy", "sd"] == pytest.approx(0.1)
    assert s.loc["accuracy", "range"] == pytest.approx(0.2)
    assert s.loc["balanced_accuracy", "sd"] == pytest.approx(0, abs=1e-12) and s.loc["accuracy", "n_seeds"] == 3
    assert list(stats.per_seed_table(t, "accuracy").columns) == [0, 1, 2]


# ------------------------------------------------------------------------------ psychometric
def simulate(levels, a, b, lapse, n_per_class, log_x=True, seed=0, gamma=0.5, x="duration_ms", group_size=5):
    rng = np.random.default_rng(seed)
    rows = []
    i = 0
    for lv in levels:
        t = math.log(lv) if log_x else lv
        p = gamma + (1 - gamma - lapse) / (1 + math.exp(-(a + b * t)))
        for lab in ("speech", "nonspeech"):
            ok = rng.random(n_per_class) < p
            for c in ok:
                other = "nonspeech" if lab == "speech" else "speech"
                rows.append({"clip_id": f"c{i}", "label": lab, "pred": lab if c else other, x: lv,
                             "group_id": f"{lab}{i // group_size}", "p_speech": 0.5})
                i += 1
    return pd.DataFrame(rows)


def true_threshold(a, b, lapse, target, gamma=0.5, log_x=True):
    t = (math.log((target - gamma) / (1 - gamma - lapse) / (1 - (target - gamma) / (1 - gamma - lapse))) - a) / b
    return math.exp(t) if log_x else t


def test_psychometric_fit_recovers_known_parameters():
    a, b, lapse = -11.0, 2.0, 0.03  # duration threshold for 90%: ~333 ms
    levels = [50, 80, 120, 200, 300, 500, 800, 1200, 2000]
    df = simulate(levels, a, b, lapse, n_per_class=3000)
    fit = stats.fit_psychometric(df, "duration_ms")
    assert fit.log_x and fit.converged
    assert fit.b == pytest.approx(b, rel=0.1)
    assert fit.a == pytest.approx(a, rel=0.1)
    assert fit.lapse == pytest.approx(lapse, abs=0.01)
    thr, flag = fit.threshold(0.9)
    assert flag == "ok" and thr == pytest.approx(true_threshold(a, b, lapse, 0.9), rel=0.05)


def test_psychometric_threshold_interval_covers_truth_snr():
    a, b, lapse = -0.8, 0.25, 0.02  # SNR for 75%: ~7.6 dB
    df = simulate([-10, -5, 0, 5, 10, 15, 20], a, b, lapse, n_per_class=400, log_x=False, x="snr_db", seed=2)
    res = stats.psychometric_threshold(df, "snr_db", 0.75, n_boot=300, seed=0)
    truth = true_threshold(a, b, lapse, 0.75, log_x=False)
    assert res["flag"] == "ok" and not res["log_x"]
    assert res["boot_lo"] <= truth <= res["boot_hi"]
    assert res["boot_lo"] < res["threshold"] < res["boot_hi"]
    assert res["boot_unit"] == "group_id" and res["share_outside_range"] < 0.05


def test_threshold_outside_the_tested_range_is_flagged_not_extrapolated():
    # already at 97% at the shortest duration tested: the 90% threshold lies below the range
    easy = simulate([200, 500, 1000], -8.0, 2.0, 0.02, n_per_class=300, seed=4)
    res = stats.psychometric_threshold(easy, "duration_ms", 0.9, n_boot=100)
    assert res["flag"] == "below_range" and res["threshold"] == -math.inf
    assert "below" in stats.describe_threshold(res, "ms")
    # ceiling around 80%: 90% is never reached
    hard = simulate([100, 200, 500, 1000], -5.0, 1.0, 0.0, n_per_class=300, seed=5)
    hard.loc[hard.index % 3 == 0, "pred"] = np.where(hard.loc[hard.index % 3 == 0, "label"] == "speech", "nonspeech", "speech")
    res = stats.psychometric_threshold(hard, "duration_ms", 0.9, n_boot=100)
    assert res["flag"] in ("above_range", "unreachable") and res["threshold"] == math.inf
    assert res["boot_hi"] == math.inf and "above" in stats.describe_threshold(res, "ms")
    # performance falling with SNR crosses the target downwards: no threshold
    down = simulate([0, 10, 20], 2.0, -0.25, 0.0, n_per_class=500, log_x=False, x="snr_db", seed=6)
    fit = stats.fit_psychometric(down, "snr_db")
    assert fit.threshold(0.75) == (pytest.approx(math.nan, nan_ok=True), "not_increasing")


def test_batched_bootstrap_fitter_agrees_with_lbfgsb():
    rng = np.random.default_rng(1)
    t = np.log([100, 200, 500, 1000.0])
    n = np.full(4, 200.0)
    ks = []
    for _ in range(30):
        p = 0.5 + 0.47 / (1 + np.exp(-(-12 + 2.2 * t)))
        ks.append(rng.binomial(200, p).astype(float))
    ks = np.array(ks)
    batch = stats.psychometric._best_batch(t, ks, np.tile(n, (30, 1)), 0.5, 0.1, [(-10.0, 2.0, 0.02), (1.0, 0.0, 0.01)])
    for k, prm in zip(ks, batch):
        core, nll_core, _ = stats.psychometric._fit_core(t, k, n, 0.5, 0.1)
        nll_batch = stats.psychometric._nll_and_grad(prm, t, k, n, 0.5)[0]
        assert nll_batch <= nll_core + 1e-3


# ------------------------------------------------------------------------------ calibration / ROC
def test_brier_and_ece_hand_case():
    y = np.array([1, 1, 0, 0], bool)
    p = np.array([0.9, 0.6, 0.4, 0.1])
    assert stats.brier_score(y, p) == pytest.approx((0.01 + 0.16 + 0.16 + 0.01) / 4)
    # 10 bins: each clip alone in its bin; |1-.9|, |1-.6|, |0-.4|, |0-.1| averaged
    assert stats.expected_calibration_error(y, p, 10) == pytest.approx(0.25)
    # 2 bins: [0, .5): mean .25, share 0 ; [.5, 1]: mean .75, share 1 -> .25
    assert stats.expected_calibration_error(y, p, 2) == pytest.approx(0.25)
    y2 = np.array([1, 0, 0, 0], bool)  # 2 bins: |.5-.75|/2 + |0-.25|/2
    assert stats.expected_calibration_error(y2, p, 2) == pytest.approx(0.25)
    # top-label: confidences .9,.6,.6,.9, all correct -> (|1-.9|*2 + |1-.6|*2)/4
    assert stats.expected_calibration_error(y, p, 10, kind="confidence") == pytest.approx(0.25)
    perfect = stats.expected_calibration_error(np.array([1, 0] * 50, bool), np.full(100, 0.5), 10)
    assert perfect == pytest.approx(0.0)


def test_reliability_table_matches_sklearn():
    rng = np.random.default_rng(0)
    p = rng.random(500)
    y = rng.random(500) < p
    t = stats.reliability_table(y, p, 10)
    frac, mean = calibration_curve(y, p, n_bins=10)
    assert t["frac_speech"].values == pytest.approx(frac)
    assert t["mean_p"].values == pytest.approx(mean)
    assert t["n"].sum() == 500


def test_roc_and_calibration_tables():
    preds, _ = _two_systems()
    roc = stats.roc_frame(preds)
    assert set(roc["system"]) == {"ft", "energy"}
    auc = roc.groupby("system")["auc"].first()
    assert auc["ft"] == 1.0
    cal = stats.calibration_table(preds).set_index("system")
    assert cal.loc["ft", "brier"] == pytest.approx(0.01)
    assert cal.loc["energy", "auc"] == pytest.approx(auc["energy"])


# ------------------------------------------------------------------------------ power
def test_mcnemar_sample_size_connor_hand_value():
    # Connor 1987 with delta=.05, psi=.10, alpha=.05, power=.8:
    # (1.959964*sqrt(.1) + 0.841621*sqrt(.0975))^2 / .0025 = (0.619795 + 0.262796)^2 / .0025 = 311.6
    assert stats.mcnemar_sample_size(0.05, 0.10) == 312
    assert stats.mcnemar_sample_size(-0.05, 0.10) == 312
    with pytest.raises(ValueError):
        stats.mcnemar_sample_size(0.2, 0.1)
    power = stats.mcnemar_exact_power(312, 0.075, 0.025)  # the exact test is a little conservative
    assert 0.7 < power < 0.85


def test_mcnemar_detectable_difference_inverts_the_sample_size():
    # Connor's n for delta=.05, psi=.10 is 311.6 (above): 311.6 clips detect exactly .05
    n = (1.959964 * math.sqrt(0.1) + 0.841621 * math.sqrt(0.0975)) ** 2 / 0.0025
    assert stats.mcnemar_detectable_difference(n, 0.10) == pytest.approx(0.05, abs=1e-5)
    d = stats.mcnemar_detectable_difference(192, 0.2)
    # just above d, 192 clips suffice; a little below, they do not
    assert stats.mcnemar_sample_size(d + 1e-6, 0.2) <= 192 < stats.mcnemar_sample_size(d - 1e-4, 0.2)
    # clustered clips are worth fewer: 2x the clips at deff 2 detect what the clips alone would
    assert stats.mcnemar_detectable_difference(384, 0.2, deff=2.0) == pytest.approx(d)
    assert stats.mcnemar_detectable_difference(384, 0.2) < d
    assert math.isnan(stats.mcnemar_detectable_difference(5, 0.1))  # too few clips for any difference
    with pytest.raises(ValueError):
        stats.mcnemar_detectable_difference(100, 0.0)


def test_two_proportion_sample_size_hand_value():
    # Cohen's h for .9 vs .8 = 2 asin sqrt .9 - 2 asin sqrt .8 = 0.283794;
    # n per group = 2 ((1.959964 + 0.841621) / 0.283794)^2 = 194.9
    assert stats.two_proportion_sample_size(0.9, 0.8) == 195


def test_design_effect():
    same = stats.design_effect([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1], ["a"] * 4 + ["b"] * 4 + ["c"] * 4)
    assert same["icc"] == pytest.approx(1.0) and same["deff"] == pytest.approx(4.0)
    rng = np.random.default_rng(0)
    indep = stats.design_effect(rng.random(4000) < 0.8, np.repeat(np.arange(400), 10))
    assert indep["deff"] < 1.3


def test_power_table_and_smoke_labels():
    t = stats.power_table([0.02, 0.05, 0.2], [0.1], deff=2.0)
    assert list(t["delta"]) == [0.02, 0.05]  # 0.2 > discordance is impossible
    assert t.set_index("delta").loc[0.05, "n_independent"] == 312 and t.set_index("delta").loc[0.05, "n_clips"] == 624
    preds, bank = _two_systems()
    j = stats.metrics_json(preds, bank, n_boot=20, smoke=["ft"])
    assert j["smoke"] is True
    assert {s["system"]: s["smoke"] for s in j["systems"]} == {"ft": True, "energy": False}


# ------------------------------------------------------------------------ the one metrics core
def test_metrics_core_words_and_booleans_agree_with_sklearn():
    rng = np.random.default_rng(3)
    y = rng.random(60) < 0.3
    pred = np.where(rng.random(60) < 0.75, y, ~y)
    words = lambda a: np.where(a, "speech", "nonspeech")  # noqa: E731
    m_words, m_bool = stats.binary_metrics(words(y), words(pred)), stats.binary_metrics(y, pred)
    assert m_words == m_bool
    assert m_bool["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m_bool["recall_speech"] == pytest.approx(pred[y].mean()) and m_bool["recall_nonspeech"] == pytest.approx((~pred[~y]).mean())
    assert stats.balanced_accuracy(y.astype(int), pred) == m_bool["balanced_accuracy"]  # 0/1 labels, as the baselines hold them


def test_metrics_from_counts_is_vectorised_and_says_what_an_absent_class_gives():
    counts = np.array([[4, 3, 6, 3], [4, 2, 0, 0], [0, 0, 5, 4]], float)  # both classes; speech only; non-speech only
    undefined = stats.metrics_from_counts(counts)
    assert undefined["balanced_accuracy"][0] == pytest.approx((3 / 4 + 3 / 6) / 2)
    assert np.isnan(undefined["balanced_accuracy"][1:]).all()  # the book's tables: one class is not balanced
    assert undefined["accuracy"].tolist() == pytest.approx([0.6, 0.5, 0.8])
    other = stats.metrics_from_counts(counts, absent_class="other")  # breakdowns, dev score: the present class's recall
    assert other["balanced_accuracy"].tolist() == pytest.approx([(3 / 4 + 3 / 6) / 2, 0.5, 0.8])
    with pytest.raises(ValueError, match="absent_class"):
        stats.metrics_from_counts(counts, absent_class="ignore")
    one_class = stats.wilson_intervals(["speech"] * 5, ["speech"] * 4 + ["nonspeech"], absent_class="other")
    assert one_class["balanced_accuracy"] == one_class["recall_speech"] == stats.wilson_interval(4, 5)
    assert all(math.isnan(v) for v in stats.wilson_intervals(["speech"] * 5, ["speech"] * 5)["balanced_accuracy"])


def test_baselines_train_and_evaluate_score_with_the_core():
    from lib import evaluate
    from lib.baselines import fitted

    assert fitted.balanced_accuracy is stats.balanced_accuracy  # the fitted baselines: no second implementation left
    import inspect

    from lib.train import loop  # training's dev metrics import the core inside the function (lib.train.loop)
    assert "from ..stats import binary_metrics" in inspect.getsource(loop.dev_metrics)
    preds = frame("a", [f"c{i}" for i in range(6)], ["speech", "speech", "nonspeech", "nonspeech", "speech", "speech"],
                  ["speech", "nonspeech", "nonspeech", "speech", "speech", "speech"])
    bank = pd.DataFrame({"clip_id": preds["clip_id"], "snr_db": [0, 0, 0, 0, 10, 10]})
    t = evaluate.breakdown(preds, bank, "snr_db").set_index("snr_db")
    assert t.loc[0, "balanced_accuracy"] == pytest.approx(0.5) and t.loc[10, "balanced_accuracy"] == 1.0  # speech only at 10 dB
    assert (t.loc[10, "balanced_accuracy_lo"], t.loc[10, "balanced_accuracy_hi"]) == pytest.approx(stats.wilson_interval(2, 2))


# ------------------------------------------------------------------------------------- Holm
def test_holm_hand_case_and_within_groups():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4x, 3x, 2x, 1x = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.6, 0.2]).tolist() == pytest.approx([0.6, 0.4]) and stats.holm([]).size == 0  # 0.2 x 2, then max(0.4, 0.6)
    table = pd.DataFrame({"unit": ["clips", "sources", "clips", "sources"], "p_exact": [0.01, 0.2, 0.04, 0.03]})
    adjusted = stats.adjust_within(table, "unit")
    assert adjusted.tolist() == pytest.approx([0.02, 0.2, 0.04, 0.06])  # each unit its own family of two tests
    assert stats.adjust_within(table, "unit", method="bonferroni").tolist() == pytest.approx([0.02, 0.4, 0.08, 0.06])


# ----------------------------------------------------------------------------- power helpers
def test_design_effect_within_class_ignores_the_class_mix():
    # every source holds one class and speech is always right, non-speech always wrong: between-class, not clustering
    labels = ["speech"] * 6 + ["nonspeech"] * 6
    groups = [f"s{i // 2}" for i in range(6)] + [f"n{i // 2}" for i in range(6)]
    correct = [1.0] * 6 + [0.0] * 6
    assert stats.design_effect(correct, groups)["deff"] == pytest.approx(2.0)  # m0 = 2, icc = 1 if the mix is left in
    assert stats.design_effect_within_class(correct, labels, groups)["deff"] == 1.0


def test_paired_power_per_comparison():
    tests = pd.DataFrame({"n": [100, 100, 100], "a_only": [10, 5, 0], "b_only": [2, 5, 0]})
    out = stats.paired_power(tests, deff=1.5)
    assert out["psi"].tolist() == pytest.approx([0.12, 0.10, 0.0])
    assert out.loc[0, "clips_needed"] == math.ceil(stats.mcnemar_sample_size(0.08, 0.12) * 1.5)
    assert np.isnan(out.loc[1, "clips_needed"]) and out.loc[1, "large_enough"] is None  # the same errors: no difference seen
    assert out.loc[0, "large_enough"] == (out.loc[0, "clips_needed"] <= 100)
    assert out.loc[0, "detectable"] == pytest.approx(stats.mcnemar_detectable_difference(100, 0.12, deff=1.5))
    assert np.isnan(out.loc[2, "detectable"])
