"""bench.targets: the GPU benchmark judges its own targets and correctness checks (issue 18), tested on the CPU.

The verdicts come from results dicts as ``bench.gpu`` saves them: synthetic ones (each target met, missed or not
measured; a failed check), the H200 run of 2026-12-02 as it was saved (the verdict must be the one that run
printed), and a ``--small`` dry run of the benchmark itself on the CPU.
"""
from __future__ import annotations

import copy
import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from bench import targets as TG

RUNS = Path(__file__).resolve().parent.parent / "bench" / "runs"
H200_RUN = RUNS / "2026-12-02_h200_v5a_check_scoring_training.json"


def _scoring(dtype: str, batch: int, **kw) -> dict:
    row = {"dtype": dtype, "path": "book", "clips": "mix", "batch": batch, "n_clips": 2048, "e2e_over_bound": 1.2,
           "gpu_over_bound": 1.1, "e2e_clips_per_s": 900.0, "smi_gib": 20.0, "finite": True}
    row.update(kw)
    return row


def _recipe(dtype: str, ckpt: str = "none", **kw) -> dict:
    row = {"dtype": dtype, "path": "book", "micro_batch": 16, "grad_accum": 1, "lora_kernel": "fused",
           "gradient_checkpointing": ckpt, "epochs": 3, "clips": 128, "wall_s": 8.0, "reserved_gib": 20.0, "finite": True}
    row.update(kw)
    return row


def _all_met() -> dict:
    return {
        "scoring": [_scoring("bf16", 1, e2e_over_bound=20.0), _scoring("bf16", 512),
                    _scoring("nf4", 1, e2e_clips_per_s=10.0), _scoring("nf4", 32, e2e_clips_per_s=350.0, smi_gib=7.6)],
        "training": [_recipe("bf16", wall_s=7.5), _recipe("nf4", wall_s=8.0, reserved_gib=13.6),
                     _recipe("nf4", "layers:24", wall_s=11.0, reserved_gib=9.7),
                     _recipe("nf4", "layers", wall_s=13.5, reserved_gib=8.5)],
        "scale": [{"dtype": "bf16", "path": "book", "micro_batch": 16, "grad_accum": 1, "lora_kernel": "fused",
                   "epochs": 1, "clips": 4096, "wall_over_bound": 2.5, "finite": True}],
        "checks": [{"dtype": "fp32", "short_vs_padded": {"rel_l2": 1e-5, "same_decisions": 48, "n": 48, "confident_flips": 0}},
                   {"dtype": "bf16", "book_vs_padded": {"rel_l2": 0.07, "same_decisions": 47, "n": 48, "confident_flips": 0}}],
        "training_checks": [{"dtype": "nf4", "loss_peft": 12.9, "fused": {"loss_abs_diff": 0.0, "grad_rel_l2": 0.017,
                                                                         "grad_cosine": 0.99985}}],
    }


def test_every_target_met_exits_zero():
    verdict = TG.judge(_all_met())
    assert set(TG.states(verdict).values()) == {TG.MET}
    assert [t["target"] for t in verdict["targets"]] == list(TG.keys())
    assert all(c["state"] == TG.PASSED for c in verdict["checks"])
    assert TG.exit_code(verdict) == TG.EXIT_OK
    # the NF4 recipe target takes the fastest setting under 10 GiB reserved, not the fastest overall
    nf4 = next(t for t in verdict["targets"] if t["target"] == "recipe_nf4_s")
    assert nf4["value"] == 11.0 and "layers:24" in nf4["source"]
    # batch 1 rows are never the scoring targets' rows
    assert next(t for t in verdict["targets"] if t["target"] == "scoring_nf4_clips_per_s")["value"] == 350.0


@pytest.mark.parametrize("edit, missed", [
    (lambda r: r["scoring"][1].update(e2e_over_bound=1.41), "scoring_bf16_e2e_over_bound"),
    (lambda r: r["scoring"][1].update(gpu_over_bound=1.35), "scoring_bf16_gpu_over_bound"),
    (lambda r: r["scoring"][3].update(e2e_clips_per_s=299.9), "scoring_nf4_clips_per_s"),
    (lambda r: r["scoring"][3].update(smi_gib=8.07), "scoring_nf4_smi_gib"),
    (lambda r: r["training"][0].update(wall_s=10.15), "recipe_bf16_s"),
    (lambda r: [x.update(wall_s=15.5) for x in r["training"][2:]], "recipe_nf4_s"),
    (lambda r: [x.update(reserved_gib=10.0) for x in r["training"][1:]], "recipe_nf4_reserved_gib"),
    (lambda r: r["scale"][0].update(wall_over_bound=5.6), "scale_bf16_over_bound"),
])
def test_a_miss_is_reported_and_exits_non_zero(edit, missed):
    res = _all_met()
    edit(res)
    verdict = TG.judge(res)
    states = TG.states(verdict)
    assert states[missed] == TG.MISSED
    assert [k for k, s in states.items() if s != TG.MET] == [missed]
    assert TG.exit_code(verdict) == TG.EXIT_MISSED
    assert TG.exit_code(verdict, enforce_targets=False) == TG.EXIT_OK  # --no-targets
    text = "\n".join(TG.report_lines(verdict))
    assert "| missed |" in text and "1 missed" in TG.summary_line(verdict)


