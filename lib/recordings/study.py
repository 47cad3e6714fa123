"""Chapter 09's steps: systems over whole recordings, settings chosen on dev scenes, measured once on test scenes.

* :func:`recordings_of` -- a scene folder (or any folder of recordings with ``.rttm`` files beside them) as a table
  ``recording_id, path, duration_s`` plus the reference speech regions of each recording.
* :func:`dev_frames` / :func:`choose_settings` -- on the dev recordings, a system's frame probabilities for every
  window size of the grid (window scores are computed once per window size; ``mean``/``max``/``min`` aggregation
  and every decision setting reuse them), then the decision grid (onset, hysteresis gap, minimum speech and silence)
  scored with pyannote.metrics; the setting with the lowest pooled detection error rate on dev wins.
* :func:`run_on_test` -- the chosen setting through ``python -m lib segment``'s engine (:func:`lib.recordings.
  segment.segment_recordings`) on the test recordings, into ``<run>/recordings/<system>/``, then measured
  (:func:`lib.recordings.output.measure`).
* :func:`run_own_helper` -- Silero's and FireRedVAD's own segment helpers, default settings, for comparison.
* :func:`event_errors` -- error analysis: which non-speech events became false alarms (share of each event, outside
  reference speech, covered by detected speech) and which speech was missed (share of each utterance's reference
  speech not covered), with each event's category, duration and SNR.
* :func:`tune_on_dev` / :func:`run_test` -- the chapter's two passes over every system, with
  :class:`RecordingsStudy` (the profile's ``seg_*`` parameters, read by ``lib.config.section``).

The analysis of the test results is :mod:`lib.recordings.analysis`; the chapter's figures are
:mod:`lib.recordings.figures`.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import io
from ..audio import AUDIO_EXTENSIONS, SR
from ..data.rttm import read_rttm_segments, write_rttm
from ..systems import scoring_normalization
from . import detection
from .output import SEGMENT_COLUMNS
from .segment import SegmentParams, binarize, frame_probabilities, load_recording, segment_recordings
from .windows import frames_from_windows, score_windows, window_starts

VAD_SPECS = ("silero", "webrtc", "firered")
OWN_HELPERS = ("silero", "firered")  # the VADs whose packages ship their own segment helper


@dataclass(frozen=True)
class RecordingsStudy:
    """Chapter 09's parameters (the profile's ``recordings`` section), read with ``lib.config.section``."""

    SECTION = "recordings"
    seed: int
    ci_level: float
    bootstrap_reps: int
    seg_collar_s: float
    seg_frame_ms: float
    seg_hop_ms: float
    seg_windows_ms: list
    seg_aggregates: list
    seg_onsets: list
    seg_offset_gaps: list
    seg_min_speech_ms: list
    seg_min_silence_ms: list

    def __post_init__(self) -> None:  # YAML gives 10 for 10.0: the scalars as the code uses them
        for name, kind in (("seed", int), ("ci_level", float), ("bootstrap_reps", int), ("seg_collar_s", float),
                           ("seg_frame_ms", float), ("seg_hop_ms", float)):
            object.__setattr__(self, name, kind(getattr(self, name)))


def require_run_folder(run_dir: str | Path | None) -> None:
    """Chapter 09 works on a run of chapters 01-03: its bank and saved systems; say how to make one if missing."""
    if run_dir is None or not (Path(run_dir) / "bank.yaml").exists():
        raise FileNotFoundError(
            "this chapter needs a run folder with a bank and saved systems: run chapters 01-03 first "
            "(`python -m lib book --chapters '01 02 03'`) and pass that folder as run_dir"
            + (f" ({run_dir} has no bank.yaml)" if run_dir is not None else ""))


@dataclass
class SceneSplit:
    """One split's scenes: the folder, the recordings table, reference speech regions and the placed events."""

    folder: Path
    recs: pd.DataFrame
    refs: dict[str, list[tuple[float, float]]]
    events: pd.DataFrame


