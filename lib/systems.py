"""Systems: what names one (:class:`SystemKey`), where a run keeps its saved ones, and how they load.

A system's identity is its row key in the predictions table, ``(system, variant, seed)``
(``lib.results.SYSTEM_KEY``); :class:`SystemKey` is that key typed, with its display label and its family.
This module is the one place that knows how names are formed: the zero-shot model, the fine-tuned
``qwen2audio-...`` systems, the study systems (``...-study``), and names derived from another system's
(``<system>+vote`` / ``<system>+mean`` ensembles across seeds, ``<system>+opro`` / ``<system>+template``
prompt-optimised systems): :func:`derived_name` forms them, :meth:`SystemKey.base` and
:meth:`SystemKey.derivation` read them back.


A *system* turns a list of 16 kHz mono float32 clips into ``p_speech`` scores (higher = more speech).
Trained systems are saved by chapters under ``<run folder>/systems/<name>/`` with a ``system.yaml``
that says what kind it is; ``load_system`` reads it back. Built-in systems (``silero``, ``webrtc``, ``firered``)
need no folder.

system.yaml keys: ``kind`` (lora | energy | logmel | ensemble ...), ``name``, and whatever the kind's
loader needs (paths are relative to the system folder; :func:`system_file` refuses one that leads out of
it). A damaged or hand-edited system.yaml is named with what is wrong and what to do.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import yaml

from . import io
from .audio import NORMALIZATIONS


# ------------------------------------------------------------------------------------------ names
ZERO_SHOT = "qwen2audio-zeroshot"  # the base model, no adapter (chapter 05)
MODEL_PREFIX = "qwen2audio"  # every Qwen2-Audio system's name starts with it; the others are baselines
STUDY_SUFFIX = "-study"  # systems trained with the study recipe (chapters 02 and 04)
FULL_LOSS_SUFFIX = "-fullloss"  # trained with the loss over the whole sequence (the ablation of chapter 04)
DERIVED_SEP = "+"  # <system>+<derivation>: a system made from another one
ENSEMBLE_KINDS = ("vote", "mean")  # lib.ensemble: majority vote and mean p_speech across seeds
PROMPT_METHODS = ("opro", "template")  # lib.prompt_opt: the prompt chosen on dev by OPRO or the template search
FAMILIES = ["fine-tuned", "ensemble", "prompt-optimised", "zero-shot", "baseline"]  # the order tables use


def derived_name(base: str, derivation: str) -> str:
    """The name of a system made from ``base``: ``<base>+vote`` / ``<base>+mean`` (an ensemble of its seeds) or
    ``<base>+opro`` / ``<base>+template`` (its best prompt chosen on dev)."""
    if derivation not in ENSEMBLE_KINDS + PROMPT_METHODS:
        raise ValueError(f"unknown derivation {derivation!r}; known: {', '.join(ENSEMBLE_KINDS + PROMPT_METHODS)}")
    if not base or DERIVED_SEP in str(base):
        raise ValueError(f"a derived system's base must be a plain system name, got {base!r}")
    return f"{base}{DERIVED_SEP}{derivation}"


def trained_system_name(lora_variant: str, loss_masking: bool = True) -> str:
    """The name of a run's fine-tuned system: ``qwen2audio-<variant>``, ``-fullloss`` appended when the loss
    covers the whole sequence (the ablation)."""
    return f"{MODEL_PREFIX}-{lora_variant}" + ("" if loss_masking else FULL_LOSS_SUFFIX)


def scoring_normalization(system: Any, requested: str | None = None, default: str | None = "none") -> str:
    """The load-time level normalization to score ``system``'s clips at, the one rule every scoring path uses:
    the one asked for (``--normalization``, a segment setting), else the system's own (``system.normalization``:
    what a trained or fitted system saw in training), else ``default`` (a run's ``normalization`` for systems
    that record none: the zero-shot model, the VADs). ``default=None`` makes a system without one an error."""
    mode = requested or getattr(system, "normalization", None) or default
    if mode is None:
        raise ValueError(f"{getattr(system, 'name', system)}: say which load-time normalization to score at "
                         f"({', '.join(NORMALIZATIONS)})")
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {mode!r}")
    return mode


def study_system_name(lora_variant: str, normalization: str, loss_masking: bool = True) -> str:
    """``qwen2audio-<variant>-<normalization>-study``: a system trained with the study recipe (``-fullloss``
    before ``-study`` when the loss covers the whole sequence). No ``+`` (that marks a derived system)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization {normalization!r} unknown; valid: {', '.join(NORMALIZATIONS)}")
    return f"{MODEL_PREFIX}-{lora_variant}-{normalization}" + ("" if loss_masking else FULL_LOSS_SUFFIX) + STUDY_SUFFIX