def test_parts_left_out_are_not_measured_and_do_not_fail():
    res = _all_met()
    del res["scale"], res["training"]
    verdict = TG.judge(res)
    states = TG.states(verdict)
    assert states["scale_bf16_over_bound"] == TG.NOT_MEASURED and states["recipe_bf16_s"] == TG.NOT_MEASURED
    assert states["scoring_bf16_e2e_over_bound"] == TG.MET
    assert TG.exit_code(verdict) == TG.EXIT_OK


@pytest.mark.parametrize("edit", [
    lambda r: r["checks"][0]["short_vs_padded"].update(same_decisions=47),   # fp32: any flip fails
    lambda r: r["checks"][0]["short_vs_padded"].update(rel_l2=2e-3),
    lambda r: r["checks"][1]["book_vs_padded"].update(confident_flips=1),    # bf16: a flip on a confident clip
    lambda r: r["checks"][1]["book_vs_padded"].update(rel_l2=0.2),
    lambda r: r["training_checks"][0]["fused"].update(grad_cosine=0.99),
    lambda r: r["training_checks"][0]["fused"].update(loss_abs_diff=0.5),
    lambda r: r["scale"][0].update(finite=False),                             # NaN in a book figure
])
def test_a_failed_check_exits_non_zero_even_without_targets(edit):
    res = _all_met()
    edit(res)
    verdict = TG.judge(res)
    assert any(c["state"] == TG.FAILED for c in verdict["checks"])
    assert TG.exit_code(verdict) == TG.EXIT_CHECK_FAILED
    assert TG.exit_code(verdict, enforce_targets=False) == TG.EXIT_CHECK_FAILED
    assert TG.exit_code(verdict, errored=True) == TG.EXIT_ERROR


def test_the_plain_baselines_nan_is_not_the_books_check():
    res = _all_met()
    res["training"].append({**_recipe("bf16"), "path": "plain", "finite": False})
    assert TG.exit_code(TG.judge(res)) == TG.EXIT_OK


def test_the_h200_run_is_judged_as_it_printed():
    """The verdict of the H200 run (2026-12-02, commit 649f2e8) recomputed from its saved results."""
    res = json.loads(H200_RUN.read_text())
    saved = res.pop("verdict")
    verdict = TG.judge(res)
    assert verdict == saved
    assert TG.states(verdict) == {
        "scoring_bf16_e2e_over_bound": "missed", "scoring_bf16_gpu_over_bound": "missed",
        "scoring_nf4_clips_per_s": "missed", "scoring_nf4_smi_gib": "missed", "recipe_bf16_s": "missed",
        "recipe_nf4_s": "met", "recipe_nf4_reserved_gib": "met", "scale_bf16_over_bound": "not measured"}
    assert TG.exit_code(verdict) == res["exit_code"] == TG.EXIT_MISSED
    # and a copy with every missed figure moved inside its limit passes
    fixed = copy.deepcopy(res)
    for r in fixed["scoring"]:
        r.update(e2e_over_bound=1.0, gpu_over_bound=1.0, e2e_clips_per_s=400.0, smi_gib=7.5)
    for r in fixed["training"]:
        r["wall_s"] = min(r["wall_s"], 9.0)
    assert TG.exit_code(TG.judge(fixed)) == TG.EXIT_OK


def test_nvidia_smi_sampler_takes_the_peak_of_its_window(tmp_path, monkeypatch):
    """bench.gpu.SmiSampler reads ``nvidia-smi --loop-ms`` lines; a stand-in nvidia-smi prints known MiB."""
    from bench import gpu as G

    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nfor m in 1024 2048 8192 4096; do echo $m; sleep 0.2; done\nsleep 5\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    t0 = time.perf_counter()
    smi = G.SmiSampler()
    try:
        time.sleep(1.0)
        assert smi.peak_gib(t0) == 8.0
        late = time.perf_counter()
        time.sleep(0.1)
        assert smi.peak_gib(late) is None  # nothing sampled in that window
    finally:
        smi.close()


@pytest.mark.slow
def test_small_dry_run_on_the_cpu_judges_itself(tmp_path):
    """``python -m bench.gpu --small --device cpu``: the checks run and pass, the targets of parts left out are
    'not measured', the verdict is saved and printed, and the exit status follows it (``--no-targets`` too)."""
    from bench import gpu as G

    G.LOG.clear()
    code = G.main(["--small", "--device", "cpu", "--only", "check", "--dtypes", "bf16", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert code == res["exit_code"] == TG.EXIT_OK
    assert {c["state"] for c in res["verdict"]["checks"]} == {TG.PASSED}
    assert len(res["verdict"]["checks"]) == 2 * 3 + 2 * 2  # fp32 and bf16: three scoring pairs, two training variants
    assert set(TG.states(res["verdict"]).values()) == {TG.NOT_MEASURED}
    md = (tmp_path / "bench_gpu.md").read_text()
    assert "Targets:" in md and "not measured" in md and "Correctness checks:" in md
    assert "exit code 0" in (tmp_path / "log.txt").read_text()


def test_the_gpu_book_benchmark_sizes_banks_as_the_book_builds_them():
    """bench.book_gpu scales each chapter by the bank's split sizes; they are the ones the v5 runs recorded
    (BENCHMARKS.md): 720 / 432 / 144 / 144 clips at clips_per_cell=10 and 14400 / 8640 / 2880 / 2880 on the full profile."""
    from bench.book_gpu import bank_sizes
    from lib.config import resolve

    assert bank_sizes(resolve("full", {"clips_per_cell": 10})) == {"bank": 720, "train": 432, "dev": 144, "test": 144}
    assert bank_sizes(resolve("full", {})) == {"bank": 14400, "train": 8640, "dev": 2880, "test": 2880}
