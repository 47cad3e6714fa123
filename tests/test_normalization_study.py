"""lib.normalization_study (chapter 02): the level cue under each normalization, the baselines fitted and
compared under each, and the findings in words, on hand-made tables and on a bank built from the
synthetic corpus."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from lib import audio, baselines, config, data, normalization_study as ns, stats

NORMS = list(audio.NORMALIZATIONS)


# ---------------------------------------------------------------------------------------------- levels


def _toy(n_per_class: int = 20, seed: int = 0) -> tuple[pd.DataFrame, dict[str, list[np.ndarray]]]:
    """Speech 20 dB louder than non-speech, SNR rising with the level; clips of different crest factors."""
    r = np.random.default_rng(seed)
    rows, raw = [], []
    for k in range(2 * n_per_class):
        lab = "speech" if k < n_per_class else "nonspeech"
        snr = [0.0, 10.0, 20.0][k % 3]
        gain = (0.1 if lab == "speech" else 0.01) * 10 ** (snr / 40)
        raw.append((gain * r.standard_normal(1600) * (1 + 3 * (k % 2) * (np.arange(1600) < 40))).astype(np.float32))
        rows.append({"clip_id": f"c{k:03d}", "label": lab, "snr_db": snr, "duration_ms": 100, "split": "test", "group_id": f"g{k}"})
    bank = pd.DataFrame(rows)
    return bank, {n: raw if n == "none" else [audio.normalize(x, n) for x in raw] for n in NORMS}


def test_peak_dbfs():
    assert audio.peak_dbfs(np.array([0.0, -0.5, 0.25])) == pytest.approx(20 * np.log10(0.5))
    assert audio.peak_dbfs(np.zeros(8)) == -np.inf and audio.peak_dbfs(np.ones(3)) == 0.0


def test_level_table_and_cue():
    bank, clips = _toy()
    levels = ns.level_table(bank, clips)
    assert len(levels) == 3 * len(bank) and list(levels["normalization"].unique()) == NORMS
    first = levels[(levels.clip_id == "c000") & (levels.normalization == "none")].iloc[0]
    assert first.rms_dbfs == pytest.approx(audio.rms_dbfs(clips["none"][0])) and first.snr == "0 dB"
    assert np.allclose(levels.loc[levels.normalization == "peak", "peak_dbfs"], 20 * np.log10(audio.TARGET_PEAK), atol=1e-4)
    cue = ns.level_cue_table(levels)
    assert list(zip(cue.normalization, cue.feature)) == [(n, f) for f in ("rms_dbfs", "peak_dbfs") for n in NORMS]
    assert ns.cue(cue, "none", "rms_dbfs", "auc_speech") == 1.0  # speech is louder: the stored level is a perfect cue
    assert ns.cue(cue, "rms", "rms_dbfs", "separability") < 0.75  # RMS normalization takes most of it away
    assert ns.cue(cue, "none", "rms_dbfs", "spearman_snr_speech") > 0.8  # louder at higher SNR, within a class
    assert cue["separability"].between(0.5, 1).all() and cue["separability_extremes"].between(0.5, 1).all()
    text = ns.level_findings(cue, levels)
    assert f"AUC {ns.cue(cue, 'none', 'rms_dbfs', 'auc_speech'):.2f} (separability 1.00: much class information" in text
    at_target = (levels.query("normalization == 'rms'")["rms_dbfs"] > -20.05).mean()
    assert f"puts {at_target:.0%} of the clips at −20 dBFS exactly" in text
    fig = ns.levels_figure(levels, "run test", None)
    assert len(fig.axes) == 2 * 3
    plt.close("all")


def test_clips_by_normalization_are_what_a_loader_gives(nbank):
    bank, manifest = nbank
    clips = ns.clips_by_normalization(bank, manifest)
    for n in NORMS:
        for a, b in zip(clips[n][:10], data.load_clips(bank.head(10), manifest, normalization=n)):
            np.testing.assert_array_equal(a, b)
    dev, labels = ns.split_clips(clips, bank, "peak", "dev")
    assert len(dev) == (bank.split == "dev").sum() and list(labels) == list(bank.loc[bank.split == "dev", "label"])


# ---------------------------------------------------------------------------------------------- baselines


@pytest.fixture(scope="module")
def nbank(synthetic_corpus, tmp_path_factory):
    cfg = config.resolve("cpu", data_dir=str(synthetic_corpus), bank_dir=str(tmp_path_factory.mktemp("banks")), durations_ms=[100],
                         snrs_db=[0, 20], noise_types=["white"], clips_per_cell=10, max_sources_per_class=None)
    manifest = data.build_bank(cfg, progress=False)
    return data.load_bank(manifest), manifest


def test_fit_baselines_then_save_and_reload(nbank, tmp_path):
    bank, manifest = nbank
    clips = ns.clips_by_normalization(bank, manifest)
    fitted, preds, fits = ns.fit_baselines(bank, manifest, clips, seed=0, run_id="t")
    assert sorted(fitted) == sorted((s, n) for s in ("energy", "logmel") for n in NORMS)
    assert list(zip(fits.system, fits.normalization)) == [(s, n) for n in NORMS for s in ("energy", "logmel")]
    test_ids = set(bank.loc[bank.split == "test", "clip_id"])
    for p in preds:
        assert set(p["clip_id"]) == test_ids and p["variant"].iloc[0] in NORMS
    ours = pd.concat(preds, ignore_index=True)
    lines = ns.save_and_reload(fitted, "rms", tmp_path, bank, manifest, "t", written=ours)
    assert [line.split(":")[0] for line in lines] == ["energy", "logmel"] and (tmp_path / "systems" / "logmel").is_dir()
    tampered = ours.copy()
    tampered.loc[(tampered.system == "energy") & (tampered.variant == "rms"), "p_speech"] += 0.01
    with pytest.raises(AssertionError, match="energy"):
        ns.save_and_reload(fitted, "rms", tmp_path, bank, manifest, "t", written=tampered)


def test_free_vads_are_every_webrtc_mode_and_the_neural_vads():
    names = [(v.name, getattr(v, "mode", None)) for v in ns.free_vads()]
    assert names[:2] == [("silero_vad", None), ("firered_vad", None)]
    assert names[2:] == [("webrtc_vad", m) for m in range(4)]
    assert all(isinstance(v, baselines.WebRTCVAD) and v.frame_ms == 30 for v in ns.free_vads()[2:])


def test_encoder_probe_is_skipped_for_a_model_without_a_frozen_encoder(nbank, tmp_path):
    bank, manifest = nbank
    text = ns.fit_encoder_probe("tiny-random", bank, manifest, {}, "rms", 0, tmp_path, "t")
    assert "`tiny-random` is not one, so it is skipped here" in text and not (tmp_path / "predictions.csv").exists()


# ---------------------------------------------------------------------------------------------- comparison


def _predictions(bank: pd.DataFrame, right: dict[tuple[str, str], float], seed: int = 0) -> pd.DataFrame:
    """Predictions of each (system, variant) on the bank's test clips, right on the given share of them."""
    r = np.random.default_rng(seed)
    test = bank[bank.split == "test"]
    out = []
    for (system, variant), share in right.items():
        ok = r.random(len(test)) < share
        pred = np.where(ok, test["label"], np.where(test["label"] == "speech", "nonspeech", "speech"))
        out.append(pd.DataFrame({"run_id": "t", "system": system, "variant": variant, "seed": -1, "clip_id": test["clip_id"].values,
                                 "label": test["label"].values, "pred": pred,
                                 "p_speech": np.where(pred == "speech", 0.8, 0.2)}))
    return pd.concat(out, ignore_index=True)


