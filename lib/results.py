"""Run folders and the predictions table (see DESIGN.md: Tables 3 and 4, Runs).

``results/<profile>/<run_id>/`` holds ``params.yaml``, the executed notebooks, ``predictions.csv``,
``metrics.json``, ``bank.yaml`` (which bank the run used) and ``status.json``. Every write is atomic.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import yaml

from . import io
from .config import PROJECT_ROOT, check_name

LABELS = ("speech", "nonspeech")
# ``model``: for a system built on a Qwen2-Audio, which one (lib.model.model_label: the 7B, the mini or the tiny
# model), so no number of a small model is read as one of Qwen2-Audio-7B; empty for the baselines.
PREDICTION_COLUMNS = ["run_id", "system", "variant", "seed", "clip_id", "label", "pred", "p_speech", "model"]
SYSTEM_KEY = ["system", "variant", "seed"]


def results_root(root: str | Path | None = None) -> Path:
    path = Path(root) if root else PROJECT_ROOT / "results"
    return path if path.is_absolute() else PROJECT_ROOT / path


def make_run_id(prefix: str = "") -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{prefix}{stamp}"


def run_dir_for(profile: str, run_id: str, root: str | Path | None = None) -> Path:
    """``<results root>/<profile>/<run_id>``; both names are checked to be plain folder names, so that a run
    never writes outside its own folder (``--run-id ../x``, ``/abs``, ``.`` are refused)."""
    return results_root(root) / check_name(profile, "profile") / check_name(run_id, "run id")


def predictions_frame(
    *,
    run_id: str,
    system: str,
    clip_ids: Sequence[str],
    labels: Sequence[str],
    p_speech: Sequence[float] | np.ndarray,
    variant: str = "",
    seed: int | None = None,
    threshold: float = 0.5,
    pred: Sequence[str] | None = None,
    model: str = "",
    allow_unlabelled: bool = False,
) -> pd.DataFrame:
    """Build the predictions table for one system. ``pred`` defaults to ``p_speech >= threshold``.

    ``allow_unlabelled``: an empty label means "unknown" (``python -m lib predict`` on unlabelled clips).
    """
    p = np.asarray(p_speech, dtype=float)
    if len(p) != len(clip_ids) or len(labels) != len(clip_ids):
        raise ValueError(f"clip_ids ({len(clip_ids)}), labels ({len(labels)}) and p_speech ({len(p)}) differ in length")
    if not np.isfinite(p).all():
        bad_ids = [clip_ids[i] for i in np.flatnonzero(~np.isfinite(p))[:5]]
        raise ValueError(f"system {system!r}: p_speech has {int((~np.isfinite(p)).sum())} NaN values (clips {bad_ids})")
    bad = sorted(set(labels) - set(LABELS) - ({""} if allow_unlabelled else set()))
    if bad:
        raise ValueError(f"unknown labels {bad}; labels must be one of {LABELS}")
    if pred is None:
        pred = np.where(p >= threshold, "speech", "nonspeech")
    return pd.DataFrame(
        {
            "run_id": run_id,
            "system": system,
            "variant": variant,
            "seed": -1 if seed is None else int(seed),
            "clip_id": list(clip_ids),
            "label": list(labels),
            "pred": list(pred),
            "p_speech": p,
            "model": model,
        }
    )[PREDICTION_COLUMNS]


def read_predictions(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / "predictions.csv"
    if not path.exists():
        return pd.DataFrame(columns=PREDICTION_COLUMNS)
    df = pd.read_csv(path, dtype={"clip_id": str, "variant": str, "system": str, "run_id": str}, keep_default_na=False)
    df["p_speech"] = df["p_speech"].astype(float)
    if "model" not in df.columns:  # written before predictions named their model
        df["model"] = ""
    return df


def write_predictions(run_dir: str | Path, df: pd.DataFrame) -> Path:
    """Add (or replace) the rows of the systems in ``df`` in the run's predictions.csv, atomically."""
    if "model" not in df.columns:  # a table built without predictions_frame: no model named
        df = df.assign(model="")
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"predictions lack columns {missing}; expected {PREDICTION_COLUMNS}")
    old = read_predictions(run_dir)
    if len(old):
        keys = set(map(tuple, df[SYSTEM_KEY].astype(str).drop_duplicates().values))
        keep = ~old[SYSTEM_KEY].astype(str).apply(tuple, axis=1).isin(keys)
        df = pd.concat([old[keep], df[PREDICTION_COLUMNS]], ignore_index=True)
    df = df.assign(model=df["model"].fillna(""))
    return io.write_csv(Path(run_dir) / "predictions.csv", df[PREDICTION_COLUMNS])


def remove_predictions(run_dir: str | Path, keys: Iterable[Sequence[Any]]) -> Path | None:
    """Remove the rows of these ``(system, variant, seed)`` keys from the run's predictions.csv, atomically
    (e.g. ensembles of seeds that are no longer complete); ``None`` when there was nothing to remove."""
    old = read_predictions(run_dir)
    drop_keys = {tuple(str(v) for v in k) for k in keys}
    if old.empty or not drop_keys:
        return None
    drop = old[SYSTEM_KEY].astype(str).apply(tuple, axis=1).isin(drop_keys)
    return io.write_csv(Path(run_dir) / "predictions.csv", old[~drop]) if drop.any() else None


def write_bank_pointer(run_dir: str | Path, manifest: str | Path, sha256: str | None = None) -> Path:
    manifest = Path(manifest).resolve()
    return io.write_yaml(Path(run_dir) / "bank.yaml", {"manifest": str(manifest), "sha256": sha256 or io.sha256_file(manifest)})


def read_bank_pointer(run_dir: str | Path) -> Path:
    path = Path(run_dir) / "bank.yaml"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: run chapter 01_data_prep for this run first (it builds the bank and "
            "records it there), or pass bank_manifest=<path to a bank's manifest.csv>"
        )
    return Path(yaml.safe_load(path.read_text())["manifest"])
