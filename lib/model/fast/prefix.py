"""The shared prompt prefix: the prompt tokens before the audio, computed once and reused by every batch.

Every clip's prompt starts with the same tokens (the system turn, ``Audio 1: <|audio_bos|>``). With left padding
each row's prompt starts at position 0 and attends only to itself, so their keys and values do not depend on the
row: :class:`SharedPrefix` runs them once through the language model (batch 1) and hands them to every forward
pass as cached keys/values (``lib.model.forward.hidden_states(prefix=...)``).
"""
from __future__ import annotations

from ..load import unwrap
from ..prompt import DEFAULT_PROMPT, prompt_text

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


def with_prefix(prefix, states):
    """``prefix`` (1, heads, p, dim) in front of every row of ``states`` (batch, heads, n, dim).

    Two copies into one new buffer rather than ``torch.cat`` of the broadcast prefix: on CUDA that cat runs an
    unvectorised copy at a fraction of the copy bandwidth (BENCHMARKS.md; ``bench/switches.py`` runs the
    ``torch.cat`` join side by side). Same values either way."""
    batch = states.shape[0]
    n_prefix = prefix.shape[-2]
    # token-major, like the projections' output whose (batch, heads, n, dim) views the states are: a little faster
    # on the 7B than a head-major buffer (BENCHMARKS.md)
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

