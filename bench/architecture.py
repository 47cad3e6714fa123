"""The Qwen2-Audio-7B architecture without its weights: config, parameter counts, FLOP counts, a builder.

The real weights cannot be downloaded everywhere, but speed and memory do not depend on weight values. This
module builds the public architecture of ``Qwen/Qwen2-Audio-7B(-Instruct)`` with random weights on any device,
in bf16, fp32 or 4-bit NF4, together with a processor that works offline and gives the same token layout as
the real one, so the book's own scoring and training code runs on it unchanged (``bench/gpu.py`` does).

* :func:`config_7b` -- the public config, kept in :mod:`lib.model.build.qwen7b` (the tiny model and chapter 08 use
  it too) and re-exported here (audio encoder d_model 1280, 32 layers, 20 heads, ffn 5120, 128 mel
  bins, 1500 source positions; Qwen2 text model hidden 4096, intermediate 11008, 32 layers, 32 heads, 32 kv
  heads, vocabulary 156032, 8192 positions, rope_theta 10000, rms eps 1e-5; audio token 151646).
* :func:`processor_7b` -- the real Qwen2-Audio tokenizer and Instruct chat template
  (:mod:`lib.model.build.tokenizer`), with Whisper-large-v3 features (128 mel bins).
* :func:`save_random_model` -- the 7B architecture with random weights saved as a model folder with that
  processor, which the book's loader and ``make book PROFILE=full`` take as ``model_name_or_path``.
* :func:`parameter_counts` -- counted on the meta device (no memory): 8.40 B in all, audio encoder 0.64 B,
  language model 7.12 B (embeddings included), head 0.64 B.
* :func:`build_random_model` -- the model on a device with random weights (HF's init scheme: N(0, 0.02), norms
  at one), created on the meta device and filled in place on the target device, so building the 7B takes
  seconds, not minutes. ``quantization="nf4"`` then replaces the language model's linear layers by
  bitsandbytes ``Linear4bit`` with exactly the settings and skip list of :func:`lib.model.nf4_config` (the
  audio tower, projector and ``lm_head`` stay in bf16), as ``from_pretrained`` would.
* FLOP counts (:func:`encoder_flops`, :func:`lm_flops`) from the config and the token counts, the way
  ``torch.utils.flop_counter`` counts them (2 per multiply-add in matrix products and convolutions; attention as
  4 x queries x keys x head dim per head, masked positions included); ``tests/test_architecture.py`` checks them
  against ``FlopCounterMode`` on the tiny model.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lib import model as M
from lib.model.build import tokenizer as T
from lib.model.build.qwen7b import (  # noqa: F401 - the config the book needs too lives in lib; the benchmarks' here
    QWEN2_AUDIO_7B_CONFIG, RANDOM_WEIGHTS_MARKER, config_7b, is_random_weights, meta_model)

QWEN_SPECIAL_IDS = T.SPECIAL_TOKENS  # Qwen2's special token ids (tokenizer of Qwen2-Audio-7B-Instruct)
INIT_STD = 0.02
# The published parameter counts of Qwen2-Audio-7B (billions).
PUBLISHED_PARAMS_B = {"total": 8.40, "audio_encoder": 0.64, "language_model": 7.12, "head": 0.64}


def small_config(audio: dict | None = None, text: dict | None = None):
    """The 7B config with smaller sizes (for CPU dry runs of the benchmark): same vocabulary and token ids."""
    from transformers import Qwen2AudioConfig

    cfg = config_7b(**(text or {}))
    audio_cfg = {**QWEN2_AUDIO_7B_CONFIG["audio_config"], **(audio or {})}
    out = Qwen2AudioConfig(audio_config=audio_cfg, text_config=cfg.text_config.to_dict(),
                           audio_token_index=cfg.audio_token_index)
    out.pad_token_id = cfg.pad_token_id
    return out


def processor_7b():
    """The real Qwen2-Audio processor, offline: the Qwen BPE with Qwen2-Audio's special tokens and the Instruct
    template (:mod:`lib.model.build.tokenizer`, proven against the released processor's ids), Whisper-large-v3
    features (128 mel bins)."""
    return T.qwen2audio_processor(T.whisper_feature_extractor(128))


def save_random_model(folder: str | Path, config=None, device: str = "cuda", seed: int = 0) -> Path:
    """A model folder of Qwen2-Audio (the 7B architecture by default) with RANDOM weights, in bf16, with the real
    processor: what ``huggingface-cli download`` gives for the real model, so that the book's own loader
    (:func:`lib.model.load_model`, in bf16 or NF4) and ``make book PROFILE=full SET='model_name_or_path=<folder>'``
    run on it unchanged. A ``RANDOM_WEIGHTS.json`` beside the weights says what it is; every result the book
    draws from such a folder is labelled as random weights (:func:`lib.book.smoke_label`). Runs of it test the
    code and its cost, never accuracy.

    The weights are made on ``device`` (seconds for the 7B on a GPU) and written as safetensors shards (about
    16.8 GB for the 7B). An existing folder is refused rather than overwritten."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and is not empty: pick a new folder (nothing is overwritten)")
    config = config if config is not None else config_7b()
    processor = processor_7b()
    model = build_random_model(config, device=device, torch_dtype="bfloat16", seed=seed, short_encoder=False)
    from lib import io

    with io.atomic_dir(folder) as tmp:  # a killed build leaves no half-written model folder
        model.save_pretrained(tmp, max_shard_size="5GB")
        processor.save_pretrained(tmp)
        io.write_json(tmp / RANDOM_WEIGHTS_MARKER, {
            "random_weights": True,
            "what": "the Qwen2-Audio-7B architecture with random weights (N(0, 0.02)), NOT Qwen2-Audio-7B-Instruct: "
                    "results from it test code, speed and memory, never accuracy",
            "seed": seed, "built_by": "bench.architecture.save_random_model", "config": describe(config)})
    del model
    return folder


