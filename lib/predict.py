"""Apply any system to any clips: the engine behind ``python -m lib predict``.

The manifest is a UTF-8 CSV with at least ``path`` (relative to the audio root); ``label``
(speech|nonspeech) is optional (without it the predictions have an empty ``label``), ``clip_id`` too (the
path is used). Clips of any length, sample rate and channel count are read, mixed to mono and resampled to
16 kHz. Paths that escape the audio root are refused: the command never reads files outside it.

Every problem is named by the manifest's file and line (the line the row starts on, blank lines and
multi-line quoted fields counted) and says what to do. The output is checked before any scoring: it must
not be an input, a folder, a device or a FIFO (nor a link to one), its folder must be writable, and it is
written atomically (a replaced file keeps its permissions; a link stays a link).
"""
from __future__ import annotations

import csv
import datetime as _dt
import os
import stat
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import io
from .audio import SR  # the book's one sample rate
from .results import LABELS, predictions_frame

REQUIRED = ("path",)
ON_ERROR = ("stop", "skip")
OUT_SUFFIXES = (".csv",)


class ManifestError(ValueError):
    """A clip manifest cannot be used; the message names the file and line and says what to do."""


@dataclass
class PredictReport:
    """What ``predict_manifest`` wrote and which clips it skipped (``on_error="skip"``)."""

    out: Path
    n_scored: int
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # (manifest line, path, why)
    n_windowed: int = 0


