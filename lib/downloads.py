"""Official downloads (ESC-50, VoxConverse) and RTTM-annotated recordings as sources.

* ``download(remote, folder)``: HTTP download with a sha256 check, resumed with an HTTP ``Range``
  request from the ``.part`` file a broken download left behind; a clear ``DownloadError`` when there
  is no network, saying how to place the file by hand.
* ``download_esc50(root)`` / ``download_voxconverse(root)``: download once, verify, extract atomically
  (a folder appears only complete), and afterwards work offline.
* ``sources_from_esc50(folder)``: ESC-50's ``meta/esc50.csv`` -> the sources table (every clip is
  NONSPEECH, human vocal sounds included; ``group_id`` = the freesound source clip id, so takes cut
  from one original recording stay together); a few stationary classes become noise material.
* ``parse_rttm`` / ``speech_regions`` / ``nonspeech_regions`` / ``sources_from_rttm_folder``: any
  folder of long recordings with RTTM files (VoxConverse's format): speech sources are cut only from
  annotated speech, non-speech sources only from stretches with no speech annotation, shrunk by a
  margin on both sides. ``group_id`` is the recording.

The sha256 sums below were recorded by other projects that pinned these files (see data/README.md);
they could not be verified from this offline machine. GitHub's ``master`` archive of ESC-50 can
change when the repository does: a mismatch then says so and how to proceed.
"""
from __future__ import annotations

import hashlib
import os
import re
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from . import io

CHUNK_S = 5.0  # long annotated stretches are cut into source segments of at most this length
RTTM_MARGIN_S = 0.5  # non-speech stretches keep this far from any speech annotation
MIN_SEGMENT_S = 1.0
AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3")
ESC50_NOISE_CATEGORIES = ("rain", "wind", "sea_waves", "engine")  # stationary: mixing material, not sources


class DownloadError(RuntimeError):
    """A download failed (no network, HTTP error); the message says what to do instead."""


class ChecksumError(DownloadError):
    """A downloaded file's sha256 differs from the expected one; the message names the file."""


@dataclass(frozen=True)
class Remote:
    name: str
    url: str
    filename: str
    sha256: str | None
    size: int | None = None
    license: str = ""


ESC50 = Remote(
    "ESC-50", "https://github.com/karolpiczak/ESC-50/archive/master.zip", "ESC-50-master.zip",
    "805afc618aff80eff0641d51311647871fead5807da68bb18e43a27db47a79ce", 645_695_005,
    "CC BY-NC 3.0 (ESC-10 subset: CC BY 3.0); K. J. Piczak, ESC: Dataset for Environmental Sound Classification, ACM MM 2015",
)
VOXCONVERSE_COMMIT = "24bf60be297701cd7e4ef18550c6d390c1b87365"  # annotations v0.3
VOXCONVERSE_RTTM = Remote(
    "VoxConverse annotations", f"https://github.com/joonson/voxconverse/archive/{VOXCONVERSE_COMMIT}.tar.gz",
    f"voxconverse-{VOXCONVERSE_COMMIT[:7]}.tar.gz", "e8c25c91b014657d7e4ad86f9bef4a7eb399929d8d4fab910d8e6c6ab63d1197",
    None, "CC BY 4.0",
)
VOXCONVERSE_DEV = Remote(
    "VoxConverse dev audio", "https://www.robots.ox.ac.uk/~vgg/data/voxconverse/data/voxconverse_dev_wav.zip",
    "voxconverse_dev_wav.zip", "e83a68b5df3bc945a3cf4544102038792ae79972753c585769e58ea677c523a8", 1_988_647_478,
    "CC BY 4.0 annotations; audio from YouTube, for research (J. S. Chung et al., Spot the conversation, Interspeech 2020)",
)
VOXCONVERSE_TEST = Remote(
    "VoxConverse test audio", "https://www.robots.ox.ac.uk/~vgg/data/voxconverse/data/voxconverse_test_wav.zip",
    "voxconverse_test_wav.zip", "472ebf1eaeb1dcb5c311b07a8b5c31bcedcccbf98f386d90a88cde2452da8c68", None,
    VOXCONVERSE_DEV.license,
)


# ==================================================================================== downloading


def _http_get(url: str, headers: dict[str, str], timeout: float = 30.0):
    """The one network call (tests replace it). Returns a streaming ``requests`` response."""
    import requests

    return requests.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=True)


def sha256_of(path: str | os.PathLike) -> str:
    return io.sha256_file(path)


