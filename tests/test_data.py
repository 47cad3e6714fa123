"""lib.data: sources, manifest validation, the bank (exact SNRs and durations, group-disjoint splits,
reproducibility, atomic builds), load-time normalization and the shortcut report.

Unit tests use a synthetic corpus made in the test session; integration tests (marked ``data``) use
the real corpus at DATA_DIR (../shared/data) and skip with a reason when it is absent."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from lib import audio, config, data
from lib.data import ManifestError

# -------------------------------------------------------------------------------------- helpers


def copy_corpus(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_manifest(root: Path, fn) -> Path:
    m = root / "manifest.csv"
    df = pd.read_csv(m, dtype=str, keep_default_na=False)
    fn(df).to_csv(m, index=False)
    return m


def bank_cfg(corpus: Path, bank_dir: Path, **kw):
    base = dict(data_dir=str(corpus), bank_dir=str(bank_dir), durations_ms=[50, 200], snrs_db=[0, 10],
                noise_types=["white", "pink", "real"], clips_per_cell=6, max_sources_per_class=None)
    base.update(kw)
    return config.resolve("cpu", **base)


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def check_bank(manifest: Path, *, all_clips: bool = True) -> pd.DataFrame:
    """The bank's promises, checked from its files: exact durations, SNRs within 0.1 dB (from the
    regenerated components), stored audio equal to the regenerated mixture, group-disjoint splits."""
    df = data.load_bank(manifest)
    rows = df if all_clips else df.groupby(["split", "label", "noise_type"]).head(3)
    regen = data.regenerate(manifest, rows["clip_id"])
    for r in rows.itertuples():
        stored, sr = sf.read(r.audio_path, dtype="float32")
        assert sr == audio.SR
        assert len(stored) == audio.n_samples(r.duration_ms), r.clip_id
        parts = regen[r.clip_id]
        assert abs(audio.snr_db(parts["signal"], parts["noise"]) - r.snr_db) < 0.1, r.clip_id
        np.testing.assert_array_equal(parts["mixture"], stored)
        if r.filter == "none" and r.bandlimit == "none":  # no channel: the stored clip is signal + noise
            np.testing.assert_allclose(stored, parts["signal"] + parts["noise"], atol=1e-5)
    assert_group_disjoint(df)
    return df


def assert_group_disjoint(df: pd.DataFrame) -> None:
    for col in ["group_id", "source_id"]:
        per = df.groupby(col)["split"].nunique()
        assert (per == 1).all(), f"{col} crossing splits: {per[per > 1].index[:5].tolist()}"
    real = df[df["noise_type"] == "real"]
    if len(real):
        per = real.groupby("noise_group_id")["split"].nunique()
        assert (per == 1).all(), f"noise recordings crossing splits: {per[per > 1].index[:5].tolist()}"
    sets = {s: set(df.loc[df["split"] == s, "group_id"]) for s in data.SPLITS}
    assert not (sets["train"] & sets["dev"]) and not (sets["train"] & sets["test"]) and not (sets["dev"] & sets["test"])


# ---------------------------------------------------------------------------------------- sources


def test_local_sources_groups(synthetic_corpus):
    src, noise = data.sources_from_local(synthetic_corpus)
    assert list(src.columns[: len(data.SOURCE_COLUMNS)]) == data.SOURCE_COLUMNS
    assert set(src["label"]) == {"speech", "nonspeech"}  # music left out by default
    sp = src[src["label"] == "speech"]
    assert (sp["group_id"] == "speaker:" + sp["source_id"].str.extract(r"s(\d+)_")[0].radd("syn_")).all()
    ns = src[src["label"] == "nonspeech"]
    # the two segments of one recording share its group
    seg = ns[ns["source_id"].str.startswith("nonspeech/n0_")]
    assert len(seg) == 2 and seg["group_id"].nunique() == 1 and seg["group_id"].iloc[0] == "recording:test/nonspeech:n0.ogg"
    assert len(noise) == 8 and set(noise["corpus_label"]) == {"noise"}
    assert not set(noise["source_id"]) & set(src["source_id"])
    assert src["bandlimited_origin"].sum() == 4 * 3 + 3 + 1  # 8 kHz speakers 0-3; recordings 0-2 (n0 has 2 segments)
    with_music, _ = data.sources_from_local(synthetic_corpus, include_music=True)
    assert (with_music["category"] == "music_instrumental").sum() == 1


@pytest.mark.data
def test_real_corpus_sources(data_dir):
    src, noise = data.sources_from_local(data_dir)
    assert len(src) == 1609 + 1285 and len(noise) == 98
    sp = src[src["label"] == "speech"]
    assert sp["group_id"].str.startswith("speaker:").all() and sp["group_id"].nunique() == 346
    ns = src[src["label"] == "nonspeech"]
    assert ns["group_id"].str.startswith("recording:").all()
    # segmented recordings share a group; no group mixes speech with non-speech or noise
    assert ns["group_id"].nunique() < len(ns)
    assert not set(noise["group_id"]) & set(src["group_id"])
    assert src.groupby("group_id")["label"].nunique().max() == 1


# -------------------------------------------------------------------------------- bad manifests


def test_missing_manifest_names_the_file(tmp_path):
    (tmp_path / "corpus").mkdir()
    with pytest.raises(ManifestError, match=r"no manifest\.csv in .*corpus"):
        data.read_corpus_manifest(tmp_path / "corpus")
    with pytest.raises(ManifestError, match=r"corpus folder .*nowhere does not exist"):
        data.read_corpus_manifest(tmp_path / "nowhere")


def test_manifest_missing_columns_are_named(synthetic_corpus, tmp_path):
    root = copy_corpus(synthetic_corpus, tmp_path / "c")
    edit_manifest(root, lambda df: df.drop(columns=["label", "category"]))
    with pytest.raises(ManifestError, match=r"manifest\.csv lacks required column\(s\) label, category"):
        data.read_corpus_manifest(root)


def test_manifest_speech_without_speaker_column(synthetic_corpus, tmp_path):
    root = copy_corpus(synthetic_corpus, tmp_path / "c")
    edit_manifest(root, lambda df: df.drop(columns=["speaker"]))
    with pytest.raises(ManifestError, match="lacks column speaker"):
        data.read_corpus_manifest(root)


def test_manifest_duplicated_ids(synthetic_corpus, tmp_path):
    root = copy_corpus(synthetic_corpus, tmp_path / "c")
    edit_manifest(root, lambda df: pd.concat([df, df.iloc[[3]]]))
    with pytest.raises(ManifestError, match=r"duplicated path\(s\) \['speech/s1_0\.flac'\]"):
        data.read_corpus_manifest(root)


def test_manifest_unknown_labels(synthetic_corpus, tmp_path):
    root = copy_corpus(synthetic_corpus, tmp_path / "c")

    def f(df):
        df.loc[5, "label"] = "Speech "
        return df

    edit_manifest(root, f)
    with pytest.raises(ManifestError, match=r"unknown label\(s\) \['Speech '\] \(rows \[7\]\); valid labels: speech, nonspeech, noise, music"):
        data.read_corpus_manifest(root)


@pytest.mark.parametrize("bad", ["../outside.flac", "speech/../../outside.flac", "/etc/passwd"])
def test_manifest_paths_outside_the_root_are_refused(synthetic_corpus, tmp_path, bad):
    root = copy_corpus(synthetic_corpus, tmp_path / "c")
    sf.write(str(tmp_path / "outside.flac"), np.zeros(16000, dtype=np.float32), 16000)

    def f(df):
        df.loc[0, "path"] = bad
        return df

    edit_manifest(root, f)
    with pytest.raises(ManifestError, match=r"(outside the audio root|must be a path relative).*refused|must be a path relative"):
        data.read_corpus_manifest(root)


def test_manifest_missing_audio_file_is_named(synthetic_corpus, tmp_path):
    root = copy_corpus(synthetic_corpus, tmp_path / "c")
    (root / "speech" / "s2_1.flac").unlink()
    with pytest.raises(ManifestError, match=r"1 audio file\(s\) missing, e\.g\. \['speech/s2_1\.flac'\]"):
        data.read_corpus_manifest(root)


def test_unreadable_audio_in_the_corpus_names_the_file(synthetic_corpus, tmp_path):
    root = copy_corpus(synthetic_corpus, tmp_path / "c")
    src, _ = data.sources_from_local(root)
    victims = src["path"].tolist()  # every source: whichever the bank picks is broken
    for v in victims[:1]:
        Path(v).write_bytes(b"not audio at all")
    cfg = bank_cfg(root, tmp_path / "banks", max_sources_per_class=None)
    with pytest.raises(audio.AudioError, match=Path(victims[0]).name):
        data.build_bank(cfg, progress=False)
    assert not any((tmp_path / "banks").glob("[0-9a-f]*")), "a failed build must leave no bank folder"


# ------------------------------------------------------------------------------ bank parameters


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(snrs_db=[0, 25]), r"snrs_db=25\.0 is outside the allowed range -10 to 20 dB"),
        (dict(snrs_db=[-11]), r"snrs_db=-11\.0 is outside"),
        (dict(durations_ms=[10, 200]), r"durations_ms=10 is outside the allowed range 20 to 1000 ms"),
        (dict(durations_ms=[2000]), r"durations_ms=2000 is outside"),
        (dict(rt60s_s=[3.0]), r"rt60s_s=3\.0 is outside the allowed range 0 to 2\.5 s"),
        (dict(noise_types=["white", "brown"]), r"noise_types: 'brown' is not valid; valid: white, pink, real"),
        (dict(filters=["phone"]), r"filters: 'phone' is not valid"),
        (dict(design="grid"), r"design='grid' is not valid; valid: factorial, ofat"),
        (dict(split_fractions=[0.5, 0.5, 0.5]), r"split_fractions=.* summing to 1"),
        (dict(clips_per_cell=0), r"clips_per_cell=0 must be an integer"),
    ],
)
def test_bad_bank_parameters_are_named(synthetic_corpus, tmp_path, kw, msg):
    with pytest.raises(ValueError, match=msg):
        data.build_bank(bank_cfg(synthetic_corpus, tmp_path, **kw), progress=False)
    assert not (tmp_path / "banks").exists() or not any((tmp_path / "banks").iterdir())


def test_sources_too_short_for_every_duration(synthetic_corpus, tmp_path):
    # the synthetic clips last 1.2-1.3 s: none can give sources of 1.4 s
    with pytest.raises(ValueError, match=r"no speech sources of at least 1400 ms: lower durations_ms/min_source_ms"):
        data.build_bank(bank_cfg(synthetic_corpus, tmp_path, durations_ms=[1000], min_source_ms=1400), progress=False)


def test_typo_in_a_parameter_lists_valid_names():
    with pytest.raises(config.ConfigError, match=r"unknown parameter 'snr_db'.*did you mean snrs_db"):
        config.resolve("cpu", snr_db=[0, 10])


# ------------------------------------------------------------------------ banks on synthetic data


@pytest.fixture(scope="module")
def syn_bank(synthetic_corpus, tmp_path_factory):
    return data.build_bank(bank_cfg(synthetic_corpus, tmp_path_factory.mktemp("banks")), progress=False)


def test_factorial_bank_is_balanced_exact_and_disjoint(syn_bank):
    df = check_bank(syn_bank)
    assert list(df.columns[: len(data.BANK_COLUMNS)]) == data.BANK_COLUMNS
    cells = df.groupby(["duration_ms", "snr_db", "label"]).size()
    assert (cells == 6).all() and len(cells) == 2 * 2 * 2
    per_split = df.groupby(["split", "duration_ms", "snr_db", "label"]).size().unstack("split")
    assert (per_split["train"] == 4).all() and (per_split["dev"] == 1).all() and (per_split["test"] == 1).all()
    assert set(df["noise_type"]) == {"white", "pink", "real"}
    # the band-limit treatment: the same share of both classes
    treated = df[df["filter"] == "none"].assign(t=lambda d: d["bandlimit"] != "none").groupby("label")["t"].mean()
    assert (treated == 0.5).all()
    meta = yaml.safe_load((syn_bank.parent / "bank.yaml").read_text())
    assert meta["complete"] and meta["n_clips"] == len(df) and syn_bank.parent.name == meta["hash"]


def test_bank_is_reused_not_rebuilt(syn_bank, synthetic_corpus):
    before = syn_bank.stat().st_mtime_ns
    again = data.build_bank(bank_cfg(synthetic_corpus, syn_bank.parent.parent), progress=False)
    assert again == syn_bank and syn_bank.stat().st_mtime_ns == before


def test_same_seed_same_bank_other_seed_other_bank(syn_bank, synthetic_corpus, tmp_path):
    other = data.build_bank(bank_cfg(synthetic_corpus, tmp_path / "b2"), progress=False)
    assert other.parent.name == syn_bank.parent.name
    assert tree_hashes(other.parent) == tree_hashes(syn_bank.parent)
    third = data.build_bank(bank_cfg(synthetic_corpus, tmp_path / "b3", bank_seed=1), progress=False)
    assert third.parent.name != syn_bank.parent.name
    assert tree_hashes(third.parent)["manifest.csv"] != tree_hashes(syn_bank.parent)["manifest.csv"]


def test_failed_build_leaves_the_good_bank_untouched(syn_bank, synthetic_corpus, monkeypatch):
    folder = syn_bank.parent
    before = tree_hashes(folder)
    calls = {"n": 0}
    real = data.render_clip

    def flaky(row, cache, **kw):
        calls["n"] += 1
        if calls["n"] == 10:
            raise RuntimeError("simulated crash mid-build")
        return real(row, cache, **kw)

    monkeypatch.setattr(data.bank, "render_clip", flaky)  # the name build_bank calls
    with pytest.raises(RuntimeError, match="simulated crash"):
        data.build_bank(bank_cfg(synthetic_corpus, folder.parent), force=True, progress=False)
    assert tree_hashes(folder) == before
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}") and p.is_dir()]
    data.load_bank(syn_bank)


def test_ofat_bank_pairs_every_source_with_every_condition(synthetic_corpus, tmp_path):
    cfg = bank_cfg(synthetic_corpus, tmp_path, design="ofat", durations_ms=[20, 100, 300], snrs_db=[-10, 20],
                   noise_types=["white", "real"], rt60s_s=[0.0, 0.8], filters=["none", "telephone", "highpass"])
    manifest = data.build_bank(cfg, progress=False)
    df = check_bank(manifest, all_clips=False)
    ref = yaml.safe_load((manifest.parent / "bank.yaml").read_text())["reference"]
    assert ref == {"duration_ms": 300, "snr_db": 20.0, "noise_type": "white", "rt60_s": 0.0, "filter": "none"}
    n_conditions = 1 + 2 + 1 + 1 + 1 + 2  # reference + the other values of each axis
    per_source = df.groupby("source_id").size()
    assert (per_source == n_conditions).all()
    for axis, col in [("duration_ms", "duration_ms"), ("snr_db", "snr_db"), ("rt60_s", "rt60_s"), ("filter", "filter"), ("noise_type", "noise_type")]:
        part = df[df["axis"].isin([axis, "reference"])]
        others = [c for c in ["duration_ms", "snr_db", "noise_type", "rt60_s", "filter"] if c != col]
        assert (part[others].astype(str).apply(tuple, axis=1) == tuple(str(ref[c]) for c in others)).all()
    # paired: the shorter clips are centred in the reference window of their source
    one = df[(df["source_id"] == df["source_id"].iloc[0]) & (df["axis"].isin(["duration_ms", "reference"]))]
    centre = one["source_offset"] + one["duration_ms"].map(audio.n_samples) // 2
    assert centre.max() - centre.min() <= 1
    assert (df.loc[df["filter"] != "none", "bandlimit"] == "none").all()


def test_splits_and_classes_must_not_be_empty(synthetic_corpus, tmp_path):
    root = copy_corpus(synthetic_corpus, tmp_path / "c")
    edit_manifest(root, lambda df: df[~(df["label"] == "speech") | df["speaker"].isin(["syn_0", "syn_1"])])
    with pytest.raises(ValueError, match=r"class 'speech' is absent from split '(dev|test)'"):
        data.build_bank(bank_cfg(root, tmp_path / "b"), progress=False)


def test_real_noise_needs_noise_recordings(synthetic_corpus, tmp_path):
    root = copy_corpus(synthetic_corpus, tmp_path / "c")
    edit_manifest(root, lambda df: df[df["label"] != "noise"])
    with pytest.raises(ValueError, match=r"noise_types includes 'real' but .* no noise recordings"):
        data.build_bank(bank_cfg(root, tmp_path / "b"), progress=False)
    data.build_bank(bank_cfg(root, tmp_path / "b", noise_types=["white"]), progress=False)


# --------------------------------------------------------------------------------- loading a bank


def test_load_clips_normalizes_at_load_time(syn_bank):
    df = data.load_bank(syn_bank).head(12)
    raw = data.load_clips(df, normalization="none")
    for r, x in zip(df.itertuples(), raw):
        assert abs(audio.rms_dbfs(x) - r.rms_dbfs) < 1e-3
    for x in data.load_clips(df, syn_bank, normalization="rms"):
        assert np.abs(x).max() <= 0.99 and audio.rms_dbfs(x) <= -20 + 1e-3
    for x in data.load_clips(df, "peak"):
        assert np.isclose(np.abs(x).max(), 0.99, atol=1e-6)
    # rows without audio_path, resolved through the manifest's folder
    bare = df.drop(columns=["audio_path"])
    np.testing.assert_array_equal(data.load_clips(bare, syn_bank, normalization="none")[0], raw[0])
    np.testing.assert_array_equal(data.load_clip(df.iloc[0].to_dict(), "none"), raw[0])


def test_load_bank_errors_name_the_manifest(syn_bank, tmp_path):
    with pytest.raises(ManifestError, match=r"bank manifest .*nothing\.csv does not exist"):
        data.load_bank(tmp_path / "nothing.csv")
    folder = shutil.copytree(syn_bank.parent, tmp_path / "copy")
    m = folder / "manifest.csv"
    df = pd.read_csv(m, keep_default_na=False)
    df.drop(columns=["snr_db"]).to_csv(m, index=False)
    with pytest.raises(ManifestError, match=r"lacks column\(s\) snr_db"):
        data.load_bank(m)
    df2 = df.copy()
    df2.loc[0, "path"] = "../../etc/passwd"
    df2.to_csv(m, index=False)
    with pytest.raises(ManifestError, match="outside the audio root"):
        data.load_bank(m)
    df.to_csv(m, index=False)
    (folder / df.loc[3, "path"]).unlink()
    with pytest.raises(ManifestError, match=r"1 audio file\(s\) missing.*rebuild the bank"):
        data.load_bank(m)
    assert len(data.load_bank(m, check_files=False)) == len(df)
    df3 = df.copy()
    df3.loc[1, "clip_id"] = df3.loc[0, "clip_id"]
    df3.to_csv(m, index=False)
    with pytest.raises(ManifestError, match="duplicated clip_id"):
        data.load_bank(m, check_files=False)


def test_unknown_normalization_in_load_clips(syn_bank):
    with pytest.raises(ValueError, match="unknown normalization 'loudness'"):
        data.load_clips(data.load_bank(syn_bank).head(1), normalization="loudness")


def test_shortcut_report_shape(syn_bank):
    df = data.load_bank(syn_bank)
    rep = data.shortcut_report(df, syn_bank)
    assert list(rep["feature"]) == ["band_limited"] * 2 + ["rolloff95_hz"] * 4 + ["highband_db"] * 4 + ["rms_dbfs"] * 2
    assert list(rep["measured_on"][2:6]) == ["clean source", "clean source", "mixture", "mixture"]
    assert list(rep["treatment"][:6]) == ["none", "bandlimit_augment"] * 3
    assert rep["separability"].between(0.5, 1).all() and rep["best_balanced_accuracy"].between(0.5, 1).all()



def _report(**separabilities) -> pd.DataFrame:
    """A shortcut report with every row shortcut_findings reads, at the given separabilities (default 0.5)."""
    rows = [("band_limited", "metadata", "none"), ("band_limited", "metadata", "bandlimit_augment")]
    for feat in ("rolloff95_hz", "highband_db"):
        rows += [(feat, on, t) for on in ("clean source", "mixture") for t in ("none", "bandlimit_augment")]
    rows += [("rms_dbfs", "mixture", "none"), ("rms_dbfs", "mixture", "rms normalization")]
    out = pd.DataFrame(rows, columns=["feature", "measured_on", "treatment"])
    out["separability"] = [separabilities.get(f"{f}|{m}|{t}", 0.5) for f, m, t in rows]
    out["best_balanced_accuracy"] = out["separability"]
    return out


def test_shortcut_findings_are_built_from_the_report():
    bank = pd.DataFrame({"label": ["speech"] * 4 + ["nonspeech"] * 4,
                         "bandlimited_origin": [True, True, False, False, False, False, False, True],
                         "bandlimit": ["none", "telephone", "none", "lowpass_4000", "telephone", "none", "none", "none"]})
    rep = _report(**{"band_limited|metadata|none": 0.7, "band_limited|metadata|bandlimit_augment": 0.52,
                     "highband_db|clean source|none": 0.9, "highband_db|mixture|none": 0.8, "highband_db|mixture|bandlimit_augment": 0.76,
                     "rms_dbfs|mixture|none": 0.66})
    text = data.shortcut_findings(rep, bank, "rms")
    assert "50% of speech and 25% of non-speech come from 8-11 kHz recordings" in text
    assert "75% and 50% of the clips are band-limited" in text  # origin or treatment
    assert "0.70 before the treatment (a moderate shortcut) and 0.52 after it (close to no information)" in text
    assert "on the mixtures the model hears 0.80 → 0.76 (a strong shortcut). Full-band noise" in text
    assert "stored RMS level separates the classes with 0.66" in text and "after rms normalization 0.50" in text
    assert "most informative single trivial feature of what the model hears is highband_db (mixture, separability 0.76" in text
    untreated = bank.assign(bandlimit="none")
    no_norm = rep[rep["treatment"] != "rms normalization"]
    text = data.shortcut_findings(no_norm, untreated, "none")
    assert "the treatment is off in this run" in text and "with normalization 'none' the model hears the stored level" in text


def test_split_table_and_disjointness(syn_bank):
    bank = data.load_bank(syn_bank)
    table = data.split_table(bank)
    assert list(table.index) == list(data.SPLITS)
    assert table["clips"].to_numpy().sum() == len(bank)
    assert (table["groups"]["speech"] == bank[bank.label == "speech"].groupby("split")["group_id"].nunique().reindex(data.SPLITS)).all()
    checked = data.split_disjointness(bank)
    assert checked == {"groups": bank["group_id"].nunique(),
                       "noise_recordings": bank.loc[bank.noise_type == "real", "noise_group_id"].nunique()}
    crossing = bank.copy()
    crossing.loc[crossing.index[crossing.split == "test"][0], "group_id"] = crossing.loc[crossing.split == "train", "group_id"].iloc[0]
    with pytest.raises(AssertionError, match="groups in several splits"):
        data.split_disjointness(crossing)
    real = bank[bank.noise_type == "real"]
    noisy = bank.copy()
    noisy.loc[real.index[real.split == "test"][0], "noise_group_id"] = real.loc[real.split == "train", "noise_group_id"].iloc[0]
    with pytest.raises(AssertionError, match="noise recordings in several splits"):
        data.split_disjointness(noisy)


def test_bank_meta_and_require_bank(syn_bank, tmp_path):
    meta = data.load_bank_meta(syn_bank)
    assert meta == yaml.safe_load((syn_bank.parent / "bank.yaml").read_text()) and meta["complete"] is True
    assert data.load_bank_meta(syn_bank.parent) == meta  # the folder works as well as its manifest
    sources, noise = data.bank_sources(syn_bank)  # the material the bank was rendered from, read again
    expected = data.sources_from_local(meta["data_dir"])
    pd.testing.assert_frame_equal(sources, expected[0])
    pd.testing.assert_frame_equal(noise, expected[1])
    with pytest.raises(ManifestError, match=r"bank\.yaml does not exist"):
        data.load_bank_meta(tmp_path / "manifest.csv")
    data.require_bank(None, syn_bank)
    (tmp_path / "bank.yaml").write_text("manifest: x\n")
    data.require_bank(tmp_path, None)
    with pytest.raises(FileNotFoundError, match=r"run chapter 01_data_prep first.*\(run folder .*empty has no bank\.yaml\)"):
        data.require_bank(tmp_path / "empty", None)
    with pytest.raises(FileNotFoundError, match="this chapter needs a bank"):
        data.require_bank(None, None)

def test_assign_splits_is_group_disjoint_and_proportional():
    rng = np.random.default_rng(0)
    groups = pd.Series([f"g{i}" for i in rng.integers(0, 300, 3000)])
    labels = pd.Series(np.where(groups.str[1:].astype(int) % 3 == 0, "speech", "nonspeech"))
    s1 = data.assign_splits(groups, labels, [0.6, 0.2, 0.2], seed=3)
    s2 = data.assign_splits(groups, labels, [0.6, 0.2, 0.2], seed=3)
    assert (s1 == s2).all()
    assert (pd.DataFrame({"g": groups, "s": s1}).groupby("g")["s"].nunique() == 1).all()
    share = pd.crosstab(labels, s1, normalize="index")
    assert (abs(share["train"] - 0.6) < 0.05).all() and (abs(share["test"] - 0.2) < 0.05).all()


# ------------------------------------------------------------------------------ the real corpus


@pytest.mark.data
def test_real_bank_exact_snr_durations_and_disjoint_splits(corpus_bank):
    df = check_bank(corpus_bank)
    assert set(df["noise_type"]) == {"white", "pink", "real"}
    # noise used at test time was never heard in training
    real = df[df["noise_type"] == "real"]
    assert not set(real.loc[real["split"] == "test", "noise_group_id"]) & set(real.loc[real["split"] == "train", "noise_group_id"])
    # speakers: many per split, none shared
    sp = df[df["label"] == "speech"]
    assert sp.groupby("split")["group_id"].nunique().min() >= 5


@pytest.mark.data
def test_real_bank_reproducible(corpus_bank, data_dir, tmp_path, small_bank_cfg):
    cfg = small_bank_cfg(data_dir)
    cfg["bank_dir"] = str(tmp_path)
    again = data.build_bank(cfg, progress=False)
    assert again.parent.name == corpus_bank.parent.name
    assert tree_hashes(again.parent) == tree_hashes(corpus_bank.parent)


@pytest.mark.data
def test_cpu_profile_bank_split_sizes(data_dir, tmp_path):
    """The cpu profile's bank is big enough for the tiny model's smoke numbers: >= 3000 train clips, and >= 1000
    test clips, so that a 95% interval on test accuracy is at most about +-2.5 points wide."""
    cfg = config.resolve("cpu", data_dir=str(data_dir), bank_dir=str(tmp_path))
    params = data.bank_params(cfg)
    sources, noise, _ = data.load_sources(cfg)
    plan, src, _ = data.plan_bank(params, sources, noise)
    counts = plan["split"].value_counts()
    assert counts["train"] >= 3000 and counts["test"] >= 1000
    assert_group_disjoint(plan)
    assert (plan.groupby(["split", "label"]).size().unstack().nunique(axis=1) == 1).all()  # classes balanced per split


def test_silent_source_names_clip_and_file(synthetic_corpus, tmp_path):
    root = copy_corpus(synthetic_corpus, tmp_path / "c")
    for p in (root / "speech").glob("*.flac"):  # every speech file silent: whichever is picked fails
        sf.write(str(p), np.zeros(int(1.3 * 16000), dtype=np.float32), 16000, subtype="PCM_16")
    with pytest.raises(ValueError, match=r"clip c\d+ from speech/s\d+_\d .*s\d+_\d\.flac\): signal is silent"):
        data.build_bank(bank_cfg(root, tmp_path / "b"), progress=False)


def test_leftovers_of_a_killed_build_are_cleared(synthetic_corpus, tmp_path):
    cfg = bank_cfg(synthetic_corpus, tmp_path / "b", clips_per_cell=3, noise_types=["white"])
    h = data.bank_hash(data.bank_params(cfg), data.load_sources(cfg)[2])
    stale = tmp_path / "b" / f".{h}.abc123.tmp"
    (stale / "audio").mkdir(parents=True)  # what SIGKILL mid-build leaves behind
    (stale / "audio" / "c000000.wav").write_bytes(b"half")
    m = data.build_bank(cfg, progress=False)
    assert not stale.exists() and m.parent.name == h
    data.load_bank(m)
