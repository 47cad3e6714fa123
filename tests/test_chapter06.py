"""Chapter 06 end to end on a synthetic run folder: main run + two sweep members, no model, no audio read.

The bank's audio files are empty placeholders (chapter 06 reads predictions and the manifest, never audio).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lib import book, config, io, results

NOTEBOOK = book.NOTEBOOKS_DIR / "06_statistics.ipynb"


def _bank(root: Path) -> Path:
    rows, i = [], 0
    for label in ("speech", "nonspeech"):
        for g in range(12):
            for k in range(2):  # two test clips per source, as in the cpu bank
                dur = (100, 200, 500, 1000)[(g + k) % 4]
                snr = (0.0, 10.0, 20.0)[(g * 2 + k) % 3]
                rows.append({"clip_id": f"c{i:03d}", "source_id": f"{label}{g}", "group_id": f"{label}{g}", "label": label,
                             "category": label if label == "speech" else f"cat{g % 3}", "split": "test", "duration_ms": dur,
                             "snr_db": snr, "noise_type": "white", "rt60_s": 0.0, "filter": "none", "seed": 0,
                             "path": f"clips/c{i:03d}.flac"})
                i += 1
    (root / "clips").mkdir(parents=True)
    for r in rows:
        (root / r["path"]).touch()
    return io.write_csv(root / "manifest.csv", pd.DataFrame(rows))


def _system(bank: pd.DataFrame, system: str, variant: str, seed: int, skill: float, rng, run_id: str) -> pd.DataFrame:
    y = np.where(bank["label"] == "speech", 1.0, -1.0)
    ease = np.log(bank["duration_ms"] / 100) + bank["snr_db"] / 10
    p = 1 / (1 + np.exp(-(skill * y * (0.5 + ease) + rng.normal(0, 1, len(bank)))))
    return results.predictions_frame(run_id=run_id, system=system, variant=variant, seed=seed,
                                     clip_ids=bank["clip_id"].tolist(), labels=bank["label"].tolist(), p_speech=p)


@pytest.fixture
def run_folder(tmp_path):
    manifest = _bank(tmp_path / "bank")
    bank = pd.read_csv(manifest, dtype={"clip_id": str})
    rng = np.random.default_rng(0)
    main = tmp_path / "results" / "cpu" / "main"
    main.mkdir(parents=True)
    # smoke: the synthetic systems come from no model (the cpu profile itself is the mini model now, smoke false)
    overrides = {"figures_dir": str(tmp_path / "figures"), "bootstrap_reps": 60, "sweep_seeds": [], "smoke": True}
    io.write_yaml(main / "params.yaml", {"profile": "cpu", "run_id": "main", "overrides": overrides})
    results.write_bank_pointer(main, manifest)
    zs = _system(bank, "qwen2audio-zeroshot", "prompt=hand-written", -1, 0.1, rng, "main")
    results.write_predictions(main, pd.concat([
        _system(bank, "qwen2audio-attn", "attn", 0, 1.0, rng, "main"), zs,
        _system(bank, "qwen2audio-attn+opro", "attn", 0, 1.1, rng, "main"),
        _system(bank, "energy", "rms", 0, 0.3, rng, "main"),
        _system(bank, "silero_vad", "rms/max-frame-prob-512", -1, 0.8, rng, "main"),
        _system(bank, "silero_vad", "none/max-frame-prob-512", -1, 0.7, rng, "main"),
        # the study systems of chapters 02 and 04 (issue 14): one recipe, tested among themselves
        *[_system(bank, f"qwen2audio-attn-{n}-study", "attn", 0, 0.9, rng, "main") for n in ("none", "peak", "rms")],
        _system(bank, "qwen2audio-attn_mlp-rms-study", "attn_mlp", 0, 0.9, rng, "main"),
    ]))
    members = []
    for seed in (1, 2):
        m = main.parent / f"main--seed{seed}-attn"
        m.mkdir()
        io.write_json(m / "status.json", {"state": "complete", "chapters": {}})
        results.write_predictions(m, pd.concat([_system(bank, "qwen2audio-attn", "attn", seed, 1.0, rng, m.name), zs.assign(run_id=m.name)]))
        members.append({"run_id": m.name, "seed": seed, "variant": "attn"})
    io.write_yaml(main / "sweep.yaml", {"members": members, "chapters": ["03", "05"]})
    return main


def _execute(run_dir: Path | None, out: Path) -> float:
    import papermill as pm

    start = time.monotonic()
    pm.execute_notebook(str(NOTEBOOK), str(out), parameters={"profile": "cpu", "run_dir": None if run_dir is None else str(run_dir)},
                        kernel_name=book.kernel_name(), cwd=str(config.PROJECT_ROOT), progress_bar=False)
    return time.monotonic() - start


@pytest.mark.slow
def test_chapter06_on_a_synthetic_run_with_sweep_members(run_folder, tmp_path):
    seconds = _execute(run_folder, tmp_path / "out.ipynb")
    assert seconds < 120
    preds = results.read_predictions(run_folder)
    ens = preds[preds["system"].str.endswith(("+vote", "+mean"))]
    assert set(ens["system"]) == {"qwen2audio-attn+vote", "qwen2audio-attn+mean"}
    assert set(ens["variant"]) == {"attn seeds=3"} and (ens["seed"] == -1).all()
    metrics = json.loads((run_folder / "metrics.json").read_text())
    smoke = {(s["system"], s["variant"], s["seed"]): s["smoke"] for s in metrics["systems"]}
    assert len(smoke) == 14  # 3 seeds, 2 ensembles, zero-shot once (duplicates dropped), +opro, 3 baselines, 4 study systems
    pairs = pd.read_csv(run_folder / "statistics" / "study_pairs.csv")
    # none/peak/rms: 3 pairs; attn vs attn_mlp: 1 pair (attn-rms-study shared, never tested twice); clips and sources
    assert len(pairs) == 8 and set(pairs["unit"]) == {"clips", "sources"}
    assert {"qwen2audio-attn-rms-study", "qwen2audio-attn_mlp-rms-study"} == set(pairs.iloc[-1][["a", "b"]])
    assert (pairs["p_exact_adj"] >= pairs["p_exact"] - 1e-12).all()
    assert smoke[("qwen2audio-attn", "attn", 2)] is True and smoke[("energy", "rms", 0)] is False
    mc = pd.read_csv(run_folder / "statistics" / "mcnemar.csv")
    assert set(mc["unit"]) == {"clip_id", "group_id"} and {"ties_a", "ties_b", "dropped"} <= set(mc.columns)
    assert (mc["system_a"] == "qwen2audio-attn/attn#0").all()  # the reference: the run's own seed, chosen by name
    summary = json.loads((run_folder / "statistics" / "summary.json").read_text())
    assert summary["smoke"] is True and summary["best_baseline"].startswith("silero_vad")
    figs = run_folder / "figures"  # a run's figures live in its own folder (the project's figures/ gets a whole-book run's copies)
    for stem in ("06_metrics", "06_seeds", "06_psychometric_duration", "06_psychometric_snr", "06_reliability", "06_roc"):
        assert (figs / f"{stem}.png").exists() and (figs / f"{stem}.pdf").exists(), stem

    # a member that is no longer complete: its seed leaves the ensembles, and the stale 3-seed ensembles go
    status = run_folder.parent / "main--seed2-attn" / "status.json"
    status.write_text(json.dumps({"state": "failed", "chapters": {}}))
    _execute(run_folder, tmp_path / "out2.ipynb")
    ens = results.read_predictions(run_folder)
    assert set(ens.loc[ens["system"].str.endswith(("+vote", "+mean")), "variant"]) == {"attn seeds=2"}


@pytest.mark.slow
def test_chapter06_one_seed_no_fine_tuned_system_falls_back_to_zero_shot(run_folder, tmp_path):
    (run_folder / "sweep.yaml").unlink()
    keep = results.read_predictions(run_folder)
    keep = keep[keep["system"].isin(["qwen2audio-zeroshot", "energy", "silero_vad"])]
    io.write_csv(run_folder / "predictions.csv", keep)
    _execute(run_folder, tmp_path / "out.ipynb")
    summary = json.loads((run_folder / "statistics" / "summary.json").read_text())
    assert summary["reference"] == "qwen2audio-zeroshot" and "fallback" in summary["reference_reason"]
    assert summary["ensembles"] == [] and not (run_folder / "statistics" / "seed_summary.csv").exists()
    assert not results.read_predictions(run_folder)["system"].str.contains(r"\+").any()


@pytest.mark.slow
def test_chapter06_without_a_run_says_what_to_run(tmp_path):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError, match="make book"):
        _execute(None, tmp_path / "out.ipynb")
    with pytest.raises(pm.PapermillExecutionError, match="predictions.csv does not exist"):
        _execute(tmp_path / "empty-run", tmp_path / "out.ipynb")
