"""The forward pass: audio features merged into the prompt's embeddings, the language model, the two answer rows.

The audio features are merged into the text embeddings the way ``Qwen2AudioModel.forward`` does it; building
``inputs_embeds`` here also sidesteps its "legacy" merge, which it picks whenever no two audio tokens are adjacent
(clips under 60 ms). Scoring needs only ``logit_A`` and ``logit_B`` at the answer position, so the last hidden
state is multiplied by the two rows of ``lm_head`` instead of the whole vocabulary at every position.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .encoder_cache import EncoderCache, encode_audio
from .load import unwrap


def audio_features(base, input_features, feature_attention_mask):
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
        hidden = encode_audio(tower, input_features, feat_lengths)
    elif cache is not None and type(tower).__name__ in ("Qwen2AudioEncoder", "ShortAudioEncoder"):
        hidden = cache.encode(tower, input_features, feature_attention_mask.sum(-1), feat_lengths, out_lengths)
    else:  # a frozen encoder keeps no activations for backward
        with torch.no_grad():
            hidden = encode_audio(tower, input_features, feat_lengths)
    feats = inner.multi_modal_projector(hidden.to(inner.multi_modal_projector.linear.weight.dtype))
    keep = torch.arange(feats.shape[1], device=device)[None, :] < out_lengths[:, None]
    return feats[keep]


def hidden_states(model, inputs, prefix: Any = None) -> "Any":
    """Last hidden states (batch, seq, hidden) of the language model for processor inputs.

    With ``prefix`` (the fast path's :class:`lib.model.fast.SharedPrefix` of these inputs' prompt) the prompt tokens
    before the audio are not recomputed: their keys and values come from the prefix, and the states returned are
    those of the tokens after it (batch, seq - prefix, hidden), the last position still being the answer position.
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
        feats = audio_features(base, inputs["input_features"], inputs["feature_attention_mask"])
        if feats.shape[0] != n_tokens:
            raise ValueError(f"audio features ({feats.shape[0]}) and audio tokens ({n_tokens}) differ")
        embeds = embeds.masked_scatter(audio_mask.unsqueeze(-1), feats.to(embeds.device, embeds.dtype))
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    if past is not None:  # the mask covers prefix + rows; positions and states are the rows' own
        position_ids = position_ids[:, -input_ids.shape[1]:]
    out = inner.language_model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                               past_key_values=past, use_cache=False)
    return out.last_hidden_state


def head_rows(model, token_ids: Sequence[int]):
    """The rows of ``lm_head`` for ``token_ids`` (the trained copy if ``lm_head`` is trained)."""
    head = unwrap(model).lm_head
    weight = head.weight
    if weight.dim() != 2 or weight.shape[1] != unwrap(model).config.text_config.hidden_size:
        raise ValueError("lm_head is quantized or reshaped; keep it out of quantization (see NF4_SKIP_MODULES)")
    import torch

    return weight[torch.as_tensor(list(token_ids), device=weight.device)]


def answer_logits(model, inputs, answer_ids: tuple[int, int], prefix: Any = None):
    """(batch, 2) float32 logits for A and B at the answer position (the last one: left padding)."""
    h = hidden_states(model, inputs, prefix=prefix)[:, -1]
    rows = head_rows(model, answer_ids)
    return h.float() @ rows.float().T


def softmax2(logits: np.ndarray) -> np.ndarray:
    """p(A) from (n, 2) logits, computed stably."""
    logits = np.asarray(logits, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(logits[:, 1] - logits[:, 0]))


@dataclass
class Scores:
    p_speech: np.ndarray  # softmax([logit_A, logit_B])[0]
    logits: np.ndarray  # (n, 2) raw logits of A and B

    @property
    def pred(self) -> np.ndarray:
        return np.where(self.logits[:, 0] >= self.logits[:, 1], "speech", "nonspeech")

