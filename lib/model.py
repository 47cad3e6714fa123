"""The model path: one loader for the real Qwen2-Audio and the tiny one, the prompt, scoring, generate.

Everything here runs unchanged on ``Qwen/Qwen2-Audio-7B-Instruct`` (hub id or local folder, bf16 or 4-bit
NF4) and on the tiny Qwen2-Audio that :func:`build_tiny_model` makes and saves under
``checkpoints/tiny-qwen2-audio`` (same classes, same ``from_pretrained`` path, random weights).

Two speed-ups are on by default and each has a test proving it changes nothing beyond float noise:

* **Short encoder** (``short_encoder=True``). The processor pads every clip to 30 s (3000 mel frames) and
  the stock audio encoder refuses anything else, so a 200 ms clip pays for 30 s of encoder. Here the
  feature extractor computes only the clip's own frames plus a few frames of the zero padding after it
  (enough for the encoder's convolutions, which look one frame ahead, and for the extractor's per-clip
  maximum), and :class:`ShortAudioEncoder` runs the encoder on those frames with the positional embeddings
  sliced to match. The stock padded path masks the padding in attention, so the kept positions see exactly
  the same inputs. ``short_encoder=False`` keeps the plain Hugging Face path (30 s of padding).
* **Two answer rows**. Scoring needs only ``logit_A`` and ``logit_B`` at the answer position, so the last
  hidden state is multiplied by the two rows of ``lm_head`` instead of the whole vocabulary at every
  position.

Inputs are built by the processor (``audio=`` keyword, chat template), and the audio features are merged
into the text embeddings the way ``Qwen2AudioModel.forward`` does it; building ``inputs_embeds`` here also
sidesteps its "legacy" merge, which it picks whenever no two audio tokens are adjacent (clips under 60 ms).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .config import PROJECT_ROOT

TINY = "tiny"
REAL_MODEL_ID = "Qwen/Qwen2-Audio-7B-Instruct"
SAMPLE_RATE = 16000
ANSWERS = ("A", "B")  # A = SPEECH, B = NONSPEECH
DEFAULT_PROMPT = "Does this audio clip contain human speech?\nA) SPEECH\nB) NONSPEECH\nAnswer with A or B."
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
BUILD_INFO = "speechbook_build.json"
# Modules kept out of 4-bit quantization. transformers matches these from the START of the module name
# (re.match), so a bare "audio_tower" would match nothing and silently quantize the encoder.
NF4_SKIP_MODULES = ["lm_head", r".*audio_tower", r".*multi_modal_projector"]

# The public architecture of Qwen2-Audio-7B(-Instruct): the GPU benchmark builds it with random weights.
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

# The tiny model: same classes, small sizes. 128 mel bins and 1500 source positions as in the 7B, so the
# same feature extractor settings and the same 30-s padded path work on it.
# Width 64 learned as well as 128 on the earlier, smaller cpu bank (960 clips from 480 sources: data-limited) and
# trains about 2.5x faster; on today's bank (6000 clips, every source) 128 has not been tried.
TINY_WIDTH = 64
TINY_AUDIO = {"d_model": TINY_WIDTH, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_dim": 2 * TINY_WIDTH}
TINY_TEXT = {"hidden_size": TINY_WIDTH, "intermediate_size": 2 * TINY_WIDTH, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 2048}
# Unit-gain random init (std = width ** -0.5) instead of the 7B's 0.02: at this width the latter shrinks every
# signal through each layer, and a random tiny model so initialised does not learn in the cpu profile's budget
# (measured: dev accuracy stays at 0.5).
TINY_INIT_STD = TINY_WIDTH ** -0.5
TINY_VERSION = 4  # bump when the tiny model's recipe changes: an older build is rebuilt on first use


class ModelNotFoundError(FileNotFoundError):
    """No weights for the requested model on this machine; the message says where to put them."""


class AdapterMismatchError(ValueError):
    """An adapter or checkpoint was made for another base model (or variant) than the one asked for."""


class DamagedFilesError(ValueError):
    """A saved model or adapter folder is damaged (half-written, truncated, edited); names it and what to do."""


# ---------------------------------------------------------------------------------------------- tiny model
def tiny_model_dir() -> Path:
    return PROJECT_ROOT / "checkpoints" / "tiny-qwen2-audio"


def build_tiny_model(out_dir: str | os.PathLike | None = None, seed: int = 0, init_std: float = TINY_INIT_STD,
                     audio: dict[str, Any] | None = None, text: dict[str, Any] | None = None) -> Path:
    """Build, seed and save the tiny Qwen2-Audio (model, processor, generation config) in ``out_dir``.

    The folder is written atomically: a crash leaves either no folder or the complete one.
    """
    import torch
    from transformers import GenerationConfig, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    from . import io, tokenizer as T

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
    devnull = torch.random.fork_rng(devices=[])
    with devnull:
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


def ensure_built(path: Path, version: int, build, what: str) -> Path:
    """A model folder lib builds itself (tiny, mini): built on first use or when its recipe's version changed,
    else checked against the weight hashes recorded at build time (a damaged folder is refused, not used)."""
    info = path / BUILD_INFO
    if not info.exists():
        if path.exists() and any(path.iterdir()):
            raise DamagedFilesError(f"{path} holds a {what} without its {BUILD_INFO} (half-written or copied by hand): "
                                    "delete the folder to rebuild it")
        build(path)
        return path
    try:
        built = json.loads(info.read_text())
    except (ValueError, OSError) as err:
        raise DamagedFilesError(f"{info} is damaged ({err}): delete {path} to rebuild the {what}") from None
    if built.get("version") != version:
        build(path)
        return path
    check_weights(path, built.get("weights_sha256") or {}, "delete the folder to rebuild it (it is rebuilt on first use)")
    return path


def check_weights(folder: Path, recorded: dict[str, str], remedy: str) -> None:
    """Refuse a model folder whose weight files differ from the hashes recorded when it was built (a
    half-written copy, a truncated file); cheap for the tiny and mini models lib builds."""
    from . import io

    for name, sha in recorded.items():
        file = folder / name
        if not file.is_file():
            raise DamagedFilesError(f"{folder} is damaged: {name} is missing; {remedy}")
        if io.sha256_file(file) != sha:
            raise DamagedFilesError(f"{folder} is damaged: {name} differs from the file recorded when it was built "
                                    f"(half-written or truncated?); {remedy}")


def model_label(model_name_or_path: str) -> str:
    """What a base model is, in words: every table, figure, metrics file and predictions file names it, so a
    number of the tiny or mini model is never read as one of Qwen2-Audio-7B."""
    from . import mini_model

    if model_name_or_path == TINY:
        return "SMOKE (tiny model: random-weight Qwen2-Audio, width 64), not Qwen2-Audio-7B"
    if model_name_or_path in mini_model.MINI_MODELS:
        return mini_model.label(model_name_or_path)
    path = Path(str(model_name_or_path)).expanduser()
    from .architecture import is_random_weights

    if is_random_weights(path):  # lib.architecture.save_random_model: measures code and cost, never accuracy
        return "RANDOM WEIGHTS (Qwen2-Audio-7B architecture, untrained), not a real result"
    if (path / BUILD_INFO).exists():  # a model lib built (e.g. the random-weight 7B architecture of the GPU runs)
        return str(json.loads((path / BUILD_INFO).read_text()).get("what", path.name))
    return f"{path.name if path.exists() else model_name_or_path}"


# --------------------------------------------------------------------------------------------------- loading
def resolve_model_path(model_name_or_path: str) -> str:
    """``tiny`` / ``mini`` / ``mini-base`` -> the locally built model; a folder -> itself; else a hub id (HF cache)."""
    from . import mini_model

    if model_name_or_path == TINY:
        return str(ensure_tiny_model())
    if model_name_or_path in mini_model.MINI_MODELS:
        return str(mini_model.ensure_mini_model(model_name_or_path))
    path = Path(model_name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(
                f"{path} exists but holds no config.json: it should be a folder with the model's files "
                f"(config.json, *.safetensors, tokenizer and preprocessor files), as saved by save_pretrained "
                f"or downloaded with `huggingface-cli download {REAL_MODEL_ID} --local-dir {path}`")
        return str(path.resolve())
    return model_name_or_path


def _not_found(name: str, err: Exception) -> ModelNotFoundError:
    from huggingface_hub.constants import HF_HUB_CACHE

    return ModelNotFoundError(
        f"no weights for {name!r} on this machine (nothing is downloaded at run time). Either put the model "
        f"in the Hugging Face cache ({HF_HUB_CACHE}, e.g. `huggingface-cli download {name}` on a machine "
        f"with network, then copy the cache folder here or set HF_HOME), or download it to a folder and pass "
        f"that folder as model_name_or_path (e.g. `huggingface-cli download {REAL_MODEL_ID} --local-dir "
        f"checkpoints/Qwen2-Audio-7B-Instruct`, then model_name_or_path=checkpoints/Qwen2-Audio-7B-Instruct). "
        f"For the cpu profile use model_name_or_path=tiny. ({type(err).__name__}: {err})")


def _damaged_model(path: str, err: Exception) -> DamagedFilesError:
    built = (Path(path) / BUILD_INFO).exists()
    return DamagedFilesError(
        f"cannot load the model in {path} ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}): the folder is "
        f"damaged or half-written; " + ("delete it to rebuild it (lib builds it again on first use)" if built else
                                        "delete it and download or save the model again"))


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _dtype(torch_dtype: Any):
    import torch

    if isinstance(torch_dtype, torch.dtype):
        return torch_dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if torch_dtype not in names:
        raise ValueError(f"torch_dtype {torch_dtype!r} unknown; use one of {', '.join(names)}")
    return names[torch_dtype]


def nf4_config(compute_dtype: Any = "bfloat16"):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=_dtype(compute_dtype), llm_int8_skip_modules=NF4_SKIP_MODULES)


def load_model(model_name_or_path: str = TINY, quantization: str = "none", torch_dtype: Any = "float32",
               device: str = "auto", short_encoder: bool = True):
    """Load ``(model, processor)`` from a hub id (HF cache only), a local folder, or ``tiny``.

    ``quantization="nf4"``: 4-bit NF4 with double quantization (bitsandbytes); the audio tower, projector
    and ``lm_head`` stay in ``torch_dtype``. ``short_encoder`` installs :class:`ShortAudioEncoder`.
    """
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    if quantization not in ("none", "nf4"):
        raise ValueError(f"quantization {quantization!r} unknown; use none or nf4")
    path = resolve_model_path(model_name_or_path)
    device = pick_device(device)
    dtype = _dtype(torch_dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if quantization == "nf4":
        kwargs["quantization_config"] = nf4_config(dtype if dtype != _dtype("float32") or device == "cpu" else "bfloat16")
        kwargs["device_map"] = {"": device}
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        model = Qwen2AudioForConditionalGeneration.from_pretrained(path, **kwargs)
    except OSError as err:  # not a folder and not in the cache (or offline)
        if Path(path).is_dir():  # a local folder that is there but cannot be read as a model
            raise _damaged_model(path, err) from None
        raise _not_found(model_name_or_path, err) from err
    except Exception as err:  # noqa: BLE001 - truncated weights (SafetensorError), a broken config.json ...
        if Path(path).is_dir():
            raise _damaged_model(path, err) from None
        raise
    if quantization != "nf4":
        model.to(device)
    model.eval()
    processor.tokenizer.padding_side = "left"
    answer_token_ids(processor.tokenizer)  # fail early if A/B are not single tokens
    if short_encoder:
        enable_short_encoder(model)
    from . import mini_model

    if model_name_or_path in mini_model.MINI_MODELS:  # its pretrained encoder is never trained: cache its outputs
        model.speechbook_encoder_cache = EncoderCache(encoder_cache_folder(path))
    if device.startswith("cuda"):
        record_gpu_peaks()
    model.speechbook_source = {"model_name_or_path": model_name_or_path, "path": path, "quantization": quantization,
                               "torch_dtype": str(dtype).replace("torch.", "")}
    return model, processor


GPU_PEAKS_ENV = "SPEECHBOOK_GPU_PEAKS_FILE"
_GPU_PEAKS_RECORDING = False


def record_gpu_peaks(interval_s: float = 1.0) -> None:
    """Where the book runner asks for it (``$SPEECHBOOK_GPU_PEAKS_FILE``, set per chapter by
    :func:`lib.book.run_book`), keep this process's peak GPU memory (allocated and reserved by PyTorch) in that
    JSON file: rewritten every ``interval_s`` by a daemon thread and once more at exit, so the runner can record
    each chapter's peak in ``status.json`` even though chapters run in their own kernels."""
    global _GPU_PEAKS_RECORDING
    path = os.environ.get(GPU_PEAKS_ENV)
    if not path or _GPU_PEAKS_RECORDING:
        return
    import atexit
    import threading
    import time

    import torch

    def write() -> None:
        try:
            data = {"max_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                    "max_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}
            from . import io

            io.write_json(path, data)
        except Exception:  # noqa: BLE001 - a record of memory must never break a chapter
            pass

    def loop() -> None:
        while True:
            write()
            time.sleep(interval_s)

    _GPU_PEAKS_RECORDING = True
    threading.Thread(target=loop, daemon=True, name="speechbook-gpu-peaks").start()
    atexit.register(write)


