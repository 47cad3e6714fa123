"""The mini Qwen2-Audio: the book's CPU model, with a pretrained audio tower.

Same class as the 7B (``Qwen2AudioForConditionalGeneration``), same processor class, the real Qwen2-Audio tokenizer
and chat template (:mod:`lib.model.build.tokenizer`), and:

* an audio encoder that IS a pretrained Whisper encoder (tiny.en: 4 layers, d_model 384, 8.2 M parameters; or
  base: 6 layers, 512, 20.6 M), loaded strict into ``Qwen2AudioEncoder`` with ``num_mel_bins=80``. Qwen2-Audio's
  encoder is Whisper's (its own was initialised from Whisper-large-v3) plus a stride-2 average pool before the final
  layer norm, so the mini tower computes Whisper's layers, then pools pairs of frames, then applies Whisper's
  final norm (``tests/test_mini_model.py`` checks this against ``WhisperEncoder``);
* a small Qwen2 language model with random weights (2 layers, hidden 128), trained in the book through the
  projector and LoRA. No pretrained small LM with the Qwen vocabulary, a clean licence and provenance can be had
  offline, so the text side starts random: the mini model's numbers say what a pretrained speech encoder plus a
  small trained LM can do, never what Qwen2-Audio-7B does.

The folder is built once under ``checkpoints/`` and loaded through :func:`lib.model.load_model` like any other
model (``model_name_or_path: mini`` or ``mini-base``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...config import PROJECT_ROOT
from .folder import BUILD_INFO, ensure_built

# model_name_or_path -> Whisper encoder it is built on.
MINI_MODELS = {"mini": "tiny.en", "mini-base": "base"}
MINI_TEXT = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 4, "max_position_embeddings": 2048, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
             "use_sliding_window": False}
# Qwen2AudioForConditionalGeneration does not tie its head to the embeddings, so the mini model has both
# (151,649 x 128 each, 19 M parameters apiece); both stay frozen in training: only the answer rows of the head matter.
# Unit-gain init (std = hidden ** -0.5) for the random language model and projector: at this width the 7B's 0.02
# shrinks every signal through each layer (the tiny model showed a model so initialised does not learn).
MINI_INIT_STD = MINI_TEXT["hidden_size"] ** -0.5
MINI_VERSION = 2  # bump when the recipe changes: an older build is rebuilt on first use


def mini_model_dir(name: str = "mini") -> Path:
    return PROJECT_ROOT / "checkpoints" / f"{name}-qwen2-audio"


def label(name: str = "mini") -> str:
    """What the model is, in words, for every table, figure and predictions file it produces."""
    enc = MINI_MODELS[name]
    return (f"mini model: Whisper-{enc} encoder (pretrained) + {MINI_TEXT['num_hidden_layers']}-layer Qwen2 LM "
            f"(random init, trained here), not Qwen2-Audio-7B")


def build_mini_model(out_dir: str | Path | None = None, name: str = "mini", seed: int = 0,
                     text: dict[str, Any] | None = None) -> Path:
    """Build, seed and save the mini Qwen2-Audio under ``out_dir`` (atomically: all or nothing)."""
    import torch
    from transformers import GenerationConfig, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    from ... import io
    from . import tokenizer as T, whisper_ct2

    if name not in MINI_MODELS:
        raise ValueError(f"unknown mini model {name!r}; choose one of {', '.join(MINI_MODELS)}")
    out_dir = Path(out_dir) if out_dir else mini_model_dir(name)
    encoder = MINI_MODELS[name]
    enc_state, wcfg, provenance = whisper_ct2.encoder_weights(encoder)
    processor = T.qwen2audio_processor(T.whisper_feature_extractor(wcfg.num_mel_bins))
    ids = T.SPECIAL_TOKENS
    text_cfg = {**MINI_TEXT, **(text or {})}
    config = Qwen2AudioConfig(
        audio_config={"model_type": "qwen2_audio_encoder", "d_model": wcfg.d_model, "encoder_layers": wcfg.encoder_layers,
                      "encoder_attention_heads": wcfg.encoder_attention_heads, "encoder_ffn_dim": wcfg.encoder_ffn_dim,
                      "num_mel_bins": wcfg.num_mel_bins, "max_source_positions": wcfg.max_source_positions,
                      "activation_function": wcfg.activation_function, "scale_embedding": False,
                      "dropout": 0.0, "attention_dropout": 0.0},
        text_config={"model_type": "qwen2", **text_cfg, "vocab_size": len(processor.tokenizer),
                     "initializer_range": MINI_INIT_STD, "bos_token_id": ids["<|endoftext|>"],
                     "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]},
        audio_token_index=ids["<|AUDIO|>"])
    config.pad_token_id = ids["<|endoftext|>"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2AudioForConditionalGeneration(config).eval()
    missing, unexpected = model.model.audio_tower.load_state_dict(enc_state, strict=True)
    assert not missing and not unexpected
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad_token_id=ids["<|endoftext|>"], do_sample=False)
    with io.atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        weights = sorted(tmp.glob("*.safetensors"))
        io.write_json(tmp / BUILD_INFO, {
            "what": label(name), "built_by": "lib.model.build.mini.build_mini_model", "version": MINI_VERSION,
            "seed": seed, "encoder": provenance, "text_config": text_cfg, "init_std": MINI_INIT_STD,
            "weights_sha256": {p.name: io.sha256_file(p) for p in weights}})
    return out_dir


def ensure_mini_model(name: str = "mini") -> Path:
    """The mini model's folder, built on first use (about a minute) and reused afterwards."""
    return ensure_built(mini_model_dir(name), MINI_VERSION, lambda path: build_mini_model(path, name), label(name))


