"""From clips to recordings: speech segments in long recordings, the engine behind ``python -m lib segment``.

Any system that ``python -m lib predict`` can load (:func:`lib.systems.load_system`) works, without changes:

1. **Frame probabilities.** The recording is read as ``predict`` reads a clip (any length, rate and channel count;
   mixed to mono, resampled to 16 kHz). The three VADs give their own frame probabilities (:mod:`lib.vad`). Every
   other system (a trained Qwen2-Audio system, the fitted baselines, whatever a later chapter saves) is slid over the
   recording in windows of ``window_ms`` every ``hop_ms`` (the last window ends at the recording's end; a recording
   shorter than one window is one window); the windows go to the system's ``score`` in batches, each at the
   system's own load-time normalization, as clips would. A window of digital silence (peak below
   :data:`lib.audio.SILENCE_PEAK`) cannot be level-normalized and holds no speech: it gets ``p_speech = 0`` without
   being scored, and is counted.
2. **Windows to frames.** On a grid of ``frame_ms`` frames, each frame's probability aggregates the scores of every
   window that covers the frame's centre: ``mean`` (the overlap average), ``max`` or ``min``. Why it matters: a
   clip detector calls a window speech when any part of it is speech, so for an ideal one the overlap average
   crosses a threshold ``t`` at ``(1 - t) * window`` before a speech onset (and as far after its end), ``max``
   widens every segment by a whole window and ``min`` gives the true extent. Which one suits a real system is an
   empirical question; chapter 09 chooses it on dev scenes, with the thresholds.
3. **Frames to segments** (:func:`binarize`): hysteresis (speech starts where the probability reaches ``onset``
   and lasts while it stays at or above ``offset``), then silences shorter than ``min_silence_ms`` between two
   speech segments are filled, then speech segments shorter than ``min_speech_ms`` are dropped (the order of
   pyannote.audio's ``Binarize``; pyannote.audio itself, with its training stack, is not a dependency for
   these few lines).

A trained Qwen2-Audio system scores its windows through its own batched ``score`` (equal-length windows, so one
batch shape; on a GPU the prompt tokens before the audio are computed once, ``lib.model.SharedPrefix``). The audio
encoder is **not** shared between overlapping windows: Whisper's encoder attends over its whole input, so a
window's encoding inside a longer stretch differs from the window's own, which is what the system was trained on.

Output folder (``--out``): ``rttm/<recording_id>.rttm`` (VoxConverse's format, speaker ``speech``), ``frames/
<recording_id>.npz`` (the frame probabilities, for ROC curves and figures), ``segments.csv`` (the **segments**
table of DESIGN.md: ``run_id, system, variant, recording_id, start_s, end_s, p_speech_mean``), ``recordings.csv``
(one row per recording: duration, compute seconds, real-time factor) and ``segment.yaml`` (the parameters); with
``--reference`` (an RTTM file or a folder of them, e.g. VoxConverse's), also ``metrics.json`` and
``metrics_by_recording.csv`` (:mod:`lib.recordings.detection`). Every file is written atomically; the folder must be new or
one that ``segment`` wrote before.

Modules: :mod:`lib.recordings.windows` (windows, their scores, frames), this one (parameters, decisions, the
command), :mod:`lib.recordings.output` (the output folder's files, measured against references), :mod:`lib.data.rttm` (RTTM).
"""
from __future__ import annotations

import datetime as _dt
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import io
from ..audio import SR  # the book's one sample rate
from ..data.rttm import check_recording_id, read_references, write_rttm
from ..systems import scoring_normalization
from .output import MARKER, SEGMENT_COLUMNS, measure, prepare_out, segments_table, write_frames
from .windows import AGGREGATIONS, frames_from_windows, score_windows, window_starts


