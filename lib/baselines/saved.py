"""Saving and loading a fitted baseline's state in skops' format, which cannot run code when loaded.

Saved baselines live in ``<run>/systems/<name>/`` as ``model.skops`` plus ``system.yaml``. skops rebuilds only the
types it is told to trust (scikit-learn's and numpy's, plus :data:`TRUSTED_TYPES`), and a file holding any other
type is refused; the file's sha256 is recorded in system.yaml and checked before loading, so a damaged file is named
as such.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .. import io

MODEL_FILE = "model.skops"
LEGACY_PICKLES = (".joblib", ".pkl", ".pickle")  # formats that run code when loaded: refused
# Types beyond skops' own trusted set (scikit-learn estimators, numpy, builtins) that the book's fitted
# baselines hold: the trees of HistGradientBoostingClassifier.
TRUSTED_TYPES: tuple[str, ...] = ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",)


def save_fitted_state(system_dir: str | Path, state: dict[str, Any], file: str = MODEL_FILE,
                      trusted: Sequence[str] = ()) -> dict[str, Any]:
    """Write a fitted baseline's state (plain values, numpy arrays, scikit-learn estimators) atomically as
    ``<system_dir>/<file>`` in skops' format. Every type in it must be trusted by skops or listed in
    ``TRUSTED_TYPES`` / ``trusted`` (else nobody could load it back). Returns the system.yaml entries
    (``file``, ``format``, ``sha256``, ``trusted_types``) to merge into the system's spec."""
    import skops.io as sio

    system_dir = Path(system_dir)
    system_dir.mkdir(parents=True, exist_ok=True)
    blob = sio.dumps(state)
    extra = sorted(set(sio.get_untrusted_types(data=blob)) - set(TRUSTED_TYPES) - set(trusted))
    if extra:
        raise TypeError(f"{system_dir / file}: the state holds types skops does not trust ({extra}); add them to trusted= "
                        "if they cannot run code, or save plain arrays instead")
    io.write_bytes(system_dir / file, blob)
    return {"file": file, "format": "skops", "sha256": io.sha256_file(system_dir / file),
            "trusted_types": sorted(set(sio.get_untrusted_types(data=blob)))}


def load_fitted_state(system_dir: str | Path, info: dict[str, Any], trusted: Sequence[str] = ()) -> dict[str, Any]:
    """Read back what :func:`save_fitted_state` wrote, after checking it: the file lies in the system folder,
    is not a pickle, has the sha256 recorded at save time, and holds only trusted types."""
    import skops.io as sio

    from ..systems import SavedSystemError, system_file

    system_dir = Path(system_dir)
    path = system_file(system_dir, info, "file", MODEL_FILE)
    redo = "fit it again (rerun chapter 02_normalization_study) or restore the folder from a copy"
    if path.suffix.lower() in LEGACY_PICKLES:
        raise SavedSystemError(
            f"{path} is a pickle, which can run code when loaded, so it is not loaded; {redo} (it is then saved as "
            f"{MODEL_FILE}, a format that cannot run code)")
    if not path.exists():
        raise FileNotFoundError(f"{system_dir}: its system.yaml names {path.name}, which is missing; {redo}")
    if info.get("sha256") and io.sha256_file(path) != info["sha256"]:
        raise SavedSystemError(f"{path} is damaged or was replaced: its sha256 differs from the one recorded in system.yaml when "
                               f"it was saved; {redo}")
    try:
        found = sio.get_untrusted_types(file=path)
    except Exception as err:  # noqa: BLE001 - zipfile/json errors of a truncated or foreign file
        raise SavedSystemError(f"cannot read {path} ({type(err).__name__}: {err}): the file is damaged or not a skops file; {redo}") from None
    refused = sorted(set(found) - set(TRUSTED_TYPES) - set(trusted))
    if refused:
        raise SavedSystemError(f"{path} holds types that are not trusted ({refused}); it was not made by lib.baselines and is not loaded")
    try:
        state = sio.load(path, trusted=found)
    except Exception as err:  # noqa: BLE001
        raise SavedSystemError(f"cannot load {path} ({type(err).__name__}: {err}): the file is damaged; {redo}") from None
    if not isinstance(state, dict):
        raise SavedSystemError(f"{path} does not hold a baseline's state; {redo}")
    return state
