"""Long recordings to test on, offline: seeded "scenes" from one split's sources, with exact RTTM references.

A scene is a noise bed with events placed on it one after another: speech utterances and non-speech events, with
pauses between them, sometimes a non-speech event over an utterance (a door while someone talks), each event at its
own SNR over the bed, the whole scene in one room (one RT60). Everything comes from **one split** of a run's bank:

* speech and non-speech sources whose ``group_id`` (speaker, original recording) the bank put in that split -- also
  the short utterances (single words, letters, digits) the bank itself left out for being under ``min_source_ms``,
  since their speakers sit in that split and nowhere else: no training speaker or recording appears in a test scene;
* noise beds from the noise recordings that split's real-noise clips used (pink noise when there are none).

The reference says where speech is, exactly as placed: an utterance's speech is where its own 10 ms frames (the
clean source, before mixing) are within ``activity_db`` of its loudest frame, pauses shorter than
``min_pause_s`` bridged -- so the silence a corpus file keeps around or inside an utterance is not called speech.
A reverberant tail after the last frame is not speech either (annotators mark the talker, not the room).
Overlapping non-speech events do not change the reference: speech is present there.

``build_scenes(manifest, split, params)`` writes ``<scenes_dir>/<hash>/``: ``audio/<scene_id>.wav``,
``rttm/<scene_id>.rttm`` (speaker = the source's group), ``scenes.csv`` (one row per scene), ``events.csv`` (one row
per placed event, for error analysis: kind, source, category, onset, end, SNR, speech seconds, overlap) and
``scenes.yaml``. The folder appears only complete and is reused when the same scenes are asked for again.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import audio, io
from ..config import PROJECT_ROOT

SR = audio.SR
SCENES_VERSION = 2  # bump when rendering changes, so old scene folders are not reused
FRAME = 160  # 10 ms activity frames
BED_DBFS = -45.0  # the bed's RMS level before the scene's final gain


@dataclass(frozen=True)
class SceneParams:
    """How scenes are built. The profile's ``recordings`` section holds the values (the one place where they are
    defined: :meth:`from_cfg` reads them); the last three are fixed properties of rendering, not parameters."""

    n_scenes: int  # scenes_dev / scenes_test
    duration_s: float
    seed: int
    snr_range_db: tuple[float, float]  # each event's SNR over the bed, uniform in this range
    rt60s_s: tuple[float, ...]  # one per scene, drawn from these
    pause_range_s: tuple[float, float]  # silence (bed only) between consecutive events
    speech_share: float  # chance that the next event is speech
    overlap_prob: float  # chance that a non-speech event is laid over an utterance as well
    bed: str  # real (the split's noise recordings; pink when none) | pink | white
    max_event_s: float = 5.0  # longer sources are cut (at a random start) to this
    activity_db: float = 35.0  # an utterance's frame is speech within this many dB of its loudest frame
    min_pause_s: float = 0.25  # shorter pauses inside an utterance count as speech

    def __post_init__(self) -> None:
        if int(self.n_scenes) < 1:
            raise ValueError(f"scene count must be >= 1, got {self.n_scenes}")
        if not 5.0 <= float(self.duration_s) <= 7200.0:
            raise ValueError(f"scene duration must lie in 5..7200 s, got {self.duration_s}")
        lo, hi = self.snr_range_db
        if lo > hi:
            raise ValueError(f"scene SNR range {self.snr_range_db}: low end above high end")
        for v in (lo, hi):
            audio.check_snr(v, "scene_snr_range_db")
        for v in self.rt60s_s:
            audio.check_rt60(v, "scene_rt60s_s")
        if not 0 <= self.pause_range_s[0] <= self.pause_range_s[1]:
            raise ValueError(f"scene pause range {self.pause_range_s} must be 0 <= low <= high")
        if not (0 < self.speech_share < 1 and 0 <= self.overlap_prob <= 1):
            raise ValueError("scene speech_share must lie in (0, 1) and overlap_prob in [0, 1]")
        if self.bed not in ("real", "pink", "white"):
            raise ValueError(f"scene bed must be real, pink or white, got {self.bed!r}")

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any], split: str) -> "SceneParams":
        """From a resolved profile (``recordings`` section): dev and test get their own count and seed stream."""
        return cls(
            n_scenes=int(cfg[f"scenes_{split}"]), duration_s=float(cfg["scene_duration_s"]), seed=int(cfg["scene_seed"]),
            snr_range_db=tuple(float(v) for v in cfg["scene_snr_range_db"]),
            rt60s_s=tuple(float(v) for v in cfg["scene_rt60s_s"]),
            pause_range_s=tuple(float(v) for v in cfg["scene_pause_range_s"]),
            speech_share=float(cfg["scene_speech_share"]), overlap_prob=float(cfg["scene_overlap_prob"]),
            bed=str(cfg["scene_bed"]),
        )


# ============================================================================================ material
def split_material(manifest: str | Path, split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(sources, noise)`` of one split: sources of the split's groups (see the module docstring), noise recordings
    its real-noise clips used. Read from the bank's manifest and the corpus it was built from."""
    from ..data import SPLITS, load_bank, load_bank_meta, load_sources

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    manifest = Path(manifest)
    bank = load_bank(manifest, check_files=False)
    meta = load_bank_meta(manifest)
    if "params" not in meta:
        raise ValueError(f"{manifest.parent / 'bank.yaml'} is not a bank's description; rebuild the bank (chapter 01)")
    cfg = {**meta["params"], "data_dir": meta.get("data_dir") or None, "downloads_dir": meta.get("downloads_dir") or None}
    sources, noise, _ = load_sources(cfg)
    groups = bank.groupby("group_id")["split"].agg(set)
    if (groups.map(len) > 1).any():
        raise AssertionError(f"bank {manifest}: a group sits in several splits")
    mine = set(groups[groups.map(lambda s: split in s)].index)
    others = set(groups.index) - mine
    src = sources[sources["group_id"].isin(mine) & ~sources["group_id"].isin(others)]
    if "corpus_label" in src.columns:
        src = src[src["corpus_label"].isin(["speech", "nonspeech"])]  # music is neither: left out of scenes
    src = src.reset_index(drop=True)
    for lab in ("speech", "nonspeech"):
        if not (src["label"] == lab).any():
            raise ValueError(f"bank {manifest}: split {split!r} has no {lab} sources for scenes")
    used = bank.loc[(bank["split"] == split) & (bank["noise_type"] == "real"), "noise_source_id"]
    nz = noise[noise["source_id"].isin(set(used))].reset_index(drop=True)
    train_groups = set(bank.loc[bank["split"] != split, "noise_group_id"]) if "noise_group_id" in bank.columns else set()
    nz = nz[~nz["group_id"].isin(train_groups - {""})].reset_index(drop=True)
    return src, nz


