"""Sources: where the clips' material comes from (DESIGN.md table 1).

``load_sources(cfg)`` returns the **sources** table (one row per usable recording segment), the noise
recordings used for real-noise mixing, and a fingerprint of the material, from one of:

* ``local``: a corpus folder with ``manifest.csv`` (the format of ``../shared/data``). Speech groups are
  speakers; non-speech groups are original recordings (segments ``[segment i/n]`` of one recording
  share a group); ``noise/`` recordings are kept apart as mixing material and split by recording too.
* ``esc50_voxconverse``: ESC-50 (non-speech, grouped by the source clip id in the file name) and
  VoxConverse (speech cut only from annotated speech, non-speech only from unannotated stretches with a
  margin; grouped by recording), downloaded by ``lib.data.downloads``.
* ``rttm_folder``: any folder of long recordings with RTTM files (cut like VoxConverse, ``lib.data.rttm``).
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from .. import audio, io
from ..config import PROJECT_ROOT, resolve_data_dir
from . import downloads
from .downloads import DownloadError
from .loading import load_bank_meta
from .rttm import sources_from_rttm_folder
from .schema import CORPUS_LABELS, CORPUS_REQUIRED, ManifestError, resolve_under

ESC50_COLUMNS = ["filename", "fold", "target", "category"]
ESC50_NOISE_CATEGORIES = ("rain", "wind", "sea_waves", "engine")  # stationary: mixing material, not sources


# ---------------------------------------------------------------------------- the local corpus


def strip_segment(original_path: str) -> str:
    """``a/b.ogg [segment 2/3]`` -> ``a/b.ogg``: segments of one recording share its group."""
    return re.sub(r"\s*\[segment \d+/\d+\]\s*$", "", str(original_path))


def read_corpus_manifest(data_dir: str | os.PathLike, check_files: bool = True) -> pd.DataFrame:
    """Read and validate a local corpus ``manifest.csv``.

    Errors (``ManifestError``) name the manifest and: missing columns, unknown labels, duplicated
    paths, speech rows without a speaker, paths outside the corpus folder, missing audio files.
    """
    data_dir = Path(data_dir)
    manifest = data_dir / "manifest.csv"
    if not data_dir.exists():
        raise ManifestError(f"corpus folder {data_dir} does not exist; set data_dir= or DATA_DIR to a folder with manifest.csv")
    if not manifest.exists():
        raise ManifestError(f"no manifest.csv in {data_dir}: expected {manifest} (columns {', '.join(CORPUS_REQUIRED)}, ...)")
    try:
        df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except Exception as e:
        raise ManifestError(f"cannot read {manifest} as CSV: {e}") from e
    missing = [c for c in CORPUS_REQUIRED if c not in df.columns]
    if missing:
        raise ManifestError(f"{manifest} lacks required column(s) {', '.join(missing)}; it has {', '.join(df.columns)}")
    if len(df) == 0:
        raise ManifestError(f"{manifest} has no rows")
    bad = sorted(set(df["label"]) - set(CORPUS_LABELS))
    if bad:
        rows = df.index[df["label"].isin(bad)][:5].tolist()
        raise ManifestError(f"{manifest}: unknown label(s) {bad} (rows {[r + 2 for r in rows]}); valid labels: {', '.join(CORPUS_LABELS)}")
    dup = df["path"][df["path"].duplicated()].unique().tolist()
    if dup:
        raise ManifestError(f"{manifest}: duplicated path(s) {dup[:5]}{' ...' if len(dup) > 5 else ''}; each clip must appear once")
    if (df["label"] == "speech").any():
        if "speaker" not in df.columns:
            raise ManifestError(f"{manifest} lacks column speaker, needed to group speech by speaker")
        nospk = df.index[(df["label"] == "speech") & (df["speaker"].str.strip() == "")][:5].tolist()
        if nospk:
            raise ManifestError(f"{manifest}: speech row(s) {[r + 2 for r in nospk]} have no speaker")
    df["abs_path"] = [str(resolve_under(data_dir, p, f"{manifest} path")) for p in df["path"]]
    if check_files:
        gone = [p for p, a in zip(df["path"], df["abs_path"]) if not os.path.isfile(a)]
        if gone:
            raise ManifestError(f"{manifest}: {len(gone)} audio file(s) missing, e.g. {gone[:3]} (under {data_dir})")
    return df


def sources_from_local(data_dir: str | os.PathLike, include_music: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The sources table and the noise table of a local corpus folder."""
    df = read_corpus_manifest(data_dir)
    for col, default in [("speaker", ""), ("source", "local"), ("source_repo", ""), ("original_path", ""), ("license", ""),
                         ("sample_rate_original", ""), ("duration_s", "")]:
        if col not in df.columns:
            df[col] = default
    orig = [strip_segment(o) if o else p for o, p in zip(df["original_path"], df["path"])]
    recording = [f"recording:{r}:{o}" if r else f"recording:{o}" for r, o in zip(df["source_repo"], orig)]
    speaker = ("speaker:" + df["speaker"].astype(str)).tolist()
    label = df["label"].tolist()
    out = pd.DataFrame(
        {
            "source_id": [re.sub(r"\.[^./]+$", "", p) for p in df["path"]],
            "label": ["nonspeech" if lab == "music" else lab for lab in label],
            "category": df["category"].tolist(),
            "group_id": [s if lab == "speech" else r for lab, s, r in zip(label, speaker, recording)],
            "dataset": df["source"].tolist(),
            "path": df["abs_path"].tolist(),
            "start_s": 0.0,
            "end_s": pd.to_numeric(df["duration_s"], errors="coerce").astype(float),
            "license": df["license"].tolist(),
            "source_repo": df["source_repo"].tolist(),
            "sample_rate_original": pd.to_numeric(df["sample_rate_original"], errors="coerce").astype(float),
            "corpus_label": label,
        }
    )
    out["bandlimited_origin"] = out["sample_rate_original"].fillna(audio.SR) < audio.SR
    noise = out[out["corpus_label"] == "noise"].reset_index(drop=True)
    keep = out["corpus_label"].isin(["speech", "nonspeech"] + (["music"] if include_music else []))
    return out[keep].reset_index(drop=True), noise


