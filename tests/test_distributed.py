"""One training run across two processes (gloo on CPU) equals one process on the same effective batch."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from lib import book, config

OVERRIDES = {"epochs": 1, "max_train_clips": 32, "micro_batch_size": 8, "grad_accum_steps": 2, "lora_dropout": 0.0, "sweep_seeds": []}


@pytest.mark.slow
def test_two_process_training_matches_one_process(synthetic_corpus, small_bank_cfg, tmp_path):
    cfg = small_bank_cfg(synthetic_corpus)
    overrides = {**OVERRIDES, "data_dir": cfg["data_dir"], "bank_dir": cfg["bank_dir"], "durations_ms": cfg["durations_ms"],
                 "snrs_db": cfg["snrs_db"], "clips_per_cell": cfg["clips_per_cell"], "max_sources_per_class": cfg["max_sources_per_class"]}
    runs = {}
    for mode in ("one", "two"):
        run = book.setup_chapter("cpu", tmp_path / mode, new_run=True, **overrides)
        book.ensure_bank(run)
        runs[mode] = tmp_path / mode
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["-m", "lib.distributed", "--name", "ddp"]
    one = subprocess.run([sys.executable, *common, "--run-dir", str(runs["one"]), "--no-distributed"], cwd=config.PROJECT_ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    two = subprocess.run([*torchrun, *common, "--run-dir", str(runs["two"])], cwd=config.PROJECT_ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    import json

    for mode, world in (("one", 1), ("two", 2)):
        assert json.loads((runs[mode] / "training/ddp/summary.json").read_text())["data_parallel_processes"] == world
    a = load_file(str(runs["one"] / "systems/ddp/adapter/adapter_model.safetensors"))
    b = load_file(str(runs["two"] / "systems/ddp/adapter/adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    trained = [k for k in a if "lora_B" in k]
    assert any(a[k].abs().sum() > 0 for k in trained)  # LoRA B starts at zero: it really trained
