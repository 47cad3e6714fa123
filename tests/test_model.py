"""The model path on the tiny Qwen2-Audio: loader, prompt, audio tokens, short encoder, scoring, generate, NF4."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lib import model as M
from _synth_audio import clip_set

# Lengths in samples: 30 ms (one audio token), 50 ms, odd sample counts, 200 ms, 1 s, 1.5 s.
LENGTHS = (480, 800, 1600, 3200, 3217, 4999, 8000, 12345, 16000, 24000)


@pytest.fixture(scope="module")
def tiny():
    return M.load_model("tiny")


def _diverse(models, processor):
    """Give the random tiny model answers that depend on the audio, both ways (for decision checks).

    The ``A`` row of ``lm_head`` becomes the ``B`` row plus a direction orthogonal to the mean last hidden
    state of a calibration set, so that ``logit_A - logit_B`` changes sign from clip to clip. The same
    change goes into every model given.
    """
    audios = [*clip_set(len(LENGTHS), seed=2, lengths=LENGTHS)[0], *clip_set(12, seed=3)[0]]  # the clips tested
    with torch.no_grad():
        h = M.hidden_states(models[0], M.make_inputs(processor, audios))[:, -1]
        mean = h.mean(0)
        u = torch.randn(h.shape[1], generator=torch.Generator().manual_seed(0))
        u -= (u @ mean) / (mean @ mean) * mean
        u *= 2.0 / (h @ u).std()
        a, b = M.answer_token_ids(processor.tokenizer)
        for model in models:
            head = M.unwrap(model).lm_head.weight
            head[a] = head[b] + u
    return models


@pytest.fixture(scope="module")
def pair():
    """The same weights twice: the stock HF model (30-s padding) and the book's short-encoder model."""
    plain, processor = M.load_model("tiny", short_encoder=False)
    short, _ = M.load_model("tiny", short_encoder=True)
    _diverse([short, plain], processor)
    return plain, short, processor


def test_tiny_model_is_a_qwen2_audio_loaded_like_the_real_one(tmp_path):
    path = M.build_tiny_model(tmp_path / "tiny", seed=0)
    again = M.build_tiny_model(tmp_path / "again", seed=0)
    info = json.loads((path / M.BUILD_INFO).read_text())
    assert info["weights_sha256"] == json.loads((again / M.BUILD_INFO).read_text())["weights_sha256"]  # seeded
    model, processor = M.load_model(str(path))
    assert type(model).__name__ == "Qwen2AudioForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2AudioProcessor"
    fe = processor.feature_extractor
    assert type(fe).__name__ == "WhisperFeatureExtractor"
    assert (fe.feature_size, fe.hop_length, fe.n_fft, fe.sampling_rate, fe.chunk_length) == (128, 160, 400, 16000, 30)
    assert model.config.audio_config.num_mel_bins == 128 and model.config.audio_config.max_source_positions == 1500
    tok = processor.tokenizer
    assert type(tok).__name__ == "Qwen2Tokenizer"
    for special in M.SPECIAL_TOKENS:
        ids = tok(special, add_special_tokens=False).input_ids
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids[0]) == special
    assert model.config.audio_token_id == tok.convert_tokens_to_ids("<|AUDIO|>")
    assert "<|im_start|>" in processor.chat_template and "<|audio_bos|><|AUDIO|><|audio_eos|>" in processor.chat_template
    assert tok.padding_side == "left"


def test_tiny_resolves_to_the_checkpoint_folder():
    assert M.resolve_model_path("tiny") == str(M.tiny_model_dir())
    assert (M.tiny_model_dir() / "model.safetensors").exists()


def test_answers_are_single_tokens(tiny):
    _, processor = tiny
    a, b = M.answer_token_ids(processor.tokenizer)
    assert a != b
    assert processor.tokenizer.decode([a]) == "A" and processor.tokenizer.decode([b]) == "B"


def test_prompt_goes_through_the_chat_template(tiny):
    _, processor = tiny
    text = M.prompt_text(processor, "Is it speech? A or B.")
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nIs it speech? A or B.<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert M.answer_suffix(processor, "Is it speech? A or B.", "A") == "A<|im_end|>\n"


