"""A training run killed with SIGKILL mid-epoch and started again with the same command resumes from its
last checkpoint and ends with exactly the adapter and the predictions of an uninterrupted run (CPU, bit
for bit). Everything runs in real separate processes: the kill gives the trainer no chance to clean up.

The child command (``CHILD`` below) trains the tiny Qwen2-Audio with ``lib.train.train_system`` on a few
synthetic clips, a checkpoint after every optimizer step, then loads the saved system the way
``python -m lib predict`` does (``lib.systems.load_system``) and writes its predictions with
``lib.results.write_predictions``. Its optional delay (a sleep after each optimizer step, through
``train``'s ``on_step`` callback) only widens the window in which the test kills it; it touches no number.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib import config

CHILD = r'''
import json, sys, time
import numpy as np
import torch
torch.set_num_threads(1)  # the same arithmetic in every process (thread count changes float reductions)
from lib import config, results, systems
from lib import train as T

run_dir, delay = sys.argv[1], float(sys.argv[2])
cfg = config.resolve("cpu", model_name_or_path="tiny", seed=3, epochs=2, micro_batch_size=2, grad_accum_steps=1, checkpoint_every_steps=1,
                     lora_r=4, lora_alpha=8, learning_rate=1e-3, extra_trainable=["multi_modal_projector"],
                     eval_batch_size=8)

def clips(n, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(3200) / 16000
    out, labels = [], []
    for i in range(n):
        if i % 2 == 0:  # a harmonic "voice" with a syllable envelope
            f0 = rng.uniform(100, 220)
            x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8)) * np.sin(np.pi * t / t[-1])
            labels.append("speech")
        else:
            x = rng.standard_normal(len(t))
            labels.append("nonspeech")
        out.append((0.1 * x / np.sqrt(np.mean(x ** 2))).astype(np.float32))
    return out, labels

train_x, train_y = clips(12, 0)
dev_x, dev_y = clips(4, 1)
test_x, test_y = clips(6, 2)
summary = T.train_system(cfg, run_dir, "tiny-lora", train_x, train_y, train_ids=[f"t{i}" for i in range(12)],
                         dev_audios=dev_x, dev_labels=dev_y, progress=False, device="cpu",
                         on_step=(lambda step: time.sleep(delay)) if delay else None)
scorer = systems.load_system(f"{run_dir}:tiny-lora", device="cpu")
p = scorer.score(test_x)
results.write_predictions(run_dir, results.predictions_frame(
    run_id="interrupt-test", system="tiny-lora", seed=3, clip_ids=[f"x{i}" for i in range(6)], labels=test_y, p_speech=p))
print(json.dumps({"resumed_from_step": summary["resumed_from_step"], "steps": summary["steps"]}))
'''
STEPS = 12  # 12 clips, micro-batches of 2, 2 epochs


def _command(run_dir: Path, delay: float) -> list[str]:
    return [sys.executable, "-c", CHILD, str(run_dir), str(delay)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1",
            "PYTHONPATH": str(config.PROJECT_ROOT)}


def _summary(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_equals_an_uninterrupted_run(tmp_path):
    import torch

    from lib import model as M
    from lib import results

    M.ensure_tiny_model()  # built once here, not by two children at the same time
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    # The uninterrupted reference runs beside the run that will be killed (2 cores, one thread each).
    ref = subprocess.Popen(_command(ref_dir, 0.0), cwd=config.PROJECT_ROOT, env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(_command(run_dir, 0.4), cwd=config.PROJECT_ROOT, env=_env(), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = run_dir / "training" / "tiny-lora" / "checkpoints"
    deadline = time.monotonic() + 120
    try:
        while not (ckpts / "step-0000003" / "state.json").exists():  # three steps done: mid epoch 1 (6 steps)
            assert victim.poll() is None, "the training process ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared within 120 s"
            time.sleep(0.05)
        os.killpg(victim.pid, signal.SIGKILL)
    finally:
        victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (run_dir / "systems" / "tiny-lora" / "adapter").exists(), "killed before the end: no adapter yet"
    state = json.loads((sorted(ckpts.glob("step-*"))[-1] / "state.json").read_text())
    assert 3 <= state["step"] < STEPS // 2 and state["epoch"] == 0, state  # killed mid first epoch

    # The same command again: it resumes from the last checkpoint and finishes.
    again = subprocess.run(_command(run_dir, 0.4), cwd=config.PROJECT_ROOT, env=_env(), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = _summary(again.stdout)
    assert resumed["resumed_from_step"] is not None and 3 <= resumed["resumed_from_step"] < STEPS, resumed
    assert resumed["steps"] == STEPS
    leftovers = [p for p in run_dir.rglob(".*") if ".tmp" in p.name or ".old." in p.name]
    assert not leftovers, f"half-written files left behind: {leftovers}"

    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-3000:]
    assert _summary(out) == {"resumed_from_step": None, "steps": STEPS}

    # Bit for bit: every tensor of the saved adapter, the loss curve, and p_speech.
    a = _tensors(ref_dir / "systems" / "tiny-lora" / "adapter" / "adapter_model.safetensors")
    b = _tensors(run_dir / "systems" / "tiny-lora" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any("lora_" in k for k in a)
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert not unequal, f"adapter tensors differ after resuming: {unequal[:5]}"
    assert (ref_dir / "training" / "tiny-lora" / "loss.csv").read_text() == (run_dir / "training" / "tiny-lora" / "loss.csv").read_text()
    assert (ref_dir / "training" / "tiny-lora" / "dev.csv").read_text() == (run_dir / "training" / "tiny-lora" / "dev.csv").read_text()
    pa, pb = results.read_predictions(ref_dir), results.read_predictions(run_dir)
    assert len(pa) == 6 and pa["p_speech"].tolist() == pb["p_speech"].tolist()
    assert (ref_dir / "predictions.csv").read_bytes() == (run_dir / "predictions.csv").read_bytes()
