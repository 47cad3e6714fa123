"""The listening tool driven from Python: widget values in, the listed clips out.

A small synthetic bank (sine/noise WAVs written with soundfile) and a hand-made predictions table
whose errors are known, so every expected list is written down, not recomputed with the code under test.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib import widgets
from lib.widgets import NO_MATCH, ListeningTool, filter_clips, join_bank

SR = 16_000

# clip_id, label, category, duration_ms, snr_db, noise_type, rt60_s, pred (system "energy"), p_speech
CLIPS = [
    ("c01", "speech", "speech", 100, 0.0, "white", 0.0, "nonspeech", 0.10),   # wrong, conf 0.90
    ("c02", "speech", "speech", 200, 10.0, "pink", 0.3, "nonspeech", 0.30),   # wrong, conf 0.70
    ("c03", "speech", "speech", 500, 20.0, "real", 0.0, "speech", 0.80),      # right
    ("c04", "speech", "speech", 1000, 0.0, "white", 0.3, "nonspeech", 0.45),  # wrong, conf 0.55
    ("c05", "nonspeech", "dog", 100, 0.0, "pink", 0.0, "speech", 0.95),       # wrong, conf 0.95
    ("c06", "nonspeech", "dog", 200, 10.0, "white", 0.3, "nonspeech", 0.20),  # right
    ("c07", "nonspeech", "laughing", 500, 20.0, "real", 0.0, "speech", 0.60), # wrong, conf 0.60
    ("c08", "nonspeech", "laughing", 1000, 10.0, "pink", 0.3, "speech", 0.85),# wrong, conf 0.85
    ("c09", "nonspeech", "rain", 20, 20.0, "white", 0.0, "speech", 0.75),     # wrong, conf 0.75
    ("c10", "nonspeech", "rain", 1000, 0.0, "real", 0.3, "nonspeech", 0.05),  # right
]


def _write_bank(root: Path) -> tuple[pd.DataFrame, Path]:
    import soundfile as sf

    rng = np.random.default_rng(0)
    rows = []
    (root / "clips").mkdir(parents=True)
    for i, (cid, label, cat, dur, snr, noise, rt60, _pred, _p) in enumerate(CLIPS):
        n = int(SR * dur / 1000)
        t = np.arange(n) / SR
        audio = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.05 * rng.standard_normal(n)
        rel = f"clips/{cid}.wav"
        sf.write(root / rel, audio.astype(np.float32), SR, subtype="PCM_16")
        rows.append(dict(clip_id=cid, source_id=f"s{i // 2}", group_id=f"g{i // 2}", label=label, category=cat,
                         split="test", duration_ms=dur, snr_db=snr, noise_type=noise, rt60_s=rt60, filter="none",
                         seed=i, path=rel))
    bank = pd.DataFrame(rows)
    manifest = root / "manifest.csv"
    bank.to_csv(manifest, index=False)
    return bank, manifest


def _predictions() -> pd.DataFrame:
    energy = pd.DataFrame(
        [dict(run_id="r1", system="energy", variant="", seed=-1, clip_id=c[0], label=c[1], pred=c[7], p_speech=c[8])
         for c in CLIPS]
    )
    # A second system that gets everything right except c03 (so its list differs).
    other = energy.copy()
    other["system"], other["variant"], other["seed"] = "lora", "attn", 0
    other["pred"], other["p_speech"] = other["label"], np.where(other["label"] == "speech", 0.9, 0.1)
    other.loc[other.clip_id == "c03", ["pred", "p_speech"]] = ["nonspeech", 0.2]
    return pd.concat([energy, other], ignore_index=True)


@pytest.fixture()
def bank(tmp_path):
    return _write_bank(tmp_path)


TINY_PNG = b"\x89PNG\r\n\x1a\n stub"


@pytest.fixture()
def tool(bank, monkeypatch):
    """The tool on the synthetic bank; spectrograms are stubbed (drawing them is tested once, below)."""
    monkeypatch.setattr(widgets.media, "spectrogram_png", lambda audio, **kw: TINY_PNG)
    table, manifest = bank
    return ListeningTool(_predictions(), table, manifest, normalization="none", page_size=3)


def ids(df: pd.DataFrame) -> list[str]:
    return list(df["clip_id"])


def test_lists_only_misclassified_most_confident_first(tool):
    assert tool.system_filter.options == ("energy", "lora/attn#0")
    assert tool.system_filter.value == "energy"
    # wrong clips by confidence in the wrong class: c05 .95, c01 .90, c08 .85, c09 .75, c02 .70, c07 .60, c04 .55
    assert ids(tool.filtered()) == ["c05", "c01", "c08", "c09", "c02", "c07", "c04"]
    assert (tool.filtered()["pred"] != tool.filtered()["label"]).all()


def test_filter_by_true_class(tool):
    tool.class_filter.value = "nonspeech"
    assert ids(tool.filtered()) == ["c05", "c08", "c09", "c07"]
    tool.class_filter.value = "speech"
    assert ids(tool.filtered()) == ["c01", "c02", "c04"]
    tool.class_filter.value = "all"
    assert len(tool.filtered()) == 7


def test_filter_by_category(tool):
    tool.category_filter.value = ("laughing",)
    assert ids(tool.filtered()) == ["c08", "c07"]
    tool.category_filter.value = ("laughing", "rain")
    assert ids(tool.filtered()) == ["c08", "c09", "c07"]
    tool.category_filter.value = ()
    assert len(tool.filtered()) == 7


def test_filter_by_duration_and_snr(tool):
    # discrete sliders: the levels the bank holds, nothing in between
    assert [v for _, v in tool.duration_filter.options] == [20, 100, 200, 500, 1000]
    assert [label for label, _ in tool.snr_filter.options] == ["0 dB", "10 dB", "20 dB"]
    tool.duration_filter.value = (100, 200)
    assert ids(tool.filtered()) == ["c05", "c01", "c02"]
    tool.duration_filter.value = (20, 1000)
    tool.snr_filter.value = (10.0, 20.0)
    assert ids(tool.filtered()) == ["c08", "c09", "c02", "c07"]
    tool.snr_filter.value = (0.0, 0.0)
    tool.class_filter.value = "speech"
    assert ids(tool.filtered()) == ["c01", "c04"]


def test_filter_by_other_axes(tool):
    assert set(tool.choice_filters) == {"noise_type", "rt60_s"}  # filter and split hold one value: no widget
    tool.choice_filters["noise_type"].value = ("pink",)
    assert ids(tool.filtered()) == ["c05", "c08", "c02"]
    tool.choice_filters["rt60_s"].value = ("0.3",)
    assert ids(tool.filtered()) == ["c08", "c02"]


def test_sort_orders(tool):
    tool.sort.value = "least confident first"
    assert ids(tool.filtered()) == ["c04", "c07", "c02", "c09", "c08", "c01", "c05"]
    tool.sort.value = "clip id"
    assert ids(tool.filtered()) == ["c01", "c02", "c04", "c05", "c07", "c08", "c09"]
    tool.sort.value = "p_speech, high to low"
    assert ids(tool.filtered()) == ["c05", "c08", "c09", "c07", "c04", "c02", "c01"]


def test_most_confidently_wrong_first_with_every_clip(tool):
    """With 'misclassified only' off, confident mistakes still come first and confident correct
    answers last (the sort is by the probability given to the wrong class, not to the chosen one)."""
    tool.errors_only.value = False
    # p given to the wrong class: c05 .95 c01 .90 c08 .85 c09 .75 c02 .70 c07 .60 c04 .55 | c03 .20 c06 .20 c10 .05
    assert ids(tool.filtered()) == ["c05", "c01", "c08", "c09", "c02", "c07", "c04", "c03", "c06", "c10"]


def test_system_switch_and_all_clips(tool):
    tool.system_filter.value = "lora/attn#0"
    assert ids(tool.filtered()) == ["c03"]
    tool.errors_only.value = False
    assert len(tool.filtered()) == len(CLIPS)
    assert tool.filtered()["system"].eq("lora").all()


def test_paging_and_cards(tool):
    assert tool.n_pages == 3  # 7 clips, 3 per page
    assert ids(tool.page_rows()) == ["c05", "c01", "c08"]
    cards = tool.clips_box.children
    assert len(cards) == 3
    tool.next_button.click()
    assert tool.page == 1 and ids(tool.page_rows()) == ["c09", "c02", "c07"]
    assert "page 2 of 3" in tool.status.value
    tool.go_to_page(99)
    assert tool.page == 2 and ids(tool.page_rows()) == ["c04"]
    assert tool.next_button.disabled and not tool.prev_button.disabled
    tool.class_filter.value = "nonspeech"  # a filter change goes back to the first page
    assert tool.page == 0
    tool.page_size.value = 10
    assert tool.n_pages == 1 and len(tool.clips_box.children) == 4


def test_card_shows_labels_p_speech_audio_and_spectrogram(bank):
    import io

    import ipywidgets as w
    import soundfile as sf

    table, manifest = bank
    tool = ListeningTool(_predictions(), table, manifest, normalization="none", page_size=1)
    card = tool.clips_box.children[0]  # c05: a dog, called speech with p 0.95
    flat = _walk(card)
    html = " ".join(x.value for x in flat if isinstance(x, w.HTML))
    assert "c05" in html and "true: <b>NONSPEECH</b>" in html and "predicted: <b>SPEECH</b>" in html
    assert "p_speech = <b>0.950</b>" in html and "dog" in html and "SNR 0 dB" in html
    audio = [x for x in flat if isinstance(x, w.Audio)]
    assert len(audio) == 1 and audio[0].format == "wav"
    samples, sr = sf.read(io.BytesIO(audio[0].value))
    assert sr == SR and len(samples) == SR // 10  # the 100 ms clip
    images = [x for x in flat if isinstance(x, w.Image)]
    assert len(images) == 1 and images[0].value[:8] == b"\x89PNG\r\n\x1a\n" and len(images[0].value) > 5000


def test_no_match_message(tool):
    tool.duration_filter.value = (20, 20)  # only c09, a non-speech clip, is 20 ms long
    tool.class_filter.value = "speech"
    assert tool.filtered().empty
    assert NO_MATCH in tool.status.value
    assert tool.clips_box.children == (tool.empty_message,)
    assert NO_MATCH in tool.empty_message.value


def test_missing_audio_is_reported_on_the_card(bank, monkeypatch):
    monkeypatch.setattr(widgets.media, "spectrogram_png", lambda audio, **kw: TINY_PNG)
    table, manifest = bank
    (manifest.parent / "clips" / "c05.wav").unlink()
    tool = ListeningTool(_predictions(), table, manifest, page_size=3)
    text = " ".join(x.value for x in _walk(tool.clips_box.children[0]) if hasattr(x, "value") and isinstance(x.value, str))
    assert "cannot load audio" in text
    assert len(tool.clips_box.children) == 3  # the other clips still show


def test_filter_clips_is_pure_and_keeps_infinite_snr_at_the_ends():
    preds = pd.DataFrame(dict(run_id="r", system="s", variant="", seed=-1, clip_id=["a", "b", "c"],
                              label="speech", pred="nonspeech", p_speech=[0.1, 0.2, 0.3]))
    bank = pd.DataFrame(dict(clip_id=["a", "b", "c"], snr_db=[0.0, 10.0, np.inf], duration_ms=[100, 200, 300]))
    df = join_bank(preds, bank)
    before = df.copy()
    assert ids(filter_clips(df, snr_db=(5.0, 10.0), snr_limits=(0.0, 10.0))) == ["b", "c"]
    assert ids(filter_clips(df, snr_db=(0.0, 5.0), snr_limits=(0.0, 10.0))) == ["a"]
    assert ids(filter_clips(df, duration_ms=(150, 300))) == ["b", "c"]
    pd.testing.assert_frame_equal(df, before)


def test_listening_tool_from_run_folder(bank, tmp_path, monkeypatch):
    from lib import results

    monkeypatch.setattr(widgets.media, "spectrogram_png", lambda audio, **kw: TINY_PNG)

    table, manifest = bank
    run = tmp_path / "results" / "cpu" / "run1"
    results.write_predictions(run, _predictions())
    results.write_bank_pointer(run, manifest)
    (run / "params.yaml").write_text("run:\n  smoke: true\nbank:\n  normalization: rms\n")
    tool = widgets.listening_tool(run, system="lora")
    assert tool.system_filter.value == "lora/attn#0"
    assert tool.normalization.value == "rms" and tool.smoke
    assert ids(tool.filtered()) == ["c03"]
    assert len(tool.clips_box.children) == 1


def _walk(widget):
    out = [widget]
    for child in getattr(widget, "children", ()):
        out.extend(_walk(child))
    return out


def test_clip_missing_from_bank_is_named_on_its_card(bank, monkeypatch):
    monkeypatch.setattr(widgets.media, "spectrogram_png", lambda audio, **kw: TINY_PNG)
    table, manifest = bank
    tool = ListeningTool(_predictions(), table[table.clip_id != "c05"], manifest, page_size=1)
    text = " ".join(x.value for x in _walk(tool.clips_box.children[0]) if isinstance(getattr(x, "value", None), str))
    assert "c05 is not in the bank manifest" in text


# ---------------------------------------------------------------------------------------------
# The researcher's features: comparison, keyboard, tags, export, reset, summary, live-kernel note
# ---------------------------------------------------------------------------------------------
def _text(widget) -> str:
    return " ".join(x.value for x in _walk(widget) if isinstance(getattr(x, "value", None), str))


def test_compare_two_systems_lists_the_mcnemar_discordant_clips(tool):
    tool.compare_filter.value = "lora/attn#0"
    assert not tool.compare_mode.disabled and tool.errors_only.disabled
    # A (energy) wrong and B (lora) right: every energy mistake, most confidently wrong (for A) first
    assert ids(tool.filtered()) == ["c05", "c01", "c08", "c09", "c02", "c07", "c04"]
    tool.compare_mode.value = "a_right_b_wrong"
    assert ids(tool.filtered()) == ["c03"]
    tool.compare_mode.value = "both_wrong"
    assert tool.filtered().empty
    tool.compare_mode.value = "discordant"
    assert len(tool.filtered()) == 8
    # 1 clip only A gets right, 7 only B: exact McNemar p = 2 * (1 + 8) / 2**8
    assert "only A is right on 1, only B on 7" in tool.status.value
    assert "p = 0.0703" in tool.status.value
    tool.compare_mode.value = "a_right_b_wrong"
    card = _text(tool.clips_box.children[0])
    assert "A energy: p_speech = <b>0.800</b>" in card and "B lora/attn#0: p_speech = <b>0.200</b>" in card
    assert "A says <b>SPEECH</b> · B says <b>NONSPEECH</b>" in card


def test_discordant_counts_match_lib_stats():
    from lib.stats import mcnemar_exact

    df = join_bank(_predictions(), None)
    d = widgets.discordant_counts(df, "energy", "lora/attn#0")
    assert (d["n"], d["a_only"], d["b_only"], d["both_wrong"]) == (10, 1, 7, 0)
    assert d["p"] == pytest.approx(18 / 256) == pytest.approx(mcnemar_exact(1, 7))


def test_keyboard_moves_the_selection_across_pages(tool):
    assert tool.selected == 0
    assert "speechbook-selected" in tool.clips_box.children[0]._dom_classes
    tool.handle_key("next")
    tool.handle_key("next")
    assert tool.selected == 2 and tool.page == 0
    assert "speechbook-selected" in tool.clips_box.children[2]._dom_classes
    assert "speechbook-selected" not in tool.clips_box.children[0]._dom_classes
    tool.handle_key("next")  # the 4th clip is on page 2 (3 per page)
    assert tool.page == 1 and tool.selected_row()["clip_id"] == "c09"
    tool.handle_key("previous")
    assert tool.page == 0 and tool.selected_row()["clip_id"] == "c08"
    for _ in range(20):
        tool.handle_key("next")
    assert tool.selected == 6 and tool.page == 2  # stops at the last clip
    tool.handle_key("unknown")
    assert tool.selected == 6


def test_keyboard_widget_reads_keys_and_guards_jupyterlab_shortcuts(tool):
    kb = tool.keyboard
    assert kb is not None and kb in tool.widget.children
    for key in ('"j": "next"', '"k": "previous"', '" ": "play"', '"1": "tag:fine"', '"3": "tag:mislabeled"'):
        assert key in kb._esm
    assert "data-lm-suppress-shortcuts" in kb._esm
    # what the browser sends arrives at handle_key
    kb._handle_custom_msg({"action": "next"}, [])
    assert tool.selected == 1


def test_tags_are_saved_to_the_run_folder_and_reloaded(bank, tmp_path, monkeypatch):
    monkeypatch.setattr(widgets.media, "spectrogram_png", lambda audio, **kw: TINY_PNG)
    table, manifest = bank
    run = tmp_path / "run"
    run.mkdir()
    tool = ListeningTool(_predictions(), table, manifest, page_size=3, run_dir=run)
    tool.handle_key("tag:mislabeled")  # the selected clip, c05
    tool.select(1)
    buttons = tool._tag_buttons["c01"]
    buttons.value = "ambiguous"  # a click on the card's button
    saved = pd.read_csv(run / widgets.TAGS_FILE, dtype=str)
    assert dict(zip(saved["clip_id"], saved["tag"])) == {"c05": "mislabeled", "c01": "ambiguous"}
    assert set(saved.columns) == set(widgets.TagStore.COLUMNS) and (saved["system"] == "energy").all()
    assert tool._tag_buttons["c05"].value == "mislabeled"  # the key press moved the card's buttons too
    tool.tag_filter.value = "mislabeled"
    assert ids(tool.filtered()) == ["c05"]
    tool.tag_filter.value = ""
    assert "c05" not in ids(tool.filtered()) and "c01" not in ids(tool.filtered())

    again = ListeningTool(_predictions(), table, manifest, page_size=3, run_dir=run)
    assert again.tags.as_dict() == {"c05": "mislabeled", "c01": "ambiguous"}
    assert again._tag_buttons["c05"].value == "mislabeled"
    again.tag("c05", "")
    assert list(pd.read_csv(run / widgets.TAGS_FILE, dtype=str)["clip_id"]) == ["c01"]


def test_a_bad_tags_file_is_named(tmp_path):
    (tmp_path / widgets.TAGS_FILE).write_text("clip_id,tag\nc01,maybe\n")
    with pytest.raises(ValueError, match=r"listening_tags.csv: unknown tag\(s\) \['maybe'\]"):
        widgets.TagStore(tmp_path / widgets.TAGS_FILE)


def test_export_writes_the_filtered_list_with_tags(bank, tmp_path, monkeypatch):
    monkeypatch.setattr(widgets.media, "spectrogram_png", lambda audio, **kw: TINY_PNG)
    table, manifest = bank
    run = tmp_path / "run"
    run.mkdir()
    tool = ListeningTool(_predictions(), table, manifest, page_size=3, run_dir=run)
    tool.tag("c08", "fine")
    tool.class_filter.value = "nonspeech"
    path = tool.export()
    assert path.parent == run / widgets.EXPORT_DIR
    out = pd.read_csv(path, keep_default_na=False)
    assert list(out["clip_id"]) == ["c05", "c08", "c09", "c07"]  # every page, in listing order
    assert list(out["tag"]) == ["", "fine", "", ""]
    assert out["filters"].iloc[0].startswith("non-speech clips")
    assert str(path) in tool.message.value
    no_run = ListeningTool(_predictions(), table, manifest)
    assert no_run.export_button.disabled
    with pytest.raises(ValueError, match="no run folder"):
        no_run.export()


def test_the_class_offers_its_own_categories_and_reset_restores_defaults(tool):
    assert tool.category_filter.options == ("dog", "laughing", "rain", "speech")
    tool.category_filter.value = ("dog", "speech")
    tool.class_filter.value = "nonspeech"
    assert tool.category_filter.options == ("dog", "laughing", "rain")
    assert tool.category_filter.value == ("dog",)  # the selection that stays valid stays
    assert ids(tool.filtered()) == ["c05"]
    tool.class_filter.value = "speech"
    assert tool.category_filter.options == ("speech",) and tool.category_filter.value == ()
    tool.duration_filter.value = (100, 200)
    tool.errors_only.value = False
    tool.sort.value = "clip id"
    tool.reset_button.click()
    assert tool.class_filter.value == "all" and tool.errors_only.value and tool.sort.value == widgets.DEFAULT_SORT
    assert tool.duration_filter.value == (20, 1000) and tool.category_filter.options == ("dog", "laughing", "rain", "speech")
    assert ids(tool.filtered()) == ["c05", "c01", "c08", "c09", "c02", "c07", "c04"]


def test_readable_summary_of_the_filters(tool):
    assert tool.filter_summary() == ("both classes · all 4 categories · misclassified only · "
                                     "sorted: most confidently wrong first")
    tool.class_filter.value = "nonspeech"
    tool.category_filter.value = ("laughing", "rain")
    tool.duration_filter.value = (100, 500)
    tool.choice_filters["noise_type"].value = ("pink",)
    assert tool.filter_summary() == ("non-speech clips · categories: laughing, rain (2 of 3) · duration 100 ms to 500 ms"
                                     " · noise: pink · misclassified only · sorted: most confidently wrong first")
    assert "categories: laughing, rain (2 of 3)" in tool.summary.value


def test_card_says_the_clips_duration_beside_the_player(tool):
    text = _text(tool.clips_box.children[0])  # c05, 100 ms
    assert "mixture as heard (none)</b> · 100 ms" in text
    assert widgets.duration_text(320) == "20 ms" and widgets.duration_text(16000 * 12) == "12.0 s"


def test_sources_show_clean_context_and_noise_players(tool):
    calls = []

    def parts(row):
        calls.append(row["clip_id"])
        n = int(SR * row["duration_ms"] / 1000)
        rng = np.random.default_rng(0)
        clean = 0.1 * np.sin(np.arange(n) / 5)
        return {"clean": clean, "context": np.r_[np.zeros(800), clean, np.zeros(400)], "context_window": (800, 800 + n),
                "noise": 0.01 * rng.standard_normal(n), "mixture": clean + 0.01 * rng.standard_normal(n),
                "noise_recording": 0.2 * rng.standard_normal(n), "noise_source_id": "noise/rec1"}

    tool._parts_loader = parts
    tool.handle_key("sources")
    assert calls == ["c05"]
    box = tool._parts_boxes["c05"]
    players = [x for x in _walk(box) if x.__class__.__name__ == "Audio"]
    assert len(players) == 4
    text = _text(box)
    assert "clean source (the window)</b> · 100 ms" in text
    assert "source in context (50 ms before, 25 ms after)</b> · 175 ms" in text
    assert "noise as mixed (pink, SNR 0 dB)" in text and "noise recording noise/rec1" in text


def test_sources_error_is_reported_on_the_card(tool):
    tool._parts_loader = lambda row: (_ for _ in ()).throw(FileNotFoundError("corpus gone"))
    tool.handle_key("sources")
    assert "cannot load the sources: FileNotFoundError: corpus gone" in _text(tool._parts_boxes["c05"])


def test_clip_parts_on_a_built_bank(synthetic_corpus, tmp_path):
    """lib.data.ClipParts renders the clean source under the window, its context and the noise; the
    re-rendered mixture is the stored clip."""
    from lib import config, data

    cfg = config.resolve("cpu", data_dir=str(synthetic_corpus), bank_dir=str(tmp_path / "banks"), durations_ms=[50, 200],
                         snrs_db=[0, 10], noise_types=["white", "real"], clips_per_cell=4, max_sources_per_class=None)
    manifest = data.build_bank(cfg, progress=False)
    bank = data.load_bank(manifest)
    parts = data.ClipParts(manifest)
    for noise in ("white", "real"):
        row = bank[bank["noise_type"] == noise].iloc[0].to_dict()
        p = parts.parts(row)
        n = int(row["duration_ms"]) * 16
        stored = data.load_clip(row, "none")
        assert np.allclose(p["mixture"], stored, atol=1e-4)
        assert len(p["clean"]) == len(p["noise"]) == n
        a, b = p["context_window"]
        assert (a, b) == (int(row["context_pre"]), int(row["context_pre"]) + n)
        assert np.array_equal(p["context"][a:b], p["clean"])
        assert (p["noise_recording"] is None) == (noise == "white")
    # SNR of the parts: signal (reverb-free here) over noise as mixed
    row = bank.iloc[0].to_dict()
    p = parts.parts(row)
    snr = 10 * np.log10(np.sum(p["clean"].astype(float) ** 2) / np.sum(p["noise"].astype(float) ** 2))
    assert snr == pytest.approx(float(row["snr_db"]), abs=0.2)


def test_executed_copy_says_it_needs_a_live_kernel(bank, tmp_path, monkeypatch):
    from lib import results

    monkeypatch.setattr(widgets.media, "spectrogram_png", lambda audio, **kw: TINY_PNG)
    table, manifest = bank
    run = tmp_path / "results" / "cpu" / "run1"
    results.write_predictions(run, _predictions())
    results.write_bank_pointer(run, manifest)
    tool = widgets.listening_tool(run, system="lora")
    live = tool._repr_mimebundle_()
    data = live[0] if isinstance(live, tuple) else live
    assert "application/vnd.jupyter.widget-view+json" in data
    assert data["text/plain"].startswith("The listening tool needs a live Python kernel")
    assert f"listening_tool({str(run)!r}, system='lora')" in data["text/plain"]
    monkeypatch.setenv(widgets.HEADLESS_ENV, "1")
    headless = tool._repr_mimebundle_()
    assert set(headless) == {"text/plain", "text/html"}
    assert "needs a live Python kernel" in headless["text/html"] and "listening_tool(" in headless["text/html"]


def test_opens_on_the_runs_own_fine_tuned_system(bank, tmp_path, monkeypatch):
    from lib import results

    monkeypatch.setattr(widgets.media, "spectrogram_png", lambda audio, **kw: TINY_PNG)
    table, manifest = bank
    run = tmp_path / "run2"
    results.write_predictions(run, _predictions().replace({"system": {"lora": "qwen2audio-attn"}}))
    results.write_bank_pointer(run, manifest)
    (run / "params.yaml").write_text("resolved:\n  seed: 0\n  lora_variant: attn\n  model_name_or_path: tiny\n")
    tool = widgets.listening_tool(run)
    assert tool.system_filter.value == "qwen2audio-attn/attn#0"  # not the alphabetically first (energy)
    assert "not Qwen2-Audio-7B" in tool.widget.children[0].value
    (run / "params.yaml").write_text("resolved:\n  seed: 0\n  lora_variant: attn_mlp\n")
    assert widgets.listening_tool(run).system_filter.value == "energy"  # no such system: the first


def test_book_runs_chapters_headless_and_restores_the_environment(tmp_path, monkeypatch):
    """lib.book executes chapters with SPEECHBOOK_HEADLESS=1 (the kernel inherits it: the listening tool
    then prints how to open it), and leaves the environment as it found it."""
    import papermill as pm

    from lib import book

    seen = {}

    def fake_execute(src, dst, **kw):
        seen["headless"] = os.environ.get(widgets.HEADLESS_ENV)
        Path(dst).write_text(Path(src).read_text())

    monkeypatch.setattr(pm, "execute_notebook", fake_execute)
    monkeypatch.delenv(widgets.HEADLESS_ENV, raising=False)
    nb = tmp_path / "05_x.ipynb"
    import nbformat

    nbformat.write(nbformat.v4.new_notebook(), nb)
    run = tmp_path / "run"
    run.mkdir()
    book.execute_chapter(nb, run, "cpu", {}, "python3", False, {"chapters": {}}, 0.0)
    assert seen["headless"] == "1" and widgets.HEADLESS_ENV not in os.environ
    assert (run / nb.name).exists()