def test_split_variant_and_test_predictions(nbank):
    assert ns.split_variant("rms/mode3-30ms") == ("rms", "mode3-30ms")
    assert ns.split_variant("peak") == ("peak", "") and ns.split_variant("lora/attn") == ("", "lora/attn")
    bank, _ = nbank
    preds = _predictions(bank, {("energy", "none"): 0.9, ("qwen2audio-attn", "rms"): 0.9, ("other", "rms"): 0.9})
    dev = preds.iloc[:3].assign(clip_id=bank.loc[bank.split == "dev", "clip_id"].iloc[:3].values)
    sel = ns.test_predictions(pd.concat([preds, dev], ignore_index=True), bank)
    assert set(sel["system"]) == {"energy", "qwen2audio-attn"} and len(sel) == 2 * (bank.split == "test").sum()


def test_metrics_grid_and_by_snr(nbank):
    bank, _ = nbank
    right = {(s, f"{n}{'/' + st if st else ''}"): 0.6 + 0.1 * k
             for s, st in (("energy", ""), ("webrtc_vad", "mode3-30ms"), ("webrtc_vad", "mode0-30ms")) for k, n in enumerate(NORMS)}
    sel = _predictions(bank, right)
    table = ns.metrics_by_normalization(sel, bank, 0.95, 50, 0)
    assert set(table["baseline"]) == {"energy", "webrtc_vad mode3-30ms", "webrtc_vad mode0-30ms"}
    grid = ns.interval_grid(table)
    r = table[(table.system == "energy") & (table.normalization == "peak")].iloc[0]
    assert list(grid.columns) == NORMS
    assert grid.loc["energy", "peak"] == f"{r.balanced_accuracy:.3f} [{r.balanced_accuracy_boot_lo:.3f}, {r.balanced_accuracy_boot_hi:.3f}]"
    by_snr = ns.by_snr_table(sel, bank, 0.95)
    assert set(by_snr["baseline"]) == {"energy", "webrtc_vad mode3-30ms"}  # WebRTC in its most aggressive mode only
    one = by_snr[(by_snr.baseline == "energy") & (by_snr.normalization == "rms") & (by_snr.snr_db == 20)].iloc[0]
    clips = set(bank.loc[(bank.split == "test") & (bank.snr_db == 20), "clip_id"])
    d = sel[(sel.system == "energy") & (sel.variant == "rms") & sel.clip_id.isin(clips)]
    assert one.n == len(d) and one.balanced_accuracy == pytest.approx(stats.binary_metrics(d.label, d.pred)["balanced_accuracy"])
    assert one.lo <= one.balanced_accuracy <= one.hi
    for fig in (ns.baselines_figure(table, 0.95, "run test", None), ns.by_snr_figure(by_snr, "run test", None)):
        assert fig.axes
    plt.close("all")