# ------------------------------------------------------------------------------------------ ESC-50


def read_esc50_meta(folder: str | os.PathLike) -> pd.DataFrame:
    """``meta/esc50.csv``, validated; adds ``src_file`` from the file name when the column is absent
    (names are ``{fold}-{freesound clip id}-{take}-{target}.wav``)."""
    folder = Path(folder)
    path = folder / "meta" / "esc50.csv"
    if not path.exists():
        raise DownloadError(f"ESC-50 metadata {path} not found; download ESC-50 with lib.data.downloads.download_esc50")
    df = pd.read_csv(path, dtype={"filename": str, "category": str, "src_file": str, "take": str}, keep_default_na=False)
    missing = [c for c in ESC50_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {', '.join(missing)}; ESC-50's esc50.csv has filename, fold, target, category, esc10, src_file, take")
    if "src_file" not in df.columns:
        parts = df["filename"].str.extract(r"^(\d+)-([^-]+)-([^-]+)-(\d+)\.wav$")
        if parts[1].isna().any():
            bad = df["filename"][parts[1].isna()].tolist()[:3]
            raise ValueError(f"{path}: file names {bad} do not follow {{fold}}-{{clip id}}-{{take}}-{{target}}.wav and there is no src_file column")
        df["src_file"] = parts[1]
    dup = df["filename"][df["filename"].duplicated()].tolist()
    if dup:
        raise ValueError(f"{path}: duplicated filename(s) {dup[:5]}")
    return df


def sources_from_esc50(folder: str | os.PathLike, noise_categories: Iterable[str] = ESC50_NOISE_CATEGORIES) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sources, noise) from an ESC-50 folder. Every clip is NONSPEECH (ESC-50's human non-speech
    sounds stay non-speech); ``group_id`` is ``esc50:<src_file>``; the stationary
    ``noise_categories`` are noise material for mixing, not sources."""
    folder = Path(folder)
    meta = read_esc50_meta(folder)
    esc10 = meta["esc10"].astype(str).str.lower().isin(["true", "1"]) if "esc10" in meta.columns else pd.Series(False, index=meta.index)
    df = pd.DataFrame(
        {
            "source_id": "esc50/" + meta["filename"].str.replace(r"\.wav$", "", regex=True),
            "label": "nonspeech",
            "category": meta["category"],
            "group_id": "esc50:" + meta["src_file"].astype(str),
            "dataset": "esc50",
            "path": [str(resolve_under(folder / "audio", f, "esc50.csv filename")) for f in meta["filename"]],
            "start_s": 0.0,
            "end_s": 5.0,
            "license": np.where(esc10, "CC BY 3.0", "CC BY-NC 3.0"),
            "source_repo": "karolpiczak/ESC-50",
            "sample_rate_original": 44100.0,
            "bandlimited_origin": False,
            "fold": meta["fold"].astype(int),
        }
    )
    is_noise = df["category"].isin(list(noise_categories))
    noise = df[is_noise].reset_index(drop=True)
    return df[~is_noise].reset_index(drop=True), noise


# ---------------------------------------------------------------------------- the material, whole


def fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over a material folder's index: every file's relative path and size, and the full
    content of its annotation files (csv, rttm)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        rel = str(p.relative_to(folder))
        h.update(f"{rel}\t{p.stat().st_size}\n".encode())
        if p.suffix.lower() in (".csv", ".rttm"):
            h.update(p.read_bytes())
    return h.hexdigest()


def load_sources(cfg: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """``(sources, noise, fingerprint)`` for ``cfg['data_source']``; the fingerprint is a sha256 of the
    material's index (the corpus manifest, ESC-50's csv, the RTTM files) that goes into the bank hash."""
    kind = cfg.get("data_source") or "local"
    if kind == "local":
        data_dir = resolve_data_dir(cfg.get("data_dir"))
        if data_dir is None:
            raise ManifestError(
                "data_source='local' needs a corpus: set data_dir=<folder with manifest.csv> or DATA_DIR, or place "
                "it at ../shared/data; or use data_source='esc50_voxconverse' to download ESC-50 and VoxConverse"
            )
        sources, noise = sources_from_local(data_dir, include_music=bool(cfg.get("include_music")))
        return sources, noise, io.sha256_file(Path(data_dir) / "manifest.csv")
    if kind == "esc50_voxconverse":
        root = Path(cfg.get("downloads_dir") or PROJECT_ROOT / "data" / "downloads")
        esc = downloads.download_esc50(root)
        vox = downloads.download_voxconverse(root)
        s1, n1 = sources_from_esc50(esc)
        s2, n2 = sources_from_rttm_folder(vox, dataset="voxconverse")
        fp = hashlib.sha256((fingerprint(esc) + fingerprint(vox)).encode()).hexdigest()
        return pd.concat([s1, s2], ignore_index=True), pd.concat([n1, n2], ignore_index=True), fp
    if kind == "rttm_folder":
        folder = cfg.get("data_dir")
        if not folder:
            raise ManifestError("data_source='rttm_folder' needs data_dir=<folder of recordings with .rttm files>")
        sources, noise = sources_from_rttm_folder(Path(folder), dataset=Path(folder).name)
        return sources, noise, fingerprint(Path(folder))
    raise ValueError(f"unknown data_source {kind!r}; valid: local, esc50_voxconverse, rttm_folder (parameter 'data_source')")


def bank_sources(manifest: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(sources, noise)`` a built bank was rendered from: its ``bank.yaml`` names the parameters and the
    material (corpus folder or downloads folder), read again here."""
    meta = load_bank_meta(manifest)
    cfg = {**meta["params"], "data_dir": meta.get("data_dir") or None, "downloads_dir": meta.get("downloads_dir") or None}
    sources, noise, _ = load_sources(cfg)
    return sources, noise