def download(remote: Remote, folder: str | os.PathLike, *, progress: bool = True, chunk: int = 1 << 20) -> Path:
    """Download ``remote`` into ``folder`` (resuming a ``.part`` file) and verify its sha256.

    Returns the verified file. A file already there with the right checksum is not fetched again.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / remote.filename
    part = folder / (remote.filename + ".part")
    if target.exists():
        _verify(target, remote)
        return target
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        resp = _http_get(remote.url, headers)
    except Exception as e:  # ConnectionError, Timeout, DNS failure, proxy refusal ...
        raise DownloadError(
            f"cannot download {remote.name} from {remote.url} ({type(e).__name__}: {e}); is there network access? "
            f"Either download it elsewhere and place it at {target} (sha256 {remote.sha256}), or use the local corpus "
            "instead: data_source=local with DATA_DIR (or data_dir=) pointing at a folder with manifest.csv"
        ) from e
    status = int(getattr(resp, "status_code", 0))
    if status == 416 and have:  # nothing left to fetch: the .part file is complete
        mode = None
    elif status == 206 and have:
        mode = "ab"
    elif status == 200:
        mode, have = "wb", 0  # server ignored the Range header: start over
    else:
        raise DownloadError(f"downloading {remote.name} from {remote.url}: HTTP {status}; try again later or place the file at {target}")
    if mode:
        total = _total_size(resp, have) or remote.size
        bar = _bar(progress, total, have, remote.name)
        try:
            with open(part, mode) as f:
                for block in resp.iter_content(chunk_size=chunk):
                    if block:
                        f.write(block)
                        if bar is not None:
                            bar.update(len(block))
        except Exception as e:
            raise DownloadError(
                f"download of {remote.name} broke off after {part.stat().st_size if part.exists() else 0} bytes ({e}); "
                f"run again to resume from {part}"
            ) from e
        finally:
            if bar is not None:
                bar.close()
    got = sha256_of(part)
    if remote.sha256 and got != remote.sha256:
        bad = part.with_name(part.name + ".bad")
        os.replace(part, bad)
        raise ChecksumError(
            f"{remote.name}: checksum mismatch for {target.name} (expected sha256 {remote.sha256}, got {got}); the file was "
            f"moved to {bad}. The download was corrupted, or the upstream file changed: delete it and run again, or, if "
            "you trust the new file, rename it to the target and pass its sha256"
        )
    os.replace(part, target)
    return target


def _verify(path: Path, remote: Remote) -> None:
    if remote.sha256:
        got = sha256_of(path)
        if got != remote.sha256:
            raise ChecksumError(
                f"{remote.name}: checksum mismatch for {path} (expected sha256 {remote.sha256}, got {got}); delete the file "
                "and run again to download it afresh"
            )


def _total_size(resp: Any, have: int) -> int | None:
    headers = getattr(resp, "headers", {}) or {}
    rng = headers.get("Content-Range", "")
    m = re.search(r"/(\d+)$", rng)
    if m:
        return int(m.group(1))
    n = headers.get("Content-Length")
    return int(n) + have if n and str(n).isdigit() else None


def _bar(enabled: bool, total: int | None, initial: int, name: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=name, mininterval=2.0)


def extract(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack a zip or tar archive into ``dest``, atomically: ``dest`` appears only complete.

    Members that would land outside ``dest`` (absolute paths, ``..``) are refused; links and
    devices in tar archives are skipped.
    """
    dest = Path(dest)
    with io.atomic_dir(dest) as tmp:
        _extract_into(Path(archive), tmp)
        (tmp / ".complete").write_text(Path(archive).name + "\n")
    return dest