# ------------------------------------------------------------------------------------------ parameter counts
def parameter_counts(config=None) -> dict[str, int]:
    """Parameters by part, counted on the meta device (no memory is allocated)."""
    model = meta_model(config if config is not None else config_7b())

    def n(module) -> int:
        return sum(p.numel() for p in module.parameters())

    parts = {"audio_encoder": n(model.model.audio_tower), "projector": n(model.model.multi_modal_projector),
             "language_model": n(model.model.language_model), "head": n(model.lm_head)}
    parts["total"] = n(model)
    return parts


# ------------------------------------------------------------------------------------------------- building
def _init_weights_(model, seed: int, std: float = INIT_STD) -> None:
    """HF's init scheme, in place on the model's device: N(0, std) for linear, conv and embedding weights, zero
    biases, norm weights at one. Seeded; runs where the weights live (seconds for the 7B on a GPU)."""
    import torch
    from torch import nn

    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            bias = getattr(module, "bias", None)
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Embedding)):
                weight.normal_(0.0, std, generator=gen)
                if isinstance(bias, torch.Tensor):
                    bias.zero_()
            elif isinstance(weight, torch.Tensor) and weight.dim() == 1:  # LayerNorm, RMSNorm
                weight.fill_(1.0)
                if isinstance(bias, torch.Tensor):
                    bias.zero_()
    leftover = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if leftover:
        raise RuntimeError(f"parameters left uninitialised: {leftover[:5]}")


def build_random_model(config=None, device: str = "cuda", torch_dtype: Any = "bfloat16", quantization: str = "none",
                       seed: int = 0, short_encoder: bool = True):
    """Qwen2-Audio (the 7B by default) with random weights on ``device``, ready for the book's code.

    Created on the meta device, materialised on ``device`` and filled there (no CPU copy of the weights). The
    rotary buffers are rebuilt on the device. ``quantization="nf4"`` quantizes the language model's linear
    layers as :func:`quantize_nf4_` says. The model is in eval mode; :func:`lib.model.enable_short_encoder` is
    applied unless ``short_encoder=False`` (the plain Hugging Face encoder).
    """
    import torch
    from transformers import GenerationConfig

    if quantization not in ("none", "nf4"):
        raise ValueError(f"quantization {quantization!r} unknown; use none or nf4")
    config = config if config is not None else config_7b()
    dtype = M.resolve_dtype(torch_dtype)
    config.text_config.dtype = dtype
    model = meta_model(config)
    model.to_empty(device=device)
    model.to(dtype)
    _init_weights_(model, seed)
    lm = model.model.language_model
    lm.rotary_emb = type(lm.rotary_emb)(config=lm.config).to(device)  # its buffers were left on meta
    model.generation_config = GenerationConfig(
        eos_token_id=[QWEN_SPECIAL_IDS["<|im_end|>"], QWEN_SPECIAL_IDS["<|endoftext|>"]],
        pad_token_id=QWEN_SPECIAL_IDS["<|endoftext|>"], do_sample=False)
    model.eval()
    if quantization == "nf4":
        quantize_nf4_(model, compute_dtype=dtype)
    if short_encoder:
        M.enable_short_encoder(model)
    model.speechbook_source = {"model_name_or_path": "random-7b", "path": None, "quantization": quantization,
                               "torch_dtype": str(dtype).replace("torch.", "")}
    return model


