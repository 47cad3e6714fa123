"""The listening tool driven from Python: widget values in, the listed clips out.

A small synthetic bank (sine/noise WAVs written with soundfile) and a hand-made predictions table
whose errors are known, so every expected list is written down, not recomputed with the code under test.
"""
from __future__ import annotations

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
    monkeypatch.setattr(widgets, "spectrogram_png", lambda audio, **kw: TINY_PNG)
    table, manifest = bank
    return ListeningTool(_predictions(), table, manifest, normalization="none", page_size=3)


def ids(df: pd.DataFrame) -> list[str]:
    return list(df["clip_id"])


def test_lists_only_misclassified_most_confident_first(tool):
    assert tool.system_filter.options == ("energy", "lora / attn / seed 0")
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
    assert (tool.duration_filter.min, tool.duration_filter.max) == (20, 1000)
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


def test_system_switch_and_all_clips(tool):
    tool.system_filter.value = "lora / attn / seed 0"
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
    tool.category_filter.value = ("rain",)
    tool.class_filter.value = "speech"
    assert tool.filtered().empty
    assert NO_MATCH in tool.status.value
    assert tool.clips_box.children == (tool.empty_message,)
    assert NO_MATCH in tool.empty_message.value


def test_missing_audio_is_reported_on_the_card(bank, monkeypatch):
    monkeypatch.setattr(widgets, "spectrogram_png", lambda audio, **kw: TINY_PNG)
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

    monkeypatch.setattr(widgets, "spectrogram_png", lambda audio, **kw: TINY_PNG)

    table, manifest = bank
    run = tmp_path / "results" / "cpu" / "run1"
    results.write_predictions(run, _predictions())
    results.write_bank_pointer(run, manifest)
    (run / "params.yaml").write_text("run:\n  smoke: true\nbank:\n  normalization: rms\n")
    tool = widgets.listening_tool(run, system="lora")
    assert tool.system_filter.value == "lora / attn / seed 0"
    assert tool.normalization.value == "rms" and tool.smoke
    assert ids(tool.filtered()) == ["c03"]
    assert len(tool.clips_box.children) == 1


def _walk(widget):
    out = [widget]
    for child in getattr(widget, "children", ()):
        out.extend(_walk(child))
    return out


def test_clip_missing_from_bank_is_named_on_its_card(bank, monkeypatch):
    monkeypatch.setattr(widgets, "spectrogram_png", lambda audio, **kw: TINY_PNG)
    table, manifest = bank
    tool = ListeningTool(_predictions(), table[table.clip_id != "c05"], manifest, page_size=1)
    text = " ".join(x.value for x in _walk(tool.clips_box.children[0]) if isinstance(getattr(x, "value", None), str))
    assert "c05 is not in the bank manifest" in text