def scene_splits(manifest: str | Path, cfg: Mapping[str, Any], splits: Sequence[str] = ("dev", "test")) -> dict[str, SceneSplit]:
    """The dev and test scenes of the run's bank, built or reused (:func:`lib.recordings.scenes.build_scenes`), read back."""
    from . import scenes

    out = {}
    for split in splits:
        folder = scenes.build_scenes(manifest, split, scenes.SceneParams.from_cfg(cfg, split))
        recs, refs = recordings_of(folder)
        out[split] = SceneSplit(Path(folder), recs, refs, scenes.read_scenes(folder)[1])
    return out


# ============================================================================================ recordings
def recordings_of(folder: str | Path) -> tuple[pd.DataFrame, dict[str, list[tuple[float, float]]]]:
    """Recordings and reference speech regions of a scene folder (``scenes.csv``) or of any folder of recordings with
    RTTM references (an ``.rttm`` of the same name anywhere under the folder: VoxConverse's layout after its download)."""
    folder = Path(folder)
    if (folder / "scenes.csv").exists():
        from .scenes import read_scenes

        sc, _ = read_scenes(folder)
        recs = pd.DataFrame({"recording_id": sc["recording_id"], "path": [str(folder / p) for p in sc["path"]],
                             "rttm": [str(folder / p) for p in sc["rttm"]], "duration_s": sc["duration_s"].astype(float)})
    else:
        import soundfile as sf

        # as lib.data.rttm.sources_from_rttm_folder finds them (VoxConverse's layout): audio and RTTM files anywhere
        # under the folder, matched by file name stem = file id
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
        rttms = {p.stem: p for p in folder.rglob("*.rttm")}
        missing = [p.name for p in files if p.stem not in rttms]
        if missing:
            raise FileNotFoundError(f"{folder}: {len(missing)} recording(s) without an RTTM file of the same name, e.g. "
                                    f"{missing[:3]}; every recording needs its reference")
        rows = [{"recording_id": p.stem, "path": str(p), "rttm": str(rttms[p.stem]), "duration_s": sf.info(str(p)).duration}
                for p in files]
        if not rows:
            raise FileNotFoundError(f"{folder} holds no scenes.csv and no audio files with .rttm references")
        recs = pd.DataFrame(rows)
    refs: dict[str, list[tuple[float, float]]] = {}
    for r in recs.itertuples(index=False):
        regions = read_rttm_segments(r.rttm)
        refs[r.recording_id] = regions.get(r.recording_id, [])
        extra = set(regions) - {r.recording_id}
        if extra:
            raise ValueError(f"{r.rttm} holds file id(s) {sorted(extra)} besides {r.recording_id!r}")
    return recs, refs


def default_systems(run_dir: str | Path, lora_variant: str = "attn") -> list[str]:
    """The run's fine-tuned system (``qwen2audio-<variant>``, else its only LoRA system), its fitted baselines,
    and the three VADs."""
    from ..systems import find_finetuned_system, list_systems

    run_dir = Path(run_dir)
    finetuned = find_finetuned_system(run_dir, variant=lora_variant)
    picked = [finetuned[0]] if finetuned else []
    picked += [n for kind in ("energy", "logmel") for n in list_systems(run_dir, kind=kind)]
    return [f"{run_dir}:{n}" for n in picked] + list(VAD_SPECS)


def is_vad(system: Any) -> bool:
    return getattr(system, "kind", None) in VAD_SPECS