def nf4_module_names(model) -> list[str]:
    """Names of the linear layers that ``from_pretrained`` with :func:`lib.model.nf4_config` quantizes."""
    from torch import nn
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = list(M.NF4_SKIP_MODULES)
    return [name for name, module in model.named_modules()
            if type(module) is nn.Linear and should_convert_module(name, skip)]


def quantize_nf4_(model, compute_dtype: Any = "bfloat16"):
    """Replace the linear layers :func:`nf4_module_names` lists by bitsandbytes NF4 ``Linear4bit`` (double
    quantization, blocksize 64, uint8 storage: :func:`lib.model.nf4_config`'s settings), one at a time, on the
    model's CUDA device. The bf16 weights are freed as it goes."""
    import bitsandbytes as bnb
    import torch

    cfg = M.nf4_config(compute_dtype)
    names = nf4_module_names(model)
    if not names:
        raise RuntimeError("no linear layer to quantize")
    for name in names:
        old = model.get_submodule(name)
        with torch.device("meta"):
            new = bnb.nn.Linear4bit(old.in_features, old.out_features, old.bias is not None,
                                    compute_dtype=cfg.bnb_4bit_compute_dtype,
                                    compress_statistics=cfg.bnb_4bit_use_double_quant,
                                    quant_type=cfg.bnb_4bit_quant_type, quant_storage=cfg.bnb_4bit_quant_storage)
        weight = bnb.nn.Params4bit(old.weight.data, requires_grad=False,
                                   compress_statistics=cfg.bnb_4bit_use_double_quant,
                                   quant_type=cfg.bnb_4bit_quant_type, quant_storage=cfg.bnb_4bit_quant_storage,
                                   module=new)
        new.weight = weight._quantize(old.weight.device)
        if old.bias is not None:
            new.bias = torch.nn.Parameter(old.bias.data, requires_grad=False)
        new.source_cls = type(old)
        new.requires_grad_(False)
        model.set_submodule(name, new)
        del old, weight
    model.config.quantization_config = cfg
    model.is_loaded_in_4bit = True
    model.is_quantized = True
    torch.cuda.empty_cache()
    return model


# ------------------------------------------------------------------------------------------------ FLOP counts
def encoder_positions(n_frames: int) -> int:
    """Encoder sequence length for ``n_frames`` mel frames (conv2: kernel 3, stride 2, padding 1)."""
    return (n_frames - 1) // 2 + 1


