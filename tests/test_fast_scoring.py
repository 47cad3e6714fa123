"""The GPU fast path (lib.model.fast, switched on by score(..., fast=True)) changes nothing beyond float noise
(checked here on the CPU, fp32); its speed-ups are switched one by one through lib.model.fast.score:

* shared prompt prefix: the tokens before the audio computed once, reused as cached keys/values;
* prefetch: the next batch's inputs built in a worker thread, results copied back at the end;
* fused kernels and attention off cuDNN.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bench import switches  # noqa: E402
from lib import model as M  # noqa: E402
from lib.model import fast  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return M.load_model(M.TINY)


def _clips(seed=0):
    rng = np.random.default_rng(seed)
    lens = [320, 800, 1600, 3200, 8000, 16000] + list(rng.integers(320, 16001, 9))
    return [(0.2 * rng.standard_normal(int(k))).astype(np.float32) for k in lens]


def test_shared_prefix_and_prefetch_give_the_plain_loops_scores(tiny):
    model, processor = tiny
    clips = _clips()
    ref = M.score(model, processor, clips, batch_size=1, fast=False)
    padded = M.score(model, processor, clips, batch_size=4, short_encoder=False, fast=False)
    np.testing.assert_allclose(padded.logits, ref.logits, atol=1e-5, rtol=1e-5)
    for batch in (1, 4, 16):
        for prefetch in (False, True):
            got = fast.score(model, processor, clips, batch_size=batch, shared_prefix=True, prefetch=prefetch)
            np.testing.assert_allclose(got.logits, ref.logits, atol=1e-5, rtol=1e-5)
            assert (got.pred == ref.pred).all()


def test_cpu_defaults_are_the_plain_loop_bit_for_bit(tiny):
    model, processor = tiny
    clips = _clips(1)
    default = M.score(model, processor, clips, batch_size=4)
    plain = M.score(model, processor, clips, batch_size=4, fast=False)
    assert np.array_equal(default.logits, plain.logits)
    # the fast scorer's own defaults on the CPU (every speed-up off) are the plain loop too
    assert np.array_equal(fast.score(model, processor, clips, batch_size=4).logits, plain.logits)


def test_the_one_flag_gives_the_plain_loops_decisions(tiny):
    """score(fast=True) switches on every speed-up at once (on the CPU too): same decisions as fast=False."""
    model, processor = tiny
    clips = _clips(4)
    plain = M.score(model, processor, clips, batch_size=4, fast=False)
    got = M.score(model, processor, clips, batch_size=4, fast=True)
    np.testing.assert_allclose(got.logits, plain.logits, atol=1e-5, rtol=1e-5)
    assert (got.pred == plain.pred).all()
    assert not model.training


def test_shared_prefix_is_the_prompt_before_the_audio(tiny):
    model, processor = tiny
    clips = _clips()[:5]  # a 20-ms clip has no audio token at all: the prefix still ends before the audio
    assert M.n_audio_tokens(len(clips[0])) == 0
    inputs = M.make_inputs(processor, clips)
    head = M.prompt_text(processor).split("<|AUDIO|>")[0]
    head_ids = processor.tokenizer(head, add_special_tokens=False).input_ids
    assert fast.prompt_prefix(inputs, model.config.audio_token_id).tolist() == head_ids
    with torch.inference_mode():
        prefix = fast.SharedPrefix.for_prompt(model, processor)
        assert prefix.ids.tolist() == head_ids
        rest, _ = prefix.split(inputs)
    assert rest["attention_mask"].shape[1] == len(prefix) + rest["input_ids"].shape[1]
    # rows keep their own number of real tokens: prefix + audio + the rest of the prompt
    assert (rest["attention_mask"].sum(1) == inputs["attention_mask"].sum(1)).all()


def test_a_batch_of_only_silent_length_clips_still_uses_the_prompts_prefix(tiny):
    model, processor = tiny
    clips = [np.full(320, 0.1, dtype=np.float32), np.full(300, -0.1, dtype=np.float32)]
    ref = M.score(model, processor, clips, batch_size=2, fast=False)
    got = fast.score(model, processor, clips, batch_size=2, shared_prefix=True, prefetch=False)
    np.testing.assert_allclose(got.logits, ref.logits, atol=1e-5, rtol=1e-5)


def test_a_prefix_from_another_prompt_layout_is_refused(tiny):
    model, processor = tiny
    inputs = M.make_inputs(processor, _clips()[:2])
    with torch.inference_mode():
        prefix = fast.SharedPrefix.for_prompt(model, processor)
    other = dict(inputs)
    ids = inputs["input_ids"].clone()
    n_pad = int((inputs["attention_mask"][0] == 0).sum())
    ids[0, n_pad + 3] = (ids[0, n_pad + 3] + 1) % 50  # row 0 now differs inside the prefix
    other["input_ids"] = ids
    assert len(fast.prompt_prefix(other, model.config.audio_token_id)) == 3
    with pytest.raises(ValueError, match="shared prefix"):
        prefix.split(other)


def test_fused_kernels_change_scores_only_by_rounding_and_are_undone(tiny):
    from transformers.models.qwen2 import modeling_qwen2 as q2

    model, processor = tiny
    clips = _clips(2)
    ref = fast.score(model, processor, clips, batch_size=8, fused=False)
    rotary = q2.apply_rotary_pos_emb
    classes = [type(m) for m in model.modules()]
    with fast.fused_kernels(model, compile=False):
        assert any(type(m).__name__ == "FusedRMSNorm" for m in model.modules())
        assert any(type(m).__name__ == "FusedMLP" for m in model.modules())
        inside = fast.score(model, processor, clips, batch_size=8, fused=False)
    assert [type(m) for m in model.modules()] == classes and q2.apply_rotary_pos_emb is rotary
    np.testing.assert_allclose(inside.logits, ref.logits, atol=1e-5, rtol=1e-5)
    fused = fast.score(model, processor, clips, batch_size=8, fused=True)  # compiled where torch can compile
    np.testing.assert_allclose(fused.logits, ref.logits, atol=1e-5, rtol=1e-5)
    assert (fused.pred == ref.pred).all()
    assert [type(m) for m in model.modules()] == classes and q2.apply_rotary_pos_emb is rotary


def test_lazy_clips_with_lengths_are_read_once_each(tiny, tmp_path):
    from lib import audio

    model, processor = tiny
    clips = _clips(3)[:6]
    paths = [audio.write_audio(tmp_path / f"{i}.wav", c) for i, c in enumerate(clips)]
    reads = []

    def load(p):
        reads.append(p)
        return audio.load_audio(p)

    lazy = M.ClipFiles(paths, load=load)
    got = fast.score(model, processor, lazy, batch_size=4, lengths=[len(c) for c in clips], prefetch=True)
    assert sorted(reads) == sorted(paths)
    ref = M.score(model, processor, [audio.load_audio(p) for p in paths], batch_size=4)
    np.testing.assert_allclose(got.logits, ref.logits, atol=1e-6)
    with pytest.raises(ValueError, match="lengths"):
        M.score(model, processor, lazy, lengths=[1, 2])
    with pytest.raises(ValueError, match="lengths"):
        fast.score(model, processor, lazy, lengths=[1, 2], prefetch=True)


def test_prefix_join_by_copies_equals_torch_cat_bit_for_bit(tiny):
    prefix = torch.randn(1, 3, 5, 8)
    states = torch.randn(4, 3, 7, 8)
    for states_view in (states, states.transpose(1, 2).contiguous().transpose(1, 2)):  # as the projections give them
        joined = fast.with_prefix(prefix, states_view)
        assert torch.equal(joined, switches.cat_join(prefix, states_view))
        assert torch.equal(joined, torch.cat([prefix.expand(4, -1, -1, -1), states], dim=-2))
    model, processor = tiny
    clips = _clips(2)
    by_copies = fast.score(model, processor, clips, batch_size=8, shared_prefix=True)
    with switches.prefix_join("cat"):
        by_cat = fast.score(model, processor, clips, batch_size=8, shared_prefix=True)
    assert fast.prefix.with_prefix is switches.BOOK_JOIN
    assert np.array_equal(by_copies.logits, by_cat.logits)


def test_plan_free_attention_changes_nothing_on_the_cpu(tiny):
    model, processor = tiny
    clips = _clips(3)
    on = fast.score(model, processor, clips, batch_size=4, plan_free_attention=True)
    off = fast.score(model, processor, clips, batch_size=4, plan_free_attention=False)
    assert np.array_equal(on.logits, off.logits)


def test_a_failing_fast_pass_leaves_nothing_behind(tiny, monkeypatch):
    """Whether the shared prefix or a forward pass fails, the worker thread is gone, the kernels and classes are
    restored and the model is back in its mode."""
    import threading

    from transformers.models.qwen2 import modeling_qwen2 as q2

    model, processor = tiny
    clips = _clips(5)
    classes = [type(m) for m in model.modules()]
    rotary = q2.apply_rotary_pos_emb

    def broken_prefix(*a, **k):
        raise RuntimeError("prefix failed")

    calls = []

    def broken_forward(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("forward failed")
        return torch.zeros(1, 2)

    for target, replacement, message in ((fast.scorer.SharedPrefix, "for_prompt", "prefix failed"),
                                         (fast.scorer, "answer_logits", "forward failed")):
        with monkeypatch.context() as patch:
            patch.setattr(target, replacement, broken_prefix if message == "prefix failed" else broken_forward)
            model.train()
            with pytest.raises(RuntimeError, match=message):
                fast.score(model, processor, clips, batch_size=2, shared_prefix=True, prefetch=True, fused=True)
        assert model.training
        model.eval()
        assert not [t for t in threading.enumerate() if t.name.startswith("speechbook-inputs")]
        assert [type(m) for m in model.modules()] == classes and q2.apply_rotary_pos_emb is rotary