# ============================================================================================ dev
def dev_frames(system: Any, recs: pd.DataFrame, windows_ms: Sequence[float], hop_ms: float, frame_ms: float,
               aggregates: Sequence[str], progress: bool = False) -> tuple[dict[tuple, dict[str, np.ndarray]], float]:
    """Frame probabilities of every dev recording for each (window_ms, aggregate) -- or ``(None, None)`` once for a
    VAD -- and the compute seconds spent."""
    audio = {r.recording_id: load_recording(r.path) for r in recs.itertuples(index=False)}
    frame = int(round(frame_ms * SR / 1000))
    out: dict[tuple, dict[str, np.ndarray]] = {}
    t0 = time.perf_counter()
    if is_vad(system):
        params = SegmentParams(frame_ms=frame_ms, hop_ms=max(frame_ms, hop_ms), window_ms=max(frame_ms, hop_ms, 20))
        out[(None, None)] = {rid: frame_probabilities(system, x, params)[0] for rid, x in audio.items()}
        return out, time.perf_counter() - t0
    mode = scoring_normalization(system)
    for w in windows_ms:
        win, hop = int(round(w * SR / 1000)), int(round(min(hop_ms, w) * SR / 1000))
        for rid, x in audio.items():
            starts = window_starts(len(x), win, hop)
            scores, _ = score_windows(system, x, starts, win, mode)
            for agg in aggregates:
                out.setdefault((w, agg), {})[rid] = frames_from_windows(scores, starts, min(win, len(x)), len(x), frame, agg)
    return out, time.perf_counter() - t0


def choose_settings(frames: Mapping[tuple, Mapping[str, np.ndarray]], refs: Mapping[str, Sequence[tuple[float, float]]],
                    durations: Mapping[str, float], frame_ms: float, onsets: Sequence[float], offset_gaps: Sequence[float],
                    min_speech_ms: Sequence[float], min_silence_ms: Sequence[float], collar_s: float) -> pd.DataFrame:
    """Every decision setting on the dev frames, scored with pyannote.metrics; sorted, best (lowest pooled detection
    error rate, ties: the simpler setting first) on top."""
    frame_s = frame_ms / 1000
    rows = []
    for (w, agg), per_rec in frames.items():
        for on, gap, msp, msil in itertools.product(onsets, offset_gaps, min_speech_ms, min_silence_ms):
            off = max(0.0, on - gap)
            comps = []
            for rid, p in per_rec.items():
                segs = binarize(p, frame_s, on, off, msp / 1000, msil / 1000)
                hyp = [(a * frame_s, min(b * frame_s, durations[rid])) for a, b in segs]
                comps.append(detection.recording_components(refs[rid], hyp, durations[rid], collar_s, uri=rid))
            total = pd.DataFrame(comps)[detection.COMPONENTS].sum()
            rows.append({"window_ms": w, "aggregate": agg, "onset": on, "offset": off, "min_speech_ms": msp,
                         "min_silence_ms": msil, **detection.rates(total)})
    table = pd.DataFrame(rows)
    return table.sort_values(["detection_error_rate", "min_speech_ms", "min_silence_ms"], kind="stable").reset_index(drop=True)


def params_from_row(row: Mapping[str, Any], hop_ms: float, frame_ms: float) -> SegmentParams:
    w = row.get("window_ms")
    if w is None or (isinstance(w, float) and np.isnan(w)):
        return SegmentParams(frame_ms=frame_ms, onset=float(row["onset"]), offset=float(row["offset"]),
                             min_speech_ms=float(row["min_speech_ms"]), min_silence_ms=float(row["min_silence_ms"]))
    return SegmentParams(window_ms=float(w), hop_ms=min(float(hop_ms), float(w)), frame_ms=frame_ms,
                         aggregate=str(row["aggregate"]), onset=float(row["onset"]), offset=float(row["offset"]),
                         min_speech_ms=float(row["min_speech_ms"]), min_silence_ms=float(row["min_silence_ms"]))


# ============================================================================================ test
def run_on_test(system: Any, spec: str, params: SegmentParams, recs: pd.DataFrame, out: str | Path, run_id: str,
                progress: bool = False) -> Path:
    """The chosen setting through segment's engine on the test recordings (a manifest of their paths)."""
    out = Path(out)
    manifest = out.parent / f"{out.name}.recordings.csv"  # kept: the output's segment.yaml names it as its input
    io.write_csv(manifest, pd.DataFrame({"recording_id": recs["recording_id"], "path": recs["path"]}))
    return segment_recordings(system, manifest, out, params, audio_root="/", run_id=run_id, progress=progress)


