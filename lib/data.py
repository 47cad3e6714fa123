"""Sources, the degradation bank, splits and shortcut checks (DESIGN.md tables 1 and 2).

Sources
-------
``load_sources(cfg)`` returns the **sources** table (one row per usable recording segment) and the
noise recordings used for real-noise mixing, from one of:

* ``local``: a corpus folder with ``manifest.csv`` (the format of ``../shared/data``). Speech groups are
  speakers; non-speech groups are original recordings (segments ``[segment i/n]`` of one recording
  share a group); ``noise/`` recordings are kept apart as mixing material and split by recording too.
* ``esc50_voxconverse``: ESC-50 (non-speech, grouped by the source clip id in the file name) and
  VoxConverse (speech cut only from annotated speech, non-speech only from unannotated stretches with a
  margin; grouped by recording), downloaded by ``lib.downloads``.
* ``rttm_folder``: any folder of long recordings with RTTM files (cut like VoxConverse).

Bank
----
``build_bank(cfg)`` renders clips into a content-addressed folder
``<bank_dir>/<hash of the bank parameters and the source fingerprint>/`` holding ``manifest.csv``,
``audio/*.wav`` (32-bit float) and ``bank.yaml``. The folder appears only when complete
(``lib.io.atomic_dir``); a build that fails leaves any previous bank untouched, and an existing bank
with the same hash is reused. Each clip is rendered from its manifest row alone (``render_clip``):

    source context -> reverberation (rt60_s) -> + noise at exactly snr_db over the clip
    -> channel filter (filter) -> band-limit treatment (bandlimit) -> cut to duration_ms

``snr_db`` is the acoustic SNR at the mixing point: mean power of the (reverberant) signal over the
clip divided by that of the scaled noise over the clip. The channel filter and the band-limit
treatment act afterwards on the whole mixture, as a telephone line would. Stored audio is the
mixture before level normalization; ``load_clips(..., normalization=none|peak|rms)`` applies it.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from . import audio, io
from .config import PROJECT_ROOT

LABELS = ("speech", "nonspeech")
CORPUS_LABELS = ("speech", "nonspeech", "noise", "music")
SPLITS = ("train", "dev", "test")
DESIGNS = ("factorial", "ofat")
SOURCE_COLUMNS = ["source_id", "label", "category", "group_id", "dataset", "path", "start_s", "end_s", "license"]
BANK_COLUMNS = [
    "clip_id", "source_id", "group_id", "label", "category", "split", "duration_ms", "snr_db",
    "noise_type", "rt60_s", "filter", "seed", "path",
]
CORPUS_REQUIRED = ["path", "label", "category"]
BANK_VERSION = 6  # bump when rendering changes, so old banks are not reused
BANDLIMITS = ("none", "telephone", "lowpass_4000", "lowpass_5500")
BANDLIMIT_SHARE = 0.5  # the treatment band-limits this share of each class's (unfiltered) clips
ACTIVE_WINDOW_DB = 20.0  # windows are drawn among those within this many dB of the loudest one
CONTEXT_PRE_S = 0.25  # context rendered before the clip (plus the RT60), so filters and reverb settle
CONTEXT_POST_S = 0.1
BANK_PARAM_KEYS = [
    "data_source", "include_music", "max_sources_per_class", "min_source_ms", "design", "durations_ms",
    "snrs_db", "noise_types", "rt60s_s", "filters", "clips_per_cell", "split_fractions", "bandlimit_augment", "seed",
]


class ManifestError(ValueError):
    """A manifest (corpus or bank) is unusable; the message names the file, rows or columns."""


# ======================================================================================= sources


def resolve_under(root: str | os.PathLike, rel: str, what: str = "path") -> Path:
    """``root / rel``, refusing absolute paths and paths that escape ``root`` (no reading outside it)."""
    root = Path(root).resolve()
    rel = str(rel)
    if not rel or os.path.isabs(rel):
        raise ManifestError(f"{what} {rel!r} must be a path relative to {root}")
    full = (root / rel).resolve()
    if full != root and root not in full.parents:
        raise ManifestError(f"{what} {rel!r} points outside the audio root {root}; refused (paths must stay inside it)")
    return full


def strip_segment(original_path: str) -> str:
    """``a/b.ogg [segment 2/3]`` -> ``a/b.ogg``: segments of one recording share its group."""
    return re.sub(r"\s*\[segment \d+/\d+\]\s*$", "", str(original_path))


def read_corpus_manifest(data_dir: str | os.PathLike, check_files: bool = True) -> pd.DataFrame:
    """Read and validate a local corpus ``manifest.csv``.

    Errors (``ManifestError``) name the manifest and: missing columns, unknown labels, duplicated
    paths, speech rows without a speaker, paths outside the corpus folder, missing audio files.
    """
    data_dir = Path(data_dir)
    manifest = data_dir / "manifest.csv"
    if not data_dir.exists():
        raise ManifestError(f"corpus folder {data_dir} does not exist; set data_dir= or DATA_DIR to a folder with manifest.csv")
    if not manifest.exists():
        raise ManifestError(f"no manifest.csv in {data_dir}: expected {manifest} (columns {', '.join(CORPUS_REQUIRED)}, ...)")
    try:
        df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except Exception as e:
        raise ManifestError(f"cannot read {manifest} as CSV: {e}") from e
    missing = [c for c in CORPUS_REQUIRED if c not in df.columns]
    if missing:
        raise ManifestError(f"{manifest} lacks required column(s) {', '.join(missing)}; it has {', '.join(df.columns)}")
    if len(df) == 0:
        raise ManifestError(f"{manifest} has no rows")
    bad = sorted(set(df["label"]) - set(CORPUS_LABELS))
    if bad:
        rows = df.index[df["label"].isin(bad)][:5].tolist()
        raise ManifestError(f"{manifest}: unknown label(s) {bad} (rows {[r + 2 for r in rows]}); valid labels: {', '.join(CORPUS_LABELS)}")
    dup = df["path"][df["path"].duplicated()].unique().tolist()
    if dup:
        raise ManifestError(f"{manifest}: duplicated path(s) {dup[:5]}{' ...' if len(dup) > 5 else ''}; each clip must appear once")
    if (df["label"] == "speech").any():
        if "speaker" not in df.columns:
            raise ManifestError(f"{manifest} lacks column speaker, needed to group speech by speaker")
        nospk = df.index[(df["label"] == "speech") & (df["speaker"].str.strip() == "")][:5].tolist()
        if nospk:
            raise ManifestError(f"{manifest}: speech row(s) {[r + 2 for r in nospk]} have no speaker")
    df["abs_path"] = [str(resolve_under(data_dir, p, f"{manifest} path")) for p in df["path"]]
    if check_files:
        gone = [p for p, a in zip(df["path"], df["abs_path"]) if not os.path.isfile(a)]
        if gone:
            raise ManifestError(f"{manifest}: {len(gone)} audio file(s) missing, e.g. {gone[:3]} (under {data_dir})")
    return df


def sources_from_local(data_dir: str | os.PathLike, include_music: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The sources table and the noise table of a local corpus folder."""
    df = read_corpus_manifest(data_dir)
    for col, default in [("speaker", ""), ("source", "local"), ("source_repo", ""), ("original_path", ""), ("license", ""),
                         ("sample_rate_original", ""), ("duration_s", "")]:
        if col not in df.columns:
            df[col] = default
    orig = [strip_segment(o) if o else p for o, p in zip(df["original_path"], df["path"])]
    recording = [f"recording:{r}:{o}" if r else f"recording:{o}" for r, o in zip(df["source_repo"], orig)]
    speaker = ("speaker:" + df["speaker"].astype(str)).tolist()
    label = df["label"].tolist()
    out = pd.DataFrame(
        {
            "source_id": [re.sub(r"\.[^./]+$", "", p) for p in df["path"]],
            "label": ["nonspeech" if lab == "music" else lab for lab in label],
            "category": df["category"].tolist(),
            "group_id": [s if lab == "speech" else r for lab, s, r in zip(label, speaker, recording)],
            "dataset": df["source"].tolist(),
            "path": df["abs_path"].tolist(),
            "start_s": 0.0,
            "end_s": pd.to_numeric(df["duration_s"], errors="coerce").astype(float),
            "license": df["license"].tolist(),
            "source_repo": df["source_repo"].tolist(),
            "sample_rate_original": pd.to_numeric(df["sample_rate_original"], errors="coerce").astype(float),
            "corpus_label": label,
        }
    )
    out["bandlimited_origin"] = out["sample_rate_original"].fillna(16000) < 16000
    noise = out[out["corpus_label"] == "noise"].reset_index(drop=True)
    keep = out["corpus_label"].isin(["speech", "nonspeech"] + (["music"] if include_music else []))
    return out[keep].reset_index(drop=True), noise


