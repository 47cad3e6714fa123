"""The audio encoder on a padded batch, and the cache of a frozen encoder's outputs per clip.

The mini model's Whisper encoder is pretrained and never trained in the book, yet it costs over 90% of a scoring
pass on the CPU: :class:`EncoderCache` keeps its outputs per clip, on disk, so that every chapter, seed and prompt
reads them instead of recomputing them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..config import PROJECT_ROOT
from .build.folder import BUILD_INFO


def encode_audio(tower, input_features, feat_lengths):
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
            from .. import io

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
        # The tower runs in eval mode whatever the model's: in training mode Whisper's encoder draws a layer-drop
        # number from torch's global generator per layer, so a cache miss would move the random stream (LoRA dropout)
        # that a hit leaves alone, and a training's result would depend on how warm the cache was.
        was_training = tower.training
        tower.eval()
        try:
            self._encode_missing(tower, input_features, feats_np, frames_np, feat_lengths, out_lengths, keys, rows, missing)
        finally:
            tower.train(was_training)
        n_positions = (input_features.shape[-1] - 2) // 2 + 1
        n_out = (n_positions - 2) // 2 + 1
        hidden = np.zeros((len(rows), n_out, rows[0].shape[-1]), dtype=np.float32)
        for i, r in enumerate(rows):
            hidden[i, : len(r)] = r
        return torch.from_numpy(hidden).to(input_features.device)

    def _encode_missing(self, tower, input_features, feats_np, frames_np, feat_lengths, out_lengths, keys, rows,
                        missing) -> None:
        """Encode the rows not in the cache, in ENCODE_GROUP groups of equal length, and store them."""
        import torch

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
                    out = encode_audio(tower, feats, lengths).float().cpu().numpy()
                for j, i in enumerate(chunk):
                    rows[i] = out[j, : int(out_lengths[i])].copy()
                    self.put(keys[i], rows[i])


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