def run_own_helper(kind: str, recs: pd.DataFrame, out: str | Path, run_id: str) -> Path:
    """A VAD's own segment helper with its default settings (:func:`lib.vad.own_segments`) on the recordings, written
    in segment's layout (``rttm/``, ``segments.csv``, ``recordings.csv``; no frame probabilities) so that
    :func:`lib.recordings.output.measure` reads it like any system."""
    from ..vad import own_segments  # the VADs' packages load only when a VAD runs

    out = Path(out)
    name = f"{kind}_vad (own helper)"
    rows, rec_rows = [], []
    for r in recs.itertuples(index=False):
        x = load_recording(r.path)
        t0 = time.perf_counter()
        segs = own_segments(kind, x)
        seconds = time.perf_counter() - t0
        write_rttm(out / "rttm" / f"{r.recording_id}.rttm", str(r.recording_id), segs)
        rows += [{"run_id": run_id, "system": name, "variant": "defaults", "recording_id": r.recording_id, "start_s": a,
                  "end_s": b, "p_speech_mean": np.nan} for a, b in segs]
        rec_rows.append({"recording_id": r.recording_id, "path": r.path, "duration_s": len(x) / SR, "compute_s": seconds,
                         "rtf": seconds / (len(x) / SR), "source": "own helper", "n_segments": len(segs)})
    io.write_csv(out / "segments.csv", pd.DataFrame(rows, columns=SEGMENT_COLUMNS))
    io.write_csv(out / "recordings.csv", pd.DataFrame(rec_rows))
    io.write_yaml(out / "segment.yaml", {"state": "complete", "run_id": run_id, "system": name, "helper": kind})
    return out


# ============================================================================================ errors
def event_errors(events: pd.DataFrame, hyps: Mapping[str, Sequence[tuple[float, float]]],
                 refs: Mapping[str, Sequence[tuple[float, float]]]) -> pd.DataFrame:
    """One row per placed event: for a non-speech event the share of its span outside reference speech that the
    system called speech (``false_alarm_share``); for an utterance the share of its reference speech it missed
    (``missed_share``)."""
    rows = []
    for e in events.itertuples(index=False):
        hyp = hyps.get(e.scene_id, [])
        if e.kind == "speech":
            share = 1 - detection.coverage(e.regions, hyp) if e.regions else np.nan
            rows.append({**e._asdict(), "missed_share": share, "false_alarm_share": np.nan})
        else:
            outside = _subtract([(e.onset_s, e.end_s)], refs.get(e.scene_id, []))
            share = detection.coverage(outside, hyp) if outside else np.nan
            rows.append({**e._asdict(), "missed_share": np.nan, "false_alarm_share": share})
    return pd.DataFrame(rows)


