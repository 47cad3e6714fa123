"""The degradation bank: a content-addressed folder of rendered clips (DESIGN.md table 2).

``build_bank(cfg)`` renders clips into ``<bank_dir>/<hash of the bank parameters and the source
fingerprint>/`` holding ``manifest.csv``, ``audio/*.wav`` (32-bit float), ``sources.csv`` and
``bank.yaml``. The folder appears only when complete (``lib.io.atomic_dir``); a build that fails leaves
any previous bank untouched, and an existing bank with the same hash is reused. Each clip is planned by
``lib.data.plan`` and rendered from its manifest row alone by ``lib.data.render``.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import yaml

from .. import audio, io
from ..config import PROJECT_ROOT
from .loading import with_progress
from .plan import bank_params, ofat_reference, plan_bank
from .render import SourceAudio, render_clip
from .schema import SOURCE_COLUMNS, SPLITS
from .sources import load_sources

BANK_VERSION = 6  # bump when rendering changes, so old banks are not reused


def bank_hash(params: Mapping[str, Any], fingerprint: str) -> str:
    blob = json.dumps({"params": params, "sources": fingerprint, "version": BANK_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def bank_root(cfg: Mapping[str, Any]) -> Path:
    root = Path(cfg.get("bank_dir") or "data/banks")
    return root if root.is_absolute() else PROJECT_ROOT / root


def find_bank(cfg: Mapping[str, Any]) -> Path | None:
    """The manifest of the complete bank ``cfg`` describes, if it was built already."""
    params = bank_params(cfg)
    _, _, fp = load_sources(cfg)
    m = bank_root(cfg) / bank_hash(params, fp) / "manifest.csv"
    return m if _complete(m.parent) else None


def _complete(folder: Path) -> bool:
    meta = folder / "bank.yaml"
    if not (meta.exists() and (folder / "manifest.csv").exists()):
        return False
    try:
        return bool((yaml.safe_load(meta.read_text()) or {}).get("complete"))
    except Exception:
        return False


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_bank(cfg: Mapping[str, Any], *, force: bool = False, progress: bool = True) -> Path:
    """Build (or reuse) the bank ``cfg`` describes; return the path of its ``manifest.csv``.

    ``cfg`` is a resolved config (``lib.config.resolve``); the keys used are ``BANK_PARAM_KEYS`` plus
    ``data_dir`` and ``bank_dir``. The folder ``<bank_dir>/<hash>/`` appears only complete.
    """
    params = bank_params(cfg)
    sources, noise, fingerprint = load_sources(cfg)
    h = bank_hash(params, fingerprint)
    folder = bank_root(cfg) / h
    manifest = folder / "manifest.csv"
    if _complete(folder) and not force:
        return manifest
    with _lock(folder.parent / f".{h}.lock"):
        if _complete(folder) and not force:  # built by another process while we waited
            return manifest
        for stale in folder.parent.glob(f".{h}.*.tmp"):  # left by a build that was killed (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        plan, sources_used, noise_used = plan_bank(params, sources, noise)
        with io.atomic_dir(folder) as tmp:
            (tmp / "audio").mkdir()
            cache = SourceAudio(pd.concat([sources_used, noise_used], ignore_index=True))
            feats = []
            rows = plan.to_dict("records")
            for row in with_progress(rows, progress, desc=f"bank {h}"):
                out = render_clip(row, cache, with_treated_signal=True)
                audio.write_audio(tmp / row["path"], out["mixture"])
                feats.append(
                    {
                        "rms_dbfs": audio.rms_dbfs(out["mixture"]),
                        "peak": float(np.max(np.abs(out["mixture"]))),
                        "rolloff95_hz_source": audio.rolloff_hz(out["signal"]),
                        "rolloff95_hz_source_treated": audio.rolloff_hz(out["signal_treated"]),
                        "rolloff95_hz_untreated": audio.rolloff_hz(out["untreated"]),
                        "rolloff95_hz": audio.rolloff_hz(out["mixture"]),
                        "highband_db_source": audio.highband_db(out["signal"]),
                        "highband_db_source_treated": audio.highband_db(out["signal_treated"]),
                        "highband_db_untreated": audio.highband_db(out["untreated"]),
                        "highband_db": audio.highband_db(out["mixture"]),
                    }
                )
            plan = pd.concat([plan, pd.DataFrame(feats)], axis=1)
            io.write_csv(tmp / "manifest.csv", plan)
            io.write_csv(tmp / "sources.csv", sources_used[SOURCE_COLUMNS + ["source_repo", "bandlimited_origin"]].assign(
                path=[_display_path(p) for p in sources_used["path"]]))
            io.write_yaml(
                tmp / "bank.yaml",
                {
                    "hash": h, "version": BANK_VERSION, "params": params, "sources_fingerprint": fingerprint,
                    "data_dir": str(cfg.get("data_dir") or ""), "downloads_dir": str(cfg.get("downloads_dir") or ""),
                    "n_clips": len(plan),
                    "counts": {s: int((plan["split"] == s).sum()) for s in SPLITS},
                    "reference": ofat_reference(params) if params["design"] == "ofat" else None,
                    "complete": True,
                },
            )
    return manifest


def _display_path(p: str) -> str:
    try:
        return str(Path(p).relative_to(PROJECT_ROOT.parent))
    except ValueError:
        return str(p)