def base_fingerprint(model_name_or_path: str) -> dict[str, Any]:
    """What identifies a base model for adapters: its name, its config's hash, the tiny build's weights."""
    import hashlib

    path = Path(resolve_model_path(model_name_or_path))
    info: dict[str, Any] = {"model_name_or_path": model_name_or_path}
    if not path.exists():
        try:
            from huggingface_hub import snapshot_download
            path = Path(snapshot_download(model_name_or_path, local_files_only=True))
        except Exception:  # noqa: BLE001 - the loader gives the clear error
            return info
    config = json.loads((path / "config.json").read_text())
    for k in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "quantization_config"):
        config.pop(k, None)
    info["config_sha256"] = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    if (path / BUILD_INFO).exists():
        info["weights_sha256"] = json.loads((path / BUILD_INFO).read_text())["weights_sha256"]
    return info


@contextlib.contextmanager
def attention_backends(model):
    """On CUDA: scaled-dot-product attention without its cuDNN backend within the block (flash or memory-efficient
    kernels instead, same result to rounding). cuDNN builds an execution plan for every new (batch, length) shape,
    forward and backward; training on variable-length micro-batches meets a new shape at nearly every step, and
    the plans cost the seed recipe about 7 s of its first run on an H100 (bench/NOTES.md). On the same GPU the
    seed's plain Hugging Face loop with cuDNN attention turned its loss NaN once it neared 0, and trained cleanly
    without it (BENCHMARKS.md, v4g). On the CPU: nothing."""
    if unwrap(model).lm_head.weight.device.type != "cuda":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        yield


