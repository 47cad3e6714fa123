"""The public architecture of Qwen2-Audio-7B(-Instruct), as a config: the tiny model is built from it with small
sizes, chapter 08 counts LoRA parameters on it (on the meta device, no memory), and the GPU benchmarks build it
with random weights (``bench/architecture.py``). A folder of such random weights carries a marker file, so that
every number drawn from it is labelled as code-and-cost only, never accuracy."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .tokenizer import SPECIAL_TOKENS

REAL_MODEL_ID = "Qwen/Qwen2-Audio-7B-Instruct"  # what the book is about (hub id; or a local folder of it)
QWEN2_AUDIO_7B_CONFIG: dict[str, Any] = {
    "audio_config": {
        "model_type": "qwen2_audio_encoder",
        "d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120,
        "num_mel_bins": 128, "max_source_positions": 1500, "activation_function": "gelu",
        "scale_embedding": False, "dropout": 0.0, "attention_dropout": 0.0,
    },
    "text_config": {
        "model_type": "qwen2",
        "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 32, "vocab_size": 156032, "max_position_embeddings": 8192,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "use_sliding_window": False,
    },
    "audio_token_index": 151646,
}
RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS.json"  # written by bench.architecture.save_random_model


def config_7b(**text_overrides: Any):
    """``Qwen2AudioConfig`` of Qwen2-Audio-7B (``text_overrides`` change the text model, e.g. fewer layers)."""
    from transformers import Qwen2AudioConfig

    c = QWEN2_AUDIO_7B_CONFIG
    ids = SPECIAL_TOKENS
    text = {**c["text_config"], "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"], **text_overrides}
    cfg = Qwen2AudioConfig(audio_config=dict(c["audio_config"]), text_config=text,
                           audio_token_index=c["audio_token_index"])
    cfg.pad_token_id = ids["<|endoftext|>"]
    return cfg


def meta_model(config):
    """The model of ``config`` on the meta device: its shapes and parameter counts without any memory."""
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    with torch.device("meta"):
        return Qwen2AudioForConditionalGeneration(config)


def is_random_weights(model_name_or_path: str | Path | None) -> bool:
    """True for a model folder that ``bench.architecture.save_random_model`` wrote (random weights, not a real
    model)."""
    if not model_name_or_path:
        return False
    path = Path(str(model_name_or_path)).expanduser()
    return (path / RANDOM_WEIGHTS_MARKER).exists()
