"""Loading: one loader for the real Qwen2-Audio and the models lib builds, and the short-encoder patch.

Everything in :mod:`lib.model` runs unchanged on ``Qwen/Qwen2-Audio-7B-Instruct`` (hub id or local folder, bf16 or
4-bit NF4), on the mini model (the CPU book's) and on the tiny one (:mod:`lib.model.build`): same classes, same
``from_pretrained`` path.

**Short encoder** (``short_encoder=True``, the default). The processor pads every clip to 30 s (3000 mel frames)
and the stock audio encoder refuses anything else, so a 200 ms clip pays for 30 s of encoder. Here the feature
extractor computes only the clip's own frames plus a few frames of the zero padding after it (enough for the
encoder's convolutions, which look one frame ahead, and for the extractor's per-clip maximum), and
``ShortAudioEncoder`` runs the encoder on those frames with the positional embeddings sliced to match. The stock
padded path masks the padding in attention, so the kept positions see exactly the same inputs (a test proves it).
``short_encoder=False`` keeps the plain Hugging Face path (30 s of padding).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .build import mini, tiny
from .build.folder import BUILD_INFO
from .build.qwen7b import REAL_MODEL_ID, is_random_weights
from .encoder_cache import EncoderCache, encoder_cache_folder
from .errors import ModelNotFoundError, damaged_model, model_not_found, nf4_needs_bitsandbytes
from .gpu_peaks import record_gpu_peaks
from .prompt import answer_token_ids

# Modules kept out of 4-bit quantization. transformers matches these from the START of the module name
# (re.match), so a bare "audio_tower" would match nothing and silently quantize the encoder.
NF4_SKIP_MODULES = ["lm_head", r".*audio_tower", r".*multi_modal_projector"]


def model_label(model_name_or_path: str) -> str:
    """What a base model is, in words: every table, figure, metrics file and predictions file names it, so a
    number of the tiny or mini model is never read as one of Qwen2-Audio-7B."""
    if model_name_or_path == tiny.TINY:
        return "SMOKE (tiny model: random-weight Qwen2-Audio, width 64), not Qwen2-Audio-7B"
    if model_name_or_path in mini.MINI_MODELS:
        return mini.label(model_name_or_path)
    path = Path(str(model_name_or_path)).expanduser()
    if is_random_weights(path):  # bench.architecture.save_random_model: measures code and cost, never accuracy
        return "RANDOM WEIGHTS (Qwen2-Audio-7B architecture, untrained), not a real result"
    if (path / BUILD_INFO).exists():  # a model lib built (e.g. the random-weight 7B architecture of the GPU runs)
        return str(json.loads((path / BUILD_INFO).read_text()).get("what", path.name))
    return f"{path.name if path.exists() else model_name_or_path}"


def resolve_model_path(model_name_or_path: str) -> str:
    """``tiny`` / ``mini`` / ``mini-base`` -> the locally built model; a folder -> itself; else a hub id (HF cache)."""
    if model_name_or_path == tiny.TINY:
        return str(tiny.ensure_tiny_model())
    if model_name_or_path in mini.MINI_MODELS:
        return str(mini.ensure_mini_model(model_name_or_path))
    path = Path(model_name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(
                f"{path} exists but holds no config.json: it should be a folder with the model's files "
                f"(config.json, *.safetensors, tokenizer and preprocessor files), as saved by save_pretrained "
                f"or downloaded with `huggingface-cli download {REAL_MODEL_ID} --local-dir {path}`")
        return str(path.resolve())
    return model_name_or_path


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(torch_dtype: Any):
    """A ``torch.dtype`` from its name (``float32``/``fp32``, ``bfloat16``/``bf16``, ``float16``/``fp16``) or itself."""
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
                              bnb_4bit_compute_dtype=resolve_dtype(compute_dtype),
                              llm_int8_skip_modules=NF4_SKIP_MODULES)


def load_model(model_name_or_path: str = tiny.TINY, quantization: str = "none", torch_dtype: Any = "float32",
               device: str = "auto", short_encoder: bool = True):
    """Load ``(model, processor)`` from a hub id (HF cache only), a local folder, ``tiny``, ``mini`` or ``mini-base``.

    ``quantization="nf4"``: 4-bit NF4 with double quantization (bitsandbytes); the audio tower, projector
    and ``lm_head`` stay in ``torch_dtype``. ``short_encoder`` installs the short encoder
    (:func:`enable_short_encoder`).
    The mini models' pretrained encoder is never trained, so its outputs are cached (:class:`EncoderCache`).
    """
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    if quantization not in ("none", "nf4"):
        raise ValueError(f"quantization {quantization!r} unknown; use none or nf4")
    if quantization == "nf4":
        try:  # before from_pretrained, whose failure would otherwise read as a damaged folder
            import bitsandbytes  # noqa: F401
        except Exception as err:  # noqa: BLE001 - ImportError, or a broken CUDA library inside it
            raise nf4_needs_bitsandbytes(err) from err
    path = resolve_model_path(model_name_or_path)
    device = pick_device(device)
    dtype = resolve_dtype(torch_dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if quantization == "nf4":
        compute = dtype if dtype != resolve_dtype("float32") or device == "cpu" else "bfloat16"
        kwargs["quantization_config"] = nf4_config(compute)
        kwargs["device_map"] = {"": device}
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        model = Qwen2AudioForConditionalGeneration.from_pretrained(path, **kwargs)
    except OSError as err:  # not a folder and not in the cache (or offline)
        if Path(path).is_dir():  # a local folder that is there but cannot be read as a model
            raise damaged_model(path, err, (Path(path) / BUILD_INFO).exists()) from None
        raise model_not_found(model_name_or_path, err) from err
    except ImportError:  # a missing or too old package, not a damaged folder: its message says what to install
        raise
    except Exception as err:  # noqa: BLE001 - truncated weights (SafetensorError), a broken config.json ...
        if Path(path).is_dir():
            raise damaged_model(path, err, (Path(path) / BUILD_INFO).exists()) from None
        raise
    if quantization != "nf4":
        model.to(device)
    model.eval()
    processor.tokenizer.padding_side = "left"
    answer_token_ids(processor.tokenizer)  # fail early if A/B are not single tokens
    if short_encoder:
        enable_short_encoder(model)
    if model_name_or_path in mini.MINI_MODELS:  # its pretrained encoder is never trained: cache its outputs
        model.speechbook_encoder_cache = EncoderCache(encoder_cache_folder(path))
    if device.startswith("cuda"):
        record_gpu_peaks()
    model.speechbook_source = {"model_name_or_path": model_name_or_path, "path": path, "quantization": quantization,
                               "torch_dtype": str(dtype).replace("torch.", "")}
    return model, processor


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



def short_encoder_for(model, short_encoder: bool | None) -> bool:
    """Whether a pass over ``model`` uses the short encoder: ``None`` as the model was loaded; ``True`` installs it."""
    if short_encoder is None:
        return uses_short_encoder(model)
    if short_encoder and not uses_short_encoder(model):
        enable_short_encoder(model)
    return short_encoder


def on_gpu(model) -> bool:
    """True when the model runs on CUDA: where the fast path (:mod:`lib.model.fast`) is on by default."""
    return unwrap(model).lm_head.weight.device.type == "cuda"