def load_sources(cfg: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """``(sources, noise, fingerprint)`` for ``cfg['data_source']``; the fingerprint is a sha256 of the
    material's index (the corpus manifest, ESC-50's csv, the RTTM files) that goes into the bank hash."""
    kind = cfg.get("data_source") or "local"
    if kind == "local":
        from .config import resolve_data_dir

        data_dir = resolve_data_dir(cfg.get("data_dir"))
        if data_dir is None:
            raise ManifestError(
                "data_source='local' needs a corpus: set data_dir=<folder with manifest.csv> or DATA_DIR, or place "
                "it at ../shared/data; or use data_source='esc50_voxconverse' to download ESC-50 and VoxConverse"
            )
        sources, noise = sources_from_local(data_dir, include_music=bool(cfg.get("include_music")))
        return sources, noise, io.sha256_file(Path(data_dir) / "manifest.csv")
    if kind in ("esc50_voxconverse", "rttm_folder"):
        from . import downloads
    if kind == "esc50_voxconverse":
        root = Path(cfg.get("downloads_dir") or PROJECT_ROOT / "data" / "downloads")
        esc = downloads.download_esc50(root)
        vox = downloads.download_voxconverse(root)
        s1, n1 = downloads.sources_from_esc50(esc)
        s2, n2 = downloads.sources_from_rttm_folder(vox, dataset="voxconverse")
        fp = hashlib.sha256((downloads.fingerprint(esc) + downloads.fingerprint(vox)).encode()).hexdigest()
        return pd.concat([s1, s2], ignore_index=True), pd.concat([n1, n2], ignore_index=True), fp
    if kind == "rttm_folder":
        folder = cfg.get("data_dir")
        if not folder:
            raise ManifestError("data_source='rttm_folder' needs data_dir=<folder of recordings with .rttm files>")
        sources, noise = downloads.sources_from_rttm_folder(Path(folder), dataset=Path(folder).name)
        return sources, noise, downloads.fingerprint(Path(folder))
    raise ValueError(f"unknown data_source {kind!r}; valid: local, esc50_voxconverse, rttm_folder (parameter 'data_source')")


# ========================================================================================= splits


def assign_splits(
    groups: pd.Series, labels: pd.Series, fractions: Sequence[float], seed: int, names: Sequence[str] = SPLITS
) -> pd.Series:
    """Group-disjoint, class-stratified split: every row of a group gets the same split.

    Greedy: groups in a seeded random order, largest first, each to the split whose per-class
    shortfall (relative to ``fractions``) its rows fill best. Reproducible for a given seed.
    """
    fractions = np.asarray(fractions, dtype=float)
    counts = pd.crosstab(groups.values, labels.values)
    order_rng = np.random.default_rng([int(seed), 7])
    perm = order_rng.permutation(len(counts))
    counts = counts.iloc[perm]
    sizes = counts.sum(axis=1).values
    counts = counts.iloc[np.argsort(-sizes, kind="stable")]
    totals = counts.sum(axis=0).values.astype(float)
    target = fractions[:, None] * totals[None, :]
    current = np.zeros_like(target)
    assignment: dict[Any, str] = {}
    for gid, row in zip(counts.index, counts.values.astype(float)):
        share = row / totals
        score = ((target - current) / np.maximum(target, 1e-9) * share[None, :]).sum(axis=1)
        s = int(np.argmax(score))
        current[s] += row
        assignment[gid] = names[s]
    return groups.map(assignment)


def check_splits(df: pd.DataFrame, what: str, names: Sequence[str] = SPLITS, labels: Sequence[str] = LABELS) -> None:
    """Raise if a split is empty or lacks a class, or a group sits in two splits."""
    for s in names:
        part = df[df["split"] == s]
        if len(part) == 0:
            raise ValueError(f"{what}: split {s!r} is empty; use more source groups or other split_fractions")
        for lab in labels:
            if not (part["label"] == lab).any():
                raise ValueError(f"{what}: class {lab!r} is absent from split {s!r}; use more source groups or other split_fractions")
    cross = df.groupby("group_id")["split"].nunique()
    if (cross > 1).any():
        raise AssertionError(f"{what}: groups in several splits: {cross[cross > 1].index[:5].tolist()}")


# ========================================================================================== bank


def bank_params(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters that define a bank, validated (errors name the parameter and the valid range)."""
    p = {k: cfg.get(k) for k in BANK_PARAM_KEYS}
    if cfg.get("bank_seed") is not None:  # the bank's own seed, fixed across training seeds
        p["seed"] = cfg["bank_seed"]
    p["data_source"] = p["data_source"] or "local"
    if p["design"] not in DESIGNS:
        raise ValueError(f"design={p['design']!r} is not valid; valid: {', '.join(DESIGNS)}")
    p["durations_ms"] = [audio.check_duration(d, "durations_ms") for d in _as_list(p["durations_ms"], "durations_ms")]
    p["snrs_db"] = [audio.check_snr(float(s), "snrs_db") for s in _as_list(p["snrs_db"], "snrs_db")]
    p["rt60s_s"] = [audio.check_rt60(float(r), "rt60s_s") for r in _as_list(p["rt60s_s"] if p["rt60s_s"] is not None else [0.0], "rt60s_s")]
    p["noise_types"] = _as_list(p["noise_types"] or ["white"], "noise_types")
    for n in p["noise_types"]:
        if n not in audio.NOISE_TYPES:
            raise ValueError(f"noise_types: {n!r} is not valid; valid: {', '.join(audio.NOISE_TYPES)}")
    p["filters"] = _as_list(p["filters"] or ["none"], "filters")
    for f in p["filters"]:
        if f not in audio.FILTERS:
            raise ValueError(f"filters: {f!r} is not valid; valid: {', '.join(audio.FILTERS)}")
    fr = [float(f) for f in _as_list(p["split_fractions"] or [0.6, 0.2, 0.2], "split_fractions")]
    if len(fr) != len(SPLITS) or min(fr) <= 0 or abs(sum(fr) - 1) > 1e-6:
        raise ValueError(f"split_fractions={fr} must be {len(SPLITS)} positive numbers ({'/'.join(SPLITS)}) summing to 1")
    p["split_fractions"] = fr
    cpc = p["clips_per_cell"]
    if p["design"] == "factorial" and (cpc is None or int(cpc) != cpc or int(cpc) < len(SPLITS)):
        raise ValueError(f"clips_per_cell={cpc!r} must be an integer of at least {len(SPLITS)} (one clip per split)")
    p["clips_per_cell"] = int(cpc) if cpc is not None else None
    p["seed"] = int(p["seed"] or 0)
    p["include_music"] = bool(p["include_music"])
    p["bandlimit_augment"] = bool(p["bandlimit_augment"])
    p["min_source_ms"] = max(int(p["min_source_ms"] or 0), max(p["durations_ms"]))
    if p["max_sources_per_class"] is not None:
        p["max_sources_per_class"] = int(p["max_sources_per_class"])
    if p["design"] == "ofat":
        p["clips_per_cell"] = None
    return p


def _as_list(v: Any, name: str) -> list:
    if v is None:
        raise ValueError(f"{name} must be a non-empty list")
    if isinstance(v, (str, bytes)) or not isinstance(v, Iterable):
        v = [v]
    v = list(v)
    if not v:
        raise ValueError(f"{name} must be a non-empty list")
    return v


def ofat_reference(params: Mapping[str, Any]) -> dict[str, Any]:
    """The reference condition of the one-factor-at-a-time design: the longest duration, the highest
    SNR, the first noise type, the shortest RT60, and no filter (else the first one listed)."""
    return {
        "duration_ms": max(params["durations_ms"]),
        "snr_db": max(params["snrs_db"]),
        "noise_type": params["noise_types"][0],
        "rt60_s": min(params["rt60s_s"]),
        "filter": "none" if "none" in params["filters"] else params["filters"][0],
    }


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
            cache = _AudioCache(pd.concat([sources_used, noise_used], ignore_index=True))
            feats = []
            rows = plan.to_dict("records")
            for row in _progress(rows, progress, desc=f"bank {h}"):
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


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, mininterval=2.0, unit="clip")


# ----------------------------------------------------------------------------------- planning


def select_sources(sources: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """Sources long enough for the longest duration, at most ``max_sources_per_class`` per class,
    taken round-robin over groups (seeded) so that many speakers and recordings are represented."""
    min_s = params["min_source_ms"] / 1000.0
    long_enough = (sources["end_s"] - sources["start_s"]) >= min_s - 1e-9
    df = sources[long_enough].reset_index(drop=True)
    cap = params["max_sources_per_class"]
    rng = np.random.default_rng([params["seed"], 11])
    picked = []
    for lab in LABELS:
        part = df[df["label"] == lab]
        if cap is None or len(part) <= cap:
            picked.append(part)
            continue
        part = part.iloc[rng.permutation(len(part))]
        part = part.assign(_rank=part.groupby("group_id").cumcount())
        gorder = {g: i for i, g in enumerate(rng.permutation(part["group_id"].unique()))}
        part = part.assign(_g=part["group_id"].map(gorder)).sort_values(["_rank", "_g"], kind="stable")
        picked.append(part.head(cap).drop(columns=["_rank", "_g"]))
    out = pd.concat(picked).sort_values("source_id", kind="stable").reset_index(drop=True)
    for lab in LABELS:
        if not (out["label"] == lab).any():
            raise ValueError(
                f"no {lab} sources of at least {params['min_source_ms']} ms: lower durations_ms/min_source_ms or add material"
            )
    return out


def plan_bank(params: Mapping[str, Any], sources: pd.DataFrame, noise: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The bank's rows (everything needed to render each clip), before rendering."""
    seed = params["seed"]
    src = select_sources(sources, params)
    src["split"] = assign_splits(src["group_id"], src["label"], params["split_fractions"], seed).values
    check_splits(src, "sources")
    if "real" in params["noise_types"]:
        if len(noise) == 0:
            raise ValueError("noise_types includes 'real' but the data source has no noise recordings (noise/); drop 'real'")
        noise = noise.reset_index(drop=True).copy()
        noise["split"] = assign_splits(noise["group_id"], pd.Series(["noise"] * len(noise)), params["split_fractions"], seed + 1).values
        for s in SPLITS:
            if not (noise["split"] == s).any():
                raise ValueError(f"noise recordings: split {s!r} got none (only {noise['group_id'].nunique()} recordings); drop 'real' from noise_types")
    else:
        noise = noise.iloc[:0].assign(split=pd.Series(dtype=str))
    cache = _AudioCache(pd.concat([src, noise], ignore_index=True))
    rng = np.random.default_rng([seed, 23])
    rows: list[dict[str, Any]] = []
    if params["design"] == "factorial":
        _plan_factorial(params, src, noise, cache, rng, rows)
    else:
        _plan_ofat(params, src, noise, cache, rng, rows)
    plan = pd.DataFrame(rows)
    _assign_bandlimits(plan, src, params, rng)
    plan.insert(0, "clip_id", [f"c{i:06d}" for i in range(len(plan))])
    plan["seed"] = [int(np.random.SeedSequence([seed, i]).generate_state(1)[0] >> 1) for i in range(len(plan))]
    plan["path"] = [f"audio/{c}.wav" for c in plan["clip_id"]]
    plan["design"] = params["design"]
    cols = BANK_COLUMNS + [c for c in plan.columns if c not in BANK_COLUMNS]
    plan = plan[cols]
    check_splits(plan, "bank")
    return plan, src, noise


def _split_counts(total: int, fractions: Sequence[float]) -> list[int]:
    raw = np.asarray(fractions) * total
    n = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - n), kind="stable")[: total - n.sum()]:
        n[i] += 1
    while (n == 0).any() and total >= len(n):  # every split gets at least one clip per cell
        n[int(np.argmax(n))] -= 1
        n[int(np.argmin(n))] += 1
    return n.tolist()