def encoder_flops(audio_cfg, n_frames: int, batch: int = 1, projector_out: int | None = None) -> int:
    """FLOPs of the audio encoder (+ projector if ``projector_out``) on ``batch`` clips of ``n_frames`` frames."""
    d, ffn, mel = audio_cfg.d_model, audio_cfg.encoder_ffn_dim, audio_cfg.num_mel_bins
    layers = audio_cfg.encoder_layers
    pos = encoder_positions(n_frames)
    conv = 2 * d * mel * 3 * n_frames + 2 * d * d * 3 * pos
    per_layer = 2 * pos * 4 * d * d + 4 * pos * pos * d + 2 * pos * 2 * d * ffn
    flops = conv + layers * per_layer
    if projector_out:
        flops += 2 * (pos // 2) * d * projector_out
    return batch * flops


def lm_flops(text_cfg, n_query: int, n_keys: int | None = None, batch: int = 1, head_rows: int = 0,
             head_positions: int = 1, rotary_rows: int | None = None) -> int:
    """FLOPs of the Qwen2 language model: ``n_query`` new tokens attending to ``n_keys`` keys (default: the same
    tokens), plus ``head_rows`` rows of ``lm_head`` at ``head_positions`` positions, for ``batch`` rows.
    ``rotary_rows``: rows of position ids the rotary angles are computed for (HF's own forward without
    position ids computes them once for the batch)."""
    h, inter = text_cfg.hidden_size, text_cfg.intermediate_size
    heads, kv_heads = text_cfg.num_attention_heads, text_cfg.num_key_value_heads
    head_dim = getattr(text_cfg, "head_dim", None) or h // heads
    n_keys = n_query if n_keys is None else n_keys
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    linear = 2 * n_query * (h * (q_out + 2 * kv_out) + q_out * h + 3 * h * inter)
    attention = 4 * n_query * n_keys * head_dim * heads
    rotary = 2 * (head_dim // 2) * n_query  # the rotary angles: inv_freq (outer) positions, once per forward
    flops = text_cfg.num_hidden_layers * (linear + attention) + 2 * h * head_rows * head_positions
    return batch * flops + (batch if rotary_rows is None else rotary_rows) * rotary


def lm_params_per_token(text_cfg) -> int:
    """Multiply-adds per token in the language model's linear layers (no embeddings, no attention scores)."""
    h, inter = text_cfg.hidden_size, text_cfg.intermediate_size
    heads, kv_heads = text_cfg.num_attention_heads, text_cfg.num_key_value_heads
    head_dim = getattr(text_cfg, "head_dim", None) or h // heads
    return text_cfg.num_hidden_layers * (h * (heads + 2 * kv_heads) * head_dim + heads * head_dim * h + 3 * h * inter)


def flops_of_batch(config, inputs, *, prefix_len: int = 0, padded_encoder: bool = False, full_head: bool = False) -> int:
    """FLOPs the model executes on one batch of processor ``inputs`` (padding included), forward only.

    ``prefix_len``: the shared prompt prefix taken from a cache (its tokens are not recomputed; every row's keys
    include it). ``padded_encoder``: the features are the 30-s padded ones (their frame count is what is used
    anyway). ``full_head``: the whole vocabulary at every position (the plain HF forward) instead of two rows at
    the last position.
    """
    ids = inputs["input_ids"]
    batch, seq = ids.shape
    n_frames = int(inputs["input_features"].shape[-1])
    f = encoder_flops(config.audio_config, n_frames, batch, projector_out=config.text_config.hidden_size)
    if prefix_len:
        # the book's layout: the rows' own tokens after the prefix, left-padded to the longest
        n_pad = (inputs["attention_mask"].long().cumsum(-1) == 0).sum(-1)
        n_query = seq - int((n_pad + prefix_len).min())
        f += lm_flops(config.text_config, n_query, prefix_len + n_query, batch, head_rows=2)
    elif full_head:
        f += lm_flops(config.text_config, seq, seq, batch, head_rows=config.text_config.vocab_size,
                      head_positions=seq, rotary_rows=1)
    else:
        f += lm_flops(config.text_config, seq, seq, batch, head_rows=2)
    return int(f)


def clip_bound_flops(config, n_samples: int, n_text_tokens: int, prefix_len: int = 0, hop: int = 160) -> int:
    """The least forward FLOPs scoring one clip needs: the encoder on the clip's own frames, the language model
    on its own tokens (the ``prefix_len`` shared prompt tokens are computed once for all clips, so not counted
    here), two head rows. ``n_text_tokens``: the prompt's text tokens (audio tokens excluded)."""
    frames = math.ceil(n_samples / hop)
    frames += frames % 2
    n_audio = M.n_audio_tokens(n_samples, hop)
    n_query = n_text_tokens - prefix_len + n_audio
    return int(encoder_flops(config.audio_config, frames, 1, projector_out=config.text_config.hidden_size)
               + lm_flops(config.text_config, n_query, n_query + prefix_len, 1, head_rows=2))


def clip_train_bound_flops(config, n_samples: int, n_text_tokens: int, lora_params: int = 0, hop: int = 160) -> int:
    """The least FLOPs one clip costs in one LoRA training pass: the frozen encoder's forward on the clip's own
    frames; the language model's forward and its backward for input gradients (as many FLOPs as the forward's
    matrix products; frozen weights need no weight gradients) over all the clip's tokens, with the
    full-vocabulary head at the answer position; LoRA's forward, input and weight gradients (3 x 2 x
    ``lora_params`` per token)."""
    frames = math.ceil(n_samples / hop)
    frames += frames % 2
    n_tokens = n_text_tokens + M.n_audio_tokens(n_samples, hop)
    t = config.text_config
    enc = encoder_flops(config.audio_config, frames, 1, projector_out=t.hidden_size)
    fwd = lm_flops(t, n_tokens, n_tokens, 1, head_rows=t.vocab_size, head_positions=1)
    return int(enc + 2 * fwd + 6 * lora_params * n_tokens)


def weight_bytes(model) -> int:
    """Bytes of the model's weights as stored on the device (NF4: packed 4-bit data plus its statistics)."""
    total = 0
    for p in model.parameters():
        total += p.numel() * p.element_size()
        state = getattr(p, "quant_state", None)
        if state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
            if getattr(state, "state2", None) is not None:
                total += state.state2.absmax.numel() * state.state2.absmax.element_size()
    return int(total)


def describe(config) -> str:
    a, t = config.audio_config, config.text_config
    return (f"audio encoder d_model {a.d_model}, {a.encoder_layers} layers, {a.encoder_attention_heads} heads, "
            f"ffn {a.encoder_ffn_dim}; text hidden {t.hidden_size}, intermediate {t.intermediate_size}, "
            f"{t.num_hidden_layers} layers, {t.num_attention_heads}/{t.num_key_value_heads} heads, "
            f"vocab {t.vocab_size}")