def test_mcnemar_against_the_stored_level_is_holm_adjusted_per_unit(nbank):
    bank, _ = nbank
    sel = _predictions(bank, {(s, n): 0.55 + 0.2 * k for s in ("energy", "logmel") for k, n in enumerate(NORMS)})
    mcn = ns.mcnemar_against_stored_level(sel, bank)
    assert list(zip(mcn.baseline, mcn.versus)) == [(s, f"none vs {n}") for s in ("energy", "logmel") for n in ("peak", "rms") for _ in (0, 1)]
    for unit, part in mcn.groupby("unit"):
        assert len(part) == 4
        p = np.sort(part["p_exact"].values)
        holm = np.minimum(1, np.maximum.accumulate((4 - np.arange(4)) * p))  # Holm's step-down, by hand
        assert np.allclose(np.sort(part["p_holm"].values), holm)
    assert (mcn["p_holm"] >= mcn["p_exact"]).all()


def test_finetuned_section_says_what_the_run_has():
    none = ns.finetuned_section(pd.DataFrame({"system": ["energy"]}), "rms")
    assert len(none) == 1 and none[0].startswith("No fine-tuned model predictions")
    base = {"n": 10, "accuracy": 0.8, "balanced_accuracy": 0.8, "balanced_accuracy_boot_lo": 0.7, "balanced_accuracy_boot_hi": 0.9, "auc": 0.85}
    one = pd.DataFrame([{"system": "qwen2audio-attn", "variant": "rms", "normalization": "rms", "settings": "", **base}])
    items = ns.finetuned_section(one, "rms")
    assert isinstance(items[1], pd.DataFrame) and "under only rms normalization" in items[2]
    two = pd.concat([one, one.assign(variant="peak", normalization="peak", balanced_accuracy=0.7)], ignore_index=True)
    pivot = ns.finetuned_section(two, "rms")[2]
    assert list(pivot.columns) == ["peak", "rms"] and pivot.iloc[0].tolist() == [0.7, 0.8]


# ---------------------------------------------------------------------------------------------- findings