class _Cycler:
    """Cycle through a seeded shuffle of items, reshuffling each pass: balanced reuse."""

    def __init__(self, items: Sequence, rng: np.random.Generator):
        self.items, self.rng, self.queue = list(items), rng, []

    def next(self):
        if not self.queue:
            self.queue = [self.items[i] for i in self.rng.permutation(len(self.items))]
        return self.queue.pop()


def _plan_factorial(params, src, noise, cache, rng, rows) -> None:
    counts = _split_counts(params["clips_per_cell"], params["split_fractions"])
    other = {
        "noise_type": params["noise_types"], "rt60_s": params["rt60s_s"], "filter": params["filters"],
    }
    for si, split in enumerate(SPLITS):
        srcs = {lab: _Cycler(src.index[(src["split"] == split) & (src["label"] == lab)], rng) for lab in LABELS}
        noises = _Cycler(noise.index[noise["split"] == split], rng) if len(noise) else None
        for dur in params["durations_ms"]:
            for snr in params["snrs_db"]:
                for lab in LABELS:
                    cyc = {k: _Cycler(v, rng) for k, v in other.items()}
                    for _ in range(counts[si]):
                        r = src.loc[srcs[lab].next()]
                        cond = {"duration_ms": dur, "snr_db": snr, **{k: c.next() for k, c in cyc.items()}}
                        start = _pick_start(cache.get(r), audio.n_samples(dur), rng)
                        rows.append(_row(r, split, cond, start, noise, noises, cache, rng, axis=""))


