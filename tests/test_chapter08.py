"""Chapter 08 (the seed's own design, replicated) through papermill on the `ci` profile, its key numbers read back.

:func:`check_chapter08` is what the whole-book test (tests/test_book_e2e.py) asserts of the run it makes, so CI
runs chapter 08 once; the test here runs chapters 01, 03 and 08 alone (``-m slow``, for work on chapter 08).
It checks what chapter 08 wrote: the
seed's clip sets (128 / 32 / 96), one prediction per (arm, seed, clip) for each set, McNemar tables whose counts
agree with the predictions, the power table, the seed claim's p-values, and scoring agreeing with constrained
generate.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from lib import book, config, results, seed_claims, systems


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.skipif(os.environ.get("SPEECHBOOK_CHAPTER08") != "1",
                    reason="CI reads chapter 08 back in the whole-book test (check_chapter08); SPEECHBOOK_CHAPTER08=1 runs it alone")
def test_chapter08_on_the_ci_profile(data_dir, tmp_path):
    res, figs = tmp_path / "results", tmp_path / "figures"
    cmd = [sys.executable, "-m", "lib", "book", "--profile", "ci", "--run-id", "ch08", "--results-dir", str(res),
           "--chapters", "01 03 08", "--set", f"data_dir={data_dir}", "--set", f"figures_dir={figs}"]
    out = subprocess.run(cmd, cwd=config.PROJECT_ROOT, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-5000:])
    check_chapter08(res / "ci" / "ch08", figs)


def check_chapter08(run, figs, cfg=None, model: str = "mini model") -> None:
    """What chapter 08 must have written into ``run`` under ``cfg`` (default: the plain ci profile), its Qwen2-Audio
    predictions labelled with a model name starting with ``model`` (the synthetic-corpus test runs the tiny one)."""
    assert book.read_status(run)["chapters"]["08_seed_replication"]["state"] == "done"
    cfg = cfg if cfg is not None else config.resolve("ci", {})
    arms = seed_claims.seed_design_arms(cfg)
    sub = run / "seed_replication"

    n_clips = {"test32": 32, "extended96": 96}
    for which in ("test32", "extended96", "book_test"):
        p = results.read_predictions(sub / which)
        per_arm = p.groupby(["system", "seed"])["clip_id"].nunique()
        assert len(per_arm) == len(arms), per_arm
        assert per_arm.nunique() == 1 and (which not in n_clips or per_arm.iloc[0] == n_clips[which])
        assert p["model"].str.startswith(model).all()  # labelled with the model they come from
        if which in n_clips:  # the seed's sets are balanced: half speech
            one = p[(p["system"] == p["system"].iloc[0]) & (p["seed"] == p["seed"].iloc[0])]
            assert (one["label"].value_counts() == n_clips[which] // 2).all()

    # the McNemar counts are those of the predictions
    ext = results.read_predictions(sub / "extended96")
    tests = pd.read_csv(sub / "mcnemar_extended96.csv")
    a, b = systems.trained_system_name("attn", True), systems.trained_system_name("attn_mlp", True)
    row = tests[(tests["a"] == a) & (tests["b"] == b) & (tests["unit"] == "clips") & (tests["seed"] == 42)].iloc[0]
    pa = ext[(ext["system"] == a) & (ext["seed"] == 42)].set_index("clip_id")
    pb = ext[(ext["system"] == b) & (ext["seed"] == 42)].set_index("clip_id").loc[pa.index]
    ra, rb = pa["pred"] == pa["label"], pb["pred"] == pb["label"]
    assert (row["a_only"], row["b_only"], row["n"]) == (int((ra & ~rb).sum()), int((~ra & rb).sum()), 96)
    assert (tests["p_exact_adj"] >= tests["p_exact"] - 1e-12).all()

    summary = json.loads((sub / "summary.json").read_text())
    assert summary["seed_claim_min_p"] == pytest.approx(0.25)
    assert summary["train_clips"] == 128 and summary["seeds"] == cfg["seed_replication_seeds"]
    assert all(r["n_clips"] > 96 for r in summary["clips_needed_3_points"])
    checks = summary["scoring_vs_generate"]
    assert checks and all(c["agree"] == c["clips"] and c["max_abs_p_difference"] < 1e-3 for c in checks)
    assert list(figs.glob("08_*.png")) or list((run / "figures").glob("08_*.png"))