def _extract_into(archive: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    root = folder.resolve()

    def safe(name: str) -> None:
        p = (folder / name).resolve()
        if p != root and root not in p.parents:
            raise DownloadError(f"{archive}: member {name!r} would be written outside {folder}; refused")

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for m in z.infolist():
                safe(m.filename)
            z.extractall(folder)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            members = []
            for m in t.getmembers():
                safe(m.name)
                if m.issym() or m.islnk() or m.isdev():
                    continue
                members.append(m)
            t.extractall(folder, members=members)
    else:
        raise DownloadError(f"{archive} is neither a zip nor a tar archive; delete it and download again")


def _fetch_and_extract(remotes: Sequence[Remote], root: Path, name: str, progress: bool) -> Path:
    """Download every archive (verified), then unpack them all into ``root/name`` atomically; once
    that folder exists (with its ``.complete`` marker) nothing is fetched again: offline from then on."""
    dest = root / name
    if (dest / ".complete").exists():
        return dest
    archives = [download(r, root / "archives", progress=progress) for r in remotes]
    with io.atomic_dir(dest) as tmp:
        for a in archives:
            _extract_into(a, tmp / a.name.split(".")[0])
        (tmp / ".complete").write_text("\n".join(r.filename for r in remotes) + "\n")
    return dest


def download_esc50(root: str | os.PathLike, progress: bool = True) -> Path:
    """ESC-50 under ``root/esc50``; returns the folder holding ``meta/esc50.csv`` and ``audio/``."""
    dest = _fetch_and_extract([ESC50], Path(root), "esc50", progress)
    found = sorted(dest.rglob("esc50.csv"))
    if not found:
        raise DownloadError(f"{dest} holds no meta/esc50.csv; delete {dest} and run again")
    return found[0].parent.parent


def download_voxconverse(root: str | os.PathLike, progress: bool = True) -> Path:
    """VoxConverse (dev + test audio, v0.3 RTTM annotations) under ``root/voxconverse``."""
    return _fetch_and_extract([VOXCONVERSE_RTTM, VOXCONVERSE_DEV, VOXCONVERSE_TEST], Path(root), "voxconverse", progress)


def fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over a material folder's index: every file's relative path and size, and the full
    content of its annotation files (csv, rttm)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        rel = str(p.relative_to(folder))
        h.update(f"{rel}\t{p.stat().st_size}\n".encode())
        if p.suffix.lower() in (".csv", ".rttm"):
            h.update(p.read_bytes())
    return h.hexdigest()


# ========================================================================================= ESC-50

ESC50_COLUMNS = ["filename", "fold", "target", "category"]


def read_esc50_meta(folder: str | os.PathLike) -> pd.DataFrame:
    """``meta/esc50.csv``, validated; adds ``src_file`` from the file name when the column is absent
    (names are ``{fold}-{freesound clip id}-{take}-{target}.wav``)."""
    folder = Path(folder)
    path = folder / "meta" / "esc50.csv"
    if not path.exists():
        raise DownloadError(f"ESC-50 metadata {path} not found; download ESC-50 with lib.downloads.download_esc50")
    df = pd.read_csv(path, dtype={"filename": str, "category": str, "src_file": str, "take": str}, keep_default_na=False)
    missing = [c for c in ESC50_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {', '.join(missing)}; ESC-50's esc50.csv has filename, fold, target, category, esc10, src_file, take")
    if "src_file" not in df.columns:
        parts = df["filename"].str.extract(r"^(\d+)-([^-]+)-([^-]+)-(\d+)\.wav$")
        if parts[1].isna().any():
            bad = df["filename"][parts[1].isna()].tolist()[:3]
            raise ValueError(f"{path}: file names {bad} do not follow {{fold}}-{{clip id}}-{{take}}-{{target}}.wav and there is no src_file column")
        df["src_file"] = parts[1]
    dup = df["filename"][df["filename"].duplicated()].tolist()
    if dup:
        raise ValueError(f"{path}: duplicated filename(s) {dup[:5]}")
    return df


def sources_from_esc50(folder: str | os.PathLike, noise_categories: Iterable[str] = ESC50_NOISE_CATEGORIES) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sources, noise) from an ESC-50 folder. Every clip is NONSPEECH (ESC-50's human non-speech
    sounds stay non-speech); ``group_id`` is ``esc50:<src_file>``; the stationary
    ``noise_categories`` are noise material for mixing, not sources."""
    from .data import resolve_under

    folder = Path(folder)
    meta = read_esc50_meta(folder)
    esc10 = meta["esc10"].astype(str).str.lower().isin(["true", "1"]) if "esc10" in meta.columns else pd.Series(False, index=meta.index)
    df = pd.DataFrame(
        {
            "source_id": "esc50/" + meta["filename"].str.replace(r"\.wav$", "", regex=True),
            "label": "nonspeech",
            "category": meta["category"],
            "group_id": "esc50:" + meta["src_file"].astype(str),
            "dataset": "esc50",
            "path": [str(resolve_under(folder / "audio", f, "esc50.csv filename")) for f in meta["filename"]],
            "start_s": 0.0,
            "end_s": 5.0,
            "license": np.where(esc10, "CC BY 3.0", "CC BY-NC 3.0"),
            "source_repo": "karolpiczak/ESC-50",
            "sample_rate_original": 44100.0,
            "bandlimited_origin": False,
            "fold": meta["fold"].astype(int),
        }
    )
    is_noise = df["category"].isin(list(noise_categories))
    noise = df[is_noise].reset_index(drop=True)
    return df[~is_noise].reset_index(drop=True), noise


# ========================================================================================== RTTM


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


def _union(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
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
    return _union(zip(segments["start_s"], segments["end_s"]))


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
                        "bandlimited_origin": info.samplerate < 16000,
                    }
                )
    cols = ["source_id", "label", "category", "group_id", "dataset", "path", "start_s", "end_s", "license",
            "source_repo", "sample_rate_original", "bandlimited_origin"]
    sources = pd.DataFrame(rows, columns=cols)
    return sources, sources.iloc[:0].copy()
