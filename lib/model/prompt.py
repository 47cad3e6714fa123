"""The prompt: the chat-templated question around one clip, the two answers, and the processor inputs.

The model answers a multiple-choice question with one token, ``A`` (SPEECH) or ``B`` (NONSPEECH). Inputs are built
by the processor (``audio=`` keyword, the chat template), left-padded so that every row's answer position is the
last one.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

ANSWERS = ("A", "B")  # A = SPEECH, B = NONSPEECH
DEFAULT_PROMPT = "Does this audio clip contain human speech?\nA) SPEECH\nB) NONSPEECH\nAnswer with A or B."


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


def cached_on_processor(processor, key: tuple, make):
    """``make()``, computed once per processor and ``key`` and kept on the processor (rendered templates and token
    counts: the processor outlives any one call)."""
    cache = processor.__dict__.setdefault("_speechbook_cache", {})
    if key not in cache:
        cache[key] = make()
    return cache[key]


def prompt_text(processor, prompt: str = DEFAULT_PROMPT) -> str:
    """The chat-templated user turn (one audio, then the question) ending where the answer starts."""
    return cached_on_processor(processor, ("prompt", prompt), lambda: _render_prompt(processor, prompt))


def _render_prompt(processor, prompt: str) -> str:
    messages = [{"role": "user", "content": [{"type": "audio", "audio_url": "clip.wav"},
                                             {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def answer_suffix(processor, prompt: str, answer: str) -> str:
    """What follows the prompt text when the assistant answers ``answer`` (the answer and end of turn)."""
    return cached_on_processor(processor, ("suffix", prompt, answer), lambda: _render_suffix(processor, prompt, answer))


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