# ------------------------------------------------------------------------------------ the choice, on dev
CHOICE_DEV_CLIPS = 600  # bench/mini_choice.py --dev, as the runs below were made
CHOICE_RUNS = {  # bench/runs file -> what was trained (bench/mini_choice.py, 1200 train clips, 3 epochs, 600 dev clips)
    "2026-12-02_mini_choice_h128.txt": ("Whisper-tiny.en", 8.2, 128),
    "2026-12-02_mini_choice_base.txt": ("Whisper-base", 20.6, 128),
    "2026-12-02_mini_choice_h256.txt": ("Whisper-tiny.en", 8.2, 256),
}


def choice_table(runs_dir: str | Path) -> "Any":
    """The dev results behind the choice of encoder and LM width, read from the raw benchmark outputs."""
    import re

    import pandas as pd

    rows = []
    for name, (encoder, enc_m, hidden) in CHOICE_RUNS.items():
        text = (Path(runs_dir) / name).read_text()
        dev = [float(b) for _, b in re.findall(r"epoch (\d+): dev accuracy [\d.]+, balanced ([\d.]+)", text)]
        if len(dev) < 3:
            raise ValueError(f"{name}: expected at least 3 epochs of dev results")
        rows.append({"encoder": encoder, "encoder_params_m": enc_m, "lm_hidden": hidden,
                     "dev_balanced_accuracy_epoch_1": dev[0], "dev_balanced_accuracy_epoch_3": dev[2]})
    return pd.DataFrame(rows)


def encoder_time_ratio(runs_dir: str | Path) -> float:
    """Encoder CPU time per clip, base over tiny.en, measured side by side (bench/encoder_time.py's raw output)."""
    import re

    text = (Path(runs_dir) / "2026-12-02_encoder_time.txt").read_text()
    return float(re.search(r"ratio base / tiny.en: ([\d.]+)", text).group(1))


def choice_text(table: "Any", chosen: str, time_ratio: float) -> str:
    """The choice in words, from the table's numbers (dev only) and the measured encoder cost."""
    import numpy as np

    acc = table["dev_balanced_accuracy_epoch_3"].to_numpy()
    n_dev = CHOICE_DEV_CLIPS
    p = float(acc.mean())
    se = float(np.sqrt(p * (1 - p) / n_dev))
    spread = acc.max() - acc.min()
    return (f"After 3 epochs the configurations reach dev balanced accuracy {acc.min():.3f} to {acc.max():.3f}: a spread of "
            f"{spread:.3f}, about {spread / se:.1f} standard errors of one estimate on {n_dev} dev clips ({se:.3f}). "
            f"Nothing here separates them, so the cheapest is the book's model: the Whisper-tiny.en encoder "
            f"({table['encoder_params_m'].min():g} M parameters against {table['encoder_params_m'].max():g} M for base, which "
            f"took {time_ratio:.1f} times as long per clip on this CPU, measured side by side: bench/encoder_time.py) and "
            f"the {MINI_TEXT['hidden_size']}-wide LM. This run uses `{chosen}` ({label(chosen) if chosen in MINI_MODELS else chosen}).")
