"""Long recordings annotated with RTTM files (VoxConverse's format) as sources of both classes.

* ``parse_rttm``: the ``SPEAKER`` lines of an RTTM file;
* ``merge_intervals`` / ``speech_regions`` / ``nonspeech_regions``: where there is annotated speech, and
  the stretches with none, shrunk by a margin on both sides (also used to score segmenters, chapter 09);
* ``sources_from_rttm_folder``: any folder of long recordings with RTTM files: speech sources are cut
  only from annotated speech, non-speech sources only from stretches with no speech annotation, kept a
  margin away from it. ``group_id`` is the recording;
* ``write_rttm`` / ``read_rttm_segments`` / ``read_references``: detected speech written as RTTM (what
  ``python -m lib segment`` writes) and read back, and the reference speech regions of recordings.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .. import audio, io
from .downloads import VOXCONVERSE_DEV

CHUNK_S = 5.0  # long annotated stretches are cut into source segments of at most this length
RTTM_MARGIN_S = 0.5  # non-speech stretches keep this far from any speech annotation
MIN_SEGMENT_S = 1.0
AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3")
SPEECH_LABEL = "speech"  # the RTTM speaker name of detected speech
_ID_OK = re.compile(r"^[^\s]+$")


def parse_rttm(path: str | os.PathLike) -> pd.DataFrame:
    """Read an RTTM file: ``file_id, start_s, end_s, speaker`` for each ``SPEAKER`` line.

    ``SPEAKER <file> <channel> <onset> <duration> <NA> <NA> <speaker> <NA> <NA>``; other line types
    are skipped, blank lines and ``;`` comments too. Malformed lines raise naming file and line.
    """
    path = Path(path)
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith(";") or fields[0].startswith("#"):
            continue
        if fields[0] != "SPEAKER":
            continue
        if len(fields) < 8:
            raise ValueError(f"{path}:{i}: an RTTM SPEAKER line needs at least 8 fields, got {len(fields)}: {line!r}")
        try:
            onset, dur = float(fields[3]), float(fields[4])
        except ValueError as e:
            raise ValueError(f"{path}:{i}: onset and duration must be numbers: {line!r}") from e
        if onset < 0 or dur < 0 or not np.isfinite(onset + dur):
            raise ValueError(f"{path}:{i}: negative or non-finite onset/duration: {line!r}")
        rows.append({"file_id": fields[1], "start_s": onset, "end_s": onset + dur, "speaker": fields[7]})
    return pd.DataFrame(rows, columns=["file_id", "start_s", "end_s", "speaker"])


def merge_intervals(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, non-overlapping ``(start, end)`` intervals covering the same stretches (empty ones dropped)."""
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def speech_regions(segments: pd.DataFrame) -> list[tuple[float, float]]:
    """Stretches covered by at least one speech annotation (overlaps merged)."""
    return merge_intervals(zip(segments["start_s"], segments["end_s"]))


def nonspeech_regions(segments: pd.DataFrame, duration_s: float, margin_s: float = RTTM_MARGIN_S) -> list[tuple[float, float]]:
    """Stretches with no speech annotation, each kept ``margin_s`` away from any annotated speech."""
    speech = speech_regions(segments)
    gaps, t = [], 0.0
    for a, b in speech:
        gaps.append((t, a))
        t = max(t, b)
    gaps.append((t, duration_s))
    out = []
    for a, b in gaps:
        a2 = a + (margin_s if a > 0 else 0.0)  # the file's start and end are not speech boundaries
        b2 = b - (margin_s if b < duration_s else 0.0)
        if b2 > a2:
            out.append((a2, b2))
    return out


def _chunks(regions: Sequence[tuple[float, float]], min_len: float, chunk: float = CHUNK_S) -> list[tuple[float, float]]:
    out = []
    for a, b in regions:
        if b - a < min_len:
            continue
        n = max(1, int(np.ceil((b - a) / chunk)))
        edges = np.linspace(a, b, n + 1)
        out += [(float(x), float(y)) for x, y in zip(edges[:-1], edges[1:]) if y - x >= min_len]
    return out