@functools.lru_cache(maxsize=64)
def _load(path: str, start_s: float = 0.0, end_s: float | None = None) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", audio.AudioNote)
        x = audio.load_audio(path)
    a = int(round(float(start_s or 0) * SR))
    b = len(x) if end_s is None or not np.isfinite(end_s) else min(len(x), int(round(float(end_s) * SR)))
    y = np.asarray(x[a:b], dtype=np.float64)
    y.setflags(write=False)  # cached: callers must not change it
    return y


def speech_activity(x: np.ndarray, activity_db: float, min_pause_s: float) -> list[tuple[int, int]]:
    """Speech regions of a clean utterance as ``[start, end)`` sample pairs (see the module docstring)."""
    n = len(x) // FRAME
    if n == 0:
        return [(0, len(x))]
    e = 10 * np.log10(np.mean(x[: n * FRAME].reshape(n, FRAME) ** 2, axis=1) + 1e-12)
    active = e >= e.max() - activity_db
    from .segment import runs

    regions: list[list[int]] = []
    gap = int(round(min_pause_s * SR / FRAME))
    for a, b in runs(active):
        if regions and a - regions[-1][1] < gap:
            regions[-1][1] = b
        else:
            regions.append([a, b])
    return [(a * FRAME, b * FRAME) for a, b in regions]


class _Pool:
    """Sources drawn without replacement in a seeded order, reshuffled when used up."""

    def __init__(self, table: pd.DataFrame, rng: np.random.Generator):
        self.table, self.rng, self.order = table.reset_index(drop=True), rng, []

    def next(self) -> pd.Series:
        if not self.order:
            self.order = list(self.rng.permutation(len(self.table)))
        return self.table.iloc[self.order.pop()]