def _subtract(regions: Sequence[tuple[float, float]], minus: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    out = []
    for a, b in regions:
        pieces = [(a, b)]
        for c, d in minus:
            pieces = [q for x, y in pieces for q in ((x, min(y, c)), (max(x, d), y)) if q[1] - q[0] > 1e-9]
        out += pieces
    return out


# ============================================================================================ the chapter's passes
@dataclass
class DevChoice:
    """What the dev scenes chose: per system name its spec and loaded system, the settings table (best first), the
    chosen :class:`SegmentParams` and the seconds spent scoring; ``best`` has each system's top row."""

    systems: dict[str, tuple[str, Any]]
    tables: dict[str, pd.DataFrame]
    chosen: dict[str, SegmentParams]
    seconds: dict[str, float]

    @property
    def best(self) -> pd.DataFrame:
        return pd.DataFrame([{"system": n, **t.iloc[0].to_dict()} for n, t in self.tables.items()])

    def setting(self, name: str) -> str:
        """The chosen setting in words: the decision variant, and the window variant for a window system."""
        spec, system = self.systems[name]
        p = self.chosen[name]
        return p.decision_variant() + ("" if is_vad(system) else f" {p.windows_variant()}")


def tune_on_dev(specs: Sequence[str], dev: SceneSplit, study: RecordingsStudy, log: Any = print) -> DevChoice:
    """Each system (:func:`lib.systems.load_system`) over the dev scenes for every window size and decision setting
    of the grid; the setting with the lowest pooled detection error rate is chosen (:func:`choose_settings`)."""
    from ..systems import load_system

    choice = DevChoice({}, {}, {}, {})
    durations = dict(zip(dev.recs["recording_id"], dev.recs["duration_s"]))
    for spec in specs:
        system = load_system(spec)
        name = system.name
        choice.systems[name] = (spec, system)
        frames, choice.seconds[name] = dev_frames(system, dev.recs, study.seg_windows_ms, study.seg_hop_ms,
                                                  study.seg_frame_ms, study.seg_aggregates)
        choice.tables[name] = choose_settings(frames, dev.refs, durations, study.seg_frame_ms, study.seg_onsets,
                                              study.seg_offset_gaps, study.seg_min_speech_ms, study.seg_min_silence_ms,
                                              study.seg_collar_s)
        choice.chosen[name] = params_from_row(choice.tables[name].iloc[0], study.seg_hop_ms, study.seg_frame_ms)
        p = choice.chosen[name]
        log(f"{name}: {len(choice.tables[name])} settings on dev in {choice.seconds[name]:.0f} s of scoring; chosen "
            f"{p.windows_variant() if not is_vad(system) else 'own frames'} {p.decision_variant()}")
    return choice


@dataclass
class TestResults:
    """The test pass: ``metrics`` (one row per system, pooled with intervals), and per system name the metrics per
    recording, the frame labels and probabilities per recording (systems with frames only) and the detected
    segments per recording (``hyps``)."""

    metrics: pd.DataFrame
    per_recording: dict[str, pd.DataFrame]
    frames: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
    hyps: dict[str, dict[str, list[tuple[float, float]]]]


def _hyps(out: Path) -> dict[str, list[tuple[float, float]]]:
    seg = pd.read_csv(out / "segments.csv")
    return {rid: list(zip(g["start_s"], g["end_s"])) for rid, g in seg.groupby("recording_id")}


def run_test(choice: DevChoice, test: SceneSplit, study: RecordingsStudy, out_root: str | Path, run_id: str,
             own_helpers: Sequence[str] = OWN_HELPERS) -> TestResults:
    """Every system once on the test scenes with its dev-chosen setting (:func:`run_on_test`), then the VADs' own
    segment helpers (:func:`run_own_helper`, as their users get them out of the box), each measured
    (:func:`lib.recordings.output.measure`); the metrics table is written to ``<out_root>/metrics.csv``."""
    from .output import measure

    out_root = Path(out_root)
    args = (test.refs, study.seg_collar_s, study.bootstrap_reps, study.ci_level, study.seed)
    rows, res = [], TestResults(pd.DataFrame(), {}, {}, {})
    for name, (spec, system) in choice.systems.items():
        out = run_on_test(system, spec, choice.chosen[name], test.recs, out_root / name, run_id)
        pooled, res.per_recording[name], res.frames[name] = measure(out, *args)
        res.hyps[name] = _hyps(out)
        rows.append({"system": name, "setting": choice.setting(name), **pooled})
    for kind in own_helpers:
        name = f"{kind}_vad (own helper)"
        out = run_own_helper(kind, test.recs, out_root / f"{kind}_vad_own_helper", run_id)
        pooled, res.per_recording[name], _ = measure(out, *args)
        res.hyps[name] = _hyps(out)
        rows.append({"system": name, "setting": "its defaults", **pooled})
    res.metrics = pd.DataFrame(rows)
    io.write_csv(out_root / "metrics.csv", res.metrics)
    return res
