"""The whole book, end to end, on the `ci` profile (recommenders-style: run the notebooks, read the numbers back).

Runs `python -m lib book --profile ci` on the real corpus (every chapter, the seed sweep and both prompt
optimisers), then checks what the run folder holds: every chapter done, the predictions of every system on
the same test clips, metrics derived from them that name the model (the mini model), and a free baseline that really
separates speech from non-speech on real audio.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from lib import book, config, results


@pytest.mark.slow
@pytest.mark.data
def test_whole_book_on_the_ci_profile(data_dir, tmp_path):
    res, figs = tmp_path / "results", tmp_path / "figures"
    cmd = [sys.executable, "-m", "lib", "book", "--profile", "ci", "--run-id", "e2e", "--results-dir", str(res),
           "--set", f"data_dir={data_dir}", "--set", f"figures_dir={figs}"]
    out = subprocess.run(cmd, cwd=config.PROJECT_ROOT, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-5000:])
    run = res / "ci" / "e2e"

    status = book.read_status(run)
    chapters = [p.stem for p in book.list_chapters()]
    assert status["state"] == "complete"
    assert all(status["chapters"][c]["state"] == "done" for c in chapters) and status["chapters"]["sweep"]["state"] == "done"
    assert all((run / f"{c}.ipynb").exists() for c in chapters)

    preds = results.read_predictions(run)
    systems = set(preds["system"])
    expected = {"qwen2audio-zeroshot", "qwen2audio-attn", "qwen2audio-attn-rms-fullloss-study", "silero_vad", "webrtc_vad", "firered_vad",
                "energy", "logmel"}
    assert expected <= systems, expected - systems
    assert any(s.endswith("+opro") for s in systems) and any(s.endswith("+template") for s in systems)
    assert {"qwen2audio-attn+vote", "qwen2audio-attn+mean"} <= systems  # the seed ensemble of chapter 06
    # issue 14: the model under each normalization (chapter 02) and attn_mlp against attn (chapter 04), one recipe
    study = {f"qwen2audio-attn-{n}-study" for n in ("none", "peak", "rms")} | {"qwen2audio-attn_mlp-rms-study"}
    assert study <= systems, study - systems
    assert (run / "statistics" / "study_pairs.csv").exists()
    from test_chapter08 import check_chapter08  # chapter 08's numbers read back (CI runs it once, here)

    check_chapter08(run, figs)
    # Every system scored the same test clips.
    clip_sets = preds.groupby(["system", "variant", "seed"])["clip_id"].apply(frozenset)
    assert clip_sets.nunique() == 1
    member = run.parent / "e2e--seed1-attn"
    assert book.read_status(member)["state"] == "complete"
    assert (results.read_predictions(member)["seed"] == 1).any()

    metrics = json.loads((run / "metrics.json").read_text())
    models = {e["name"]: e.get("model") for e in metrics["systems"]}
    for name in ("qwen2audio-attn/attn#0", "qwen2audio-attn+template/attn#0", "qwen2audio-zeroshot/prompt=hand-written"):
        assert models[name].startswith("mini model") and "not Qwen2-Audio-7B" in models[name], name
    assert not models.get("silero_vad/rms/max-frame-prob-512")  # baselines name no Qwen2-Audio
    table = pd.read_csv(run / "metrics.csv")
    silero = table[table["system"] == "silero_vad"]["balanced_accuracy"].max()
    assert silero > 0.65, f"Silero VAD on real clips: balanced accuracy {silero}"
    assert list(figs.glob("0*_*.png")) and list(figs.glob("0*_*.pdf"))

    # chapter 09: every default system segmented the test scenes through segment's engine and was measured
    seg = pd.read_csv(run / "recordings" / "metrics.csv")
    assert {"qwen2audio-attn", "energy", "logmel", "silero_vad", "webrtc_vad", "firered_vad"} <= set(seg["system"])
    assert seg["detection_error_rate"].notna().all() and (seg["detection_error_rate_lo"] <= seg["detection_error_rate_hi"]).all()
    assert {"silero_vad (own helper)", "firered_vad (own helper)"} <= set(seg["system"])
    outputs = [d for d in (run / "recordings").iterdir() if d.is_dir()]
    assert len(outputs) == len(seg)
    for d in outputs:
        assert (d / "segments.csv").exists() and list((d / "rttm").glob("*.rttm")), d
    assert list(figs.glob("09_timeline_*.png"))