def _plan_ofat(params, src, noise, cache, rng, rows) -> None:
    ref = ofat_reference(params)
    axes = [("duration_ms", params["durations_ms"]), ("snr_db", params["snrs_db"]), ("noise_type", params["noise_types"]),
            ("rt60_s", params["rt60s_s"]), ("filter", params["filters"])]
    conditions = [("reference", dict(ref))]
    for name, values in axes:
        for v in values:
            if v != ref[name]:
                conditions.append((name, {**ref, name: v}))
    noises = {s: _Cycler(noise.index[noise["split"] == s], rng) if len(noise) else None for s in SPLITS}
    nref = audio.n_samples(ref["duration_ms"])
    for i, r in src.iterrows():
        # one window per source (for the reference duration); shorter clips are centred in it, and the
        # noise recording, its offset and the clip seed stay the same: conditions are paired
        ref_start = _pick_start(cache.get(r), nref, rng)
        pair_rng_state = rng.integers(2**31)
        noise_choice = noises[r["split"]].next() if noises[r["split"]] is not None else None
        for axis, cond in conditions:
            n = audio.n_samples(cond["duration_ms"])
            start = ref_start + (nref - n) // 2
            rows.append(_row(r, r["split"], cond, start, noise, None, cache, np.random.default_rng(pair_rng_state), axis=axis,
                             noise_choice=noise_choice))


