"""The model path: Qwen2-Audio answers one multiple-choice question per clip with one token, ``A`` (SPEECH) or ``B``.

Read top to bottom, the plain path is:

* :mod:`.load` -- one loader for the real Qwen2-Audio-7B and the models lib builds; the short-encoder patch;
* :mod:`.prompt` -- the chat-templated question around one clip and the processor inputs;
* :mod:`.forward` -- audio features merged into the prompt, the language model, the two answer rows of ``lm_head``
  (with :mod:`.encoder_cache`: a frozen encoder's outputs kept per clip);
* :mod:`.scoring` -- :func:`score`, a loop over batches of similar length (:mod:`.batching`), and the cross-check
  through ``generate``;
* :mod:`.adapters` -- a trained LoRA system: its adapter checked and attached, clips of any length scored.

The GPU fast path lives apart in :mod:`.fast` and is switched on by one flag, ``score(..., fast=True)`` (on by
default where the model is on CUDA); the models themselves are built in :mod:`.build` (tokenizer, Whisper weights,
the mini and tiny models, the 7B's config).
"""
from __future__ import annotations

from .adapters import (ADAPTER_REMEDY, LoraScorer, base_fingerprint, check_adapter_files, check_base_model,
                       load_adapter, load_scorer, score_long_clips, split_long_clips, zero_shot_scorer)
from .batching import batches_of, cpu_threads_for, length_buckets, with_cpu_threads
from .build.folder import BUILD_INFO, check_weights, ensure_built
from .build.mini import MINI_MODELS
from .build.qwen7b import QWEN2_AUDIO_7B_CONFIG, REAL_MODEL_ID
from .build.tiny import SPECIAL_TOKENS, TINY, TINY_VERSION, build_tiny_model, ensure_tiny_model, tiny_model_dir
from .encoder_cache import CACHE_FORMAT, ENCODE_GROUP, EncoderCache, encode_audio, encoder_cache_folder
from .errors import AdapterMismatchError, DamagedFilesError, MissingPackageError, ModelNotFoundError
from .fast import (SharedPrefix, attention_backends, fused_kernels, fused_norms, prompt_prefix, scoring_kernels,
                   with_prefix)
from .forward import Scores, answer_logits, audio_features, head_rows, hidden_states, softmax2
from .gpu_peaks import GPU_PEAKS_ENV, record_gpu_peaks
from .load import (NF4_SKIP_MODULES, enable_short_encoder, load_model, model_label, nf4_config, on_gpu, pick_device,
                   resolve_dtype, resolve_model_path, short_encoder_for, unwrap, uses_short_encoder)
from .prompt import (ANSWERS, DEFAULT_PROMPT, MIN_AUDIO_SAMPLES, answer_is_one_token, answer_suffix, answer_token_ids,
                     cached_on_processor, make_inputs, n_audio_tokens, pad_to_min_audio, prompt_text,
                     short_feature_samples)
from .scoring import ClipFiles, encoder_outputs, generate_answers, score

__all__ = [
    "ADAPTER_REMEDY", "ANSWERS", "BUILD_INFO", "CACHE_FORMAT", "DEFAULT_PROMPT", "ENCODE_GROUP", "GPU_PEAKS_ENV",
    "MINI_MODELS", "MIN_AUDIO_SAMPLES", "NF4_SKIP_MODULES", "QWEN2_AUDIO_7B_CONFIG", "REAL_MODEL_ID", "SPECIAL_TOKENS",
    "TINY", "TINY_VERSION", "AdapterMismatchError", "ClipFiles", "DamagedFilesError", "MissingPackageError", "EncoderCache", "LoraScorer",
    "ModelNotFoundError", "Scores", "SharedPrefix", "answer_is_one_token", "answer_logits", "answer_suffix",
    "answer_token_ids", "attention_backends", "audio_features", "base_fingerprint", "batches_of", "build_tiny_model",
    "cached_on_processor", "check_adapter_files", "check_base_model", "check_weights", "cpu_threads_for",
    "enable_short_encoder", "encode_audio", "encoder_cache_folder", "encoder_outputs", "ensure_built",
    "ensure_tiny_model", "fused_kernels", "fused_norms", "generate_answers", "head_rows", "hidden_states",
    "length_buckets", "load_adapter", "load_model", "load_scorer", "make_inputs", "model_label", "n_audio_tokens",
    "nf4_config", "on_gpu", "pad_to_min_audio", "pick_device", "prompt_prefix", "prompt_text", "record_gpu_peaks",
    "resolve_dtype", "resolve_model_path", "score", "score_long_clips", "scoring_kernels", "short_encoder_for",
    "short_feature_samples", "softmax2", "split_long_clips", "tiny_model_dir", "unwrap", "uses_short_encoder",
    "with_cpu_threads", "with_prefix", "zero_shot_scorer",
]
