"""The baselines under each load-time normalization: the energy detector and the log-mel classifier trained on
train and thresholded on dev under each, the free voice-activity detectors applied to the same test clips, and
the linear probe on the run model's own encoder. Test labels are never seen by a fit.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import baselines, results
from ..systems import load_system
from .levels import NORMS, split_clips

TRAINED = (baselines.EnergyDetector, baselines.LogMelClassifier)
WEBRTC_MODES = range(4)


def fit_baselines(bank: pd.DataFrame, manifest: str | Path, clips: Mapping[str, Sequence[np.ndarray]], seed: int, run_id: str
                  ) -> tuple[dict[tuple[str, str], Any], list[pd.DataFrame], pd.DataFrame]:
    """Fit each trained baseline under each normalization (train split; threshold on dev) and score the test
    split. Returns the fitted systems by ``(name, normalization)``, their test predictions, and one row per fit
    (threshold, the fit's own information, seconds)."""
    fitted, preds, rows = {}, [], []
    for n in NORMS:
        train, dev = split_clips(clips, bank, n, "train"), split_clips(clips, bank, n, "dev")
        for cls in TRAINED:
            t0 = time.monotonic()
            model = cls(normalization=n, seed=seed).fit(train[0], train[1], dev[0], dev[1])
            fitted[(model.name, n)] = model
            preds.append(baselines.score_bank(model, bank, manifest, split="test", run_id=run_id, progress=False))
            rows.append({"system": model.name, "normalization": n, "threshold": model.threshold,
                         "threshold_db": getattr(model, "threshold_db", None), **model.fit_info,
                         "seconds": time.monotonic() - t0})
    return fitted, preds, pd.DataFrame(rows)


def free_vads() -> list[Any]:
    """Silero VAD, FireRedVAD and WebRTC VAD in each of its aggressiveness modes (30 ms frames): nothing to fit."""
    return [baselines.SileroVAD(), baselines.FireRedVAD()] + [baselines.WebRTCVAD(mode=m, frame_ms=30) for m in WEBRTC_MODES]


def score_vads(bank: pd.DataFrame, manifest: str | Path, run_id: str) -> list[pd.DataFrame]:
    """The test predictions of every free VAD under every normalization."""
    vads = free_vads()
    return [baselines.score_bank(vad, bank, manifest, normalization=n, split="test", run_id=run_id, progress=False)
            for n in NORMS for vad in vads]


def save_and_reload(fitted: Mapping[tuple[str, str], Any], normalization: str, run_dir: str | Path, bank: pd.DataFrame,
                    manifest: str | Path, run_id: str, written: pd.DataFrame) -> list[str]:
    """Save the trained baselines fitted under ``normalization`` into the run folder as systems, reload each from
    disk and check that it gives the very scores and decisions ``written`` holds for it (AssertionError if not).
    Returns one line per system saying where it went."""
    lines = []
    for name in (cls.default_name for cls in TRAINED):
        saved = fitted[(name, normalization)].save_to_run(run_dir, name)
        back = load_system(f"{run_dir}:{name}")
        again = baselines.score_bank(back, bank, manifest, split="test", run_id=run_id, progress=False)
        before = written[(written.system == name) & (written.variant == normalization)]
        assert np.allclose(again["p_speech"].values, before["p_speech"].values, rtol=0, atol=1e-12), name
        assert (again["pred"].values == before["pred"].values).all(), name
        lines.append(f"{name}: saved to {saved} and reloaded; normalization {back.normalization}, threshold {back.threshold:.3f}")
    return lines


def fit_encoder_probe(model_name: str, bank: pd.DataFrame, manifest: str | Path, clips: Mapping[str, Sequence[np.ndarray]],
                      normalization: str, seed: int, run_dir: str | Path, run_id: str) -> str:
    """The control for what the language model adds: a linear probe on the run model's own frozen encoder
    (``lib.probe.WhisperProbe``, ``C`` and threshold chosen on dev), saved as a system of the run and its test
    predictions written to the run's ``predictions.csv``. Only mini models have a frozen pretrained encoder;
    for any other model the probe is skipped. Returns a Markdown sentence on what was done."""
    from .. import model, probe

    if model_name not in model.MINI_MODELS:
        return (f"The probe needs a model whose encoder is frozen and pretrained (the mini models); "
                f"`{model_name}` is not one, so it is skipped here.")
    t0 = time.monotonic()
    tower_probe = probe.WhisperProbe(model_name, normalization=normalization, seed=seed)
    train, dev = split_clips(clips, bank, normalization, "train"), split_clips(clips, bank, normalization, "dev")
    tower_probe.fit(train[0], train[1], dev[0], dev[1])
    tower_probe.save_to_run(run_dir, tower_probe.name)
    results.write_predictions(run_dir, baselines.score_bank(tower_probe, bank, manifest, split="test", run_id=run_id, progress=False))
    by_c = tower_probe.fit_info["dev_balanced_accuracy_by_C"]
    return (f"Probe on the {model.model_label(model_name)}'s encoder: `C` = {tower_probe.C:g} chosen on dev "
            f"(dev balanced accuracy by C: {', '.join(f'{c}: {b:.3f}' for c, b in by_c.items())}), "
            f"threshold {tower_probe.threshold:.3f}; fitted and scored in {time.monotonic() - t0:.0f} s.")