def sources_from_rttm_folder(
    folder: str | os.PathLike,
    dataset: str = "rttm",
    margin_s: float = RTTM_MARGIN_S,
    min_len_s: float = MIN_SEGMENT_S,
    license: str = "",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sources, noise) from a folder of long recordings and RTTM files (found recursively, matched
    by file id = the audio file's stem). Speech: annotated speech only; non-speech: unannotated
    stretches at least ``margin_s`` from speech. Both cut into segments of at most 5 s and at least
    ``min_len_s``; ``group_id`` = ``<dataset>:<file id>`` (the recording). No noise material."""
    import soundfile as sf

    folder = Path(folder)
    if not folder.exists():
        raise ValueError(f"RTTM folder {folder} does not exist")
    rttms = sorted(folder.rglob("*.rttm"))
    if not rttms:
        raise ValueError(f"no .rttm files under {folder}; a recording folder needs RTTM annotations")
    audio_by_id: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in AUDIO_EXTS and p.is_file():
            audio_by_id.setdefault(p.stem, p)
    segs = pd.concat([parse_rttm(r).assign(rttm=str(r)) for r in rttms], ignore_index=True)
    if license == "" and dataset == "voxconverse":
        license = VOXCONVERSE_DEV.license
    rows = []
    for fid, part in segs.groupby("file_id", sort=True):
        if fid not in audio_by_id:
            raise ValueError(f"{part['rttm'].iloc[0]} annotates {fid!r} but there is no audio file {fid}.wav/.flac under {folder}")
        path = audio_by_id[fid]
        info = sf.info(str(path))
        dur = info.frames / info.samplerate
        for label, regions in (("speech", speech_regions(part)), ("nonspeech", nonspeech_regions(part, dur, margin_s))):
            for a, b in _chunks([(max(0.0, a), min(dur, b)) for a, b in regions], min_len_s):
                rows.append(
                    {
                        "source_id": f"{dataset}/{fid}/{label}/{a:09.3f}",
                        "label": label,
                        "category": "speech" if label == "speech" else "no_speech_annotation",
                        "group_id": f"{dataset}:{fid}",
                        "dataset": dataset,
                        "path": str(path.resolve()),
                        "start_s": round(a, 3),
                        "end_s": round(b, 3),
                        "license": license,
                        "source_repo": dataset,
                        "sample_rate_original": float(info.samplerate),
                        "bandlimited_origin": info.samplerate < audio.SR,
                    }
                )
    cols = ["source_id", "label", "category", "group_id", "dataset", "path", "start_s", "end_s", "license",
            "source_repo", "sample_rate_original", "bandlimited_origin"]
    sources = pd.DataFrame(rows, columns=cols)
    return sources, sources.iloc[:0].copy()


# ---------------------------------------------------------------------------------- detected speech as RTTM
def check_recording_id(rid: str, where: str) -> str:
    """``rid`` if it can be an RTTM file id (no spaces or slashes); else an error naming ``where``."""
    if not rid or not _ID_OK.match(rid) or "/" in rid:
        raise ValueError(f"{where}: recording id {rid!r} cannot be an RTTM file id (no spaces or slashes); give a recording_id column")
    return rid


def rttm_lines(recording_id: str, segments: Iterable[tuple[float, float]], speaker: str = SPEECH_LABEL) -> str:
    """VoxConverse's RTTM: ``SPEAKER <file> 1 <onset> <duration> <NA> <NA> <speaker> <NA> <NA>``, times in seconds to
    the millisecond (segment boundaries lie on a grid of whole milliseconds, so this is exact)."""
    check_recording_id(recording_id, "RTTM")
    lines = []
    for a, b in segments:
        a_ms, b_ms = int(round(a * 1000)), int(round(b * 1000))
        lines.append(f"SPEAKER {recording_id} 1 {a_ms / 1000:.3f} {(b_ms - a_ms) / 1000:.3f} <NA> <NA> {speaker} <NA> <NA>\n")
    return "".join(lines)


def write_rttm(path: str | Path, recording_id: str, segments: Iterable[tuple[float, float]], speaker: str = SPEECH_LABEL) -> Path:
    return io.write_text(path, rttm_lines(recording_id, segments, speaker))


def read_rttm_segments(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """Speech regions per file id of an RTTM file (overlapping speakers merged), read with :func:`lib.data.rttm.parse_rttm`."""
    df = parse_rttm(path)
    return {fid: speech_regions(part) for fid, part in df.groupby("file_id", sort=False)}


def read_references(reference: str | Path, recording_ids: Sequence[str]) -> dict[str, list[tuple[float, float]]]:
    """Reference speech regions of each recording from an RTTM file or a folder of them (searched recursively); a
    recording with no line in any of them has no speech. A reference that names none of the recordings is refused."""
    ref = Path(reference)
    if not ref.exists():
        raise FileNotFoundError(f"--reference {ref} does not exist: give an RTTM file or a folder of RTTM files")
    files = sorted(ref.rglob("*.rttm")) if ref.is_dir() else [ref]
    if not files:
        raise FileNotFoundError(f"--reference {ref} holds no .rttm files")
    regions: dict[str, list[tuple[float, float]]] = {}
    for f in files:
        for fid, segs in read_rttm_segments(f).items():
            regions.setdefault(fid, []).extend(segs)
    if not set(recording_ids) & set(regions):
        raise ValueError(f"--reference {ref}: its file ids ({sorted(regions)[:5]}) name none of the recordings "
                         f"({list(recording_ids)[:5]}); RTTM file ids must be the recordings' ids (file name stems)")
    return {rid: merge_intervals(regions.get(rid, [])) for rid in recording_ids}
