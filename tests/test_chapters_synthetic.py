"""Every chapter (01-09) through papermill on a small synthetic corpus, its key numbers read back (recommenders' practice).

One `python -m lib book --profile ci` run (module fixture) on a corpus written by ``_synth_corpus`` into a temporary
folder, with the tiny random model and smaller budgets; then one test per chapter reads what that chapter left in
the run folder (status, bank, predictions.csv, metrics.csv/json, statistics/, prompt_opt/, seed_replication/,
recordings/, figures/): never the notebooks' cells, which may change while their outputs stay.

The real-corpus whole-book test (tests/test_book_e2e.py, the mini model) proves the chapters on real audio; this
one proves each chapter's outputs, numbers and their agreement with each other on material whose answer is known
(the synthetic classes are easy for the free baselines) and small enough to run in a few minutes.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from _synth_corpus import write_corpus
from lib import book, config, results

pytestmark = pytest.mark.slow

PROFILE = "ci"
RUN_ID = "synthetic"
# On top of the ci profile: the tiny random model (SMOKE), no sweep (the real-corpus test runs it), smaller trainings
# and scenes, and the study trainings in this process (each takes the tiny model less time than starting a worker
# process would; the real-corpus test runs them in workers). The bank keeps the ci shape: 2 durations x 2 SNRs x
# 2 classes x 24 clips.
SETTINGS = {
    "model_name_or_path": "tiny", "smoke": True, "sweep_seeds": [], "cpu_workers": 1,
    "max_train_clips": 48, "study_max_train_clips": 16, "bootstrap_reps": 100,
    "scenes_dev": 1, "scenes_test": 2, "scene_duration_s": 15,
}
BASELINES = ("energy", "logmel", "silero_vad", "webrtc_vad", "firered_vad")
NORMALIZATIONS = ("none", "peak", "rms")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_book")
    corpus = write_corpus(root / "corpus")
    sets = {**SETTINGS, "data_dir": str(corpus), "bank_dir": str(root / "banks"), "figures_dir": str(root / "figures")}
    cmd = [sys.executable, "-m", "lib", "book", "--profile", PROFILE, "--run-id", RUN_ID, "--results-dir", str(root / "results"),
           "--no-publish-figures"]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    out = subprocess.run(cmd, cwd=config.PROJECT_ROOT, capture_output=True, text=True, timeout=2400)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-5000:])
    return root / "results" / PROFILE / RUN_ID


@pytest.fixture(scope="module")
def cfg(run) -> dict:
    return config.resolve(PROFILE, yaml.safe_load((run / "params.yaml").read_text())["overrides"])


@pytest.fixture(scope="module")
def bank(run) -> pd.DataFrame:
    return pd.read_csv(results.read_bank_pointer(run), dtype={"clip_id": str})


@pytest.fixture(scope="module")
def preds(run) -> pd.DataFrame:
    return results.read_predictions(run)


@pytest.fixture(scope="module")
def metrics(run) -> pd.DataFrame:
    return pd.read_csv(run / "metrics.csv")


def _test_ids(bank: pd.DataFrame) -> frozenset:
    return frozenset(bank.loc[bank["split"] == "test", "clip_id"])


def _balanced_accuracy(p: pd.DataFrame) -> float:
    return float(np.mean([(g["pred"] == lab).mean() for lab, g in p.groupby("label")]))


def _figures(run: Path, chapter: str) -> set[str]:
    return {p.stem for p in (run / "figures").glob(f"{chapter}_*.png") if p.with_suffix(".pdf").exists()}


def test_every_chapter_ran_under_papermill(run):
    status = book.read_status(run)
    chapters = [p.stem for p in book.list_chapters()]
    assert [c[:2] for c in chapters] == [f"{i:02d}" for i in range(1, 10)]
    assert status["state"] == "complete" and set(status["chapters"]) == set(chapters)  # no sweep: sweep_seeds=[]
    for c in chapters:
        assert status["chapters"][c]["state"] == "done", c
        assert (run / f"{c}.ipynb").exists() and not (run / f"{c}.failed.ipynb").exists(), c


def test_01_bank_is_the_requested_factorial_with_group_disjoint_splits(run, cfg, bank):
    cells = len(cfg["durations_ms"]) * len(cfg["snrs_db"]) * 2
    assert len(bank) == cells * cfg["clips_per_cell"]
    assert (bank.groupby(["duration_ms", "snr_db", "label"]).size() == cfg["clips_per_cell"]).all()
    assert set(bank["split"]) == {"train", "dev", "test"}
    assert (bank.groupby("group_id")["split"].nunique() == 1).all()  # no speaker or recording in two splits
    assert (bank.groupby("split")["label"].nunique() == 2).all()
    corpus = pd.read_csv(Path(cfg["data_dir"]) / "manifest.csv")
    assert set(bank["source_id"]) <= {p.rsplit(".", 1)[0] for p in corpus["path"]}
    root = results.read_bank_pointer(run).parent
    for row in bank.groupby("duration_ms").head(2).itertuples():  # the rendered clips have the requested length
        x, sr = sf.read(root / row.path)
        assert sr == 16000 and len(x) == row.duration_ms * 16 and np.isfinite(x).all()
    assert {"01_bank_cells", "01_shortcuts"} <= _figures(run, "01")


def test_02_baselines_and_the_model_under_each_normalization(run, bank, preds, metrics):
    test = _test_ids(bank)
    for name in BASELINES:
        variants = set(preds.loc[preds["system"] == name, "variant"])
        assert {v.split("/")[0] for v in variants} == set(NORMALIZATIONS), (name, variants)
    for (system, variant), p in preds[preds["system"].isin(BASELINES)].groupby(["system", "variant"]):
        assert frozenset(p["clip_id"]) == test, (system, variant)
    # the synthetic classes (harmonic "speech", noises and tones) are easy for a log-mel classifier
    logmel = metrics[metrics["system"] == "logmel"].set_index("variant")["balanced_accuracy"]
    assert logmel["rms"] >= 0.8, logmel
    studies = [f"qwen2audio-attn-{n}-study" for n in NORMALIZATIONS]
    assert set(studies) <= set(preds["system"])
    mc = pd.read_csv(run / "normalization_model_mcnemar.csv")
    assert {frozenset(ab) for ab in mc[["a", "b"]].values} == {frozenset(p) for p in [studies[:2], studies[::2], studies[1:]]}
    assert set(mc["unit"]) == {"clips", "sources"} and (mc.loc[mc["unit"] == "clips", "n"] == len(test)).all()
    assert ((0 <= mc["p_exact"]) & (mc["p_exact"] <= mc["p_exact_adj"] + 1e-12) & (mc["p_exact_adj"] <= 1)).all()
    assert len(_figures(run, "02")) >= 2


def test_03_training_ran_its_steps_and_saved_an_adapter(run, cfg, bank):
    train = json.loads((run / "training" / "qwen2audio-attn" / "summary.json").read_text())
    n_train = min(cfg["max_train_clips"], int((bank["split"] == "train").sum()))
    steps = cfg["epochs"] * math.ceil(n_train / (cfg["micro_batch_size"] * cfg["grad_accum_steps"]))
    assert (train["train_clips"], train["epochs"], train["steps"]) == (n_train, cfg["epochs"], steps)
    assert train["smoke"] is True and train["model"].startswith("SMOKE") and train["adapter_params"] > 0
    loss = pd.read_csv(run / "training" / "qwen2audio-attn" / "loss.csv")
    assert len(loss) == steps and np.isfinite(loss["loss"]).all()
    dev = pd.read_csv(run / "training" / "qwen2audio-attn" / "dev.csv")
    assert dev["epoch"].tolist() == list(range(1, cfg["epochs"] + 1))
    assert dev["dev_balanced_accuracy"].between(0, 1).all()
    system = yaml.safe_load((run / "systems" / "qwen2audio-attn" / "system.yaml").read_text())
    assert system["kind"] == "lora" and (run / "systems" / "qwen2audio-attn" / system["adapter"] / "adapter_model.safetensors").exists()
    assert "03_training_curves" in _figures(run, "03")


def test_04_full_sequence_loss_against_the_answer_token(run, cfg, bank, preds):
    study = json.loads((run / "training" / "qwen2audio-attn-rms-fullloss-study" / "summary.json").read_text())
    masked = json.loads((run / "training" / "qwen2audio-attn-rms-study" / "summary.json").read_text())
    assert (study["loss_masking"], masked["loss_masking"]) == (False, True)
    assert study["train_clips"] == masked["train_clips"] == cfg["study_max_train_clips"]  # one recipe for both arms
    assert frozenset(preds.loc[preds["system"] == "qwen2audio-attn-rms-fullloss-study", "clip_id"]) == _test_ids(bank)
    mlp = json.loads((run / "training" / "qwen2audio-attn_mlp-rms-study" / "summary.json").read_text())
    assert mlp["lora_variant"] == "attn_mlp" and mlp["lora_params"] > masked["lora_params"]
    assert "04_loss_masking" in _figures(run, "04")


def test_05_metrics_are_those_of_the_predictions(run, bank, preds, metrics):
    n_test = len(_test_ids(bank))
    assert {"qwen2audio-zeroshot", "qwen2audio-attn"} <= set(metrics["system"])
    assert (metrics["n"] == n_test).all()
    for row in metrics.itertuples():  # every number in the table is recomputed from predictions.csv
        p = preds[(preds["system"] == row.system) & (preds["variant"].fillna("") == (row.variant if isinstance(row.variant, str) else ""))
                  & (preds["seed"] == row.seed)]
        assert len(p) == n_test, row.name
        assert row.accuracy == pytest.approx((p["pred"] == p["label"]).mean()), row.name
        assert row.balanced_accuracy == pytest.approx(_balanced_accuracy(p)), row.name
        assert row.balanced_accuracy_boot_lo - 1e-9 <= row.balanced_accuracy <= row.balanced_accuracy_boot_hi + 1e-9, row.name
    labels = {e["name"]: e for e in json.loads((run / "metrics.json").read_text())["systems"]}
    for name in ("qwen2audio-attn/attn#0", "qwen2audio-zeroshot/prompt=hand-written"):
        assert labels[name]["smoke"] is True and labels[name]["model"].startswith("SMOKE"), labels[name]
    assert not labels["energy/rms#0"].get("smoke")  # the baselines come from no model
    assert {"05_metrics", "05_by_axis"} <= _figures(run, "05")


def test_06_statistics_test_every_system_against_the_reference(run, bank, metrics):
    summary = json.loads((run / "statistics" / "summary.json").read_text())
    assert summary["smoke"] is True and summary["n_test_clips"] == len(_test_ids(bank))
    assert summary["n_systems"] == len(metrics) and summary["ensembles"] == []  # one seed: no ensemble
    assert summary["reference"].split("#")[0] == "qwen2audio-attn" and "seed 0" in summary["reference_reason"]
    assert summary["best_baseline"].split("/")[0] in BASELINES
    mc = pd.read_csv(run / "statistics" / "mcnemar.csv")
    assert (mc["system_a"] == "qwen2audio-attn/attn#0").all() and set(mc["unit"]) == {"clip_id", "group_id"}
    assert mc["p_exact"].between(0, 1).all()
    pairs = pd.read_csv(run / "statistics" / "study_pairs.csv")
    assert len(pairs) == 8 and (pairs["p_exact_adj"] >= pairs["p_exact"] - 1e-12).all()
    for name in ("psychometric", "calibration", "power"):
        assert len(pd.read_csv(run / "statistics" / f"{name}.csv")) > 0, name
    assert {"06_metrics", "06_psychometric_duration", "06_reliability", "06_roc"} <= _figures(run, "06")


def test_07_prompts_chosen_on_dev_and_tested_once(run, cfg, bank, preds):
    best = pd.DataFrame(json.loads((run / "prompt_opt" / "summary.json").read_text())["best_prompts"])
    assert set(zip(best["method"], best["scorer"])) == {(m, s) for m in ("opro", "template") for s in ("qwen2audio-zeroshot", "qwen2audio-attn")}
    opro = best[best["method"] == "opro"]
    assert (opro["candidates_scored"] <= 1 + cfg["opro_steps"] * cfg["opro_candidates_per_step"]).all()
    assert (best.loc[best["method"] == "template", "candidates_scored"] == cfg["template_search_max"]).all()
    assert (best["dev_balanced_accuracy"] >= best["hand_written_dev"] - 1e-12).all()  # never worse on dev than the hand-written prompt
    for s in ("qwen2audio-attn", "qwen2audio-zeroshot"):
        for method in ("+opro", "+template"):
            assert frozenset(preds.loc[preds["system"] == s + method, "clip_id"]) == _test_ids(bank), s + method
    assert len(_figures(run, "07")) >= 2


def test_08_the_seed_design_replicated(run, cfg):
    from test_chapter08 import check_chapter08

    check_chapter08(run, run / "figures", cfg=cfg, model="SMOKE")


def test_09_every_system_over_whole_recordings(run, cfg):
    seg = pd.read_csv(run / "recordings" / "metrics.csv")
    assert {"qwen2audio-attn", *BASELINES} <= set(seg["system"])
    assert (seg["n_recordings"] == cfg["scenes_test"]).all()
    assert seg["audio_s"].to_numpy() == pytest.approx(cfg["scenes_test"] * cfg["scene_duration_s"])
    assert (seg["reference_speech_s"] > 0).all() and seg["detection_error_rate"].notna().all()
    assert (seg["detection_error_rate_lo"] <= seg["detection_error_rate"] + 1e-9).all()
    assert (seg["detection_error_rate"] <= seg["detection_error_rate_hi"] + 1e-9).all()
    outputs = [d for d in (run / "recordings").iterdir() if d.is_dir()]
    assert len(outputs) == len(seg)
    for d in outputs:
        rttm = list((d / "rttm").glob("*.rttm"))
        assert (d / "segments.csv").exists() and len(rttm) == cfg["scenes_test"], d
    assert _figures(run, "09")
