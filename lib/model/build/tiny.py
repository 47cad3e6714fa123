"""The tiny model: Qwen2-Audio's classes at small sizes with random weights, for fast unit tests (its numbers are
smoke results). Built, seeded and saved under ``checkpoints/tiny-qwen2-audio`` by lib itself, then loaded
through the same ``from_pretrained`` path as the real model."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...config import PROJECT_ROOT
from . import tokenizer as T
from .folder import BUILD_INFO, ensure_built
from .qwen7b import QWEN2_AUDIO_7B_CONFIG

TINY = "tiny"  # model_name_or_path of the tiny model
SPECIAL_TOKENS = list(T.SPECIAL_TOKENS)  # Qwen2-Audio's special tokens, in id order
# Same classes as the 7B, small sizes. 128 mel bins and 1500 source positions as in the 7B, so the same feature
# extractor settings and the same 30-s padded path work on it.
# Width 64 learned as well as 128 on the earlier, smaller cpu bank (960 clips from 480 sources: data-limited) and
# trains faster (BENCHMARKS.md); on today's bank (6000 clips, every source) 128 has not been tried.
TINY_WIDTH = 64
TINY_AUDIO = {"d_model": TINY_WIDTH, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_dim": 2 * TINY_WIDTH}
TINY_TEXT = {"hidden_size": TINY_WIDTH, "intermediate_size": 2 * TINY_WIDTH, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 2048}
# Unit-gain random init (std = width ** -0.5) instead of the 7B's 0.02: at this width the latter shrinks every
# signal through each layer, and a random tiny model so initialised does not learn in the cpu profile's budget
# (measured: dev accuracy stays at 0.5).
TINY_INIT_STD = TINY_WIDTH ** -0.5
TINY_VERSION = 4  # bump when the tiny model's recipe changes: an older build is rebuilt on first use


def tiny_model_dir() -> Path:
    return PROJECT_ROOT / "checkpoints" / "tiny-qwen2-audio"


def build_tiny_model(out_dir: str | os.PathLike | None = None, seed: int = 0, init_std: float = TINY_INIT_STD,
                     audio: dict[str, Any] | None = None, text: dict[str, Any] | None = None) -> Path:
    """Build, seed and save the tiny Qwen2-Audio (model, processor, generation config) in ``out_dir``.

    The folder is written atomically: a crash leaves either no folder or the complete one.
    """
    import torch
    from transformers import GenerationConfig, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    from ... import io

    out_dir = Path(out_dir) if out_dir else tiny_model_dir()
    processor = T.qwen2audio_processor(T.whisper_feature_extractor(128))  # the real tokenizer and Instruct template
    tokenizer = processor.tokenizer
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen2AudioConfig(
        audio_config={**QWEN2_AUDIO_7B_CONFIG["audio_config"], **TINY_AUDIO, **(audio or {}), "initializer_range": init_std},
        text_config={**QWEN2_AUDIO_7B_CONFIG["text_config"], **TINY_TEXT, **(text or {}), "vocab_size": len(tokenizer),
                     "initializer_range": init_std,
                     "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                     "pad_token_id": ids["<|endoftext|>"]},
        audio_token_index=ids["<|AUDIO|>"],
    )
    config.pad_token_id = ids["<|endoftext|>"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2AudioForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"],
        do_sample=False)
    with io.atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        weights = sorted(tmp.glob("*.safetensors"))
        io.write_json(tmp / BUILD_INFO, {
            "what": "tiny Qwen2-Audio with random weights, built by lib.model.build_tiny_model (SMOKE model)",
            "version": TINY_VERSION, "seed": seed, "init_std": init_std, "weights_sha256": {p.name: io.sha256_file(p) for p in weights},
        })
    return out_dir


def ensure_tiny_model() -> Path:
    """The tiny model's folder, built on first use and reused afterwards."""
    return ensure_built(tiny_model_dir(), TINY_VERSION, build_tiny_model, "tiny model")