def _row(r, split, cond, start, noise, noises, cache, rng, axis, noise_choice=None) -> dict[str, Any]:
    n = audio.n_samples(cond["duration_ms"])
    x = cache.get(r)
    pre = min(start, int(round((CONTEXT_PRE_S + cond["rt60_s"]) * audio.SR)))
    post = min(len(x) - start - n, int(round(CONTEXT_POST_S * audio.SR)))
    row = {
        "source_id": r["source_id"], "group_id": r["group_id"], "label": r["label"], "category": r["category"],
        "split": split, **cond, "dataset": r["dataset"], "source_repo": r.get("source_repo", ""),
        "bandlimited_origin": bool(r.get("bandlimited_origin", False)), "axis": axis,
        "source_offset": int(start), "context_pre": int(pre), "context_post": int(post),
        "noise_source_id": "", "noise_group_id": "", "noise_offset": 0,
    }
    if cond["noise_type"] == "real":
        idx = noise_choice if noise_choice is not None else noises.next()
        nr = noise.loc[idx]
        y = cache.get(nr)
        ctx = pre + n + post
        row.update(noise_source_id=nr["source_id"], noise_group_id=nr["group_id"],
                   noise_offset=_pick_start(y, min(ctx, len(y)), rng) if len(y) >= ctx else 0)
    return row


def _pick_start(x: np.ndarray, n: int, rng: np.random.Generator, hop: int = 80) -> int:
    """A random start among windows of ``n`` samples whose power is within ``ACTIVE_WINDOW_DB`` of the
    loudest window (so a clip is not cut from a pause or a silent stretch)."""
    if len(x) < n:
        raise ValueError(f"source of {len(x)} samples is shorter than the {n}-sample clip")
    starts = np.arange(0, len(x) - n + 1, hop)
    c = np.concatenate([[0.0], np.cumsum(np.asarray(x, dtype=np.float64) ** 2)])
    e = c[starts + n] - c[starts]
    ok = starts[e >= e.max() * 10 ** (-ACTIVE_WINDOW_DB / 10)]
    return int(rng.choice(ok))


def _assign_bandlimits(plan: pd.DataFrame, src: pd.DataFrame, params, rng) -> None:
    """The band-limit treatment: band-limit the same share (``BANDLIMIT_SHARE``) of the clips of BOTH
    classes, whatever their origin, after mixing (only rows without a channel filter), so that
    "band-limited" no longer tells the classes apart in what the model hears. The count is exact per
    class; which clips, and the kind (telephone band, low-pass 4 kHz or 5.5 kHz, like the 8 and 11 kHz
    origins), are drawn.

    Why not "top up each class to the same share, counting band-limited origins"? Because the origin's
    band limit sits under full-band noise in the mixture and mostly disappears, while the treatment,
    applied after mixing, does not: topping up would band-limit more mixtures of the class with fewer
    band-limited sources and create the cue it should remove."""
    plan["bandlimit"] = "none"
    if not params["bandlimit_augment"]:
        return
    kinds = BANDLIMITS[1:]
    for lab in LABELS:
        eligible = plan.index[(plan["label"] == lab) & (plan["filter"] == "none")]
        n = int(round(BANDLIMIT_SHARE * len(eligible)))
        chosen = eligible[np.sort(rng.permutation(len(eligible))[:n])]
        plan.loc[chosen, "bandlimit"] = [kinds[k] for k in rng.integers(len(kinds), size=len(chosen))]


# ----------------------------------------------------------------------------------- rendering