# ============================================================================================== parameters
@dataclass(frozen=True)
class SegmentParams:
    """How windows become frames and frames become segments (see the module docstring)."""

    window_ms: float = 1000.0
    hop_ms: float = 250.0
    frame_ms: float = 10.0
    aggregate: str = "mean"
    onset: float = 0.5
    offset: float = 0.5
    min_speech_ms: float = 0.0
    min_silence_ms: float = 0.0
    normalization: str | None = None  # None: the system's own (VADs: the recording as it comes)

    def __post_init__(self) -> None:
        for name in ("window_ms", "hop_ms", "frame_ms"):
            v = getattr(self, name)
            if not np.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a positive number of milliseconds, got {v!r}")
        if self.window_ms < 20:
            raise ValueError(f"window_ms must be at least 20 ms (the shortest clip the book's systems know), got {self.window_ms}")
        if self.hop_ms > self.window_ms:
            raise ValueError(f"hop_ms ({self.hop_ms}) must not exceed window_ms ({self.window_ms}): parts of the recording would never be scored")
        if self.frame_ms > self.hop_ms:
            raise ValueError(f"frame_ms ({self.frame_ms}) must not exceed hop_ms ({self.hop_ms})")
        if self.aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {self.aggregate!r}")
        for name in ("onset", "offset"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {v!r}")
        if self.offset > self.onset:
            raise ValueError(f"offset ({self.offset}) must not exceed onset ({self.onset}): hysteresis needs offset <= onset")
        for name in ("min_speech_ms", "min_silence_ms"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be >= 0 ms, got {v!r}")
        if self.normalization not in (None, "none", "peak", "rms"):
            raise ValueError(f"normalization must be none, peak or rms (or unset: the system's own), got {self.normalization!r}")

    def windows_variant(self) -> str:
        return f"w{self.window_ms:g}-h{self.hop_ms:g}-{self.aggregate}"

    def decision_variant(self) -> str:
        return f"on{self.onset:g}-off{self.offset:g}-sp{self.min_speech_ms:g}-sil{self.min_silence_ms:g}"

    def replace(self, **changes: Any) -> "SegmentParams":
        return SegmentParams(**{**asdict(self), **changes})


# ============================================================================================== recordings
def read_recordings(audio: str | Path, audio_root: str | Path | None = None) -> pd.DataFrame:
    """What to segment: ``recording_id, path`` (absolute) for a file, a folder (its audio files, not recursive) or a
    CSV manifest (column ``path``, relative to ``audio_root`` or the manifest's folder; ``recording_id`` optional).

    Checked before any model is loaded, as ``predict`` checks its manifest: every problem is named with its file or
    row and what to do.
    """
    from ..audio import AUDIO_EXTENSIONS

    src = Path(audio)
    if not src.exists():
        raise FileNotFoundError(f"--audio {src} does not exist: give an audio file, a folder of audio files or a CSV manifest")
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
        if not files:
            raise FileNotFoundError(f"--audio {src}: the folder holds no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})")
        df = pd.DataFrame({"recording_id": [p.stem for p in files], "path": [p.resolve() for p in files]})
        where = f"folder {src}"
    elif src.suffix.lower() == ".csv":
        root = Path(audio_root).resolve() if audio_root else src.resolve().parent
        if not root.is_dir():
            raise FileNotFoundError(f"audio root {root} is not a folder")
        m = pd.read_csv(src, dtype=str, keep_default_na=False)
        if "path" not in m.columns:
            raise ValueError(f"{src} lacks a path column (found {list(m.columns)}); it needs path (relative to {root}) and may have recording_id")
        if m.empty:
            raise ValueError(f"{src} has no rows")
        resolved = []
        for i, rel in enumerate(m["path"]):
            full = (root / rel).resolve()
            if not full.is_relative_to(root):
                raise ValueError(f"{src} row {i + 2}: path {rel!r} points outside the audio root {root}; refused")
            resolved.append(full)
        gone = [i for i, p in enumerate(resolved) if not p.is_file()]
        if gone:
            rows = ", ".join(f"row {i + 2} ({m['path'].iloc[i]!r})" for i in gone[:5])
            raise FileNotFoundError(f"{src}: {len(gone)} audio file(s) not found under {root}: {rows}{' ...' if len(gone) > 5 else ''}; "
                                    "fix the paths (relative to the audio root) or drop those rows")
        ids = m["recording_id"].tolist() if "recording_id" in m.columns else [Path(p).stem for p in m["path"]]
        df = pd.DataFrame({"recording_id": ids, "path": resolved})
        where = f"manifest {src}"
    else:
        if src.suffix.lower() not in AUDIO_EXTENSIONS:
            raise ValueError(f"--audio {src}: not an audio file ({', '.join(sorted(AUDIO_EXTENSIONS))}), a folder or a .csv manifest")
        df = pd.DataFrame({"recording_id": [src.stem], "path": [src.resolve()]})
        where = f"file {src}"
    for rid in df["recording_id"]:
        check_recording_id(str(rid), where)
    dup = df["recording_id"][df["recording_id"].duplicated()].unique()
    if len(dup):
        raise ValueError(f"{where}: duplicated recording id(s) {list(dup[:5])}: each recording needs its own (give a recording_id column)")
    return df


# ============================================================================================== decisions
def hysteresis(probs: np.ndarray, onset: float, offset: float) -> np.ndarray:
    """Speech where the probability has reached ``onset`` and not yet fallen below ``offset`` (boolean per frame)."""
    p = np.asarray(probs, dtype=float)
    # Frames at or above onset switch speech on, frames below offset switch it off, frames in between keep the
    # state of the last frame that decided (off before the first one): a forward fill of the deciding frames.
    decided = (p >= onset) | (p < offset)
    last = np.maximum.accumulate(np.where(decided, np.arange(len(p)), -1))
    return np.where(last >= 0, p[np.maximum(last, 0)] >= onset, False)


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, end)`` frame index pairs of the True runs of ``mask``."""
    m = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    d = np.flatnonzero(np.diff(m.astype(np.int8)))
    return list(zip(d[::2].tolist(), d[1::2].tolist()))


def binarize(probs: np.ndarray, frame_s: float, onset: float, offset: float, min_speech_s: float = 0.0,
             min_silence_s: float = 0.0) -> list[tuple[int, int]]:
    """Speech segments as ``[start, end)`` frame indices: hysteresis, then silences shorter than ``min_silence_s``
    between two segments filled, then segments shorter than ``min_speech_s`` dropped."""
    segs = runs(hysteresis(probs, onset, offset))
    min_gap = int(round(min_silence_s / frame_s))
    merged: list[list[int]] = []
    for a, b in segs:
        if merged and a - merged[-1][1] < min_gap:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    min_len = int(round(min_speech_s / frame_s))
    return [(a, b) for a, b in merged if b - a >= max(min_len, 1)]


# ============================================================================================== one recording
@dataclass
class RecordingResult:
    recording_id: str
    probs: np.ndarray  # on the frame grid
    frame_s: float
    n_samples: int
    segments: list[tuple[int, int]]
    compute_s: float  # seconds spent turning audio into frame probabilities
    source: str  # "vad-frames" or "windows"
    n_windows: int = 0
    silent_windows: int = 0

    @property
    def duration_s(self) -> float:
        return self.n_samples / SR

    def segments_s(self) -> list[tuple[float, float]]:
        return [(a * self.frame_s, min(b * self.frame_s, self.duration_s)) for a, b in self.segments]


def frame_probabilities(system: Any, x: np.ndarray, params: SegmentParams, batch: int = 256,
                        progress: bool = False, desc: str = "") -> tuple[np.ndarray, dict[str, Any]]:
    """Frame probabilities of one recording on the ``frame_ms`` grid, and how they were made."""
    from tqdm.auto import tqdm

    from ..audio import normalize
    from ..vad import frame_track

    frame = int(round(params.frame_ms * SR / 1000))
    n_frames = max(1, -(-len(x) // frame))
    t0 = time.perf_counter()
    if getattr(system, "kind", None) in ("silero", "webrtc", "firered"):
        y = x if params.normalization in (None, "none") else normalize(x, params.normalization)
        track = frame_track(system, y, progress=progress)
        probs = track.on_grid(frame / SR, n_frames)
        return probs, {"source": "vad-frames", "compute_s": time.perf_counter() - t0, "n_windows": 0, "silent_windows": 0}
    window = int(round(params.window_ms * SR / 1000))
    hop = int(round(params.hop_ms * SR / 1000))
    starts = window_starts(len(x), window, hop)
    mode = scoring_normalization(system, params.normalization)
    bar = tqdm(total=len(starts), desc=desc or getattr(system, "name", "windows"), unit="win", disable=not progress,
               mininterval=1.0)
    try:
        scores, silent = score_windows(system, x, starts, window, mode, batch=batch, progress=bar.update)
    finally:
        bar.close()
    probs = frames_from_windows(scores, starts, min(window, len(x)), len(x), frame, params.aggregate)
    return probs, {"source": "windows", "compute_s": time.perf_counter() - t0, "n_windows": int(len(starts)),
                   "silent_windows": int(silent), "normalization": mode}


def segment_audio(system: Any, x: np.ndarray, params: SegmentParams, recording_id: str = "recording",
                  batch: int = 256, progress: bool = False) -> RecordingResult:
    """Segment one 16 kHz mono recording with a loaded system."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"recording {recording_id}: expected a non-empty 1-D array of 16 kHz samples, got shape {x.shape}")
    probs, info = frame_probabilities(system, x, params, batch=batch, progress=progress, desc=recording_id)
    frame_s = params.frame_ms / 1000
    segs = binarize(probs, frame_s, params.onset, params.offset, params.min_speech_ms / 1000, params.min_silence_ms / 1000)
    return RecordingResult(recording_id, probs, frame_s, len(x), segs, info["compute_s"], info["source"],
                           info["n_windows"], info["silent_windows"])


def load_recording(path: str | Path, where: str = "") -> np.ndarray:
    """A recording as ``predict`` reads a clip (any rate and channel count); an unusable file is named."""
    from ..audio import AudioNote, load_audio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AudioNote)  # conversions are expected for recordings; the file is named on errors
        try:
            return load_audio(path)
        except ValueError as err:
            raise type(err)(f"{where}{err}") from err


