"""Loading: the one reader of a bank manifest (``load_bank``) and of its clips (``load_clip(s)``).

A bank stores every clip before level normalization; ``normalization=none|peak|rms`` is applied here,
when a clip is loaded (``lib.audio.normalize``), so one bank serves every normalization (chapter 02).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import yaml

from .. import audio
from .schema import BANK_COLUMNS, LABELS, SPLITS, ManifestError, resolve_under


def load_bank(manifest: str | os.PathLike, check_files: bool = True) -> pd.DataFrame:
    """Read and validate a bank manifest; adds ``audio_path`` (absolute) to each row.

    Errors (``ManifestError``) name the manifest and: missing columns, unknown labels or splits,
    duplicated clip ids, paths outside the bank folder, missing audio files.
    """
    manifest = Path(manifest)
    if manifest.is_dir():
        manifest = manifest / "manifest.csv"
    if not manifest.exists():
        raise ManifestError(f"bank manifest {manifest} does not exist; build it with lib.data.build_bank(cfg) (chapter 01)")
    try:
        df = pd.read_csv(manifest, keep_default_na=False, dtype={"clip_id": str, "source_id": str, "group_id": str, "noise_source_id": str})
    except Exception as e:
        raise ManifestError(f"cannot read bank manifest {manifest}: {e}") from e
    missing = [c for c in BANK_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"bank manifest {manifest} lacks column(s) {', '.join(missing)}; expected {', '.join(BANK_COLUMNS)}")
    bad = sorted(set(df["label"]) - set(LABELS))
    if bad:
        raise ManifestError(f"bank manifest {manifest}: unknown label(s) {bad}; valid: {', '.join(LABELS)}")
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad:
        raise ManifestError(f"bank manifest {manifest}: unknown split(s) {bad}; valid: {', '.join(SPLITS)}")
    dup = df["clip_id"][df["clip_id"].duplicated()].unique().tolist()
    if dup:
        raise ManifestError(
            f"bank manifest {manifest}: duplicated clip_id(s) {dup[:5]}; each clip needs its own id: rebuild the bank "
            "(lib.data.build_bank, chapter 01) instead of editing its manifest"
        )
    root = manifest.parent
    df["audio_path"] = [str(resolve_under(root, p, f"bank manifest {manifest} path")) for p in df["path"]]
    if check_files:
        gone = [p for p, a in zip(df["path"], df["audio_path"]) if not os.path.isfile(a)]
        if gone:
            raise ManifestError(f"bank manifest {manifest}: {len(gone)} audio file(s) missing, e.g. {gone[:3]}; rebuild the bank")
    df.attrs["manifest"] = str(manifest.resolve())
    return df


def load_bank_meta(manifest: str | os.PathLike) -> dict[str, Any]:
    """A built bank's ``bank.yaml``: its hash, parameters, the material it came from and its counts."""
    manifest = Path(manifest)
    path = (manifest if manifest.is_dir() else manifest.parent) / "bank.yaml"
    if not path.exists():
        raise ManifestError(f"{path} does not exist: the bank's parameters and material are unknown "
                            "(a bank built by lib.data.build_bank has it)")
    return yaml.safe_load(path.read_text()) or {}


def load_clip(row: Mapping[str, Any] | str | os.PathLike, normalization: str = "rms", root: str | os.PathLike | None = None) -> np.ndarray:
    """One clip as float32 mono at ``audio.SR``, level-normalized (``none|peak|rms``) at load time."""
    if isinstance(row, (str, os.PathLike)):
        path = Path(row)
    elif "audio_path" in row and row["audio_path"]:
        path = Path(row["audio_path"])
    elif root is not None:
        path = resolve_under(root, row["path"])
    else:
        raise ValueError("load_clip needs a row from load_bank (with audio_path) or root=<the manifest's folder>")
    return audio.normalize(audio.load_audio(path), normalization, name=str(path))


def load_clips(
    df: pd.DataFrame,
    manifest: str | os.PathLike | None = None,
    normalization: str = "rms",
    root: str | os.PathLike | None = None,
    progress: bool = False,
) -> list[np.ndarray]:
    """The clips of a bank table (rows of ``load_bank``), in row order, normalized at load time.

    Rows from ``load_bank`` carry ``audio_path``; otherwise ``manifest`` (or ``root``, its folder)
    says where ``path`` is relative to.
    """
    if isinstance(manifest, str) and manifest in audio.NORMALIZATIONS and not Path(manifest).exists():
        manifest, normalization = None, manifest  # load_clips(df, "peak")
    if normalization not in audio.NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; valid: {', '.join(audio.NORMALIZATIONS)} (parameter 'normalization')")
    if root is None and manifest is not None:
        m = Path(manifest)
        root = m if m.is_dir() else m.parent
    rows = df.to_dict("records")
    return [load_clip(r, normalization, root) for r in with_progress(rows, progress, desc="load clips")]


def with_progress(items: Iterable, enabled: bool, desc: str) -> Iterable:
    """``items`` behind a tqdm bar when ``enabled`` (counting clips), else unchanged."""
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, mininterval=2.0, unit="clip")


def require_bank(run_dir: str | os.PathLike | None, bank_manifest: str | os.PathLike | None) -> None:
    """Refuse to go on without a built bank: a chapter that only reads one needs ``bank_manifest`` or a run
    folder where chapter 01 recorded its bank (``bank.yaml``); FileNotFoundError says how to get one."""
    if bank_manifest is None and (run_dir is None or not (Path(run_dir) / "bank.yaml").exists()):
        raise FileNotFoundError(
            "this chapter needs a bank: run chapter 01_data_prep first (`make book` or "
            "`python -m lib book --chapters 01 02`) and pass its run folder as run_dir, "
            "or pass bank_manifest=<path to a bank's manifest.csv>"
            + (f" (run folder {run_dir} has no bank.yaml)" if run_dir is not None else "")
        )
