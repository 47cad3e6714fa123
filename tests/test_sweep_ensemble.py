"""Seed sweeps (sequentially on CPU: GPUS=0) and ensembles."""
from __future__ import annotations

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml

from lib import book, ensemble, results, sweep


def _preds(seed, p):
    return results.predictions_frame(run_id=f"r{seed}", system="m", seed=seed, clip_ids=["a", "b", "c"], labels=["speech", "speech", "nonspeech"], p_speech=p)


def test_majority_vote_and_mean():
    df = pd.concat([_preds(0, [0.9, 0.4, 0.2]), _preds(1, [0.8, 0.45, 0.7]), _preds(2, [0.1, 0.6, 0.3])])
    ens = ensemble.ensemble_predictions(df, "m")
    vote = ens[ens.system == "m+vote"].set_index("clip_id")
    mean = ens[ens.system == "m+mean"].set_index("clip_id")
    assert vote.loc["a", "pred"] == "speech" and vote.loc["b", "pred"] == "nonspeech" and vote.loc["c", "pred"] == "nonspeech"
    assert vote.loc["a", "p_speech"] == pytest.approx(2 / 3)
    assert mean.loc["b", "p_speech"] == pytest.approx(np.mean([0.4, 0.45, 0.6]))
    assert mean.loc["b", "pred"] == "nonspeech"


def test_vote_tie_goes_to_mean_probability():
    df = pd.concat([_preds(0, [0.9, 0.1, 0.2]), _preds(1, [0.45, 0.7, 0.6])])
    vote = ensemble.ensemble_predictions(df, "m").query("system == 'm+vote'").set_index("clip_id")
    assert vote.loc["a", "pred"] == "speech"  # tie 1:1, mean 0.675
    assert vote.loc["c", "pred"] == "nonspeech"  # tie 1:1, mean 0.4


def test_ensemble_needs_two_seeds():
    with pytest.raises(ValueError, match="at least two seeds"):
        ensemble.ensemble_predictions(_preds(0, [0.1, 0.2, 0.3]), "m")


CHAPTER = (
    "import lib.book, lib.results, numpy as np\n"
    "cfg = lib.book.setup_chapter(profile, run_dir, seed=seed, lora_variant=lora_variant)\n"
    "p = np.random.default_rng(cfg['seed']).random(4)\n"
    "lib.results.write_predictions(cfg['run_dir'], lib.results.predictions_frame(run_id=cfg['run_id'], system='m', "
    "variant=cfg['lora_variant'], seed=cfg['seed'], clip_ids=list('abcd'), labels=['speech','nonspeech']*2, p_speech=p))\n"
)


def _sweep_setup(tmp_path, body):
    """A one-chapter book (03_train running ``body``) and a main run folder with a bank pointer."""
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "cpu"\nrun_dir = None\nseed = None\nlora_variant = None\n')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, nbs / "03_train.ipynb")
    main = tmp_path / "results" / "cpu" / "main"
    main.mkdir(parents=True)
    (main / "bank.yaml").write_text(yaml.safe_dump({"manifest": "/nowhere/manifest.csv", "sha256": "x"}))
    return nbs, main


@pytest.mark.slow
def test_sequential_sweep_skips_complete_members(tmp_path):
    nbs, main = _sweep_setup(tmp_path, CHAPTER)

    run_kwargs = dict(
        profile="cpu", overrides={}, main_run_dir=main, seeds=[1, 2], variants=["attn"], chapters=["03"],
        log=lambda s: None, notebooks_dir=nbs,
    )
    dirs = book.run_sweep(**run_kwargs)
    assert [d.name for d in dirs] == ["main--seed1-attn", "main--seed2-attn"]
    assert all(book.read_status(d)["state"] == "complete" for d in dirs)
    assert (dirs[0] / "bank.yaml").read_text() == (main / "bank.yaml").read_text()
    mtime = (dirs[0] / "03_train.ipynb").stat().st_mtime_ns
    book.run_sweep(**run_kwargs)  # everything complete: nothing reruns
    assert (dirs[0] / "03_train.ipynb").stat().st_mtime_ns == mtime
    collected = sweep.collect_predictions(main)
    assert sorted(collected["seed"].unique()) == [1, 2] and len(collected) == 8


@pytest.mark.slow
def test_gpu_sweep_pins_one_member_per_gpu(tmp_path):
    """GPUS=N launches one process per member, each with its own CUDA_VISIBLE_DEVICES (checked on CPU)."""
    body = "import os, pathlib, time\npathlib.Path(run_dir, 'gpu').write_text(os.environ.get('CUDA_VISIBLE_DEVICES', ''))\ntime.sleep(2)\n"
    nbs, main = _sweep_setup(tmp_path, body)
    dirs = book.run_sweep("cpu", {}, main, seeds=[1, 2], variants=["attn"], chapters=["03"], gpus=2, log=lambda s: None, notebooks_dir=nbs)
    gpus = sorted((d / "gpu").read_text() for d in dirs)
    assert gpus == ["0", "1"]
    assert all(book.read_status(d)["state"] == "complete" for d in dirs)
    assert yaml.safe_load((dirs[0] / "params.yaml").read_text())["overrides"] == {"seed": 1, "lora_variant": "attn"}


@pytest.mark.slow
def test_on_a_cpu_the_sweep_runs_beside_the_chapters(tmp_path):
    """cpu_workers >= 2: once chapter 01 has written the bank pointer, the sweep's member trains in a background
    process while the main run's later chapters execute; the sweep step then finds it complete."""
    nbs, _ = _sweep_setup(tmp_path, CHAPTER)
    first = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "cpu"\nrun_dir = None\nseed = None\n')
    params.metadata["tags"] = ["parameters"]
    first.cells = [params, nbformat.v4.new_code_cell(
        "import pathlib, lib.book, lib.io, yaml\ncfg = lib.book.setup_chapter(profile, run_dir, seed=seed)\n"
        "lib.io.write_text(pathlib.Path(cfg['run_dir']) / 'bank.yaml', yaml.safe_dump({'manifest': '/nowhere/m.csv', 'sha256': 'x'}))\n")]
    nbformat.write(first, nbs / "01_bank.ipynb")
    wait = nbformat.v4.new_notebook()
    wait.cells = [params, nbformat.v4.new_code_cell(
        "import pathlib, time, lib.book, lib.io\ncfg = lib.book.setup_chapter(profile, run_dir, seed=seed)\n"
        "member = pathlib.Path(cfg['run_dir']).parent / (pathlib.Path(cfg['run_dir']).name + '--seed1-attn')\n"
        "t0 = time.monotonic()\n"
        "while lib.book.read_status(member)['state'] != 'complete' and time.monotonic() - t0 < 120:\n"
        "    time.sleep(0.5)\n"
        "lib.io.write_text(pathlib.Path(cfg['run_dir']) / 'seen.txt', lib.book.read_status(member)['state'])\n")]
    nbformat.write(wait, nbs / "04_wait.ipynb")
    res = tmp_path / "res"
    run = book.run_book("cpu", {"sweep_seeds": [1], "sweep_variants": ["attn"], "sweep_chapters": ["03"], "cpu_workers": 2},
                        run_id="bg", results_dir=res, notebooks_dir=nbs, log=lambda s: None)
    assert (run / "seen.txt").read_text() == "complete"  # the member finished while chapter 04 was running
    assert book.read_status(run)["state"] == "complete"
    assert "1 to run" in (run / "sweep.log").read_text()
    member = run.parent / "bg--seed1-attn"
    assert book.read_status(member)["state"] == "complete"
