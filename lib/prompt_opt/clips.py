"""The clips prompts are chosen and tested on: one split of the bank, loaded and normalized, optionally a
stratified seeded subsample; selection refuses any split but dev (:func:`require_dev`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import subset
from .templates import NONSPEECH, SPEECH


@dataclass
class ClipSet:
    """Clips of one split: ids, labels, audio (loaded, normalized) and their bank rows."""

    split: str
    clip_ids: list[str]
    labels: np.ndarray
    audios: list[np.ndarray] = field(repr=False)
    frame: pd.DataFrame = field(repr=False)

    def __len__(self) -> int:
        return len(self.clip_ids)


def load_split(bank: pd.DataFrame, split: str, normalization: str = "rms", max_clips: int | None = None,
               seed: int = 0, manifest: str | Path | None = None) -> ClipSet:
    """The clips of one split of a bank table (``lib.data.load_bank``), optionally subsampled."""
    from ..data import load_clips

    rows = bank[bank["split"] == split]
    if rows.empty:
        raise ValueError(f"the bank has no {split!r} clips")
    if set(rows["label"]) != {SPEECH, NONSPEECH}:
        raise ValueError(f"the {split} split needs both classes to compute balanced accuracy; it has {sorted(set(rows['label']))}")
    rows = subset(rows, max_clips, seed, by_label=True).reset_index(drop=True)
    audios = load_clips(rows, manifest, normalization=normalization)
    return ClipSet(split, rows["clip_id"].astype(str).tolist(), rows["label"].to_numpy().astype(str), audios, rows)


def require_dev(clips: ClipSet) -> None:
    if clips.split != "dev":
        raise ValueError(f"prompt selection runs on the dev split only, got the {clips.split!r} split")
