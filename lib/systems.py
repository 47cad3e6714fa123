"""Named systems that score clips: the bridge between run folders and ``python -m lib predict``.

A *system* turns a list of 16 kHz mono float32 clips into ``p_speech`` scores (higher = more speech).
Trained systems are saved by chapters under ``<run folder>/systems/<name>/`` with a ``system.yaml``
that says what kind it is; ``load_system`` reads it back. Built-in systems (``silero``, ``webrtc``, ``firered``)
need no folder.

system.yaml keys: ``kind`` (lora | energy | logmel | ensemble ...), ``name``, and whatever the kind's
loader needs (paths are relative to the system folder; :func:`system_file` refuses one that leads out of
it). A damaged or hand-edited system.yaml is named with what is wrong and what to do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import yaml

from . import io


class Scorer(Protocol):
    name: str

    def score(self, audios: Sequence[np.ndarray]) -> np.ndarray:  # p_speech per clip, in [0, 1]
        ...


# kind -> "module:function" that takes (system folder, spec dict) and returns a Scorer.
# Imports are lazy so that `python -m lib predict --system silero` never loads transformers.
LOADERS: dict[str, str] = {
    "lora": "lib.model:load_scorer",
    "energy": "lib.baselines:load_fitted",
    "logmel": "lib.baselines:load_fitted",
    "whisper_probe": "lib.probe:load_probe",
}
BUILTIN: dict[str, str] = {
    "silero": "lib.baselines:SileroVAD",
    "webrtc": "lib.baselines:WebRTCVAD",
    "firered": "lib.baselines:FireRedVAD",
}


def save_system(run_dir: str | Path, name: str, kind: str, **info: Any) -> Path:
    """Record a saved system's spec; its files must already be in ``<run_dir>/systems/<name>/``."""
    if kind not in LOADERS:
        raise ValueError(f"unknown system kind {kind!r}; known kinds: {', '.join(sorted(LOADERS))}")
    folder = Path(run_dir) / "systems" / name
    folder.mkdir(parents=True, exist_ok=True)
    io.write_yaml(folder / "system.yaml", {"kind": kind, "name": name, **info})
    return folder


def list_systems(run_dir: str | Path) -> list[str]:
    return sorted(p.parent.name for p in (Path(run_dir) / "systems").glob("*/system.yaml"))


def _import(target: str) -> Callable[..., Any]:
    import importlib

    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


class SavedSystemError(ValueError):
    """A saved system cannot be used (damaged or edited files); the message names the file and what to do."""


def system_folder(spec: str) -> Path | None:
    """The folder a ``--system`` spec names (a run folder or a system folder), None for a built-in."""
    if spec in BUILTIN:
        return None
    folder_text = spec.rpartition(":")[0] if ":" in spec and not Path(spec).exists() else spec
    return Path(folder_text) if Path(folder_text).exists() else None


def read_system_yaml(system_dir: str | Path) -> dict[str, Any]:
    """A system folder's spec; an empty, unparsable or incomplete system.yaml is named with what to do."""
    path = Path(system_dir) / "system.yaml"
    remedy = ("save the system again (rerun the chapter that made it), or restore the folder from a copy")
    try:
        info = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SavedSystemError(f"{path} is not valid YAML ({str(err).splitlines()[0]}): the file is damaged; {remedy}") from None
    except OSError as err:
        raise SavedSystemError(f"cannot read {path} ({err.strerror or err}); check its permissions") from None
    if not isinstance(info, dict) or not info:
        raise SavedSystemError(f"{path} is {'empty' if not info else 'not a mapping of keys'}: the file is damaged; {remedy}")
    return info


def system_file(system_dir: str | Path, info: dict[str, Any], key: str, default: str) -> Path:
    """The file or folder ``info[key]`` names, inside the system folder; refuses a path that leads out of it
    (absolute, ``..``, or a link out), so that a system.yaml can only point at its own files."""
    system_dir = Path(system_dir)
    rel = info.get(key, default)
    if not isinstance(rel, str) or not rel:
        raise SavedSystemError(f"{system_dir / 'system.yaml'}: {key} must be a file name inside the system folder, got {rel!r}")
    root = system_dir.resolve()
    try:
        full = (root / rel).resolve()
    except (RuntimeError, OSError) as err:
        raise SavedSystemError(f"{system_dir / 'system.yaml'}: {key} {rel!r} is a symbolic link loop ({err})") from None
    if Path(rel).is_absolute() or not full.is_relative_to(root):
        raise SavedSystemError(
            f"{system_dir / 'system.yaml'}: {key} {rel!r} points outside the system folder {root}; refused (a saved "
            "system only reads its own files: put the file in the folder and name it relative to it)"
        )
    return full


def load_system(spec: str, **options: Any) -> Scorer:
    """Load ``silero``, ``webrtc``, ``firered``, ``<run folder>`` (if it holds one system) or ``<run folder>:<name>``."""
    if spec in BUILTIN:
        return _import(BUILTIN[spec])(**options)
    folder_text, _, name = spec.rpartition(":") if ":" in spec and not Path(spec).exists() else (spec, "", "")
    folder = Path(folder_text)
    if not folder.exists():
        raise FileNotFoundError(
            f"--system {spec!r}: no such built-in system or folder; built-ins: {', '.join(BUILTIN)}, "
            "or a run folder (results/<profile>/<run_id>) optionally followed by :<system name>"
        )
    if (folder / "system.yaml").exists():
        system_dir = folder
    else:
        names = list_systems(folder)
        if not names:
            raise FileNotFoundError(f"{folder} holds no saved systems (no systems/*/system.yaml)")
        if not name:
            if len(names) > 1:
                raise ValueError(f"{folder} holds several systems ({', '.join(names)}): pick one with {folder}:<name>")
            name = names[0]
        if name not in names:
            raise ValueError(f"{folder} has no system {name!r}; it holds: {', '.join(names)}")
        system_dir = folder / "systems" / name
    info = read_system_yaml(system_dir)
    kind = info.get("kind")
    if kind not in LOADERS:
        raise ValueError(f"{system_dir}/system.yaml has unknown kind {kind!r}; known kinds: {', '.join(sorted(LOADERS))}")
    return _import(LOADERS[kind])(system_dir, info, **options)
