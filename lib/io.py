"""Atomic writes: a result, manifest, checkpoint or figure is either the old good one or the new one.

Everything is written to a temporary name in the same folder and then renamed (``os.replace`` is atomic
on POSIX within one file system), so a crash or a kill mid-write never leaves a half-written file in
place of a good one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

_UMASK = os.umask(0)
os.umask(_UMASK)
MARKER = "speechbook"  # in every temporary name lib.io makes: clear_leftovers removes only names that carry it


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{MARKER}-", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes 0600 files; results are ordinary files, and a file that is replaced keeps its permissions
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = 0o666 & ~_UMASK
    os.chmod(tmp_path, mode)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds.

    The old folder (if any) is moved aside first and removed only after the new one is in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{MARKER}-", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old.{MARKER}-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# What a kill (SIGKILL, a lost machine) can leave behind: the temporary names of atomic_path/atomic_dir
# (".<name>.speechbook-<8 random chars>.tmp[.<ext>]") and, in atomic_dir's window between its two renames, the
# old folder moved aside (".<name>.old.speechbook-<pid>") with nothing yet in its place. The marker is ours
# alone, so that the clean-up never touches a user's own ".something.tmp" or ".backup.old.2023".
_TEMP_NAME = re.compile(rf"^\.(?P<name>.+)\.{MARKER}-[a-z0-9_]{{8}}\.tmp(\.[^/]*)?$")
_OLD_NAME = re.compile(rf"^\.(?P<name>.+)\.old\.{MARKER}-\d+$")


def is_leftover(name: str) -> bool:
    """Whether a file name is one that lib.io's atomic writers make (and a kill may leave behind)."""
    return bool(_TEMP_NAME.match(name) or _OLD_NAME.match(name))


def clear_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Remove the half-written temporaries a killed writer left anywhere under ``folder``, and put back an
    old folder that ``atomic_dir`` had moved aside when the kill came before its replacement was in place.

    Call it only when no process is writing under ``folder`` (the runner does, on starting a run). Returns
    the paths removed or restored.
    """
    done: list[Path] = []
    found: list[Path] = []
    for top, dirs, files in os.walk(folder, followlinks=False):  # never through a link out of the folder
        found.extend(Path(top) / n for n in dirs + files if n.startswith("."))
    for path in sorted(found, key=lambda p: len(p.parts), reverse=True):
        if path.is_symlink():
            continue
        if _TEMP_NAME.match(path.name):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            done.append(path)
        elif (m := _OLD_NAME.match(path.name)) and path.is_dir():
            target = path.with_name(m["name"])
            if target.exists():
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.replace(path, target)  # the last good folder, back in place
            done.append(path)
    return done


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_yaml(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, yaml.safe_dump(_plain(obj), sort_keys=False))


def write_csv(path: str | os.PathLike, df: "Any", **kwargs: Any) -> Path:
    """Write a pandas DataFrame as CSV atomically (index off unless asked)."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kwargs)
    return Path(path)


def figure_run(path_stem: str | os.PathLike) -> str | None:
    """``<profile>/<run_id>`` when a figure is saved into a run folder's ``figures/`` (results/<profile>/<run_id>/
    figures/...), else None."""
    folder = Path(path_stem).resolve().parent
    run = folder.parent
    if folder.name == "figures" and ((run / "params.yaml").exists() or (run / "status.json").exists()):
        return f"{run.parent.name}/{run.name}"
    return None


def save_figure(fig: "Any", path_stem: str | os.PathLike, formats: tuple[str, ...] = ("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Save a matplotlib figure as PNG and PDF (atomically), returning the paths written.

    A figure saved into a run folder's ``figures/`` says which run drew it: a small footer "run
    <profile>/<run_id>" and the same in the file's metadata, so that its copy in the project's ``figures/``
    still says where it came from.
    """
    run = figure_run(path_stem)
    stamp = fig.text(0.995, 0.002, f"run {run}", ha="right", va="bottom", fontsize=6, color="0.45") if run else None
    out = []
    try:
        for fmt in formats:
            target = Path(f"{path_stem}.{fmt}")
            meta = {"png": {"Source": f"speechbook run {run}"}, "pdf": {"Subject": f"speechbook run {run}"}}.get(fmt) if run else None
            with atomic_path(target) as tmp:
                fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight", **({"metadata": meta} if meta else {}))
            out.append(target)
    finally:
        if stamp is not None:
            stamp.remove()
    return out


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_regular_file(path: str | os.PathLike, error: type[Exception], messages: Mapping[str, str],
                       missing_error: type[Exception] | None = None) -> Path:
    """``path`` when it is a regular file (links followed); otherwise raise ``error`` with the caller's message for
    what the path is instead, ``messages[kind].format(path=path)``, where ``kind`` is ``broken_link`` (a link to
    nothing, or a link loop), ``missing``, ``folder`` or ``special`` (a FIFO, device or socket). A missing path
    raises ``missing_error`` when given (e.g. ``FileNotFoundError``), so callers keep their exception types."""
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise error(messages["broken_link"].format(path=path))
        raise (missing_error or error)(messages["missing"].format(path=path))
    if path.is_dir():
        raise error(messages["folder"].format(path=path))
    if not path.is_file():
        raise error(messages["special"].format(path=path))
    return path


def _plain(obj: Any) -> Any:
    """Convert numpy scalars/arrays and paths into plain YAML-safe types."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj


def _json_default(obj: Any) -> Any:
    plain = _plain(obj)
    if plain is obj:
        return str(obj)
    return plain
