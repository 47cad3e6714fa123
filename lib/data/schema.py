"""The vocabulary of the data tables (DESIGN.md tables 1 and 2): labels, splits, the columns of the
sources table and of a bank manifest, and the one error a bad manifest raises.

Every other module of ``lib.data`` speaks these names; nothing here reads a file except
``resolve_under``, which keeps every path a manifest names inside the folder it belongs to.
"""
from __future__ import annotations

import os
from pathlib import Path

LABELS = ("speech", "nonspeech")
CORPUS_LABELS = ("speech", "nonspeech", "noise", "music")
SPLITS = ("train", "dev", "test")
SOURCE_COLUMNS = ["source_id", "label", "category", "group_id", "dataset", "path", "start_s", "end_s", "license"]
BANK_COLUMNS = [
    "clip_id", "source_id", "group_id", "label", "category", "split", "duration_ms", "snr_db",
    "noise_type", "rt60_s", "filter", "seed", "path",
]
CORPUS_REQUIRED = ["path", "label", "category"]


class ManifestError(ValueError):
    """A manifest (corpus or bank) is unusable; the message names the file, rows or columns."""


def resolve_under(root: str | os.PathLike, rel: str, what: str = "path") -> Path:
    """``root / rel``, refusing absolute paths and paths that escape ``root`` (no reading outside it)."""
    root = Path(root).resolve()
    rel = str(rel)
    if not rel or os.path.isabs(rel):
        raise ManifestError(f"{what} {rel!r} must be a path relative to {root}")
    full = (root / rel).resolve()
    if full != root and root not in full.parents:
        raise ManifestError(f"{what} {rel!r} points outside the audio root {root}; refused (paths must stay inside it)")
    return full