@pytest.mark.parametrize("short", [True, False])
@pytest.mark.parametrize("ms,n_tokens", [(200, 5), (1000, 25)])
def test_audio_tokens_reach_the_model(tiny, ms, n_tokens, short):
    model, processor = tiny
    audio = np.random.default_rng(0).standard_normal(ms * 16).astype(np.float32) * 0.1
    inputs = M.make_inputs(processor, [audio], short_encoder=short)
    assert int((inputs["input_ids"] == model.config.audio_token_id).sum()) == n_tokens
    assert int(inputs["feature_attention_mask"].sum()) == ms // 10
    assert inputs["input_features"].shape[-1] == (3000 if not short else ms // 10 + 4)
    assert M.n_audio_tokens(ms * 16) == n_tokens
    # and the model's audio features fill exactly those positions
    feats = M.audio_features(M.unwrap(model), inputs["input_features"], inputs["feature_attention_mask"])
    assert feats.shape[0] == n_tokens


def test_audio_token_arithmetic_matches_the_processor(tiny):
    _, processor = tiny
    for n in (320, 481, 800, 1599, 1600, 1601, 7777, 16000, 16001):
        inputs = M.make_inputs(processor, [np.zeros(n, np.float32) + 0.01], short_encoder=False)
        # make_inputs pads clips under one token's length (30 ms) to it, so the model always hears something.
        assert int((inputs["input_ids"] == processor.audio_token_id).sum()) == M.n_audio_tokens(max(n, M.MIN_AUDIO_SAMPLES)), n


def test_short_features_are_the_padded_features(tiny):
    _, processor = tiny
    audios, _ = clip_set(len(LENGTHS), seed=1, lengths=LENGTHS)
    short = M.make_inputs(processor, audios, short_encoder=True)
    padded = M.make_inputs(processor, audios, short_encoder=False)
    n = short["input_features"].shape[-1]
    assert n % 2 == 0 and n < 3000
    assert torch.equal(short["feature_attention_mask"], padded["feature_attention_mask"][:, :n])
    assert torch.equal(short["input_ids"], padded["input_ids"])
    for i, a in enumerate(audios):
        L = int(short["feature_attention_mask"][i].sum())
        need = 2 * ((L - 1) // 2 + 1) + 1  # frames the encoder's convolutions read for the kept positions
        torch.testing.assert_close(short["input_features"][i, :, :need], padded["input_features"][i, :, :need],
                                   atol=1e-5, rtol=1e-5)


def test_short_encoder_matches_the_padded_hf_path(pair):
    plain, short, processor = pair
    audios, _ = clip_set(len(LENGTHS), seed=2, lengths=LENGTHS)
    ids = list(M.answer_token_ids(processor.tokenizer))
    assert not M.uses_short_encoder(plain) and M.uses_short_encoder(short)
    with torch.no_grad():  # the stock Hugging Face forward: 30 s of padding, full-vocabulary head
        inputs = M.make_inputs(processor, audios, short_encoder=False)
        ref = plain(**inputs).logits[:, -1, ids].float().numpy()
    ours = M.score(short, processor, audios, batch_size=len(audios)).logits
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)
    assert np.array_equal(ours[:, 0] >= ours[:, 1], ref[:, 0] >= ref[:, 1])
    decisions = ours[:, 0] >= ours[:, 1]
    assert 0 < decisions.sum() < len(decisions), "the check needs both answers among the clips"


def test_scoring_agrees_with_constrained_generate_batched_and_one_by_one(pair):
    _, model, processor = pair
    audios, _ = clip_set(12, seed=3)
    batched = M.score(model, processor, audios, batch_size=5)
    single = M.score(model, processor, audios, batch_size=1)
    np.testing.assert_allclose(batched.logits, single.logits, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(batched.p_speech, M.softmax2(batched.logits))
    for bs in (5, 1):
        answers, raw = M.generate_answers(model, processor, audios, batch_size=bs)
        assert answers == ["A" if p >= 0.5 else "B" for p in batched.p_speech]
        np.testing.assert_allclose(raw, batched.logits, atol=1e-4, rtol=1e-4)
    assert 0 < (batched.p_speech >= 0.5).sum() < len(audios)


def test_scores_keep_the_input_order_across_length_buckets(pair):
    _, model, processor = pair
    audios, _ = clip_set(9, seed=4)
    whole = M.score(model, processor, audios, batch_size=4).logits
    reverse = M.score(model, processor, audios[::-1], batch_size=4).logits[::-1]
    np.testing.assert_allclose(whole, reverse, atol=1e-4, rtol=1e-4)


def test_length_buckets_group_similar_lengths():
    buckets = M.length_buckets([5, 1, 4, 2, 3, 6, 100], 3)
    assert [list(b) for b in buckets] == [[1, 3, 4], [2, 0, 5], [6]]
    with pytest.raises(ValueError):
        M.length_buckets([1], 0)


def test_nf4_on_cpu_quantizes_only_the_language_model(tiny):
    import bitsandbytes as bnb

    model, processor = M.load_model("tiny", quantization="nf4", torch_dtype="float32", device="cpu")
    quantized = {n for n, mod in model.named_modules() if isinstance(mod, bnb.nn.Linear4bit)}
    assert quantized and all(".language_model.layers." in n for n in quantized)
    assert not any("audio_tower" in n or "multi_modal_projector" in n or n == "lm_head" for n in quantized)
    layer = M.unwrap(model).model.language_model.layers[0].self_attn.q_proj
    assert layer.weight.quant_state.quant_type == "nf4" and layer.weight.quant_state.nested  # double quant
    for mod in [M.unwrap(model).model.audio_tower.layers[0].fc1, M.unwrap(model).model.multi_modal_projector.linear,
                M.unwrap(model).lm_head]:
        assert type(mod) is torch.nn.Linear and mod.weight.dtype == torch.float32
    audios, _ = clip_set(6, seed=5)
    q = M.score(model, processor, audios, batch_size=3)
    full = M.score(tiny[0], tiny[1], audios, batch_size=3)
    assert np.isfinite(q.logits).all()
    assert np.abs(q.logits - full.logits).max() < 0.5 * np.abs(full.logits).max()  # 4-bit weights: close, not equal


def test_nf4_without_bitsandbytes_names_the_package_and_keeps_the_folder(tmp_path, monkeypatch):
    """A missing bitsandbytes is not a damaged model folder: the error says what to install or set, and that the
    folder is fine (before this, the user was told to delete 15 GiB of weights)."""
    import sys

    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    with pytest.raises(M.MissingPackageError) as err:
        M.load_model(str(folder), quantization="nf4", torch_dtype="bfloat16", device="cpu")
    text = str(err.value)
    assert "bitsandbytes" in text and "quantization=none" in text and "keep it" in text and "damaged" not in text
    assert (folder / "config.json").exists()


def test_missing_weights_say_where_to_put_them(tmp_path):
    with pytest.raises(M.ModelNotFoundError) as err:
        M.load_model("speechbook-tests/no-such-model")
    text = str(err.value)
    assert "huggingface-cli download" in text and "model_name_or_path" in text and "cache" in text
    (tmp_path / "empty").mkdir()
    with pytest.raises(M.ModelNotFoundError, match="config.json"):
        M.load_model(str(tmp_path / "empty"))


def test_real_model_id_without_weights_is_a_clear_error():
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(M.REAL_MODEL_ID, local_files_only=True)
        pytest.skip("the real weights are in this machine's cache")
    except Exception:  # noqa: BLE001
        pass
    with pytest.raises(M.ModelNotFoundError, match="Qwen2-Audio-7B-Instruct"):
        M.load_model(M.REAL_MODEL_ID)


def test_small_models_score_on_one_cpu_thread_and_restore_the_setting(tiny, monkeypatch):
    model, processor = tiny
    seen = []
    monkeypatch.setattr(M.scoring, "answer_logits", lambda *a, **k: (seen.append(torch.get_num_threads()), torch.zeros(1, 2))[1])
    before = torch.get_num_threads()
    M.score(model, processor, [np.zeros(1600, np.float32) + 0.01])
    assert seen == [1] and torch.get_num_threads() == before
