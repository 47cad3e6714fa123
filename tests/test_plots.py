"""lib.plots: every figure is drawn from lib.stats tables and saved as PNG and PDF."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from lib import evaluate, plots, stats  # noqa: E402


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


SOURCE = plots.Source("cpu/book", model="a test model label", seeds=0, smoke=True)


def _saved(fig, stem):
    assert (stem.parent / f"{stem.name}.png").stat().st_size > 1000
    assert (stem.parent / f"{stem.name}.pdf").stat().st_size > 1000
    text = fig._suptitle.get_text()
    plt.close(fig)
    return text


def test_caption_names_run_model_and_seed():
    assert plots.caption("cpu/book", "mini model: X", 0) == "run cpu/book · model: mini model: X · seed 0"
    assert plots.caption("cpu/book", None, [2, 0, 1], smoke=True) == "SMOKE result · run cpu/book · seeds 0, 1, 2"
    assert plots.Source("ci/x").text() == "run ci/x"
    assert plots.title("ROC curves", smoke=True) == "SMOKE result: ROC curves"


def test_every_figure_saves_png_and_pdf_with_a_distinct_title_and_its_caption(run, tmp_path):
    preds, bank = run
    table = stats.metrics_table(preds, bank, n_boot=100)
    titles = {}

    def check(fig, stem):
        cap = plots.caption_of(fig)
        assert "run cpu/book" in cap and "model: a test model label" in cap and "SMOKE result" in cap, (stem, cap)
        titles[stem] = _saved(fig, tmp_path / stem)

    check(plots.metrics_plot(table, source=SOURCE, path=tmp_path / "metrics"), "metrics")
    fits, thresholds = {}, {}
    for key in stats.system_keys(preds):
        part = stats.with_bank(stats.select(preds, key), bank)
        name = stats.system_label(*key)
        fits[name] = stats.fit_psychometric(part, "duration_ms")
        thresholds[name] = stats.psychometric_threshold(part, "duration_ms", 0.9, n_boot=50, fit=fits[name])
    check(plots.psychometric_plot(fits, thresholds, target=0.9, xlabel="duration (ms)", source=SOURCE, path=tmp_path / "psy"), "psy")
    check(plots.reliability_plot(stats.reliability_frame(preds), source=SOURCE, path=tmp_path / "rel"), "rel")
    check(plots.roc_plot(stats.roc_frame(preds), source=SOURCE, path=tmp_path / "roc"), "roc")
    check(plots.roc_plot(stats.roc_frame(preds), source=SOURCE, what="ROC curves: baselines", path=tmp_path / "roc2"), "roc2")
    check(plots.confidence_hist(preds, source=SOURCE, path=tmp_path / "hist"), "hist")
    check(plots.category_plot(stats.category_table(preds, bank), source=SOURCE, path=tmp_path / "cat"), "cat")
    check(plots.seed_plot(table[table["system"] == "ft"], source=SOURCE, path=tmp_path / "seed"), "seed")
    tabs = {a: evaluate.breakdown(preds[preds["seed"] == 0], bank, a) for a in ("duration_ms", "snr_db")}
    check(plots.by_axis_plot(tabs, source=SOURCE, path=tmp_path / "axis"), "axis")
    history = pd.DataFrame({"step": np.arange(1, 41), "epoch": np.arange(40) / 20, "loss": np.linspace(1, 0.2, 40), "lr": 1e-3})
    dev = pd.DataFrame({"epoch": [1, 2], "step": [20, 40], "dev_accuracy": [0.6, 0.7], "dev_balanced_accuracy": [0.6, 0.7],
                        "dev_loss": [0.7, 0.6]})
    check(plots.training_plot(history, dev, chosen_epoch=2, source=SOURCE, path=tmp_path / "train"), "train")
    assert len(set(titles.values())) == len(titles), titles  # every figure has its own title


def test_figures_without_path_are_returned_unsaved(run, tmp_path):
    preds, _ = run
    fig = plots.roc_plot(stats.roc_frame(preds))
    assert fig.axes and not list(tmp_path.iterdir())
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith("zs (AUC") for t in legend)
    plt.close(fig)


def _renderer(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def test_legends_sit_outside_the_data(run):
    preds, bank = run
    figs = [plots.roc_plot(stats.roc_frame(preds))]
    fits = {stats.system_label(*k): stats.fit_psychometric(stats.with_bank(stats.select(preds, k), bank), "snr_db")
            for k in stats.system_keys(preds)}
    figs.append(plots.psychometric_plot(fits, target=0.75))
    for fig in figs:
        r = _renderer(fig)
        ax = fig.axes[0]
        legend = ax.get_legend().get_window_extent(r)
        assert not legend.overlaps(ax.get_window_extent(r)), fig._suptitle.get_text()
        plt.close(fig)


def test_palette_has_a_distinct_colour_for_every_system():
    for n in (3, 10, 11, 14, 22, 30):
        colours = plots.system_palette([f"s{i}" for i in range(n)]).values()
        assert len({tuple(round(c, 3) for c in col) for col in colours}) == n, n


def test_forest_plots_have_one_point_per_row(run):
    preds, bank = run
    table = stats.metrics_table(preds, bank, n_boot=50)
    fig = plots.metrics_plot(table, metrics=("balanced_accuracy", "recall_speech"))
    for ax in fig.axes:
        ys = np.concatenate([np.asarray(line.get_ydata(), float) for line in ax.lines if line.get_marker() == "o"])
        assert sorted(ys) == list(range(len(table)))  # one point on each row, none shared
    plt.close(fig)


def test_seed_plot_spans_a_sensible_range(run):
    preds, bank = run
    table = stats.metrics_table(preds, bank, n_boot=50)
    fig = plots.seed_plot(table[table["system"] == "ft"])
    lo, hi = fig.axes[0].get_xlim()
    assert hi - lo >= 0.2 - 1e-9 and 0 <= lo and hi <= 1
    assert "seeds 0, 1" in plots.caption_of(fig) or plots.caption_of(fig) == ""
    plt.close(fig)


def test_by_axis_tick_labels_do_not_overlap_and_levels_read_in_order():
    rows = []
    for level in ("telephone", "lowpass_4000", "none", "lowpass_5500"):
        for label in ("speech", "nonspeech"):
            for i in range(10):
                rows.append({"run_id": "r", "system": "s", "variant": "", "seed": 0, "clip_id": f"{level}{label}{i}",
                             "label": label, "pred": label if i < 7 else "x", "p_speech": 0.5, "bandlimit": level})
    preds = pd.DataFrame(rows)
    bank = preds[["clip_id", "bandlimit"]]
    fig = plots.by_axis_plot({"bandlimit": evaluate.breakdown(preds.drop(columns="bandlimit"), bank, "bandlimit")})
    r = _renderer(fig)
    ax = fig.axes[0]
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    assert [t.get_text() for t in labels] == ["none", "telephone", "low-pass\n5.5 kHz", "low-pass\n4 kHz"]
    boxes = [t.get_window_extent(r) for t in labels]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert ax.get_title() == "band-limit treatment" and ax.get_ylabel() == "balanced accuracy"
    plt.close(fig)


def test_hardest_categories_are_ranked_by_the_upper_bound():
    cats = pd.DataFrame({"category": ["rare", "common", "easy"], "n": [3, 30, 30], "n_correct": [0, 10, 27]})
    cats["accuracy"] = cats["n_correct"] / cats["n"]
    ci = [stats.wilson_interval(k, n) for k, n in zip(cats["n_correct"], cats["n"])]
    cats["wilson_lo"], cats["wilson_hi"] = [c[0] for c in ci], [c[1] for c in ci]
    assert list(stats.hardest_categories(cats)["category"]) == ["common", "rare", "easy"]
    assert list(stats.hardest_categories(cats, min_n=5)["category"]) == ["common", "easy"]


def test_the_harmless_bitsandbytes_cpu_warning_is_dropped_and_nothing_else(caplog):
    import logging

    import lib  # noqa: F401 - installs the filter

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
                    "`pip install kernels` and the kernels >= 0.11.1", "no network")
        log.warning("some other bitsandbytes problem")
    assert [r.getMessage() for r in caplog.records] == ["some other bitsandbytes problem"]


def test_tables_show_formats_by_kind_and_keeps_headers_distinct():
    from lib import tables

    df = pd.DataFrame({"system": ["a", "b"], "n": [1200, 40], "n_seeds": [2, 3], "seeds": ["0,1", "0,1,2"],
                       "balanced_accuracy": [0.8123456, 0.5], "p_exact": [0.0612, 0.0004], "difference": [0.012, -0.3]})
    html = tables.show(df).to_html()
    for text in ("1,200", "0.812", "0.0612", "< 0.001", "+0.012", "-0.300", "0,1,2", "number of seeds", "balanced accuracy",
                 "p (exact)"):
        assert text in html, text
    assert "e-02" not in html and "balanced_accuracy" not in html
    summary = tables.metrics_summary(pd.DataFrame({"system": ["a"], "n": [10], "accuracy": [0.7], "accuracy_boot_lo": [0.6],
                                                   "accuracy_boot_hi": [0.8], "balanced_accuracy": [0.7],
                                                   "balanced_accuracy_boot_lo": [0.6], "balanced_accuracy_boot_hi": [0.8],
                                                   "recall_speech": [0.7], "recall_nonspeech": [0.7]}), balanced=True)
    assert list(summary.columns) == ["system", "clips", "balanced accuracy [bootstrap]"]  # no accuracy on a balanced split
    assert summary["balanced accuracy [bootstrap]"].iloc[0] == "0.700 [0.600, 0.800]"
    assert tables.is_balanced(["speech", "nonspeech"]) and not tables.is_balanced(["speech", "speech", "nonspeech"])


@pytest.mark.parametrize("values", [[0.5, 0.5], [0.99, 1.0], [0.0, 0.02], [0.785, 0.792]])
def test_seed_plot_shows_every_seed_whatever_the_values(values):
    t = pd.DataFrame({"system": "ft", "variant": "", "seed": range(len(values)), "balanced_accuracy": values})
    fig = plots.seed_plot(t)
    lo, hi = fig.axes[0].get_xlim()
    assert lo <= min(values) and max(values) <= hi and hi - lo >= 0.2 - 1e-9
    plt.close(fig)
