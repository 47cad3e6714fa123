"""lib.parallel: independent trainings side by side in worker processes give what one after another gives."""
from __future__ import annotations

import time

import numpy as np
import pytest

from lib import parallel

TRAIN = dict(epochs=1, micro_batch_size=4, grad_accum_steps=1, checkpoint_every_steps=100, learning_rate=2e-3,
             warmup_ratio=0.1, extra_trainable=["multi_modal_projector"], eval_batch_size=16)


def train_tiny(seed: int, out_dir: str) -> dict[str, np.ndarray]:
    """A job: a few steps of LoRA training of the tiny model; its trained weights."""
    from _synth_audio import clip_set
    from lib import model as M, train as T

    audios, labels = clip_set(12, seed=11, lengths=(1600, 3200))
    tc = T.profile_recipe("full", **TRAIN, seed=seed)  # the seed's recipe, made fast for the tiny model
    model, processor = M.load_model("tiny")
    model = T.apply_lora(model, tc)
    T.train(model, processor, audios, labels, tc, out_dir, progress=False)
    return {n: p.detach().numpy().copy() for n, p in model.named_parameters() if p.requires_grad}


def fail(message: str) -> None:
    raise ValueError(message)


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.mark.slow
def test_trainings_in_two_workers_give_the_same_bits_as_one_after_another(tmp_path):
    jobs = [parallel.Job(train_tiny, (seed, str(tmp_path / f"{mode}{seed}")), name=f"seed {seed}")
            for mode in ("w",) for seed in (0, 1, 2)]
    side_by_side = parallel.run_jobs(jobs, workers=2)
    in_order = parallel.run_jobs([parallel.Job(train_tiny, (s, str(tmp_path / f"o{s}"))) for s in (0, 1, 2)], workers=1)
    for a, b in zip(side_by_side, in_order):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(side_by_side[0][k], side_by_side[1][k]) for k in side_by_side[0])  # seeds differ


def test_results_keep_the_jobs_order_whatever_their_cost():
    jobs = [parallel.Job(sleep, (0.01 * i,), cost=i) for i in range(4)]  # the costliest is submitted first
    assert parallel.run_jobs(jobs, workers=2) == [0.0, 0.01, 0.02, 0.03]


def test_a_failing_job_names_itself_and_stops_the_others():
    jobs = [parallel.Job(sleep, (60,), name="slow"), parallel.Job(fail, ("bad clip",), name="arm attn seed 42")]
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="arm attn seed 42.*bad clip"):
        parallel.run_jobs(jobs[::-1], workers=2)
    assert time.monotonic() - t0 < 30  # the 60-s job was stopped, not waited for


def test_worker_count_follows_the_profile_and_the_jobs():
    assert parallel.worker_count({"cpu_workers": 2}, 1) == 1
    assert parallel.worker_count({"cpu_workers": 1}, 5) == 1
    assert 1 <= parallel.worker_count({"cpu_workers": 64}, 64) <= 64
    with pytest.raises(ValueError, match="cpu_workers"):
        parallel.worker_count({"cpu_workers": 0}, 3)