def _bed(params: SceneParams, noise: pd.DataFrame, n: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A noise bed of ``n`` samples at unit RMS: pieces of the split's noise recordings with 50 ms cross-fades."""
    kind = params.bed if not (params.bed == "real" and noise.empty) else "pink"
    if kind == "pink":
        x = audio.pink_noise(n, rng)
        return x / np.sqrt(np.mean(x * x)), "pink"
    if kind == "white":
        x = audio.white_noise(n, rng)
        return x / np.sqrt(np.mean(x * x)), "white"
    fade = int(0.05 * SR)
    out = np.zeros(n + fade)
    pos, used = 0, []
    while pos < n:
        r = noise.iloc[int(rng.integers(len(noise)))]
        y = _load(r["path"], r["start_s"], r["end_s"])
        y = y / max(np.sqrt(np.mean(y * y)), 1e-9)
        y = y[int(rng.integers(0, max(1, len(y) // 2))):]
        if len(y) <= 2 * fade:
            continue
        ramp = np.ones(len(y))
        ramp[:fade] = np.linspace(0, 1, fade)
        ramp[-fade:] = np.linspace(1, 0, fade)
        seg = (y * ramp)[: n + fade - pos]
        out[pos : pos + len(seg)] += seg
        used.append(str(r["source_id"]))
        pos += len(seg) - fade
    x = out[:n]
    return x / np.sqrt(np.mean(x * x)), "+".join(dict.fromkeys(used))


def _speaker(group_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:-]+", "_", str(group_id)) or "speaker"


def render_scene(params: SceneParams, src: pd.DataFrame, noise: pd.DataFrame, scene_id: str, seed: Sequence[int]
                 ) -> tuple[np.ndarray, list[dict[str, Any]], dict[str, Any]]:
    """One scene: its audio, its events (speech regions in seconds included) and its description."""
    from scipy.signal import fftconvolve

    rng = np.random.default_rng(list(seed))
    n = int(round(params.duration_s * SR))
    rt60 = float(params.rt60s_s[int(rng.integers(len(params.rt60s_s)))])
    room = int(rng.integers(8))
    bed, bed_name = _bed(params, noise, n, rng)
    bed = bed * 10 ** (BED_DBFS / 20)
    scene = bed.copy()
    pools = {lab: _Pool(src[src["label"] == lab], rng) for lab in ("speech", "nonspeech")}
    h = audio.room_impulse_response(rt60, room) if rt60 > 0 else np.ones(1)
    tail = min(len(h), int(1.5 * rt60 * SR) + 1)
    events: list[dict[str, Any]] = []

    def place(kind: str, onset: int, limit: int) -> int | None:
        r = pools[kind].next()
        x = _load(r["path"], r["start_s"], r["end_s"])
        cap = int(params.max_event_s * SR)
        if len(x) > cap:
            a = int(rng.integers(0, len(x) - cap + 1))
            x = x[a : a + cap]
        if onset + len(x) > limit or np.max(np.abs(x)) < audio.SILENCE_PEAK:
            return None
        snr = float(rng.uniform(*params.snr_range_db))
        wet = fftconvolve(x, h[:tail]) if rt60 > 0 else x
        span = slice(onset, onset + len(x))
        p_bed = float(np.mean(bed[span] ** 2))
        gain = np.sqrt(p_bed * 10 ** (snr / 10) / max(float(np.mean(wet[: len(x)] ** 2)), 1e-20))
        end = min(n, onset + len(wet))
        scene[onset:end] += gain * wet[: end - onset]
        regions = speech_activity(x, params.activity_db, params.min_pause_s) if kind == "speech" else []
        events.append({
            "scene_id": scene_id, "event": len(events), "kind": kind, "source_id": r["source_id"], "group_id": r["group_id"],
            "category": r["category"], "onset_s": onset / SR, "end_s": (onset + len(x)) / SR, "duration_s": len(x) / SR,
            "snr_db": snr, "speech_s": sum(b - a for a, b in regions) / SR, "overlaps_speech": False,
            "regions": [((onset + a) / SR, (onset + b) / SR) for a, b in regions], "speaker": _speaker(r["group_id"]),
        })
        return onset + len(x)

    def ms(seconds: float) -> int:  # onsets on whole milliseconds: every reference boundary is exact to 3 decimals
        return int(round(seconds * 1000)) * (SR // 1000)

    t = ms(rng.uniform(*params.pause_range_s))
    misses = 0
    while t < n - int(0.2 * SR) and misses < 20:
        kind = "speech" if rng.random() < params.speech_share else "nonspeech"
        end = place(kind, t, n)
        if end is None:
            misses += 1
            continue
        if kind == "speech" and rng.random() < params.overlap_prob:
            u = events[-1]
            onset = ms(rng.uniform(u["onset_s"], max(u["onset_s"], u["end_s"] - 0.1)))
            if place("nonspeech", onset, n) is not None:
                events[-1]["overlaps_speech"] = True
                end = max(end, int(events[-1]["end_s"] * SR))
        t = -(-end // (SR // 1000)) * (SR // 1000) + ms(rng.uniform(*params.pause_range_s))
    peak = float(np.max(np.abs(scene)))
    gain = min(1.0, 0.99 / peak) if peak > 0 else 1.0  # one gain for the whole scene: every SNR stays as drawn
    info = {"scene_id": scene_id, "duration_s": n / SR, "rt60_s": rt60, "room": room, "bed": bed_name,
            "bed_dbfs": BED_DBFS + 20 * np.log10(gain), "n_events": len(events),
            "n_speech": sum(e["kind"] == "speech" for e in events),
            "speech_s": _union_s([r for e in events for r in e["regions"]])}
    return (scene * gain).astype(np.float32), events, info


def _union(regions: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    from ..data.rttm import merge_intervals as union

    return union(regions)


def _union_s(regions: Sequence[tuple[float, float]]) -> float:
    return float(sum(b - a for a, b in _union(regions)))


def scene_rttm(scene_id: str, events: Sequence[Mapping[str, Any]]) -> str:
    """The reference RTTM of a scene: one line per speech region, the source's group as speaker. Onsets lie on whole
    milliseconds and regions on 10 ms frames of their utterance, so three decimals are exact."""
    lines = []
    for e in events:
        for a, b in e["regions"]:
            lines.append(f"SPEAKER {scene_id} 1 {a:.3f} {b - a:.3f} <NA> <NA> {e['speaker']} <NA> <NA>\n")
    return "".join(lines)


# ============================================================================================ building
def scenes_hash(manifest: Path, split: str, params: SceneParams) -> str:
    text = json.dumps({"bank": io.sha256_file(manifest), "split": split, "params": asdict(params),
                       "version": SCENES_VERSION}, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_scenes(manifest: str | Path, split: str, params: SceneParams, scenes_dir: str | Path | None = None,
                 progress: bool = False) -> Path:
    """Build (or reuse) the scenes of one split; returns the folder (``scenes.csv`` inside)."""
    from tqdm.auto import tqdm

    manifest = Path(manifest)
    if manifest.is_dir():
        manifest = manifest / "manifest.csv"
    root = Path(scenes_dir) if scenes_dir else PROJECT_ROOT / "data" / "scenes"
    folder = root / scenes_hash(manifest, split, params)
    if (folder / "scenes.yaml").exists():
        return folder
    src, noise = split_material(manifest, split)
    split_code = {"train": 0, "dev": 1, "test": 2}[split]
    with io.atomic_dir(folder) as tmp:
        rows, events = [], []
        for i in tqdm(range(params.n_scenes), desc=f"{split} scenes", disable=not progress):
            sid = f"{split}_scene{i:03d}"
            x, ev, info = render_scene(params, src, noise, sid, (params.seed, split_code, i))
            audio.write_audio(tmp / "audio" / f"{sid}.wav", x)
            io.write_text(tmp / "rttm" / f"{sid}.rttm", scene_rttm(sid, ev))
            rows.append({**info, "split": split, "path": f"audio/{sid}.wav", "rttm": f"rttm/{sid}.rttm",
                         "recording_id": sid})
            events += ev
        ev_df = pd.DataFrame(events)
        ev_df["regions"] = [json.dumps(r) for r in ev_df["regions"]]
        io.write_csv(tmp / "scenes.csv", pd.DataFrame(rows))
        io.write_csv(tmp / "events.csv", ev_df)
        io.write_yaml(tmp / "scenes.yaml", {"split": split, "bank_manifest": str(manifest), "params": asdict(params),
                                            "version": SCENES_VERSION, "n_sources": int(len(src)),
                                            "n_groups": int(src["group_id"].nunique()), "n_noise": int(len(noise))})
    return folder


def read_scenes(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(scenes, events)`` of a scene folder; ``events.regions`` back as lists of (start, end) seconds."""
    folder = Path(folder)
    scenes = pd.read_csv(folder / "scenes.csv", keep_default_na=False)
    events = pd.read_csv(folder / "events.csv", keep_default_na=False)
    events["regions"] = [[tuple(r) for r in json.loads(v)] for v in events["regions"]]
    scenes.attrs["folder"] = str(folder)
    return scenes, events