# ============================================================================================== the command
def segment_recordings(
    system: str | Any,
    audio: str | Path,
    out: str | Path,
    params: SegmentParams | None = None,
    audio_root: str | Path | None = None,
    run_id: str | None = None,
    batch: int = 256,
    progress: bool = True,
    save_frames: bool = True,
    reference: str | Path | None = None,
    collar_s: float = 0.5,
    n_boot: int = 1000,
    **options: Any,
) -> Path:
    """``python -m lib segment``: segment every recording of ``audio`` with ``system`` (a spec for
    :func:`lib.systems.load_system`, or a loaded scorer) and write the output folder; returns it. With
    ``reference`` (RTTM file or folder), also measure the segments against it (:mod:`lib.recordings.detection`, pyannote.metrics,
    ``collar_s``) into ``metrics.json`` and ``metrics_by_recording.csv``."""
    params = params or SegmentParams()
    recs = read_recordings(audio, audio_root)
    refs = read_references(reference, recs["recording_id"].astype(str).tolist()) if reference is not None else None
    if not np.isfinite(collar_s) or collar_s < 0:
        raise ValueError(f"collar must be >= 0 s, got {collar_s!r}")
    out = prepare_out(out, recs["path"])
    if isinstance(system, str):
        from ..systems import load_system

        scorer = load_system(system, **options)
        spec = system
    else:
        scorer, spec = system, getattr(system, "name", "?")
    name = getattr(scorer, "name", str(spec))
    is_vad = getattr(scorer, "kind", None) in ("silero", "webrtc", "firered")
    norm = scoring_normalization(scorer, params.normalization)
    settings = getattr(scorer, "settings", "")
    variant = "/".join(x for x in [norm, "frames" if is_vad else params.windows_variant(), params.decision_variant()] if x)
    if is_vad and settings:
        variant = f"{norm}/{settings}/{params.decision_variant()}"
    run_id = run_id or f"segment-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    io.write_yaml(out / MARKER, {"state": "running", "run_id": run_id, "system": spec, "system_name": name,
                                 "variant": variant, "params": asdict(params), "audio": str(audio),
                                 "started": _dt.datetime.now().isoformat(timespec="seconds")})
    tables, rec_rows = [], []
    for i, r in enumerate(recs.itertuples(index=False)):
        x = load_recording(r.path, where=f"--audio {audio} (recording {r.recording_id}): ")
        res = segment_audio(scorer, x, params, recording_id=str(r.recording_id), batch=batch, progress=progress)
        write_rttm(out / "rttm" / f"{r.recording_id}.rttm", str(r.recording_id), res.segments_s())
        if save_frames:
            write_frames(out / "frames" / f"{r.recording_id}.npz", res.probs, res.frame_s, res.n_samples)
        tables.append(segments_table(res.probs, res.segments, res.frame_s, res.n_samples, run_id=run_id, system=name,
                                     variant=variant, recording_id=str(r.recording_id)))
        rec_rows.append({"recording_id": r.recording_id, "path": str(r.path), "duration_s": round(res.duration_s, 3),
                         "compute_s": round(res.compute_s, 3), "rtf": res.compute_s / max(res.duration_s, 1e-9),
                         "source": res.source, "n_windows": res.n_windows, "silent_windows": res.silent_windows,
                         "n_segments": len(res.segments), "speech_s": round(sum(b - a for a, b in res.segments_s()), 3)})
    seg = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=SEGMENT_COLUMNS)
    io.write_csv(out / "segments.csv", seg)
    recs_out = pd.DataFrame(rec_rows)
    io.write_csv(out / "recordings.csv", recs_out)
    total_audio, total_compute = float(recs_out["duration_s"].sum()), float(recs_out["compute_s"].sum())
    io.write_yaml(out / MARKER, {"state": "complete", "run_id": run_id, "system": spec, "system_name": name,
                                 "variant": variant, "params": asdict(params), "audio": str(audio),
                                 "recordings": len(recs_out), "audio_s": round(total_audio, 3),
                                 "compute_s": round(total_compute, 3), "rtf": total_compute / max(total_audio, 1e-9),
                                 "finished": _dt.datetime.now().isoformat(timespec="seconds")})
    if refs is not None:
        pooled, per, _ = measure(out, refs, collar_s, n_boot, 0.95, 0)
        io.write_json(out / "metrics.json", {"system": name, "variant": variant, "collar_s": collar_s,
                                             "reference": str(reference), "intervals": "95% bootstrap over recordings",
                                             **pooled})
        io.write_csv(out / "metrics_by_recording.csv", per)
    return out


