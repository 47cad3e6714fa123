"""lib.comparisons (chapter 06's logic) on small synthetic run folders: no model, no audio, no notebook."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lib import comparisons, io, results, stats, systems
from lib.comparisons import analyses, lineup, prose

CFG = {"run_id": "main", "normalization": "rms", "lora_variant": "attn", "loss_masking": True, "seed": 0,
       "ci_level": 0.95, "bootstrap_reps": 50, "smoke": False}


def _bank(n_sources: int = 6) -> pd.DataFrame:
    rows = []
    for label in ("speech", "nonspeech"):
        for g in range(n_sources):
            for k in range(2):
                rows.append({"clip_id": f"{label[0]}{g}-{k}", "group_id": f"{label}{g}", "label": label, "split": "test",
                             "duration_ms": (100, 1000)[k], "snr_db": (0.0, 20.0)[g % 2]})
    rows.append({"clip_id": "dev-0", "group_id": "devsrc", "label": "speech", "split": "dev", "duration_ms": 100, "snr_db": 0.0})
    return pd.DataFrame(rows)


def _system(bank: pd.DataFrame, system: str, variant: str, seed: int, wrong: set[int], run_id: str = "main") -> pd.DataFrame:
    """Predictions that are right except at the positions ``wrong`` (of the test clips)."""
    test = bank[bank["split"] == "test"].reset_index(drop=True)
    truth = (test["label"] == "speech").to_numpy()
    right = np.array([i not in wrong for i in range(len(test))])
    p = np.where(truth == right, 0.8, 0.2)
    return results.predictions_frame(run_id=run_id, system=system, variant=variant, seed=seed, clip_ids=test["clip_id"].tolist(),
                                     labels=test["label"].tolist(), p_speech=p)


@pytest.fixture
def run(tmp_path):
    bank = _bank()
    main = tmp_path / "cpu" / "main"
    main.mkdir(parents=True)
    zs = _system(bank, "qwen2audio-zeroshot", "prompt=hand-written", -1, {0, 1, 2, 3, 12, 13})
    dev_row = zs.iloc[:1].assign(clip_id="dev-0")  # a clip outside the test split: left out
    old_ensemble = _system(bank, "qwen2audio-attn+vote", "attn seeds=9", -1, set())  # an earlier execution's: rebuilt
    results.write_predictions(main, pd.concat([
        _system(bank, "qwen2audio-attn", "attn", 0, {0, 12}), zs, dev_row, old_ensemble,
        _system(bank, "energy", "rms", 0, set(range(0, 24, 2))),
        _system(bank, "energy", "none", 0, set(range(0, 24, 3))),
    ]))
    members = []
    for seed in (1, 2):
        m = main.parent / f"main--seed{seed}"
        m.mkdir()
        io.write_json(m / "status.json", {"state": "complete", "chapters": {}})
        results.write_predictions(m, pd.concat([_system(bank, "qwen2audio-attn", "attn", seed, {seed, 12 + seed}, m.name),
                                                zs.assign(run_id=m.name)]))
        members.append({"run_id": m.name, "seed": seed, "variant": "attn"})
    io.write_yaml(main / "sweep.yaml", {"members": members})
    return main, bank


def test_family_and_display_names():
    assert [systems.family(s) for s in ("qwen2audio-attn+vote", "qwen2audio-attn+opro", "qwen2audio-zeroshot",
                                       "qwen2audio-attn", "silero_vad")] == ["ensemble", "prompt-optimised", "zero-shot", "fine-tuned", "baseline"]
    keys = [("silero_vad", "rms/max-frame-prob-512", -1), ("silero_vad", "none/max-frame-prob-512", -1),
            ("qwen2audio-attn", "attn", 0), ("qwen2audio-attn", "attn", 1), ("energy", "rms", 0)]
    assert lineup.display_names(keys) == {keys[0]: "silero_vad/rms", keys[1]: "silero_vad/none", keys[2]: "qwen2audio-attn#0",
                                          keys[3]: "qwen2audio-attn#1", keys[4]: "energy"}
    # shortening that would merge two systems falls back to the full labels
    merged = [("x", "a-b", 0), ("x", "b-a", 0)]
    assert lineup.display_names(merged) == {merged[0]: "x/a-b", merged[1]: "x/b-a"}
    assert lineup.is_headline("energy", "rms", "rms") and not lineup.is_headline("energy", "none/x", "rms")
    assert lineup.is_headline("qwen2audio-attn", "none", "rms")


def test_require_run_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="make book"):
        comparisons.require_run(None)
    with pytest.raises(FileNotFoundError, match="predictions.csv does not exist"):
        comparisons.require_run(tmp_path)


def test_gather_drops_duplicates_old_ensembles_and_clips_outside_test(run):
    main, bank = run
    g = comparisons.gather(main, bank)
    assert [m.name for m in g.members_complete] == ["main--seed1", "main--seed2"]
    assert g.n_dropped == 24 * 2 and g.max_p_range == 0 and g.n_differing == 0  # the zero-shot model, scored again twice
    assert g.off_test_rows == 1 and g.off_test_systems == ["qwen2audio-zeroshot"] and g.n_test == 24
    assert not g.predictions["system"].str.endswith(("+vote", "+mean")).any()
    assert g.predictions.groupby(results.SYSTEM_KEY).ngroups == 6  # 3 seeds, zero-shot, 2 energy variants
    text = prose.gathered(g)
    assert "48 exact duplicates were dropped" in text and "6 systems, on the 24 test clips" in text and "outside the test split" in text


def test_lineup_writes_ensembles_through_results_and_removes_stale_ones(run):
    main, bank = run
    line = comparisons.build_lineup(comparisons.gather(main, bank), main, CFG)
    assert line.multi_seed == [("qwen2audio-attn", "attn")]
    on_disk = results.read_predictions(main)
    ens = on_disk[on_disk["system"].str.endswith(("+vote", "+mean"))]
    assert set(ens["variant"]) == {"attn seeds=3"} and len(ens) == 2 * 24  # the earlier "seeds=9" ensemble is gone
    assert line.reference == ("qwen2audio-attn", "attn", 0) and "seed 0" in line.reference_reason
    assert line.ensemble_names() == ["qwen2audio-attn+vote", "qwen2audio-attn+mean"]
    assert "over seeds 0, 1, 2" in prose.ensembles(line, main)
    # a member fails: its seed leaves the ensembles, and the 3-seed ensembles are removed from predictions.csv
    io.write_json(main.parent / "main--seed2" / "status.json", {"state": "failed", "chapters": {}})
    comparisons.build_lineup(comparisons.gather(main, bank), main, CFG)
    on_disk = results.read_predictions(main)
    assert set(on_disk.loc[on_disk["system"].str.endswith(("+vote", "+mean")), "variant"]) == {"attn seeds=2"}


def test_remove_predictions_removes_only_the_keys_given(tmp_path):
    bank = _bank()
    results.write_predictions(tmp_path, pd.concat([_system(bank, "a", "", 0, set()), _system(bank, "a", "", 1, set())]))
    assert results.remove_predictions(tmp_path, [("b", "", 0)]) is None and results.remove_predictions(tmp_path, []) is None
    results.remove_predictions(tmp_path, [("a", "", 1)])
    assert results.read_predictions(tmp_path)["seed"].unique().tolist() == [0]


def test_reference_choice_by_name_never_by_score(run):
    main, bank = run
    g = comparisons.gather(main, bank)
    line = comparisons.build_lineup(g, main, CFG, reference_system="energy/rms")
    assert line.reference == ("energy", "rms", 0) and "reference_system" in line.reference_reason
    fallback = comparisons.build_lineup(g, main, {**CFG, "seed": 7})  # no fine-tuned system with the run's seed
    assert fallback.reference_name == "qwen2audio-zeroshot" and "fallback" in fallback.reference_reason
    line.predictions = line.predictions[~line.predictions["system"].str.startswith("qwen2audio")]
    with pytest.raises(ValueError, match="no reference"):
        lineup.choose_reference(line, "qwen2audio-attn", 0)


def test_analyses_order_by_family_and_test_against_the_reference(run):
    main, bank = run
    line = comparisons.build_lineup(comparisons.gather(main, bank), main, CFG)
    table = comparisons.system_table(line, bank, 0.95, 20, 0)
    assert list(table["family"].astype(str).drop_duplicates()) == ["fine-tuned", "ensemble", "zero-shot", "baseline"]
    assert table.set_index("name").loc["energy/none", "headline"] == False  # noqa: E712 - not the profile's normalization
    ratio = table.set_index("name")["ba_width_ratio_cluster_vs_clip"]
    assert np.isnan(ratio["qwen2audio-attn+vote"])  # every seed's errors outvoted: no interval to widen
    assert np.isfinite(ratio["qwen2audio-attn#0"]) and ratio["qwen2audio-attn#0"] > 0
    assert comparisons.strongest_baseline(table) == "energy/rms"  # the only baseline shown
    assert comparisons.focus_systems(line, table) == ["qwen2audio-attn#0", "energy/rms", "qwen2audio-zeroshot"]
    mc, skipped = comparisons.reference_tests(line, bank, table)
    assert skipped == [] and len(mc) == 2 * (len(table) - 1) and set(mc["system_a"]) == {"qwen2audio-attn/attn#0"}
    zs = mc[(mc["name"] == "qwen2audio-zeroshot") & (mc["unit"] == "clip_id")].iloc[0]
    assert (zs["a_only"], zs["b_only"]) == (4, 0)  # the zero-shot model is also wrong on 0 and 12, and on 1, 2, 3, 13
    wide = comparisons.wide_tests(mc)
    assert list(wide["system"]) == list(mc.loc[mc["unit"] == "clip_id", "name"])
    text = prose.reference_tests(line, mc, skipped, "")
    assert f"over {len(table) - 1} comparisons" in text


def test_power_study_uses_the_tests_and_the_within_class_design_effect(run):
    main, bank = run
    line = comparisons.build_lineup(comparisons.gather(main, bank), main, CFG)
    table = comparisons.system_table(line, bank, 0.95, 20, 0)
    mc, _ = comparisons.reference_tests(line, bank, table)
    psy = comparisons.psychometric_study(line, bank, comparisons.focus_systems(line, table), 0.95, 20, 0)
    assert set(psy.fits) == {"duration_ms", "snr_db"} and len(psy.table) == 2 * 3
    comparator = comparisons.power_comparator(line, table)
    power = comparisons.power_study(line, psy.joined, mc, comparator)
    assert comparator == "energy/rms" and power.discordance == stats.discordance(line.predictions, line.reference, ("energy", "rms", 0))
    ref = psy.joined[psy.joined["name"] == line.reference_name].sort_values("clip_id")
    right = (ref["pred"] == ref["label"]).to_numpy()
    assert power.design_reference == stats.design_effect_within_class(right, ref["label"], ref["group_id"])
    expected = stats.paired_power(mc[mc["unit"] == "clip_id"], deff=power.design["deff"])
    assert power.by_system["clips_needed"].equals(expected["clips_needed"])
    assert power.grid_wide.columns[0] == "delta" and "discordance 0.1" in power.grid_wide.columns
    assert "A non-significant McNemar test" in prose.power(power, "")
    assert comparisons.power_study(line, psy.joined, mc, None).by_system.empty


def test_seed_study_and_its_words(run):
    main, bank = run
    line = comparisons.build_lineup(comparisons.gather(main, bank), main, CFG)
    table = comparisons.system_table(line, bank, 0.95, 20, 0)
    seeds = comparisons.seed_study(line, bank, table)
    assert list(seeds.summary["n_seeds"].unique()) == [3] and list(seeds.per_seed_wide.columns[-3:]) == ["seed 0", "seed 1", "seed 2"]
    assert set(seeds.ensemble_tests["ensemble"]) == {"qwen2audio-attn+vote", "qwen2audio-attn+mean"}
    assert len(seeds.ensemble_tests) == 2 * 2 * 3  # two ensembles, two units, three seeds
    sm = seeds.spread("qwen2audio-attn", "attn")
    assert f"range {sm['min']:.3f} to {sm['max']:.3f}" in prose.seeds(line, seeds, table, 0.95, "")
    one_seed = analyses.SeedStudy(table.iloc[:0], pd.DataFrame(), pd.DataFrame())
    assert "one seed per system" in prose.seeds(line, one_seed, table, 0.95, "")


def test_statistics_summary_is_plain_json(run):
    main, bank = run
    watch = comparisons.Stopwatch()
    g = comparisons.gather(main, bank)
    line = comparisons.build_lineup(g, main, CFG)
    with watch("metrics table"):
        table = comparisons.system_table(line, bank, 0.95, 20, 0)
    psy = comparisons.psychometric_study(line, bank, [line.reference_name], 0.95, 20, 0)
    summary = comparisons.statistics_summary(line, g, table, psy, analyses.PowerStudy(None), None, CFG, watch)
    assert json.loads(json.dumps(summary))["reference"] == "qwen2audio-attn#0"
    assert summary["ensembles"] == line.ensemble_names() and set(summary["timings"]) == {"metrics table"}
    assert [t["axis"] for t in summary["thresholds"]] == ["duration_ms", "snr_db"] and summary["duplicates_dropped"] == 48