def unwrap(model):
    """The ``Qwen2AudioForConditionalGeneration`` inside a peft model (LoRA layers stay injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# ------------------------------------------------------------------------------------------- short encoder
def _short_encoder_class():
    import torch
    from torch import nn
    from transformers.modeling_outputs import BaseModelOutput
    from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

    class ShortAudioEncoder(Qwen2AudioEncoder):
        """Qwen2AudioEncoder that accepts any even number of mel frames up to 30 s.

        Same computation as the stock forward, with the positional embeddings sliced to the sequence.
        Given the 3000-frame padded input it is the stock forward.
        """

        def forward(self, input_features, attention_mask=None, **kwargs):
            n_frames = input_features.shape[-1]
            max_frames = self.config.max_source_positions * self.conv1.stride[0] * self.conv2.stride[0]
            if n_frames > max_frames or n_frames % 2:
                raise ValueError(f"ShortAudioEncoder needs an even number of mel frames <= {max_frames}, got {n_frames}")
            x = input_features.to(dtype=self.conv1.weight.dtype, device=self.conv1.weight.device)
            x = nn.functional.gelu(self.conv1(x))
            x = nn.functional.gelu(self.conv2(x))
            x = x.permute(0, 2, 1)
            x = x + self.embed_positions.weight[: x.shape[1]]
            x = nn.functional.dropout(x, p=self.dropout, training=self.training)
            for layer in self.layers:
                if self.training and torch.rand([]) < self.layerdrop:
                    continue
                x = layer(x, attention_mask, **kwargs)
            x = self.avg_pooler(x.permute(0, 2, 1)).permute(0, 2, 1)
            return BaseModelOutput(last_hidden_state=self.layer_norm(x))

    return ShortAudioEncoder


_SHORT_ENCODER = None


def enable_short_encoder(model) -> None:
    """Make the model's audio tower accept short inputs (idempotent; the weights are untouched)."""
    global _SHORT_ENCODER
    if _SHORT_ENCODER is None:
        _SHORT_ENCODER = _short_encoder_class()
    tower = unwrap(model).model.audio_tower
    for module in [tower, *getattr(tower, "modules_to_save", {}).values(), getattr(tower, "original_module", None)]:
        if module is not None and type(module).__name__ == "Qwen2AudioEncoder":
            module.__class__ = _SHORT_ENCODER


def uses_short_encoder(model) -> bool:
    tower = unwrap(model).model.audio_tower
    tower = getattr(tower, "original_module", tower)
    return type(tower).__name__ == "ShortAudioEncoder"


def short_feature_samples(n_samples_max: int, feature_extractor) -> int:
    """How many samples the feature extractor should pad a batch to on the short path.

    The clip's own ``L = ceil(n / hop)`` frames, plus 4 frames of padding (the encoder's convolutions look
    one or two frames past the clip, and every frame the clip's samples reach must be in the extractor's
    per-clip maximum), rounded up to an even number of frames; never more than the 30-s window.
    """
    hop = feature_extractor.hop_length
    frames = math.ceil(n_samples_max / hop) + 4
    frames += frames % 2
    return min(frames, feature_extractor.nb_max_frames) * hop


# ----------------------------------------------------------------------------------------------- prompting
def answer_token_ids(tokenizer) -> tuple[int, int]:
    """Token ids of ``A`` and ``B``; raises if either is not a single token."""
    ids = []
    for answer in ANSWERS:
        toks = tokenizer(answer, add_special_tokens=False).input_ids
        if len(toks) != 1:
            raise ValueError(f"answer {answer!r} is {len(toks)} tokens ({toks}) in this tokenizer; it must be one")
        ids.append(toks[0])
    return ids[0], ids[1]


def answer_is_one_token(processor, prompt: str) -> bool:
    """True when, after this prompt's chat-templated turn, each answer (``A``, ``B``) is ONE token whose id is
    :func:`answer_token_ids`'s: what scoring reads at the answer position is then what training teaches."""
    tok = processor.tokenizer
    head = tok(prompt_text(processor, prompt), add_special_tokens=False).input_ids
    for answer, answer_id in zip(ANSWERS, answer_token_ids(tok)):
        full = tok(prompt_text(processor, prompt) + answer_suffix(processor, prompt, answer), add_special_tokens=False).input_ids
        if full[: len(head)] != head or len(full) <= len(head) or full[len(head)] != answer_id:
            return False
    return True


def _cached(processor, key: tuple, make):
    cache = processor.__dict__.setdefault("_speechbook_cache", {})
    if key not in cache:
        cache[key] = make()
    return cache[key]


def prompt_text(processor, prompt: str = DEFAULT_PROMPT) -> str:
    """The chat-templated user turn (one audio, then the question) ending where the answer starts."""
    return _cached(processor, ("prompt", prompt), lambda: _render_prompt(processor, prompt))