class _AudioCache:
    """Source and noise audio by source_id (the segment ``start_s..end_s`` of the file, 16 kHz mono)."""

    def __init__(self, table: pd.DataFrame):
        self.table = table.drop_duplicates("source_id").set_index("source_id")
        self.cache: dict[str, np.ndarray] = {}

    def path_of(self, sid: str) -> str:
        return str(self.table.loc[sid, "path"]) if sid in self.table.index else "?"

    def get(self, row_or_id) -> np.ndarray:
        sid = row_or_id if isinstance(row_or_id, str) else row_or_id["source_id"]
        if sid not in self.cache:
            if sid not in self.table.index:
                raise KeyError(f"source {sid!r} is not in the sources table")
            r = self.table.loc[sid]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", audio.AudioNote)
                x = _load_file(r["path"])
            a = int(round(float(r["start_s"] or 0) * audio.SR))
            end = float(r["end_s"]) if r["end_s"] is not None and np.isfinite(float(r["end_s"])) else None
            whole = end is None or (a == 0 and abs(end * audio.SR - len(x)) <= audio.SR * 0.01)
            b = len(x) if whole else min(len(x), int(round(end * audio.SR)))
            self.cache[sid] = x if whole else x[a:b].copy()  # a copy: do not keep long recordings alive
        return self.cache[sid]


_FILE_CACHE: dict[str, np.ndarray] = {}


def _load_file(path: str) -> np.ndarray:
    # long recordings (VoxConverse) give many segments: keep the last few files decoded
    if path not in _FILE_CACHE:
        if len(_FILE_CACHE) >= 4:
            _FILE_CACHE.pop(next(iter(_FILE_CACHE)))
        _FILE_CACHE[path] = audio.load_audio(path)
    return _FILE_CACHE[path]


def render_clip(row: Mapping[str, Any], cache: "_AudioCache", with_treated_signal: bool = False) -> dict[str, np.ndarray]:
    """Render one bank clip from its row alone. Returns ``mixture`` (what is stored), ``signal`` and
    ``noise`` (the two components at the mixing point, cut to the clip: their SNR is ``snr_db``), and
    ``untreated`` (the clip before the band-limit treatment); with ``with_treated_signal`` also
    ``signal_treated`` (the clean component through the channel filter and the treatment)."""
    x = cache.get(row["source_id"])
    n = audio.n_samples(row["duration_ms"])
    start, pre, post = int(row["source_offset"]), int(row["context_pre"]), int(row["context_post"])
    if start - pre < 0 or start + n + post > len(x):
        raise ValueError(
            f"source {row['source_id']} ({len(x)} samples) is too short for clip {row.get('clip_id', '')}: it needs samples "
            f"{start - pre}..{start + n + post}; rebuild the bank (the source changed?)"
        )
    ctx = np.asarray(x[start - pre : start + n + post], dtype=np.float64)
    rng = np.random.default_rng(int(row["seed"]))
    sig = audio.reverberate(ctx, float(row["rt60_s"]), seed=int(row["seed"]))
    kind = row["noise_type"]
    if kind == "white":
        nz = audio.white_noise(len(ctx), rng)
    elif kind == "pink":
        nz = audio.pink_noise(len(ctx), rng)
    elif kind == "real":
        y = cache.get(row["noise_source_id"])
        off = int(row["noise_offset"])
        nz = np.resize(np.asarray(y[off:], dtype=np.float64) if len(y) - off >= len(ctx) else np.asarray(y, dtype=np.float64), len(ctx))
    else:
        raise ValueError(f"unknown noise_type {kind!r}; valid: {', '.join(audio.NOISE_TYPES)}")
    window = slice(pre, pre + n)
    try:
        mix, s_c, n_c = audio.mix_at_snr(sig, nz, float(row["snr_db"]), return_components=True, window=window)
    except ValueError as e:  # e.g. a silent window: say which clip, source and file
        what = row["noise_source_id"] if "noise is silent" in str(e) else row["source_id"]
        raise ValueError(f"clip {row.get('clip_id', '')} from {what} ({cache.path_of(what)}): {e}") from e
    mix = audio.band_filter(mix, row["filter"])
    untreated = mix
    bl = row.get("bandlimit", "none") or "none"
    mix = apply_bandlimit(mix, bl)
    out = {
        "mixture": np.ascontiguousarray(mix[window], dtype=np.float32),
        "untreated": np.ascontiguousarray(untreated[window], dtype=np.float32),
        "signal": s_c[window],
        "noise": n_c[window],
    }
    if with_treated_signal:  # the clean component through the same channel and treatment (shortcut report)
        out["signal_treated"] = np.ascontiguousarray(apply_bandlimit(audio.band_filter(s_c, row["filter"]), bl)[window], dtype=np.float32)
    return out


def apply_bandlimit(x: np.ndarray, kind: str) -> np.ndarray:
    """The band-limit treatment ``kind`` (``BANDLIMITS``) applied to a whole (context) signal."""
    if kind == "none":
        return x
    if kind == "telephone":
        return audio.band_filter(x, "telephone")
    if kind.startswith("lowpass_"):
        return audio.band_filter(x, "lowpass", cutoff_hz=float(kind.split("_")[1]))
    raise ValueError(f"unknown bandlimit {kind!r}; valid: {', '.join(BANDLIMITS)}")


