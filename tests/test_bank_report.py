"""lib.bank_report: chapter 01's figures and tables of a bank, on a bank built from the synthetic corpus."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from lib import bank_report, config, data, plots


@pytest.fixture(scope="module")
def bank(synthetic_corpus, tmp_path_factory) -> pd.DataFrame:
    cfg = config.resolve("cpu", data_dir=str(synthetic_corpus), bank_dir=str(tmp_path_factory.mktemp("banks")), durations_ms=[50, 200],
                         snrs_db=[0, 10, 20], noise_types=["white", "real"], clips_per_cell=6, max_sources_per_class=None)
    return data.load_bank(data.build_bank(cfg, progress=False))


def _saved(path) -> bool:
    return path.with_suffix(".png").exists() and path.with_suffix(".pdf").exists()


def test_cells_figure_counts_every_clip_once(bank, tmp_path):
    fig, table = bank_report.cells_figure(bank, "run test", tmp_path / "cells")
    assert _saved(tmp_path / "cells") and "run test" in plots.caption_of(fig)
    assert table.to_numpy().sum() == len(bank)
    assert list(table.index.names) == ["duration_ms", "snr_db"] and set(table.columns.get_level_values("split")) == set(data.SPLITS)
    assert (table.sum(axis=1) == 2 * 6).all()  # two classes x clips_per_cell in every duration x SNR cell
    assert len(bank_report.cell_counts(bank)) == 3 * 2 * 2 * 3  # splits x classes x durations x SNRs
    plt.close("all")


def test_axes_categories_and_groups(bank, tmp_path):
    fig = bank_report.axes_figure(bank, "run test", tmp_path / "axes")
    assert _saved(tmp_path / "axes") and len(fig.axes) == len(bank_report.OTHER_AXES)
    fig, text = bank_report.categories_figure(bank, "run test", tmp_path / "cats", top=2)
    n_cat = bank.loc[bank.label == "nonspeech", "category"].nunique()
    assert text.startswith(f"{n_cat} non-speech categories; the 2 most frequent hold ")
    fig, groups = bank_report.groups_figure(bank, "run test", tmp_path / "groups")
    assert groups.loc["speech", "groups"] == bank.loc[bank.label == "speech", "group_id"].nunique()
    assert groups.loc["nonspeech", "max"] == bank[bank.label == "nonspeech"].groupby("group_id").size().max()
    assert _saved(tmp_path / "cats") and _saved(tmp_path / "groups")
    plt.close("all")


@pytest.mark.parametrize("n", [1, 2, 4, 6])
def test_listening_examples_are_long_test_clips_of_both_classes(bank, n):
    picks = bank_report.listening_examples(bank, n)
    assert 1 <= len(picks) <= n
    assert all(p["split"] == "test" and p["duration_ms"] == bank["duration_ms"].max() for p in picks)
    if n >= 2:
        assert {p["label"] for p in picks} == set(data.LABELS)
        assert min(p["snr_db"] for p in picks if p["label"] == "speech") == bank["snr_db"].min()  # the hardest SNR first
    assert [p["clip_id"] for p in picks] == [p["clip_id"] for p in bank_report.listening_examples(bank, n)]  # seeded
    line = bank_report.example_caption(picks[0], "peak")
    assert line.startswith(f"**{picks[0]['label']}**") and f"`{picks[0]['clip_id']}` (peak-normalized)" in line


def test_shortcut_figure_has_a_bar_per_report_row(bank, tmp_path):
    report = data.shortcut_report(bank, normalization="none")
    fig = bank_report.shortcut_figure(report, "run test", tmp_path / "shortcuts")
    assert len(fig.axes[0].patches) == len(report) and _saved(tmp_path / "shortcuts")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "band-limited · metadata · untreated" in labels
    plt.close("all")
