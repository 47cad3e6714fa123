"""The mini Qwen2-Audio: a real Whisper encoder inside Qwen2AudioForConditionalGeneration, the encoder cache, the
audio-tower probe, and the labels that keep its numbers apart from the 7B's."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lib import model as M, probe, systems
from lib.model.build import mini as mini_model, tokenizer as T, whisper_ct2


@pytest.fixture(scope="module")
def mini():
    return M.load_model("mini")


def test_mini_is_a_qwen2_audio_with_the_real_tokenizer_and_whisper_features(mini):
    model, processor = mini
    assert type(model).__name__ == "Qwen2AudioForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2AudioProcessor"
    tok = processor.tokenizer
    assert {t: tok.convert_tokens_to_ids(t) for t in T.SPECIAL_TOKENS} == T.SPECIAL_TOKENS
    assert M.answer_token_ids(tok) == (32, 33)
    assert processor.feature_extractor.feature_size == 80 == model.config.audio_config.num_mel_bins
    assert model.config.audio_token_id == T.SPECIAL_TOKENS["<|AUDIO|>"]
    info = json.loads((mini_model.mini_model_dir("mini") / mini_model.BUILD_INFO).read_text())
    assert info["encoder"]["whisper"] == "tiny.en" and "not Qwen2-Audio-7B" in info["what"]


def test_the_audio_tower_is_whisper_tiny_en_followed_by_qwen2_audios_pool(mini):
    model, processor = mini
    whisper, _ = whisper_ct2.load_whisper("tiny.en", prefer_hub_cache=False)
    tower = model.model.audio_tower
    ref = whisper.model.encoder.state_dict()
    for key, value in tower.state_dict().items():
        assert torch.equal(value, ref[key]), key  # loaded strict, bit for bit
    rng = np.random.default_rng(0)
    feats = processor.feature_extractor(rng.standard_normal(16000).astype(np.float32) * 0.1, sampling_rate=16000,
                                        return_tensors="pt").input_features
    seen = {}
    hook = whisper.model.encoder.layer_norm.register_forward_hook(lambda mod, args, out: seen.update(pre_norm=args[0]))
    with torch.no_grad():
        whisper.model.encoder(feats)
        hook.remove()
        pre_norm = seen["pre_norm"]  # Whisper's layers, before its final norm
        pooled = torch.nn.functional.avg_pool1d(pre_norm.transpose(1, 2), 2, 2).transpose(1, 2)
        expected = whisper.model.encoder.layer_norm(pooled)  # Qwen2-Audio pools, then applies the final norm
        got = M.encode_audio(tower, feats, torch.tensor([1500]))
    assert got.shape == expected.shape == (1, 750, 384)
    assert torch.allclose(got, expected, atol=1e-4)


def _clips(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(int(16000 * d)).astype(np.float32) * 0.1 for d in [0.1, 0.2, 0.5, 1.0] * (n // 4)]


def test_the_encoder_cache_changes_no_score(mini, tmp_path):
    model, processor = mini
    clips = _clips()
    saved = model.speechbook_encoder_cache
    try:
        model.speechbook_encoder_cache = None
        plain = M.score(model, processor, clips, batch_size=4)
        cache = M.EncoderCache(tmp_path / "cache")
        model.speechbook_encoder_cache = cache
        cold = M.score(model, processor, clips, batch_size=4)
        assert cache.misses == len(clips) and cache.hits == 0
        warm = M.score(model, processor, clips[::-1], batch_size=12)  # other batches, other padding
        assert cache.hits == len(clips)
        files = sorted((tmp_path / "cache").rglob("*.npy"))
        assert len(files) == len(clips)
        files[0].write_bytes(b"damaged")  # a damaged entry is recomputed, not trusted
        model.speechbook_encoder_cache = M.EncoderCache(tmp_path / "cache")
        disk = M.score(model, processor, clips, batch_size=4)
    finally:
        model.speechbook_encoder_cache = saved
    np.testing.assert_allclose(cold.logits, plain.logits, atol=1e-5)
    np.testing.assert_allclose(warm.logits[::-1], plain.logits, atol=1e-4)
    np.testing.assert_allclose(disk.logits, cold.logits, atol=1e-5)
    assert (cold.pred == plain.pred).all()


def test_a_cached_output_is_the_same_bits_whatever_batch_first_met_the_clip(mini):
    """The cache encodes equal-length clips in fixed-size groups: a clip's stored output must not depend on its
    companions, its position or how many clips came with it (exact resume relies on it)."""
    model, processor = mini
    rng = np.random.default_rng(3)
    clip = rng.standard_normal(8000).astype(np.float32) * 0.1
    others = [rng.standard_normal(8000).astype(np.float32) * 0.1 for _ in range(20)]
    saved, outs = model.speechbook_encoder_cache, []
    try:
        for before, after in ((0, 0), (5, 0), (0, 15), (16, 4)):
            batch = others[:before] + [clip] + others[before: before + after]
            model.speechbook_encoder_cache = M.EncoderCache()  # empty: the clip is encoded with this batch
            outs.append(M.encoder_outputs(model, processor, batch, batch_size=64)[before])
    finally:
        model.speechbook_encoder_cache = saved
    for out in outs[1:]:
        assert np.array_equal(out, outs[0])


def test_a_cache_miss_leaves_the_random_stream_as_a_hit_does(mini):
    """In training mode Whisper's encoder draws layer-drop numbers from torch's generator; the cache encodes in eval
    mode, so whether a clip was cached cannot change a training's dropout masks (a sweep member trained beside the
    book, its cache half cold, gave other bits than the same member trained again on the warm cache)."""
    import torch

    model, processor = mini
    clips = _clips(4, seed=11)
    saved = model.speechbook_encoder_cache
    model.train()
    try:
        cache = model.speechbook_encoder_cache = M.EncoderCache()  # empty: every clip is a miss
        torch.manual_seed(0)
        M.encoder_outputs(model, processor, clips, batch_size=8)
        after_miss = torch.rand(3)
        torch.manual_seed(0)
        M.encoder_outputs(model, processor, clips, batch_size=8)  # now every clip is a hit
        after_hit = torch.rand(3)
        assert (cache.misses, cache.hits) == (4, 4)
        assert model.training and M.unwrap(model).model.audio_tower.training  # the model's mode is left as it was
    finally:
        model.eval()
        model.speechbook_encoder_cache = saved
    assert torch.equal(after_miss, after_hit)


def test_a_trained_audio_tower_never_reads_the_cache(mini):
    from lib import train as TR

    model, processor = M.load_model("mini")
    tc = TR.profile_recipe("cpu", extra_trainable=["multi_modal_projector", "audio_tower"])
    peft = TR.apply_lora(model, tc)
    cache = model.speechbook_encoder_cache
    before = (cache.hits, cache.misses)
    loss = TR.batch_loss(peft, processor, _clips(4), ["A", "B", "A", "B"], tc)
    loss.backward()
    assert (cache.hits, cache.misses) == before  # the trainable copy ran with autograd
    tower = M.unwrap(peft).model.audio_tower
    assert any(p.grad is not None for p in tower.parameters() if p.requires_grad)


def test_model_labels_name_the_model():
    assert "not Qwen2-Audio-7B" in M.model_label("mini") and "Whisper-tiny.en" in M.model_label("mini")
    assert "Whisper-base" in M.model_label("mini-base")
    assert "SMOKE" in M.model_label("tiny")
    assert M.model_label("Qwen/Qwen2-Audio-7B-Instruct") == "Qwen/Qwen2-Audio-7B-Instruct"


def test_the_probe_fits_on_train_chooses_on_dev_and_reloads_without_pickle(tmp_path, speechlike):
    rng = np.random.default_rng(1)
    speech = [speechlike(0.5, seed=i) for i in range(16)]
    noise = [(rng.standard_normal(8000) * 0.1).astype(np.float32) for _ in range(16)]
    audios, labels = speech + noise, ["speech"] * 16 + ["nonspeech"] * 16
    order = rng.permutation(32)
    train_idx, dev_idx = order[:20], order[20:]
    p = probe.WhisperProbe("mini").fit([audios[i] for i in train_idx], [labels[i] for i in train_idx],
                                       [audios[i] for i in dev_idx], [labels[i] for i in dev_idx])
    assert p.fit_info["threshold_chosen_on"] == "dev" and p.C in probe.C_GRID
    assert p.fit_info["train_balanced_accuracy"] > 0.9
    folder = p.save_to_run(tmp_path, "whisper-probe")
    assert not list(folder.glob("*.joblib")) and (folder / probe.MODEL_FILE).exists()
    again = systems.load_system(f"{tmp_path}:whisper-probe")
    np.testing.assert_allclose(again.score(audios), p.score(audios), atol=1e-6)
    assert again.threshold == p.threshold and again.normalization == "rms"
    (folder / probe.MODEL_FILE).write_text('{"mean": [1, 2], "scale": [1], "coef": [1, 2], "intercept": 0}')
    with pytest.raises(ValueError, match="differ in length.*chapter 02"):
        systems.load_system(f"{tmp_path}:whisper-probe")
    (folder / probe.MODEL_FILE).write_text("not json")
    with pytest.raises(ValueError, match="not a saved probe"):
        systems.load_system(f"{tmp_path}:whisper-probe")
