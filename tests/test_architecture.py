"""The 7B architecture of the benchmarks (bench/architecture.py: config, counts, builder, processor) and their FLOP
counting.

Parameter counts are taken on the meta device (no memory); FLOP counts are checked against torch's own
FlopCounterMode on the tiny model, with the math attention kernel so that attention is counted too.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bench import architecture as A  # noqa: E402
from lib import model as M  # noqa: E402


def test_7b_config_has_the_published_parameter_counts():
    counts = A.parameter_counts()
    assert round(counts["total"] / 1e9, 2) == A.PUBLISHED_PARAMS_B["total"] == 8.40
    assert round(counts["audio_encoder"] / 1e9, 2) == 0.64
    assert round(counts["language_model"] / 1e9, 2) == 7.12
    assert round(counts["head"] / 1e9, 2) == 0.64
    assert counts["total"] == counts["audio_encoder"] + counts["projector"] + counts["language_model"] + counts["head"]
    cfg = A.config_7b()
    assert cfg.audio_token_index == 151646
    t, a = cfg.text_config, cfg.audio_config
    assert (t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads,
            t.vocab_size, t.max_position_embeddings, t.rope_theta if hasattr(t, "rope_theta") else 10000.0,
            t.rms_norm_eps) == (4096, 11008, 32, 32, 32, 156032, 8192, 10000.0, 1e-5)
    assert (a.d_model, a.encoder_layers, a.encoder_attention_heads, a.encoder_ffn_dim, a.num_mel_bins,
            a.max_source_positions) == (1280, 32, 20, 5120, 128, 1500)


def test_lm_params_per_token_matches_the_model():
    cfg = A.config_7b()
    model = A.meta_model(cfg)
    linear = sum(m.weight.numel() for n, m in model.model.language_model.named_modules()
                 if isinstance(m, torch.nn.Linear))
    assert A.lm_params_per_token(cfg.text_config) == linear


def test_nf4_quantizes_exactly_the_language_model_linear_layers():
    model = A.meta_model(A.config_7b())
    names = A.nf4_module_names(model)
    assert len(names) == 32 * 7
    assert all(n.startswith("model.language_model.layers.") for n in names)
    assert not any("audio_tower" in n or "multi_modal_projector" in n or n == "lm_head" for n in names)


def test_processor_7b_maps_audio_token_to_151646():
    processor = A.processor_7b()
    clip = np.zeros(3200, dtype=np.float32)
    inputs = M.make_inputs(processor, [clip])
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(151646) == M.n_audio_tokens(3200) == 5
    assert M.answer_token_ids(processor.tokenizer) == (32, 33)  # the real Qwen tokenizer (lib.model.build.tokenizer)
    assert processor.feature_extractor.feature_size == 128


def test_random_model_folder_loads_through_the_books_loader_and_is_labelled(tmp_path):
    """save_random_model writes a folder that lib.model.load_model takes as model_name_or_path (as `make book
    PROFILE=full SET='model_name_or_path=<folder>'` does); results from it are labelled as random weights."""
    from lib import book

    config = A.small_config(audio={"d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64},
                            text={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                  "num_attention_heads": 2, "num_key_value_heads": 2})
    folder = A.save_random_model(tmp_path / "q7b", config, device="cpu", seed=1)
    assert A.is_random_weights(folder) and not A.is_random_weights(M.TINY)
    model, processor = M.load_model(str(folder), "none", "float32")
    assert M.answer_token_ids(processor.tokenizer) == (32, 33)
    scores = M.score(model, processor, _clips(3, seed=4), batch_size=2)
    assert np.isfinite(scores.logits).all()
    assert book.smoke_label({"model_name_or_path": str(folder)}).startswith("RANDOM WEIGHTS")
    assert book.smoke_label({"model_name_or_path": M.TINY, "smoke": True}).startswith("SMOKE")
    with pytest.raises(FileExistsError):
        A.save_random_model(folder, config, device="cpu")


@pytest.fixture(scope="module")
def tiny():
    return M.load_model(M.TINY)


def _clips(n, seed=0, lo=3200, hi=16000):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(k))).astype(np.float32) for k in rng.integers(lo, hi, n)]


def _count(fn):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode(), sdpa_kernel(SDPBackend.MATH):
        fn()
    return counter.get_total_flops()


def test_flop_count_matches_flop_counter_on_the_tiny_model(tiny):
    model, processor = tiny
    ids = M.answer_token_ids(processor.tokenizer)
    cfg = model.config
    inputs = M.make_inputs(processor, _clips(3))
    assert _count(lambda: M.answer_logits(model, inputs, ids)) == A.flops_of_batch(cfg, inputs)
    with torch.inference_mode():
        prefix = M.SharedPrefix.from_inputs(model, inputs)
    assert _count(lambda: M.answer_logits(model, inputs, ids, prefix=prefix)) == \
        A.flops_of_batch(cfg, inputs, prefix_len=len(prefix))
    padded = M.make_inputs(processor, _clips(2, seed=1), short_encoder=False)
    assert padded["input_features"].shape[-1] == 3000
    assert _count(lambda: model(**padded)) == A.flops_of_batch(cfg, padded, full_head=True)


def test_clip_bounds_are_below_what_the_book_executes(tiny):
    model, processor = tiny
    cfg = model.config
    clips = _clips(4)
    inputs = M.make_inputs(processor, clips)
    text = len(processor.tokenizer(M.prompt_text(processor)).input_ids) - 1
    with torch.inference_mode():
        prefix = M.SharedPrefix.from_inputs(model, inputs)
    bound = sum(A.clip_bound_flops(cfg, len(c), text, len(prefix)) for c in clips)
    assert 0 < bound <= A.flops_of_batch(cfg, inputs, prefix_len=len(prefix))
    assert A.clip_bound_flops(cfg, 16000, text, 0) > A.clip_bound_flops(cfg, 16000, text, len(prefix))
    train = A.clip_train_bound_flops(cfg, 16000, text + 3, lora_params=1000)
    enc = A.encoder_flops(cfg.audio_config, 100, projector_out=cfg.text_config.hidden_size)
    lm = A.lm_flops(cfg.text_config, text + 3 + 25, head_rows=cfg.text_config.vocab_size)
    assert train == enc + 2 * lm + 6 * 1000 * (text + 3 + 25)


def test_random_architecture_runs_the_books_code_path():
    config = A.small_config(audio={"d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64},
                            text={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                  "num_attention_heads": 2, "num_key_value_heads": 2})
    model = A.build_random_model(config, device="cpu", torch_dtype="float32", seed=3)
    assert M.uses_short_encoder(model)
    assert not any(p.device.type == "meta" for p in model.parameters())
    assert torch.isfinite(model.model.language_model.rotary_emb.inv_freq).all()
    w = model.model.language_model.layers[0].mlp.up_proj.weight
    assert abs(float(w.std()) - A.INIT_STD) < 0.003
    processor = A.processor_7b()
    clips = _clips(5, seed=2, lo=320)
    fast = M.fast.score(model, processor, clips, batch_size=2, shared_prefix=True, prefetch=True)
    ref = M.score(model, processor, clips, batch_size=4, short_encoder=False, fast=False)
    np.testing.assert_allclose(fast.logits, ref.logits, atol=1e-5, rtol=1e-5)
    assert (fast.pred == ref.pred).all()
    again = A.build_random_model(config, device="cpu", torch_dtype="float32", seed=3)
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)


def test_saved_benchmark_text_carries_no_machine_paths():
    from bench import gpu as G

    text = ('  File "/opt/torch/.venv/lib/python3.12/site-packages/torch/_tensor.py", line 1\n'
            f"  24 0.1 {G.PROJECT_ROOT}/lib/train.py:282(batch_loss) /tmp/site/bitsandbytes/nn/modules.py:609(forward) "
            "/usr/lib/python3.12/concurrent/futures/thread.py:58(run)")
    assert G.strip_machine_paths(text) == (
        '  File "<site-packages>/torch/_tensor.py", line 1\n'
        "  24 0.1 lib/train.py:282(batch_loss) <site-packages>/bitsandbytes/nn/modules.py:609(forward) "
        "<stdlib>/concurrent/futures/thread.py:58(run)")
    assert G.md_table(["a", "b"], [[1, "x"]]) == ["| a | b |", "|---|---|", "| 1 | x |", ""]