# ----------------------------------------------------------------------------------------- the manifest
def _read_rows(manifest: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and records of a CSV, each record with the file line it starts on (csv, not pandas: pandas
    numbers rows, not lines, and silently pads short rows)."""
    try:
        raw = manifest.read_bytes()
    except OSError as err:
        raise ManifestError(f"cannot read manifest {manifest} ({err.strerror or err}); check the path and its permissions") from None
    if not raw.strip():
        raise ManifestError(f"manifest {manifest} is empty ({len(raw)} bytes); it needs a header line (path,label) and one line per clip")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ManifestError(
            f"manifest {manifest} is not UTF-8 text (line {line}, byte {raw[err.start]:#x}; Latin-1 or Windows-1252?): "
            f"save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 {manifest.name} > clips-utf8.csv`"
        ) from None
    reader = csv.reader(text.splitlines(keepends=True))
    header: list[str] | None = None
    records: list[tuple[int, list[str]]] = []
    last = 0
    try:
        for row in reader:
            start, last = last + 1, reader.line_num
            if not row or all(not c.strip() for c in row):
                continue  # a blank line
            if header is None:
                header = [c.strip() for c in row]
                width = len(header)
                continue
            if len(row) != width:
                raise ManifestError(
                    f"{manifest} line {start}: {len(row)} fields where the header has {width} ({', '.join(header)}); "
                    "a field holding a comma must be quoted (\"a,b.wav\"), and every line needs every column"
                )
            records.append((start, row))
    except csv.Error as err:
        raise ManifestError(f"{manifest} line {reader.line_num}: not valid CSV ({err}); check the quoting on that line") from None
    assert header is not None
    return header, records


def read_clip_manifest(manifest: str | Path, audio_root: str | Path) -> pd.DataFrame:
    """Read and check a user's clip manifest; every problem is named with its line and what to do.

    Returns the rows with ``clip_id``, ``label`` ("" when the manifest has no label column), ``line`` (the
    file line) and ``abs_path`` (resolved under the audio root).
    """
    manifest = io.check_regular_file(manifest, ManifestError, {
        "broken_link": "manifest {path} is a broken symbolic link; point it at the CSV file",
        "missing": "manifest {path} does not exist; check the path",
        "folder": "manifest {path} is a folder; --manifest needs a CSV file (path,label per line)",
        "special": "manifest {path} is not a regular file (a FIFO or device?); save the list of clips to a CSV file",
    }, missing_error=FileNotFoundError)
    root = _resolve_root(audio_root)
    header, records = _read_rows(manifest)
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ManifestError(f"{manifest} lacks column(s) {missing}; it needs at least {list(REQUIRED)} (and optionally label, clip_id); found {header}")
    dup_cols = sorted({c for c in header if header.count(c) > 1})
    if dup_cols:
        raise ManifestError(f"{manifest}: column(s) {dup_cols} appear twice in the header; keep one of each")
    if not records:
        raise ManifestError(f"{manifest} has no rows: add one line per clip below the header")
    df = pd.DataFrame([r for _, r in records], columns=header)
    df["line"] = [n for n, _ in records]
    labelled = "label" in header
    if not labelled:
        df["label"] = ""
    if "clip_id" not in header:
        df["clip_id"] = df["path"]
    dup = df[df["clip_id"].duplicated(keep=False)]
    if len(dup):
        first = dup.iloc[0]["clip_id"]
        lines = dup[dup["clip_id"] == first]["line"].tolist()
        raise ManifestError(f"{manifest}: duplicated clip_id(s) {list(dup['clip_id'].unique()[:5])} (e.g. {first!r} on lines {lines}): each clip needs its own id")
    if labelled:
        bad = df[~df["label"].isin(LABELS)]
        if len(bad):
            raise ManifestError(
                f"{manifest} line {bad['line'].iloc[0]}: unknown label {bad['label'].iloc[0]!r}; labels must be one of {LABELS} "
                "(or leave out the label column to score unlabelled clips)"
            )
    resolved: list[Path | None] = []
    problems: list[str] = []
    for line, rel in zip(df["line"], df["path"]):
        if not rel.strip():
            problems.append(f"line {line} (empty path)")
            resolved.append(None)
            continue
        try:
            full = (root / rel).resolve()
        except (RuntimeError, OSError) as err:  # a symbolic link loop
            raise ManifestError(f"{manifest} line {line}: path {rel!r} is a symbolic link loop ({err}); fix or remove the link") from None
        if not full.is_relative_to(root):
            raise ManifestError(f"{manifest} line {line}: path {rel!r} points outside the audio root {root}; refused")
        resolved.append(full)
        why = _not_a_clip(full)
        if why:
            problems.append(f"line {line} ({rel!r}: {why})")
    # Checked before any model is loaded: a typo should not cost a model load and half a scoring run.
    if problems:
        only_missing = all(p.endswith(": not found)") for p in problems)
        raise (FileNotFoundError if only_missing else ManifestError)(
            f"{manifest}: {len(problems)} audio file(s) not usable under {root}: {', '.join(problems[:5])}"
            f"{' ...' if len(problems) > 5 else ''}; fix the paths (relative to --audio-root) or drop those rows"
        )
    df["abs_path"] = resolved
    return df


def _resolve_root(audio_root: str | Path) -> Path:
    given = Path(audio_root)
    try:
        root = given.resolve(strict=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"audio root {given} does not exist; --audio-root must be the folder the manifest's paths are relative to") from None
    except (RuntimeError, OSError) as err:
        raise ManifestError(f"audio root {given} cannot be resolved ({err}): a symbolic link loop? Point --audio-root at the real folder") from None
    if not root.is_dir():
        raise ManifestError(f"audio root {given} is not a folder; --audio-root must be the folder the manifest's paths are relative to")
    return root


def _not_a_clip(path: Path) -> str | None:
    """Why ``path`` cannot be read as a clip file, or None."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "not found"
    except OSError as err:
        return f"cannot be read: {err.strerror}"
    if stat.S_ISDIR(mode):
        return "a folder, not an audio file"
    if not stat.S_ISREG(mode):
        return "not a regular file (a FIFO, device or socket): copy the audio into a file"
    if not os.access(path, os.R_OK):
        return "not readable (permission denied)"
    return None


# ------------------------------------------------------------------------------------------- the output
def check_output(out: str | Path, inputs: list[Path], protected: list[Path] = ()) -> Path:
    """Refuse, before any work, an output that would destroy something or could not be written.

    Returns the path to write (a link's target: the link stays a link). ``inputs`` are files the command
    reads; ``protected`` folders it must not write into (the system's own folder).
    """
    out = Path(out)
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise ValueError(
            f"--out {out}: predict writes CSV, so the name must end in .csv (got {out.suffix or 'no suffix'!r}); "
            "for Parquet, convert the CSV afterwards (pandas.read_csv(...).to_parquet(...))"
        )
    target = out
    if out.is_symlink() or out.exists():
        try:
            target = out.resolve(strict=True)
        except (OSError, RuntimeError) as err:
            raise ValueError(f"--out {out} is a broken symbolic link or a link loop ({err}); remove it or pick another name") from None
        mode = os.stat(target).st_mode
        via = f" (through the link {out})" if out.is_symlink() else ""
        if stat.S_ISDIR(mode):
            raise ValueError(f"--out {target}{via} is a folder; give a file name, e.g. {target / 'predictions.csv'}")
        if not stat.S_ISREG(mode):
            raise ValueError(f"--out {target}{via} is not a regular file (a device, FIFO or socket); give a file path ending in .csv")
        for inp in inputs:
            try:
                same = os.path.samefile(target, inp)
            except OSError:
                same = False
            if same:
                raise ValueError(f"--out {out} is an input of this command ({inp}): writing it would destroy it; write the predictions elsewhere")
    real = target.resolve()
    for folder in protected:
        if real.is_relative_to(folder.resolve()):
            raise ValueError(f"--out {out} lies inside the system's folder {folder}; write the predictions outside it")
    _check_writable(real.parent, out)
    return target


def _check_writable(folder: Path, out: Path) -> None:
    probe_dir = folder
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise ValueError(f"--out {out}: {probe_dir} is not a folder")
    try:  # a real write, as the final one will be: os.access says yes on a read-only mount
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.{io.MARKER}-", suffix=".tmp", dir=probe_dir)
    except OSError as err:
        raise ValueError(f"--out {out}: cannot write in {probe_dir} ({err.strerror}); pick a folder you can write to") from None
    os.close(fd)
    os.unlink(tmp)


# ------------------------------------------------------------------------------------------- scoring
def _load_clip(manifest: Path, line: int, path: Path, mode: str) -> np.ndarray:
    """One clip, normalized; an unusable one is named by its manifest line as well as its file."""
    from .audio import AudioNote, load_audio, normalize

    try:
        x = load_audio(path)
        peak = float(np.abs(x).max()) if x.size else 0.0
        if peak > 1.0 + 1e-6:
            warnings.warn(
                f"{manifest} line {line}: {path} has samples up to {peak:.3g}, beyond full scale [-1, 1] (a float file "
                f"written without scaling?); {'its scores are unreliable: rescale it, or use --normalization peak or rms' if mode == 'none' else f'--normalization {mode} rescales it'}",
                AudioNote, stacklevel=2)
        return normalize(x, mode, name=str(path))
    except ValueError as err:  # AudioError, or an all-silent clip under peak/rms: the message says what to do
        raise type(err)(f"{manifest} line {line}: {err}") from err


def _level_hint(x: np.ndarray) -> str:
    peak = float(np.abs(x).max()) if len(x) else 0.0
    if peak > 1:
        return f"its samples reach {peak:.3g}, far beyond full scale [-1, 1]: rescale the file, or use --normalization peak or rms"
    return "check the clip (listen to it, or re-export it), or drop its row"


def predict_manifest(
    system: str,
    manifest: str | Path,
    audio_root: str | Path,
    out: str | Path,
    normalization: str | None = None,
    batch_size: int = 32,
    on_error: str = "stop",
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> Path:
    """Score the manifest's clips with ``system`` and write the predictions table to ``out``; returns ``out``.

    ``on_error="skip"``: a clip that cannot be read or scored is left out, the rest are written and the
    failures are listed (``log``, default stderr); ``"stop"`` (default): the first one stops the command,
    naming it, and nothing is written. See :func:`predict_report` for the details of what was done.
    """
    return predict_report(system, manifest, audio_root, out, normalization, batch_size, on_error, log, **options).out


def predict_report(
    system: str,
    manifest: str | Path,
    audio_root: str | Path,
    out: str | Path,
    normalization: str | None = None,
    batch_size: int = 32,
    on_error: str = "stop",
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> PredictReport:
    from .systems import load_system, scoring_normalization, system_folder

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size must be a whole number of at least 1, got {batch_size!r}")
    if on_error not in ON_ERROR:
        raise ValueError(f"--on-error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    manifest = Path(manifest)
    df = read_clip_manifest(manifest, audio_root)
    folder = system_folder(system)
    target = check_output(out, [manifest, *df["abs_path"]], [folder] if folder else [])
    scorer = load_system(system, **options)
    mode = scoring_normalization(scorer, normalization)
    window = getattr(scorer, "window_samples", None)
    scores = np.full(len(df), np.nan)
    failures: list[tuple[int, str, str]] = []
    n_windowed = 0

    def fail(i: int, why: str) -> None:
        line, rel = int(df["line"].iloc[i]), df["path"].iloc[i]
        if on_error == "stop":
            raise ValueError(f"{why}" if why.startswith(str(manifest)) else f"{manifest} line {line}: {why}")
        failures.append((line, rel, why))
        log(f"skipped {manifest} line {line} ({rel}): {why}")

    for start in tqdm(range(0, len(df), batch_size), desc=f"scoring with {scorer.name}", unit="batch"):
        idx, audios = [], []
        for i in range(start, min(start + batch_size, len(df))):
            try:
                audios.append(_load_clip(manifest, int(df["line"].iloc[i]), df["abs_path"].iloc[i], mode))
                idx.append(i)
            except ValueError as err:
                if on_error == "stop":
                    raise
                fail(i, str(err))
        if not audios:
            continue
        if window:
            n_windowed += sum(len(a) > window for a in audios)
        try:
            got = np.asarray(scorer.score(audios), dtype=float)
        except ValueError:  # a system that refuses some clip (e.g. its features overflow): find it, one clip at a time
            got = np.full(len(audios), np.nan)
            for k, a in enumerate(audios):
                try:
                    got[k] = float(np.asarray(scorer.score([a]), dtype=float)[0])
                except ValueError as err:
                    fail(idx[k], f"{scorer.name} cannot score {df['abs_path'].iloc[idx[k]]} ({str(err).splitlines()[0]}); "
                                 f"{_level_hint(a)}")
                    got[k] = np.inf  # reported: not reported again below
        for i, a, p in zip(idx, audios, got):
            if p == np.inf:
                continue
            if not np.isfinite(p):  # named now, not after the whole run's work
                fail(i, f"{scorer.name} gave no score (p_speech {p}) for {df['abs_path'].iloc[i]}: {_level_hint(a)}")
            else:
                scores[i] = p
    keep = np.isfinite(scores)
    if not keep.any():
        raise ValueError(f"{manifest}: no clip could be scored ({len(failures)} failed); nothing written")
    variant = f"normalization={mode}"
    if n_windowed:
        variant += f"; {getattr(scorer, 'window_rule', 'long clips scored in windows')}"
    kept = df[keep]
    preds = predictions_frame(
        run_id=f"predict-{_dt.datetime.now():%Y%m%d-%H%M%S}", system=scorer.name, variant=variant,
        clip_ids=kept["clip_id"].tolist(), labels=kept["label"].tolist(), p_speech=scores[keep],
        threshold=float(getattr(scorer, "threshold", 0.5)), allow_unlabelled=True,
        model=getattr(scorer, "model_label", ""),
    )
    preds["path"] = kept["path"].values
    io.write_csv(target, preds)
    if failures:
        log(f"{len(failures)} of {len(df)} clips skipped (--on-error skip); the other {int(keep.sum())} are in {out}:")
        for line, rel, why in failures:
            log(f"  line {line}: {rel}")
    if n_windowed:
        log(f"{n_windowed} clip(s) longer than {window / SR:.0f} s: {getattr(scorer, 'window_rule', '')}")
    return PredictReport(Path(out), int(keep.sum()), failures, n_windowed)
