"""lib.plots: every figure is drawn from lib.stats tables and saved as PNG and PDF."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from lib import plots, stats  # noqa: E402


@pytest.fixture(scope="module")
def run():
    """Three systems (one with two seeds) on 2 x 8 sources x 4 durations x 3 SNRs."""
    rng = np.random.default_rng(0)
    bank, rows = [], []
    i = 0
    for label in ("speech", "nonspeech"):
        for g in range(8):
            for dur in (100, 200, 500, 1000):
                for snr in (0, 10, 20):
                    cid = f"c{i}"
                    i += 1
                    bank.append({"clip_id": cid, "group_id": f"{label}{g}", "label": label, "duration_ms": dur, "snr_db": snr,
                                 "category": "speech" if label == "speech" else f"cat{g % 4}"})
                    for system, seed, skill in (("ft", 0, 1.5), ("ft", 1, 1.2), ("zs", 0, 0.2), ("energy", 0, -0.3)):
                        p_ok = 0.5 + 0.47 / (1 + np.exp(-(skill + 1.2 * np.log(dur / 200) + 0.08 * (snr - 5))))
                        ok = rng.random() < p_ok
                        pred = label if ok else ("nonspeech" if label == "speech" else "speech")
                        p = 0.5 + (0.5 if pred == "speech" else -0.5) * rng.random()
                        rows.append({"run_id": "r", "system": system, "variant": "attn" if system == "ft" else "", "seed": seed,
                                     "clip_id": cid, "label": label, "pred": pred, "p_speech": p})
    return pd.DataFrame(rows), pd.DataFrame(bank)


def _saved(fig, stem):
    assert (stem.parent / f"{stem.name}.png").stat().st_size > 1000
    assert (stem.parent / f"{stem.name}.pdf").stat().st_size > 1000
    text = fig._suptitle.get_text()
    plt.close(fig)
    return text


def test_title_smoke_prefix():
    assert plots.title("ROC curves", smoke=True) == "SMOKE (tiny model): ROC curves"
    assert plots.title("ROC curves") == "ROC curves"


def test_every_figure_saves_png_and_pdf(run, tmp_path):
    preds, bank = run
    table = stats.metrics_table(preds, bank, n_boot=100)
    assert _saved(plots.metrics_plot(table, smoke=True, path=tmp_path / "metrics"), tmp_path / "metrics").startswith("SMOKE (tiny model)")
    assert not _saved(plots.metrics_plot(table, interval="wilson", path=tmp_path / "wilson"), tmp_path / "wilson").startswith("SMOKE")

    fits, thresholds = {}, {}
    for key in stats.system_keys(preds):
        part = stats.with_bank(stats.select(preds, key), bank)
        name = stats.system_label(*key)
        fits[name] = stats.fit_psychometric(part, "duration_ms")
        thresholds[name] = stats.psychometric_threshold(part, "duration_ms", 0.9, n_boot=50, fit=fits[name])
    fig = plots.psychometric_plot(fits, thresholds, target=0.9, xlabel="duration (ms)", smoke=True, path=tmp_path / "psy")
    assert "Psychometric" in _saved(fig, tmp_path / "psy")

    _saved(plots.reliability_plot(stats.reliability_frame(preds), smoke=True, path=tmp_path / "rel"), tmp_path / "rel")
    _saved(plots.roc_plot(stats.roc_frame(preds), path=tmp_path / "roc"), tmp_path / "roc")
    _saved(plots.confidence_hist(preds, path=tmp_path / "hist"), tmp_path / "hist")
    _saved(plots.category_plot(stats.category_table(preds, bank), path=tmp_path / "cat"), tmp_path / "cat")
    _saved(plots.seed_plot(table, path=tmp_path / "seed"), tmp_path / "seed")


def test_figures_without_path_are_returned_unsaved(run, tmp_path):
    preds, _ = run
    fig = plots.roc_plot(stats.roc_frame(preds))
    assert fig.axes and not list(tmp_path.iterdir())
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith("zs (AUC") for t in legend)
    plt.close(fig)
