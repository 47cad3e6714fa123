"""Micro-batch size and gradient accumulation: the same effective batch gives the same training (to float
rounding), partial micro-batches included; the learning-rate rule for a changed effective batch."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lib import model as M  # noqa: E402
from lib import train as T  # noqa: E402


def _run(micro, accum, tmp_path, clips, labels):
    model, processor = M.load_model(M.TINY)
    tc = T.profile_recipe("full", lora_dropout=0.0, epochs=1, learning_rate=1e-3, micro_batch_size=micro,
                          grad_accum_steps=accum, warmup_ratio=0.0, lr_schedule="constant", checkpoint_every_steps=1000)
    peft_model = T.apply_lora(model, tc)
    res = T.train(peft_model, processor, clips, labels, tc, tmp_path / f"{micro}x{accum}", progress=False)
    return {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}, res.history


def test_same_effective_batch_same_training(tmp_path):
    rng = np.random.default_rng(0)
    clips = [(0.2 * rng.standard_normal(int(k))).astype(np.float32) for k in rng.integers(1600, 8000, 11)]
    labels = list(rng.choice(["speech", "nonspeech"], 11))
    a, ha = _run(8, 1, tmp_path, clips, labels)   # steps: clips 0-7, then 8-10
    b, hb = _run(2, 4, tmp_path, clips, labels)   # the same steps, the last one from micro-batches of 2 and 1
    assert len(ha) == len(hb) == 2
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-5)
    for name in a:
        # Adam's first step moves each weight by about lr * sign(gradient): where a gradient is within float rounding
        # of zero, the two summation orders can give it opposite signs (seen: one element of 1024, by 6.9e-4). So:
        # nearly every element agrees to rounding, and none moves by more than the two steps' updates could.
        diff = (a[name] - b[name]).abs()
        assert float((diff <= 1e-5 + 1e-4 * b[name].abs()).float().mean()) >= 0.995, name
        assert float(diff.max()) <= 2 * 2 * 1e-3, name


def test_learning_rate_rule_and_batch_split():
    assert T.scaled_learning_rate(2e-4, 16, 16) == 2e-4
    assert math.isclose(T.scaled_learning_rate(2e-4, 16, 64), 4e-4)
    assert math.isclose(T.scaled_learning_rate(2e-4, 16, 32, rule="linear"), 4e-4)
    assert T.split_batch(16, 32) == (16, 1)
    assert T.split_batch(16, 6) == (4, 4)
    assert T.split_batch(16, 2) == (2, 8)
    with pytest.raises(ValueError):
        T.scaled_learning_rate(1e-3, 16, 32, rule="cubic")


def test_attention_backends_cover_the_backward_for_gradient_checkpointing(tmp_path):
    """Checkpointed layers recompute attention during backward: it must run under the same SDPA backends as the
    forward (on CUDA), or the recomputed tensors differ and torch refuses. On the CPU the context is a no-op; here
    the recipe with checkpointing must still train."""
    rng = np.random.default_rng(1)
    clips = [(0.2 * rng.standard_normal(int(k))).astype(np.float32) for k in rng.integers(1600, 8000, 6)]
    labels = list(rng.choice(["speech", "nonspeech"], 6))
    model, processor = M.load_model(M.TINY)
    tc = T.profile_recipe("full", epochs=1, micro_batch_size=3, gradient_checkpointing=True, checkpoint_every_steps=1000)
    res = T.train(T.apply_lora(model, tc), processor, clips, labels, tc, tmp_path / "gc", progress=False)
    assert np.isfinite(res.history["loss"]).all()
    import inspect
    assert "accumulate_gradients(" in inspect.getsource(T.train)  # where train() runs its backward passes
    src = inspect.getsource(T.accumulate_gradients)
    assert "with M.attention_backends(model):" in src and ".backward()" in src.split("with M.attention_backends(model):")[1][:120]