def _base_table(bump: float = 0.0) -> pd.DataFrame:
    rows = []
    for system, settings in [("energy", ""), ("logmel", ""), ("silero_vad", "max-frame-prob-512"), ("firered_vad", "max-frame-prob-10ms"),
                             ("webrtc_vad", "mode0-30ms"), ("webrtc_vad", "mode3-30ms")]:
        for k, n in enumerate(NORMS):
            ba = 0.6 + 0.05 * k + (bump if system == "logmel" and n == "rms" else 0)
            rows.append({"system": system, "settings": settings, "normalization": n,
                         "baseline": system + (f" {settings}" if settings else ""), "balanced_accuracy": ba,
                         "balanced_accuracy_boot_lo": ba - 0.08, "balanced_accuracy_boot_hi": ba + 0.08,
                         "recall_speech": 0.9, "recall_nonspeech": 0.3 + 0.05 * k})
    return pd.DataFrame(rows)


def _mcn(p: float) -> pd.DataFrame:
    return pd.DataFrame([{"baseline": s, "versus": f"none vs {n}", "unit": u, "p_holm": p}
                         for s in ("energy", "logmel") for n in ("peak", "rms") for u in ("clip_id", "group_id")])


def test_baseline_findings_numbers_and_verdicts():
    bank, clips = _toy()
    cue = ns.level_cue_table(ns.level_table(bank, clips))
    text = ns.baseline_findings(_base_table(), _mcn(0.2), cue, "rms", smoke_note="_small_")
    assert "The **energy detector** reaches balanced accuracy 0.600 at the stored level, 0.650 under peak and 0.700 under RMS" in text
    assert "(best: rms, 0.620 to 0.780, above chance)" in text
    assert "**Silero VAD** scores 0.600 / 0.650 / 0.700 (none / peak / RMS): a spread of 0.100." in text
    assert "**WebRTC VAD** is best in mode0-30ms under rms" in text and "it calls most noisy non-speech clips voiced." in text
    assert "no normalization changes a trained baseline's accuracy by more than chance" in text
    assert f"takes the RMS level from separability {ns.cue(cue, 'none', 'rms_dbfs', 'separability'):.2f}" in text
    assert "changes the log-mel classifier's balanced accuracy by +0.100 (rms minus none)." in text and text.endswith("\n_small_")
    tied = ns.baseline_findings(_base_table(bump=-0.05), _mcn(0.01), cue, "rms")
    assert "(best: peak = rms," in tied
    assert "beyond chance (Holm-adjusted McNemar p < 0.05) for energy (none vs peak, on clips), energy (none vs peak, on sources)" in tied
    same = ns.baseline_findings(_base_table(), _mcn(0.2), cue, "none")  # the profile keeps the stored level
    assert "The profile's normalization (none) leaves the RMS level's separability where it was" in same


def test_small_bank_note():
    bank = pd.DataFrame({"split": ["test", "test", "train"], "group_id": ["a", "a", "b"]})
    assert ns.small_bank_note("ci", bank) == ("_The `ci` profile's bank is small (2 test clips from 1 sources): "
                                              "read the intervals, not the point estimates._")


def test_model_study_findings():
    systems = {n: f"qwen2audio-attn-{n}-study" for n in NORMS}
    table = pd.DataFrame([{"system": systems[n], "balanced_accuracy": ba, "balanced_accuracy_boot_lo": ba - 0.1,
                           "balanced_accuracy_boot_hi": ba + 0.1} for n, ba in zip(NORMS, (0.8, 0.7, 0.6))])
    verdicts = pd.DataFrame([
        {"a": systems["none"], "b": systems["peak"], "unit": "clips", "mean_difference": 0.1, "significant_a": 0, "significant_b": 0},
        {"a": systems["none"], "b": systems["rms"], "unit": "clips", "mean_difference": 0.2, "significant_a": 1, "significant_b": 0},
        {"a": systems["peak"], "b": systems["rms"], "unit": "sources", "mean_difference": 0.1, "significant_a": 0, "significant_b": 0},
    ])
    text = ns.model_study_findings(table, verdicts, systems, "the mini model", "mini: ")
    assert text.startswith("mini: Balanced accuracy (cluster bootstrap over sources): none 0.800 [0.700, 0.900], peak 0.700")
    assert "highest: none." in text and "Significant after Holm: none vs rms on clips (1 seed(s) for none, 0 for rms)." in text
    assert "difference -0.100 in accuracy (peak minus none)" in text
    assert "RMS normalization is significantly worse than another normalization on this split (Holm) for the mini model" in text
    calm = ns.model_study_findings(table, verdicts.assign(significant_a=0), systems, "the mini model", "")
    assert "No pair differs significantly" in calm and "statistically level with the best" in calm