def _render_prompt(processor, prompt: str) -> str:
    messages = [{"role": "user", "content": [{"type": "audio", "audio_url": "clip.wav"},
                                             {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def answer_suffix(processor, prompt: str, answer: str) -> str:
    """What follows the prompt text when the assistant answers ``answer`` (the answer and end of turn)."""
    return _cached(processor, ("suffix", prompt, answer), lambda: _render_suffix(processor, prompt, answer))


def _render_suffix(processor, prompt: str, answer: str) -> str:
    messages = [{"role": "user", "content": [{"type": "audio", "audio_url": "clip.wav"},
                                             {"type": "text", "text": prompt}]},
                {"role": "assistant", "content": answer}]
    full = processor.apply_chat_template(messages, tokenize=False)
    head = prompt_text(processor, prompt)
    if not full.startswith(head):
        raise ValueError("the chat template's answer turn does not extend its generation prompt")
    return full[len(head):]


def make_inputs(processor, audios: Sequence[np.ndarray], prompt: str = DEFAULT_PROMPT, *, short_encoder: bool = True,
                answers: Sequence[str] | None = None):
    """Processor inputs (left-padded) for a batch of clips; with ``answers`` the answer turn is appended."""
    if not len(audios):
        raise ValueError("make_inputs needs at least one clip")
    head = prompt_text(processor, prompt)
    texts = [head] * len(audios) if answers is None else [head + answer_suffix(processor, prompt, a) for a in answers]
    fe = processor.feature_extractor
    audio_kwargs: dict[str, Any] = {"sampling_rate": fe.sampling_rate}
    processor.tokenizer.padding_side = "left"
    clips = [pad_to_min_audio(np.asarray(a, dtype=np.float32)) for a in audios]
    if short_encoder:
        audio_kwargs["max_length"] = short_feature_samples(max(len(c) for c in clips), fe)
    return processor(text=texts, audio=clips, padding=True, return_tensors="pt", audio_kwargs=audio_kwargs)


def pad_to_min_audio(clip: np.ndarray) -> np.ndarray:
    """Zero-pad a clip too short for one audio token (under 30 ms: the encoder's stride and pooling
    turn 20 ms into zero tokens, so the model would hear nothing) to the shortest length that gives one."""
    if len(clip) >= MIN_AUDIO_SAMPLES:
        return clip
    return np.concatenate([clip, np.zeros(MIN_AUDIO_SAMPLES - len(clip), dtype=clip.dtype)])


MIN_AUDIO_SAMPLES = 480  # 30 ms at 16 kHz: 3 mel frames -> 2 after the stride-2 conv -> 1 audio token


def n_audio_tokens(n_samples: int, hop: int = 160) -> int:
    """Audio tokens Qwen2-Audio gives a clip: mel frames -> conv stride 2 -> avg pool 2."""
    frames = math.ceil(n_samples / hop)
    return (((frames - 1) // 2 + 1) - 2) // 2 + 1


# ---------------------------------------------------------------------------------------------- forward
def _audio_features(base, input_features, feature_attention_mask):
    """Projected audio features of the real (unpadded) audio positions, flattened like the HF merge."""
    import torch

    inner = base.model
    tower = inner.audio_tower
    device = next(inner.multi_modal_projector.parameters()).device
    input_features = input_features.to(device)
    feature_attention_mask = feature_attention_mask.to(device)
    feat_lengths, out_lengths = tower._get_feat_extract_output_lengths(feature_attention_mask.sum(-1))
    cache: EncoderCache | None = getattr(base, "speechbook_encoder_cache", None)
    if torch.is_grad_enabled() and any(p.requires_grad for p in tower.parameters()):
        hidden = _encode(tower, input_features, feat_lengths)
    elif cache is not None and type(tower).__name__ in ("Qwen2AudioEncoder", "ShortAudioEncoder"):
        hidden = cache.encode(tower, input_features, feature_attention_mask.sum(-1), feat_lengths, out_lengths)
    else:  # a frozen encoder keeps no activations for backward
        with torch.no_grad():
            hidden = _encode(tower, input_features, feat_lengths)
    feats = inner.multi_modal_projector(hidden.to(inner.multi_modal_projector.linear.weight.dtype))
    keep = torch.arange(feats.shape[1], device=device)[None, :] < out_lengths[:, None]
    return feats[keep]


def _encode(tower, input_features, feat_lengths):
    """The audio tower on a padded batch, attention masked to each clip's own positions."""
    import torch
    from transformers.masking_utils import create_bidirectional_mask

    batch, _, n_frames = input_features.shape
    n_positions = (n_frames - 2) // 2 + 1
    device = input_features.device
    mask_2d = (torch.arange(n_positions, device=device)[None, :] < feat_lengths[:, None]).long()
    dummy = torch.zeros((batch, n_positions, 1), dtype=tower.conv1.weight.dtype, device=device)
    attn = create_bidirectional_mask(config=tower.config, inputs_embeds=dummy, attention_mask=mask_2d)
    return tower(input_features, attention_mask=attn).last_hidden_state


ENCODE_GROUP = 16  # rows per encoder call of EncoderCache: fixed, so that every row's result is batch-independent
CACHE_FORMAT = 2   # the cache folder's version: 1 encoded clips alone (other bits), 2 in ENCODE_GROUP groups


class EncoderCache:
    """Outputs of a FROZEN audio encoder per clip, in memory and (with ``folder``) on disk.

    The mini model's Whisper encoder is pretrained and never trained in the book, yet it costs over 90% of a
    scoring pass on the CPU; every chapter, seed and prompt would recompute the same outputs. Each clip's output is
    keyed by the sha1 of its own mel features (its valid frames: the same clip gives the same key in any batch),
    so a cached output is exactly what that clip's features give, whatever bank, split or normalization it came
    from. Clips are encoded in fixed-size groups of equal length, so an output does not depend on the batch it first
    came in. Only used when
    the tower has no trainable parameters and is the model's own (not a trained copy), and the folder is named by
    the encoder's source files, so outputs of other weights are never mixed in.
    """

    def __init__(self, folder: str | os.PathLike | None = None, max_in_memory: int = 100_000):
        self.folder = Path(folder) if folder else None
        self.max_in_memory = max_in_memory
        self.memory: dict[str, np.ndarray] = {}
        self.hits = self.misses = 0

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        if key in self.memory:
            return self.memory[key]
        if self.folder is not None:
            path = self._path(key)
            try:
                arr = np.load(path)
            except (OSError, ValueError):  # absent, or a damaged file: recompute (and rewrite) it
                return None
            self._remember(key, arr)
            return arr
        return None

    def put(self, key: str, arr: np.ndarray) -> None:
        self._remember(key, arr)
        if self.folder is not None:
            from . import io

            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            with io.atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.save(f, arr)

    def _remember(self, key: str, arr: np.ndarray) -> None:
        if len(self.memory) >= self.max_in_memory:
            self.memory.clear()
        self.memory[key] = arr

    def encode(self, tower, input_features, frames, feat_lengths, out_lengths):
        """(batch, positions, d) encoder outputs; cached rows are read, the others computed together and stored."""
        import hashlib

        import torch

        feats_np = input_features.detach().to("cpu", torch.float32).numpy()
        frames_np = frames.cpu().numpy()
        keys = [hashlib.sha1(np.ascontiguousarray(feats_np[i, :, : int(frames_np[i])]).tobytes()).hexdigest()
                for i in range(len(feats_np))]
        rows = [self.get(k) for k in keys]
        missing = [i for i, r in enumerate(rows) if r is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        # Equal-length clips are encoded together in groups of exactly ENCODE_GROUP rows (zero rows fill the last
        # group): with the shapes fixed, CPU kernels give each row the same bits whatever its companions or position
        # (tests/test_mini_model.py checks it), so a stored output is a function of the clip's features only, whatever
        # batch, process or order first met it, and a resumed training reads exactly what an uninterrupted one computed.
        # One clip at a time gives that too, at twice the cost per clip (bench/runs/2026-12-02_encoder_group.txt).
        groups: dict[tuple[int, int], list[int]] = {}
        for i in missing:
            n = min(int(frames_np[i]) + 4 + (int(frames_np[i]) % 2), feats_np.shape[-1])
            groups.setdefault((n, int(feat_lengths[i])), []).append(i)
        for (n, length), members in groups.items():
            for start in range(0, len(members), ENCODE_GROUP):
                chunk = members[start: start + ENCODE_GROUP]
                feats = input_features.new_zeros((ENCODE_GROUP, input_features.shape[1], n))
                feats[: len(chunk)] = input_features[chunk, :, :n]
                lengths = feat_lengths.new_full((ENCODE_GROUP,), length)
                with torch.no_grad():
                    out = _encode(tower, feats, lengths).float().cpu().numpy()
                for j, i in enumerate(chunk):
                    rows[i] = out[j, : int(out_lengths[i])].copy()
                    self.put(keys[i], rows[i])
        n_positions = (input_features.shape[-1] - 2) // 2 + 1
        n_out = (n_positions - 2) // 2 + 1
        hidden = np.zeros((len(rows), n_out, rows[0].shape[-1]), dtype=np.float32)
        for i, r in enumerate(rows):
            hidden[i, : len(r)] = r
        return torch.from_numpy(hidden).to(input_features.device)


def encoder_cache_folder(path: str | os.PathLike) -> Path | None:
    """Where a locally built model with a pretrained encoder keeps its encoder cache: ``checkpoints/encoder_cache/``,
    in a folder named by the encoder's source files (their sha256), so a rebuilt language model keeps the cache
    and another encoder never reads it."""
    import hashlib

    info = Path(path) / BUILD_INFO
    encoder = json.loads(info.read_text()).get("encoder") if info.exists() else None
    if not encoder:
        return None
    tag = hashlib.sha256(json.dumps(encoder, sort_keys=True).encode()).hexdigest()[:16]
    return PROJECT_ROOT / "checkpoints" / "encoder_cache" / f"{tag}-v{CACHE_FORMAT}"


def hidden_states(model, inputs, prefix: "SharedPrefix | None" = None) -> "Any":
    """Last hidden states (batch, seq, hidden) of the language model for processor inputs.

    With ``prefix`` (a :class:`SharedPrefix` of these inputs' prompt) the prompt tokens before the audio are not
    recomputed: their keys and values come from the prefix, and the states returned are those of the tokens
    after it (batch, seq - prefix, hidden), the last position still being the answer position.
    """
    import torch

    base = unwrap(model)
    inner = base.model
    embed = inner.get_input_embeddings()
    past = None
    if prefix is not None:
        inputs, past = prefix.split(inputs)
    input_ids = inputs["input_ids"].to(embed.weight.device)
    attention_mask = inputs["attention_mask"].to(embed.weight.device)
    embeds = embed(input_ids)
    audio_mask = input_ids == base.config.audio_token_id
    n_tokens = int(audio_mask.sum())
    if "input_features" in inputs and n_tokens:
        feats = _audio_features(base, inputs["input_features"], inputs["feature_attention_mask"])
        if feats.shape[0] != n_tokens:
            raise ValueError(f"audio features ({feats.shape[0]}) and audio tokens ({n_tokens}) differ")
        embeds = embeds.masked_scatter(audio_mask.unsqueeze(-1), feats.to(embeds.device, embeds.dtype))
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    if past is not None:  # the mask covers prefix + rows; positions and states are the rows' own
        position_ids = position_ids[:, -input_ids.shape[1]:]
    out = inner.language_model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                               past_key_values=past, use_cache=False)
    return out.last_hidden_state


# ---------------------------------------------------------------------------------------------- shared prefix
_PREFIX_LAYER = None


def _prefix_layer_class():
    from transformers.cache_utils import DynamicLayer

    class PrefixLayer(DynamicLayer):
        """A cache layer holding one prefix's keys/values (batch 1); every row of a batch attends to them.

        ``update`` returns prefix + the new states without storing anything, so a forward keeps no cache."""

        def __init__(self, keys, values):
            super().__init__()
            self.keys, self.values = keys, values
            self.dtype, self.device = keys.dtype, keys.device
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            return with_prefix(self.keys, key_states), with_prefix(self.values, value_states)

    return PrefixLayer


PREFIX_JOIN = "copy"  # "copy" | "cat" (torch.cat): the benchmark compares them


def with_prefix(prefix, states):
    """``prefix`` (1, heads, p, dim) in front of every row of ``states`` (batch, heads, n, dim).

    Two copies into one new buffer rather than ``torch.cat`` of the broadcast prefix: on CUDA that cat runs an
    unvectorised copy at about a fifth of the copy bandwidth (58 ms of a 750-ms batch of 512 clips on the H100;
    the copies take about 30 ms: bench/NOTES.md). Same values either way."""
    import torch

    batch = states.shape[0]
    if PREFIX_JOIN == "cat":
        return torch.cat([prefix.expand(batch, -1, -1, -1), states], dim=-2)
    n_prefix = prefix.shape[-2]
    # token-major, like the projections' output whose (batch, heads, n, dim) views the states are: measured 1-2%
    # faster on the 7B than a head-major buffer
    out = states.new_empty((batch, n_prefix + states.shape[2], states.shape[1], states.shape[3])).transpose(1, 2)
    out[:, :, :n_prefix] = prefix
    out[:, :, n_prefix:] = states
    return out


def prompt_prefix(inputs, audio_token_id: int):
    """The longest run of tokens that every row starts with (from its first real token: left padding), ending
    before any audio token and before each row's last token; ``None`` if there is none."""
    import torch

    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    n_pad = (mask.long().cumsum(-1) == 0).sum(-1)
    longest = int(mask.long().sum(-1).min()) - 1
    if longest < 1:
        return None
    window = ids.gather(1, n_pad[:, None] + torch.arange(longest, device=ids.device)[None, :])
    same = (window == window[:1]).all(0) & (window != audio_token_id).all(0)
    n = longest if bool(same.all()) else int((~same).int().argmax())
    return window[0, :n].clone() if n >= 1 else None


class SharedPrefix:
    """The prompt tokens before the audio (system turn, ``Audio 1: <|audio_bos|>``), identical for every clip:
    run once through the language model (batch 1) and reused by every batch as cached keys/values.

    Mathematically the same as recomputing them in every row: with left padding each row's prompt starts at
    position 0 and attends only to itself, so its keys and values do not depend on the row. Built for fixed
    weights (scoring in eval mode): make a new one after the weights change.
    """

    def __init__(self, model, prefix_ids):
        import torch

        base = unwrap(model)
        lm = base.model.language_model
        device = base.model.get_input_embeddings().weight.device
        self.ids = prefix_ids.detach().to("cpu")
        ids = self.ids.to(device)[None]
        n = ids.shape[1]
        out = lm(inputs_embeds=base.model.get_input_embeddings()(ids), attention_mask=torch.ones_like(ids),
                 position_ids=torch.arange(n, device=device)[None], use_cache=True)
        self.kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        self.audio_token_id = base.config.audio_token_id

    @classmethod
    def for_prompt(cls, model, processor, prompt: str = DEFAULT_PROMPT) -> "SharedPrefix | None":
        """The chat-templated prompt's tokens before its audio placeholder (``None`` if the audio comes first).

        The placeholder is a special token, so the text before it tokenizes the same alone as in the full prompt.
        """
        import torch

        audio_token = getattr(processor, "audio_token", "<|AUDIO|>")
        head = prompt_text(processor, prompt).split(audio_token)[0]
        ids = processor.tokenizer(head, add_special_tokens=False).input_ids
        return cls(model, torch.as_tensor(ids, dtype=torch.long)) if ids else None

    @classmethod
    def from_inputs(cls, model, inputs) -> "SharedPrefix | None":
        """The prefix all rows of a batch share before their audio (:func:`prompt_prefix`), or ``None``."""
        found = prompt_prefix(inputs, unwrap(model).config.audio_token_id)
        return None if found is None else cls(model, found)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def cache(self):
        """A cache object for one forward pass (it stores nothing)."""
        from transformers.cache_utils import Cache

        global _PREFIX_LAYER
        if _PREFIX_LAYER is None:
            _PREFIX_LAYER = _prefix_layer_class()
        return Cache(layers=[_PREFIX_LAYER(k, v) for k, v in self.kv])

    def split(self, inputs):
        """``(rest_inputs, cache)``: the rows' tokens after the prefix (left-padded, the mask with the prefix's
        ones in front) and the cache to pass as ``past_key_values``. Raises if the inputs have another prefix."""
        import torch

        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        n = len(self)
        n_pad = (mask.long().cumsum(-1) == 0).sum(-1)
        if int(mask.long().sum(-1).min()) <= n:
            raise ValueError("these inputs do not start with this shared prefix (a row is no longer than it)")
        rows = ids.gather(1, n_pad[:, None] + torch.arange(n, device=ids.device)[None, :])
        if not bool((rows.cpu() == self.ids[None, :]).all()) or bool((rows == self.audio_token_id).any()):
            raise ValueError("these inputs do not start with this shared prefix (another prompt or processor)")
        rest_start = n_pad + n
        start = int(rest_start.min())
        mask = mask[:, start:].clone()
        cols = torch.arange(mask.shape[1], device=mask.device)[None, :]
        mask[cols < (rest_start - start)[:, None]] = 0  # rows that start later: their own prefix copy, masked
        ones = torch.ones((mask.shape[0], len(self)), dtype=mask.dtype, device=mask.device)
        rest = dict(inputs)
        rest["input_ids"] = inputs["input_ids"][:, start:]
        rest["attention_mask"] = torch.cat([ones, mask], dim=1)
        return rest, self.cache()


def head_rows(model, token_ids: Sequence[int]):
    """The rows of ``lm_head`` for ``token_ids`` (the trained copy if ``lm_head`` is trained)."""
    head = unwrap(model).lm_head
    weight = head.weight
    if weight.dim() != 2 or weight.shape[1] != unwrap(model).config.text_config.hidden_size:
        raise ValueError("lm_head is quantized or reshaped; keep it out of quantization (see NF4_SKIP_MODULES)")
    import torch

    return weight[torch.as_tensor(list(token_ids), device=weight.device)]


def answer_logits(model, inputs, answer_ids: tuple[int, int], prefix: SharedPrefix | None = None):
    """(batch, 2) float32 logits for A and B at the answer position (the last one: left padding)."""
    h = hidden_states(model, inputs, prefix=prefix)[:, -1]
    rows = head_rows(model, answer_ids)
    return h.float() @ rows.float().T


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length (sorted by length, stable), for scoring."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass
class Scores:
    p_speech: np.ndarray  # softmax([logit_A, logit_B])[0]
    logits: np.ndarray  # (n, 2) raw logits of A and B

    @property
    def pred(self) -> np.ndarray:
        return np.where(self.logits[:, 0] >= self.logits[:, 1], "speech", "nonspeech")


SMALL_MODEL_PARAMS = 50_000_000


@contextlib.contextmanager
def cpu_threads_for(model):
    """Run a small model on CPU with one intra-op thread (``SPEECHBOOK_CPU_THREADS`` overrides it).

    The tiny model's matrices are too small to share out: on the 2-core machine with other work running,
    two torch threads were 4x slower than one (0.66-0.74 vs 0.17-0.19 s per training step of 8 clips).
    GPU runs and large models keep torch's setting. Restored on exit.
    """
    import torch

    if model is None:  # nothing to size up: let the wrapped function report what is wrong with its input
        yield
        return
    base = unwrap(model)
    # the vocabulary-sized embedding and head are looked up / read two rows at a time: they do not count as work
    vocab_sized = {id(p) for p in (*base.get_input_embeddings().parameters(), *base.lm_head.parameters())}
    small = sum(p.numel() for p in base.parameters() if id(p) not in vocab_sized) < SMALL_MODEL_PARAMS
    on_cpu = next(base.parameters()).device.type == "cpu"
    if not (small and on_cpu):
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("SPEECHBOOK_CPU_THREADS", "1")))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def with_cpu_threads(fn):
    """Decorator: call ``fn(model, ...)`` under :func:`cpu_threads_for` of its first argument."""
    import functools

    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        with cpu_threads_for(model):
            return fn(model, *args, **kwargs)

    return wrapper


@with_cpu_threads
def score(model, processor, audios: Sequence[np.ndarray], prompt: str = DEFAULT_PROMPT, batch_size: int = 16,
          short_encoder: bool | None = None, progress: bool = False, desc: str = "scoring",
          shared_prefix: bool | None = None, prefetch: bool | None = None, fused: bool | None = None,
          plan_free_attention: bool | None = None, lengths: Sequence[int] | None = None) -> Scores:
    """Score clips: one forward pass per length bucket, logits of A/B at the answer position.

    On a GPU (the defaults ``None`` mean: on when the model is on CUDA) three more speed-ups, each proven by a
    test to change nothing beyond float noise: ``shared_prefix`` computes the prompt tokens before the audio once
    (:class:`SharedPrefix`) instead of in every row; ``prefetch`` builds the next batch's inputs (feature
    extraction, tokenization) in a worker thread while the GPU runs the current one, and results are copied back
    once at the end, so the GPU never waits for the CPU; ``fused`` runs the language model's elementwise work
    fused (:func:`fused_kernels`); ``plan_free_attention`` keeps attention off cuDNN (:func:`attention_backends`):
    cuDNN builds a plan for every new batch shape, which made the first pass over new clips 20-30% slower on the
    H100, and the memory-efficient kernel was as fast per batch (bench/NOTES.md). On the CPU all stay off by
    default, so CPU results are bit for bit those of the plain loop.

    ``audios`` may be lazy (e.g. :class:`ClipFiles`, which reads a file on access): with ``lengths`` (samples per
    clip, exact or approximate, e.g. from the bank's ``duration_ms``) the buckets are made from them and each clip
    is read once, in the worker that builds its batch, while the GPU works.
    """
    import collections
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from tqdm.auto import tqdm

    if short_encoder is None:
        short_encoder = uses_short_encoder(model)
    if short_encoder and not uses_short_encoder(model):
        enable_short_encoder(model)
    on_gpu = unwrap(model).lm_head.weight.device.type == "cuda"
    shared_prefix = on_gpu if shared_prefix is None else shared_prefix
    prefetch = on_gpu if prefetch is None else prefetch
    fused = on_gpu if fused is None else fused
    plan_free_attention = on_gpu if plan_free_attention is None else plan_free_attention
    ids = answer_token_ids(processor.tokenizer)
    logits = np.zeros((len(audios), 2), dtype=np.float32)
    was_training = model.training
    model.eval()
    if lengths is not None and len(lengths) != len(audios):
        raise ValueError(f"lengths has {len(lengths)} entries for {len(audios)} clips")
    batches = length_buckets(list(lengths) if lengths is not None else [len(a) for a in audios], batch_size)

    def make(idx):
        return make_inputs(processor, [audios[i] for i in idx], prompt, short_encoder=short_encoder)

    results = []
    prefix: SharedPrefix | None = None
    pool = ThreadPoolExecutor(1, thread_name_prefix="speechbook-inputs") if prefetch and len(batches) > 1 else None
    stack = contextlib.ExitStack()
    stack.enter_context(scoring_kernels(model, fused=fused, plan_free_attention=plan_free_attention))
    if shared_prefix and batches:
        # built before the prefetching worker starts: a fast tokenizer's padding settings are shared state, and a
        # tokenization here while the worker pads a batch gave the worker ragged, unpadded ids (seen in CI)
        with torch.inference_mode():
            prefix = SharedPrefix.for_prompt(model, processor, prompt)
        shared_prefix = prefix is not None
    try:
        pending: collections.deque = collections.deque()
        ahead = iter(batches)
        if pool is not None:
            for idx in list(zip(range(2), ahead)):
                pending.append(pool.submit(make, idx[1]))
        with torch.inference_mode():
            for idx in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
                if pool is not None:
                    inputs = pending.popleft().result()
                    nxt = next(ahead, None)
                    if nxt is not None:
                        pending.append(pool.submit(make, nxt))
                else:
                    inputs = make(idx)
                out = answer_logits(model, inputs, ids, prefix=prefix)
                if pool is None:
                    logits[idx] = out.cpu().numpy()
                else:
                    results.append((idx, out))
            for idx, out in results:
                logits[idx] = out.cpu().numpy()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        stack.close()
        model.train(was_training)
    return Scores(p_speech=softmax2(logits), logits=logits)


@with_cpu_threads
def encoder_outputs(model, processor, audios: Sequence[np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
    """The audio tower's outputs per clip, (audio tokens, d_model) each, before the projector: what the language
    model is given about the clip. Through the model's :class:`EncoderCache` when it has one."""
    import torch

    out: list[np.ndarray] = [np.zeros(0)] * len(audios)
    base = unwrap(model)
    tower = base.model.audio_tower
    cache = getattr(base, "speechbook_encoder_cache", None) or EncoderCache()
    for idx in length_buckets([len(a) for a in audios], batch_size):
        inputs = make_inputs(processor, [audios[i] for i in idx], short_encoder=uses_short_encoder(model))
        frames = inputs["feature_attention_mask"].sum(-1)
        feat_lengths, out_lengths = tower._get_feat_extract_output_lengths(frames)
        with torch.no_grad():
            hidden = cache.encode(tower, inputs["input_features"], frames, feat_lengths, out_lengths)
        for j, i in enumerate(idx):
            out[i] = hidden[j, : int(out_lengths[j])].numpy()
    return out


class ClipFiles(Sequence):
    """Clips read from audio files on access (``load``: path -> float32 16-kHz array; default: the book's
    :func:`lib.data.load_clip` with ``normalization``). Pass it to :func:`score` with ``lengths`` so each file is
    read once, in the worker that builds its batch."""

    def __init__(self, paths: Sequence[str | os.PathLike], normalization: str = "rms", load=None):
        self.paths = list(paths)
        self.normalization = normalization
        self._load = load

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if self._load is not None:
            return self._load(self.paths[i])
        from . import data

        return data.load_clip(self.paths[i], self.normalization)


# ------------------------------------------------------------------------------------------ fused kernels
_FUSED: dict[str, Any] = {}


def _compiled(name: str, fn):
    """``torch.compile(fn, dynamic=True)``, falling back to ``fn`` for good (with a warning) if compiling fails."""
    if name not in _FUSED:
        import torch

        compiled = torch.compile(fn, dynamic=True)

        def call(*args, **kwargs):
            if _FUSED.get(name + ":failed"):
                return fn(*args, **kwargs)
            try:
                return compiled(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - no compiler, no triton, ...: the eager function is the same
                import warnings

                warnings.warn(f"torch.compile of {name} failed ({type(err).__name__}: {err}); running it eagerly",
                              RuntimeWarning, stacklevel=2)
                _FUSED[name + ":failed"] = True
                return fn(*args, **kwargs)

        _FUSED[name] = call
    return _FUSED[name]


def _fused_classes():
    if "classes" not in _FUSED:
        import torch.nn.functional as F
        from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP, Qwen2RMSNorm

        def silu_mul(gate, up):
            return F.silu(gate) * up

        class FusedRMSNorm(Qwen2RMSNorm):
            """Qwen2's RMSNorm as one ``F.rms_norm`` kernel (fp32 statistics as before; the weight is applied
            before the single rounding to the input dtype instead of after a first one)."""

            def forward(self, hidden_states):
                return F.rms_norm(hidden_states, (hidden_states.shape[-1],), self.weight, self.variance_epsilon)

        class FusedMLP(Qwen2MLP):
            """Qwen2's MLP with ``silu(gate) * up`` as one compiled elementwise kernel (projections unchanged)."""

            def forward(self, x):
                return self.down_proj(_FUSED["silu_mul"](self.gate_proj(x), self.up_proj(x)))

        _FUSED["classes"] = (Qwen2RMSNorm, FusedRMSNorm, Qwen2MLP, FusedMLP)
        _FUSED["silu_mul_eager"] = silu_mul
    return _FUSED["classes"]


@contextlib.contextmanager
def scoring_kernels(model, fused: bool = True, plan_free_attention: bool = True):
    """The kernel choices :func:`score` makes on a GPU, for code that runs the forward passes itself (the
    benchmarks): ``fused`` elementwise work (:func:`fused_kernels`) and attention off cuDNN
    (:func:`attention_backends`)."""
    with contextlib.ExitStack() as stack:
        if fused:
            stack.enter_context(fused_kernels(model))
        if plan_free_attention:
            stack.enter_context(attention_backends(model))
        yield model


@contextlib.contextmanager
def fused_norms(model, enabled: bool | None = None):
    """Within the block, every ``Qwen2RMSNorm`` of the language model runs as one ``F.rms_norm`` kernel, forward
    and backward (HF's runs seven kernels each way and keeps a float32 copy of its input for backward). Used by
    :func:`lib.train.train`; ``enabled=None``: on a GPU only (on the CPU ``F.rms_norm`` is the same sequence of
    operations). Results change only by rounding, as with :func:`fused_kernels`."""
    if enabled is None:
        enabled = unwrap(model).lm_head.weight.device.type == "cuda"
    swapped = []
    if enabled:
        norm_cls, fused_norm, _, _ = _fused_classes()
        for module in unwrap(model).model.language_model.modules():
            if type(module) is norm_cls:
                module.__class__ = fused_norm
                swapped.append(module)
    try:
        yield model
    finally:
        for module in swapped:
            module.__class__ = norm_cls


@contextlib.contextmanager
def fused_kernels(model, compile: bool = True):
    """Within the block, the language model's elementwise work runs fused; the weights and every matrix product
    are untouched, so results change only by rounding (a test says so). Used by :func:`score` on a GPU:

    * every ``Qwen2RMSNorm`` -> one ``F.rms_norm`` kernel (HF's runs seven);
    * with ``compile`` (``torch.compile``; falls back to eager if it cannot compile): the MLP's ``silu(gate) * up``
      and the rotary embedding as single generated kernels.

    Measured on the 7B (bench/NOTES.md): 640 -> 786 clips/s GPU-side on an H100. Classes and the rotary function
    are restored on exit.
    """
    import transformers.models.qwen2.modeling_qwen2 as q2

    _, _, mlp_cls, fused_mlp = _fused_classes()
    eager = _FUSED["silu_mul_eager"]
    _FUSED["silu_mul"] = _compiled("silu_mul", eager) if compile else eager
    swapped = []
    for module in unwrap(model).model.language_model.modules():
        if type(module) is mlp_cls and getattr(module.config, "hidden_act", None) == "silu":
            module.__class__ = fused_mlp
            swapped.append(module)
    rotary = q2.apply_rotary_pos_emb
    if compile:
        q2.apply_rotary_pos_emb = _compiled("apply_rotary_pos_emb", rotary)
    try:
        with fused_norms(model, enabled=True):
            yield model
    finally:
        q2.apply_rotary_pos_emb = rotary
        for module in swapped:
            module.__class__ = mlp_cls


def softmax2(logits: np.ndarray) -> np.ndarray:
    """p(A) from (n, 2) logits, computed stably."""
    logits = np.asarray(logits, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(logits[:, 1] - logits[:, 0]))


@with_cpu_threads
def generate_answers(model, processor, audios: Sequence[np.ndarray], prompt: str = DEFAULT_PROMPT,
                     batch_size: int = 16, short_encoder: bool | None = None) -> tuple[list[str], np.ndarray]:
    """Constrained ``generate``: one new token, only ``A``/``B`` allowed, greedy; returns answers and raw logits.

    The cross-check of :func:`score`: it goes through Hugging Face's own forward and generation loop.
    """
    import torch

    if short_encoder is None:
        short_encoder = uses_short_encoder(model)
    ids = answer_token_ids(processor.tokenizer)
    answers: list[str] = [""] * len(audios)
    raw = np.zeros((len(audios), 2), dtype=np.float32)
    model.eval()
    with torch.inference_mode():
        for idx in length_buckets([len(a) for a in audios], batch_size):
            inputs = make_inputs(processor, [audios[i] for i in idx], prompt, short_encoder=short_encoder)
            device = unwrap(model).lm_head.weight.device
            inputs = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in inputs.items()}
            out = model.generate(**inputs, max_new_tokens=1, do_sample=False, num_beams=1,
                                 prefix_allowed_tokens_fn=lambda batch_id, sent: list(ids),
                                 output_logits=True, return_dict_in_generate=True)
            new = out.sequences[:, -1].cpu().numpy()
            raw[idx] = out.logits[0][:, list(ids)].float().cpu().numpy()
            for j, tok in zip(idx, new):
                answers[j] = ANSWERS[list(ids).index(int(tok))]
    return answers, raw


# ------------------------------------------------------------------------------------------------- scorer
def split_long_clips(audios: Sequence[np.ndarray], window: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Clips longer than ``window`` samples cut into windows of ``window`` samples (stride ``window``; the last
    window ends at the clip's end, so every window is full length); shorter clips stay whole. Returns the
    pieces and, for each, the index of its clip."""
    pieces: list[np.ndarray] = []
    owner: list[int] = []
    for i, a in enumerate(audios):
        a = np.asarray(a)
        if len(a) <= window:
            pieces.append(a)
            owner.append(i)
            continue
        starts = list(range(0, len(a) - window, window)) + [len(a) - window]
        pieces.extend(a[s : s + window] for s in starts)
        owner.extend([i] * len(starts))
    return pieces, np.asarray(owner, dtype=int)


def score_long_clips(score_pieces: "Callable[[list[np.ndarray]], np.ndarray]", audios: Sequence[np.ndarray],
                     window: int) -> np.ndarray:
    """p_speech per clip, a clip longer than the model's window being the maximum over its windows (is there
    speech anywhere in it?). The audio encoder hears at most 30 s: without this, the rest would be dropped
    silently by the feature extractor."""
    if all(len(a) <= window for a in audios):  # the usual case: the clips as given (they may be a lazy sequence)
        return np.asarray(score_pieces(audios), dtype=float)
    pieces, owner = split_long_clips(audios, window)
    p = np.asarray(score_pieces(pieces), dtype=float)
    out = np.full(len(audios), -np.inf)
    np.maximum.at(out, owner, p)
    return out


class LoraScorer:
    """A fine-tuned system: base model + LoRA adapter, scoring clips through :func:`score`.

    Clips longer than the audio encoder's window (30 s) are scored window by window: :attr:`window_rule`."""

    window_rule = "clips over 30 s: p_speech is the maximum over 30 s windows (stride 30 s, the last ending at the clip's end)"

    def __init__(self, name: str, model, processor, prompt: str, batch_size: int = 16, progress: bool = False,
                 normalization: str | None = None):
        self.name, self.model, self.processor = name, model, processor
        self.prompt, self.batch_size, self.progress = prompt, batch_size, progress
        self.normalization = normalization  # the level normalization its clips were trained under
        self.model_label = model_label(getattr(model, "speechbook_source", {}).get("model_name_or_path", ""))

    @property
    def window_samples(self) -> int:
        """The most samples the feature extractor keeps of a clip (30 s at 16 kHz for Qwen2-Audio)."""
        return int(self.processor.feature_extractor.n_samples)

    def score(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        return score_long_clips(
            lambda pieces: score(self.model, self.processor, pieces, self.prompt, batch_size=self.batch_size,
                                 progress=self.progress, desc=self.name).p_speech,
            audios, self.window_samples)


def load_adapter(model, adapter_dir: str | os.PathLike, base_model: str | None = None,
                 expected_fingerprint: dict | None = None):
    """Attach a saved adapter to ``model`` (frozen, for scoring); refuses one made for another base model."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise FileNotFoundError(f"{adapter_dir} holds no adapter_config.json: not a saved adapter")
    check_adapter_files(adapter_dir)
    if expected_fingerprint is not None:
        source = getattr(model, "speechbook_source", {}).get("model_name_or_path", base_model)
        check_base_model(expected_fingerprint, base_fingerprint(source), what=f"adapter {adapter_dir}")
    try:
        peft_model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
    except RuntimeError as err:  # size mismatch: another architecture
        raise AdapterMismatchError(
            f"adapter {adapter_dir} does not fit base model {base_model or ''}: {err}") from err
    except (ValueError, KeyError, TypeError, OSError) as err:  # what check_adapter_files cannot foresee
        raise DamagedFilesError(f"cannot load adapter {adapter_dir} ({type(err).__name__}: {err}); {ADAPTER_REMEDY}") from None
    peft_model.eval()
    return peft_model


ADAPTER_REMEDY = "the adapter is damaged: train it again (chapter 03_training) or restore the folder from a copy"


def check_adapter_files(adapter_dir: Path) -> None:
    """Name a damaged adapter before peft meets it: adapter_config.json must be a JSON object naming its peft
    type, and the weights a complete safetensors file."""
    from safetensors import safe_open

    config = adapter_dir / "adapter_config.json"
    try:
        spec = json.loads(config.read_text())
    except (ValueError, OSError) as err:
        raise DamagedFilesError(f"{config} is not valid JSON ({err}); {ADAPTER_REMEDY}") from None
    if not isinstance(spec, dict) or "peft_type" not in spec:
        raise DamagedFilesError(f"{config} is {'empty' if not spec else 'not an adapter config'} (no peft_type); {ADAPTER_REMEDY}")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.exists():
        if (adapter_dir / "adapter_model.bin").exists():
            return
        raise DamagedFilesError(f"{adapter_dir} holds no adapter_model.safetensors; {ADAPTER_REMEDY}")
    try:
        with safe_open(str(weights), framework="pt") as f:  # checks the header against the file's size
            list(f.keys())
    except Exception as err:  # noqa: BLE001 - SafetensorError, a bad header, a truncated body
        raise DamagedFilesError(f"{weights} is not a complete safetensors file ({type(err).__name__}: {str(err)[:160]}); "
                                f"{ADAPTER_REMEDY}") from None


def check_base_model(expected: dict, actual: dict, what: str) -> None:
    diffs = [k for k in ("config_sha256", "weights_sha256") if k in expected and expected.get(k) != actual.get(k)]
    if diffs:
        raise AdapterMismatchError(
            f"{what} was made for base model {expected.get('model_name_or_path')!r} but the base model now "
            f"loaded ({actual.get('model_name_or_path')!r}) differs in {', '.join(diffs)}; load it on the base model it "
            "was trained on (system.yaml: base_model), or train it again on this one")


def load_scorer(system_dir: str | os.PathLike, info: dict, *, model_name_or_path: str | None = None,
                quantization: str | None = None, torch_dtype: str | None = None, device: str = "auto",
                batch_size: int | None = None, short_encoder: bool = True, progress: bool = False, **_: Any) -> LoraScorer:
    """Scorer for a ``kind: lora`` system folder (see lib.systems): base model + adapter + prompt."""
    system_dir = Path(system_dir)
    base = model_name_or_path or info["base_model"]
    model, processor = load_model(base, quantization=quantization or info.get("quantization", "none"),
                                  torch_dtype=torch_dtype or info.get("torch_dtype", "float32"), device=device,
                                  short_encoder=short_encoder)
    peft_model = load_adapter(model, system_dir / info.get("adapter", "adapter"), base_model=base,
                              expected_fingerprint=info.get("base_fingerprint"))
    return LoraScorer(info.get("name", system_dir.name), peft_model, processor, info.get("prompt", DEFAULT_PROMPT),
                      batch_size=batch_size or int(info.get("eval_batch_size", 16)), progress=progress,
                      normalization=info.get("normalization"))


def zero_shot_scorer(model_name_or_path: str, prompt: str = DEFAULT_PROMPT, name: str = "zero_shot",
                     **kwargs: Any) -> LoraScorer:
    """The base model without adapter, same prompt and scoring path."""
    batch_size = kwargs.pop("batch_size", 16)
    model, processor = load_model(model_name_or_path, **kwargs)
    return LoraScorer(name, model, processor, prompt, batch_size=batch_size)