class ClipParts:
    """What a listener compares a bank clip with, rendered from its manifest row and the corpus:

    * ``clean``: the source's samples under the clip's window, before any degradation;
    * ``context``: the source around the window (``context_pre`` before, ``context_post`` after, as the
      bank recorded them), clean; ``context_window`` gives the window's (start, end) sample in it;
    * ``noise``: the noise component as it was mixed in (at the clip's SNR, cut to the window);
    * ``noise_recording``: for real noise, the noise recording's own samples at the offset used (before
      scaling); None for synthetic noise;
    * ``mixture``: the clip re-rendered (equal to the stored audio before normalization).

    The corpus is read on first use (the bank's ``bank.yaml`` says which one), then kept.
    """

    def __init__(self, manifest: str | os.PathLike):
        self.manifest = Path(manifest)
        if self.manifest.is_dir():
            self.manifest = self.manifest / "manifest.csv"
        self._cache: _AudioCache | None = None

    def _audio(self) -> _AudioCache:
        if self._cache is None:
            meta_path = self.manifest.parent / "bank.yaml"
            if not meta_path.exists():
                raise ManifestError(f"{meta_path} does not exist: the clean sources of this bank cannot be found "
                                    "(a bank built by lib.data.build_bank has it)")
            meta = yaml.safe_load(meta_path.read_text())
            cfg = {**meta["params"], "data_dir": meta.get("data_dir") or None, "downloads_dir": meta.get("downloads_dir") or None}
            sources, noise, _ = load_sources(cfg)
            self._cache = _AudioCache(pd.concat([sources, noise], ignore_index=True))
        return self._cache

    def parts(self, row: Mapping[str, Any]) -> dict[str, Any]:
        cache = self._audio()
        x = cache.get(row["source_id"])
        n = audio.n_samples(row["duration_ms"])
        start, pre, post = int(row["source_offset"]), int(row["context_pre"]), int(row["context_post"])
        rendered = render_clip(row, cache)
        out: dict[str, Any] = {
            "clean": np.asarray(x[start:start + n], dtype=np.float32),
            "context": np.asarray(x[start - pre:start + n + post], dtype=np.float32),
            "context_window": (pre, pre + n),
            "noise": np.asarray(rendered["noise"], dtype=np.float32),
            "mixture": rendered["mixture"],
            "noise_recording": None,
            "noise_source_id": str(row.get("noise_source_id") or ""),
        }
        if row["noise_type"] == "real" and row.get("noise_source_id"):
            y = cache.get(row["noise_source_id"])
            off = int(row["noise_offset"])
            out["noise_recording"] = np.asarray(y[off:off + n], dtype=np.float32)
        return out