def is_study_system(system: str) -> bool:
    """A study system's name (or its folder's: ``-seed<k>`` after the name for an extra seed)."""
    name = re.sub(r"-seed\d+$", "", str(system))
    return name.startswith(f"{MODEL_PREFIX}-") and name.endswith(STUDY_SUFFIX)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value) in ("", "nan", "None")


@dataclass(frozen=True)
class SystemKey:
    """One system of the predictions table: ``(system, variant, seed)``; ``seed`` -1 when it has none.

    Built from a predictions row (:meth:`from_row`) or a key tuple (:meth:`from_tuple`); a missing variant or
    seed (None, NaN, empty) becomes ``""`` / ``-1`` as the predictions table stores them.
    """

    name: str
    variant: str = ""
    seed: int = -1

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", str(self.name))
        object.__setattr__(self, "variant", "" if _blank(self.variant) else str(self.variant))
        object.__setattr__(self, "seed", -1 if _blank(self.seed) else int(self.seed))

    @classmethod
    def from_tuple(cls, key: Sequence[Any]) -> "SystemKey":
        if not 1 <= len(key) <= 3:
            raise ValueError(f"a system key is (system[, variant[, seed]]), got {key!r}")
        return cls(*key)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "SystemKey":
        return cls(row["system"], row.get("variant", ""), row.get("seed", -1))

    def as_tuple(self) -> tuple[str, str, int]:
        return (self.name, self.variant, self.seed)

    @property
    def base(self) -> str:
        """The system a derived system was made from (its own name for the others)."""
        return self.name.rpartition(DERIVED_SEP)[0] if DERIVED_SEP in self.name else self.name

    @property
    def derivation(self) -> str:
        """``vote`` / ``mean`` / ``opro`` / ``template`` (what follows ``+``), ``""`` for a system of its own."""
        return self.name.rpartition(DERIVED_SEP)[2] if DERIVED_SEP in self.name else ""

    @property
    def is_qwen2audio(self) -> bool:
        """A system of the Qwen2-Audio model (zero-shot, fine-tuned, or derived from one), not a baseline."""
        return self.name.startswith(MODEL_PREFIX)

    @property
    def is_ensemble(self) -> bool:
        return self.derivation in ENSEMBLE_KINDS

    @property
    def family(self) -> str:
        """ensemble, prompt-optimised, zero-shot, fine-tuned or baseline (one of :data:`FAMILIES`)."""
        if self.is_ensemble:
            return "ensemble"
        if self.derivation:
            return "prompt-optimised"
        if self.name == ZERO_SHOT:
            return "zero-shot"
        if self.name.startswith(MODEL_PREFIX):
            return "fine-tuned"
        return "baseline"

    def label(self, show_seed: bool = True) -> str:
        """The display name: ``system``, ``system/variant``, plus ``#seed`` when asked and the seed is set."""
        name = self.name + (f"/{self.variant}" if self.variant else "")
        return name + (f"#{self.seed}" if show_seed and self.seed >= 0 else "")


def family(system: str) -> str:
    """The family of a system name (:attr:`SystemKey.family`)."""
    return SystemKey(system).family


def is_ensemble(system: str) -> bool:
    return SystemKey(system).is_ensemble


# ------------------------------------------------------------------------------------------ saved systems
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


def list_systems(run_dir: str | Path, kind: str | None = None) -> list[str]:
    """The systems saved in a run folder (``systems/*/system.yaml``), by name; only those of ``kind`` if given.
    The one scan of a run's saved systems."""
    names = sorted(p.parent.name for p in (Path(run_dir) / "systems").glob("*/system.yaml"))
    if kind is None:
        return names
    return [n for n in names if read_system_yaml(Path(run_dir) / "systems" / n).get("kind") == kind]


def find_finetuned_system(run_dir: str | Path, variant: str | None = None, name: str | None = None) -> tuple[str, Path, dict] | None:
    """The fine-tuned (``kind: lora``) system saved in the run folder (chapter 03), or ``None``.

    ``name`` picks one; otherwise ``qwen2audio-<variant>`` if saved, else the only (or first) LoRA system.
    Returns ``(name, system folder, its system.yaml)``.
    """
    found = {n: read_system_yaml(Path(run_dir) / "systems" / n) for n in list_systems(run_dir, kind="lora")}
    if name:
        if name not in found:
            raise ValueError(f"run {run_dir} has no LoRA system {name!r}; it holds: {', '.join(found) or 'none'}")
        pick = name
    elif not found:
        return None
    elif variant and trained_system_name(variant) in found:
        pick = trained_system_name(variant)
    else:
        pick = sorted(found)[0]
    return pick, Path(run_dir) / "systems" / pick, found[pick]


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
