"""The predictions table, run folders and `python -m lib predict`'s manifest checks."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lib import predict, results


def _preds(system="s", n=4, seed=0):
    return results.predictions_frame(
        run_id="r", system=system, seed=seed, clip_ids=[f"c{i}" for i in range(n)],
        labels=["speech", "nonspeech"] * (n // 2), p_speech=np.linspace(0, 1, n),
    )


def test_predictions_frame_columns_and_threshold():
    df = _preds()
    assert list(df.columns) == results.PREDICTION_COLUMNS
    assert df["pred"].tolist() == ["nonspeech", "nonspeech", "speech", "speech"]


def test_predictions_frame_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown labels"):
        results.predictions_frame(run_id="r", system="s", clip_ids=["a"], labels=["SPEECH"], p_speech=[0.3])
    with pytest.raises(ValueError, match="NaN"):
        results.predictions_frame(run_id="r", system="s", clip_ids=["a"], labels=["speech"], p_speech=[np.nan])
    with pytest.raises(ValueError, match="differ in length"):
        results.predictions_frame(run_id="r", system="s", clip_ids=["a", "b"], labels=["speech"], p_speech=[0.1])


def test_write_predictions_merges_by_system(tmp_path):
    results.write_predictions(tmp_path, _preds("a"))
    results.write_predictions(tmp_path, _preds("b"))
    results.write_predictions(tmp_path, _preds("a", seed=0))  # replaces a's rows, never duplicates them
    df = results.read_predictions(tmp_path)
    assert len(df) == 8 and sorted(df["system"].unique()) == ["a", "b"]


def test_bank_pointer_explains_missing_chapter(tmp_path):
    with pytest.raises(FileNotFoundError, match="01_data_prep"):
        results.read_bank_pointer(tmp_path)


def _manifest(tmp_path, rows):
    path = tmp_path / "clips.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    (tmp_path / "audio").mkdir(exist_ok=True)
    return path


def test_clip_manifest_refuses_paths_outside_root(tmp_path):
    m = _manifest(tmp_path, [{"path": "../secret.wav", "label": "speech"}])
    with pytest.raises(ValueError, match="outside the audio root"):
        predict.read_clip_manifest(m, tmp_path / "audio")


def test_clip_manifest_names_missing_columns_and_bad_labels(tmp_path):
    m = _manifest(tmp_path, [{"file": "a.wav", "label": "speech"}])
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['path'\]"):
        predict.read_clip_manifest(m, tmp_path / "audio")
    m = _manifest(tmp_path, [{"path": "a.wav", "label": "speech"}, {"path": "b.wav", "label": "music"}])
    with pytest.raises(ValueError, match="line 3: unknown label 'music'"):
        predict.read_clip_manifest(m, tmp_path / "audio")
    m = _manifest(tmp_path, [{"path": "a.wav", "label": "speech", "clip_id": "x"}, {"path": "b.wav", "label": "speech", "clip_id": "x"}])
    with pytest.raises(ValueError, match="duplicated clip_id"):
        predict.read_clip_manifest(m, tmp_path / "audio")