def regenerate(manifest: str | os.PathLike, clip_ids: Sequence[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Re-render clips of a built bank from their rows (to check SNRs or reproducibility)."""
    manifest = Path(manifest)
    df = load_bank(manifest)
    meta = yaml.safe_load((manifest.parent / "bank.yaml").read_text())
    cfg = {**meta["params"], "data_dir": meta.get("data_dir") or None, "downloads_dir": meta.get("downloads_dir") or None}
    sources, noise, _ = load_sources(cfg)
    cache = _AudioCache(pd.concat([sources, noise], ignore_index=True))
    rows = df if clip_ids is None else df[df["clip_id"].isin(list(clip_ids))]
    return {r["clip_id"]: render_clip(r, cache) for r in rows.to_dict("records")}


# ====================================================================================== loading


def load_bank(manifest: str | os.PathLike, check_files: bool = True) -> pd.DataFrame:
    """Read and validate a bank manifest; adds ``audio_path`` (absolute) to each row.

    Errors (``ManifestError``) name the manifest and: missing columns, unknown labels or splits,
    duplicated clip ids, paths outside the bank folder, missing audio files.
    """
    manifest = Path(manifest)
    if manifest.is_dir():
        manifest = manifest / "manifest.csv"
    if not manifest.exists():
        raise ManifestError(f"bank manifest {manifest} does not exist; build it with lib.data.build_bank(cfg) (chapter 01)")
    try:
        df = pd.read_csv(manifest, keep_default_na=False, dtype={"clip_id": str, "source_id": str, "group_id": str, "noise_source_id": str})
    except Exception as e:
        raise ManifestError(f"cannot read bank manifest {manifest}: {e}") from e
    missing = [c for c in BANK_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"bank manifest {manifest} lacks column(s) {', '.join(missing)}; expected {', '.join(BANK_COLUMNS)}")
    bad = sorted(set(df["label"]) - set(LABELS))
    if bad:
        raise ManifestError(f"bank manifest {manifest}: unknown label(s) {bad}; valid: {', '.join(LABELS)}")
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad:
        raise ManifestError(f"bank manifest {manifest}: unknown split(s) {bad}; valid: {', '.join(SPLITS)}")
    dup = df["clip_id"][df["clip_id"].duplicated()].unique().tolist()
    if dup:
        raise ManifestError(
            f"bank manifest {manifest}: duplicated clip_id(s) {dup[:5]}; each clip needs its own id: rebuild the bank "
            "(lib.data.build_bank, chapter 01) instead of editing its manifest"
        )
    root = manifest.parent
    df["audio_path"] = [str(resolve_under(root, p, f"bank manifest {manifest} path")) for p in df["path"]]
    if check_files:
        gone = [p for p, a in zip(df["path"], df["audio_path"]) if not os.path.isfile(a)]
        if gone:
            raise ManifestError(f"bank manifest {manifest}: {len(gone)} audio file(s) missing, e.g. {gone[:3]}; rebuild the bank")
    df.attrs["manifest"] = str(manifest.resolve())
    return df


def load_clip(row: Mapping[str, Any] | str | os.PathLike, normalization: str = "rms", root: str | os.PathLike | None = None) -> np.ndarray:
    """One clip as float32 16 kHz mono, level-normalized (``none|peak|rms``) at load time."""
    if isinstance(row, (str, os.PathLike)):
        path = Path(row)
    elif "audio_path" in row and row["audio_path"]:
        path = Path(row["audio_path"])
    elif root is not None:
        path = resolve_under(root, row["path"])
    else:
        raise ValueError("load_clip needs a row from load_bank (with audio_path) or root=<the manifest's folder>")
    return audio.normalize(audio.load_audio(path), normalization, name=str(path))


def load_clips(
    df: pd.DataFrame,
    manifest: str | os.PathLike | None = None,
    normalization: str = "rms",
    root: str | os.PathLike | None = None,
    progress: bool = False,
) -> list[np.ndarray]:
    """The clips of a bank table (rows of ``load_bank``), in row order, normalized at load time.

    Rows from ``load_bank`` carry ``audio_path``; otherwise ``manifest`` (or ``root``, its folder)
    says where ``path`` is relative to.
    """
    if isinstance(manifest, str) and manifest in audio.NORMALIZATIONS and not Path(manifest).exists():
        manifest, normalization = None, manifest  # load_clips(df, "peak")
    if normalization not in audio.NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; valid: {', '.join(audio.NORMALIZATIONS)} (parameter 'normalization')")
    if root is None and manifest is not None:
        m = Path(manifest)
        root = m if m.is_dir() else m.parent
    rows = df.to_dict("records")
    return [load_clip(r, normalization, root) for r in _progress(rows, progress, desc="load clips")]


# ===================================================================================== shortcuts


def _separability(y: np.ndarray, f: np.ndarray) -> tuple[float, float]:
    """(ROC AUC for 'speech' as the higher feature, best balanced accuracy over thresholds and sides)."""
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(y, f)) if len(set(y)) == 2 else float("nan")
    order = np.argsort(f, kind="stable")
    fs, ys = f[order], y[order]
    pos, neg = ys.sum(), len(ys) - ys.sum()
    # predict speech above threshold t: sweep t over distinct values
    cum_pos = np.concatenate([[0], np.cumsum(ys)])
    cum_neg = np.concatenate([[0], np.cumsum(1 - ys)])
    cuts = np.concatenate([[0], np.nonzero(np.diff(fs))[0] + 1, [len(fs)]])
    tpr = (pos - cum_pos[cuts]) / pos
    tnr = cum_neg[cuts] / neg
    ba = (tpr + tnr) / 2
    return auc, float(max(ba.max(), (1 - ba).max()))


def shortcut_report(bank_df: pd.DataFrame, manifest: str | os.PathLike | None = None, normalization: str = "rms") -> pd.DataFrame:
    """How well one trivial feature alone separates speech from non-speech, with and without the
    treatment that should defuse it:

    * bandwidth, as the 95% spectral roll-off and as the share of energy above 4 kHz (dB): on the
      clean source window (the corpus' own shortcut), on the mixture before the band-limit treatment,
      and after it (``bandlimit``);
    * RMS level: stored (``none``) vs after load-time ``normalization``.

    ``band_limited`` is the cue itself, from the metadata: the clip's source is of 8-11 kHz origin
    (or, with the treatment, the clip was band-limited). Bandwidth is measured on the clean source component (what the corpus brings) and on the mixture
    (what a model hears), each without and with the treatment.

    Columns: feature, measured_on, treatment, n, auc (speech scored by the feature), separability
    (``max(auc, 1 - auc)``: 0.5 = no information, 1 = perfect shortcut), best_balanced_accuracy.
    """
    df = bank_df
    if "audio_path" not in df.columns and manifest is not None:
        loaded = load_bank(manifest)
        df = df.merge(loaded[["clip_id", "audio_path"]], on="clip_id", how="left")
    y = (df["label"].values == "speech").astype(int)
    rows = []

    def add(feature, measured_on, treatment, values):
        v = np.asarray(values, dtype=float)
        v = np.where(np.isfinite(v), v, -200.0)
        auc, ba = _separability(y, v)
        rows.append({"feature": feature, "measured_on": measured_on, "treatment": treatment, "n": len(v), "auc": auc,
                     "separability": max(auc, 1 - auc), "best_balanced_accuracy": ba})

    treated = bool((df.get("bandlimit", pd.Series(["none"])) != "none").any())
    after = "bandlimit_augment" if treated else "bandlimit_augment (off)"
    if "bandlimited_origin" in df.columns:  # the cue itself: is the clip band-limited at all?
        origin = df["bandlimited_origin"].astype(str).str.lower().isin(["true", "1"]).values
        add("band_limited", "metadata", "none", origin.astype(float))
        add("band_limited", "metadata", after, (origin | (df.get("bandlimit", "none") != "none").values).astype(float))
    for feat in ("rolloff95_hz", "highband_db"):
        if f"{feat}_untreated" not in df.columns:
            continue
        if f"{feat}_source" in df.columns:
            add(feat, "clean source", "none", df[f"{feat}_source"])
            add(feat, "clean source", after, df[f"{feat}_source_treated"])
        add(feat, "mixture", "none", df[f"{feat}_untreated"])
        add(feat, "mixture", after, df[feat])
    add("rms_dbfs", "mixture", "none", df["rms_dbfs"])
    if normalization != "none":
        levels = [audio.rms_dbfs(c) for c in load_clips(df, manifest, normalization=normalization)]
        add("rms_dbfs", "mixture", f"{normalization} normalization", levels)
    return pd.DataFrame(rows)
