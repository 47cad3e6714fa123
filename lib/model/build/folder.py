"""A model folder lib builds itself (tiny, mini): built on first use, rebuilt when its recipe changes, and
refused when its weights differ from the hashes recorded at build time."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..errors import DamagedFilesError

BUILD_INFO = "speechbook_build.json"  # beside the weights: what was built, by which recipe version, weight hashes


def ensure_built(path: Path, version: int, build: Callable[[Path], object], what: str) -> Path:
    """A model folder lib builds itself (tiny, mini): built on first use or when its recipe's version changed,
    else checked against the weight hashes recorded at build time (a damaged folder is refused, not used)."""
    info = path / BUILD_INFO
    if not info.exists():
        if path.exists() and any(path.iterdir()):
            raise DamagedFilesError(f"{path} holds a {what} without its {BUILD_INFO} (half-written or copied by hand): "
                                    "delete the folder to rebuild it")
        build(path)
        return path
    try:
        built = json.loads(info.read_text())
    except (ValueError, OSError) as err:
        raise DamagedFilesError(f"{info} is damaged ({err}): delete {path} to rebuild the {what}") from None
    if built.get("version") != version:
        build(path)
        return path
    check_weights(path, built.get("weights_sha256") or {}, "delete the folder to rebuild it (it is rebuilt on first use)")
    return path


def check_weights(folder: Path, recorded: dict[str, str], remedy: str) -> None:
    """Refuse a model folder whose weight files differ from the hashes recorded when it was built (a
    half-written copy, a truncated file); cheap for the tiny and mini models lib builds."""
    from ... import io

    for name, sha in recorded.items():
        file = folder / name
        if not file.is_file():
            raise DamagedFilesError(f"{folder} is damaged: {name} is missing; {remedy}")
        if io.sha256_file(file) != sha:
            raise DamagedFilesError(f"{folder} is damaged: {name} differs from the file recorded when it was built "
                                    f"(half-written or truncated?); {remedy}")
