"""Profiles: one YAML file holds every parameter a run needs; overrides win over it.

``cpu.yaml`` is the reference profile: its keys are the complete list of valid parameter names.
Every other profile names only what it changes (``extends`` defaults to ``cpu``). Sections in the
YAML group keys for the reader; the resolved config is flat, because papermill parameters are flat.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

PROFILES_DIR = Path(__file__).parent / "profiles"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
BASE_PROFILE = "cpu"
PROJECT_PATH_KEYS = ("results_root", "figures_dir", "bank_dir")


class ConfigError(ValueError):
    """A profile or parameter is wrong; the message says which and what the valid choices are."""


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def _read_profile_file(name: str) -> dict[str, Any]:
    path = PROFILES_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(
            f"unknown profile {name!r}; valid profiles: {', '.join(available_profiles())}"
            + _did_you_mean(name, available_profiles())
        )
    raw = yaml.safe_load(path.read_text()) or {}
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):  # a section
            for k, v in value.items():
                if k in flat:
                    raise ConfigError(f"profile {name}: key {k!r} appears in two sections of {path}")
                flat[k] = v
        else:
            flat[key] = value
    return flat


def valid_keys() -> list[str]:
    return sorted(_read_profile_file(BASE_PROFILE))


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def load_profile(name: str) -> dict[str, Any]:
    """The flat parameters of a profile, its base profile's values filled in."""
    own = _read_profile_file(name)
    parent = own.pop("extends", BASE_PROFILE if name != BASE_PROFILE else None)
    cfg = load_profile(parent) if parent else {}
    keys = set(cfg) if cfg else set(own)
    for k in own:
        if k not in keys:
            raise ConfigError(
                f"profile {name!r} sets unknown parameter {k!r}" + _did_you_mean(k, sorted(keys))
                + f"; valid parameters: {', '.join(sorted(keys))}"
            )
    cfg.update(own)
    cfg["profile"] = name
    return cfg


def resolve(profile: str = BASE_PROFILE, overrides: Mapping[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    """Profile values, then overrides (``None`` means "keep the profile's value").

    Unknown names raise with the list of valid ones: a typo never silently falls back to a default.
    """
    cfg = load_profile(profile)
    merged = dict(overrides or {})
    merged.update(kw)
    for k, v in merged.items():
        if k == "profile":
            continue
        if k not in cfg:
            raise ConfigError(
                f"unknown parameter {k!r}" + _did_you_mean(k, sorted(cfg)) + f"; valid parameters: {', '.join(sorted(cfg))}"
            )
        if v is not None:
            cfg[k] = v
    data_dir = resolve_data_dir(cfg.get("data_dir"))
    cfg["data_dir"] = str(data_dir) if data_dir else None
    # Folders the project writes to are relative to the project root, whatever the working directory.
    for key in PROJECT_PATH_KEYS:
        if cfg.get(key) and not Path(cfg[key]).is_absolute():
            cfg[key] = str(PROJECT_ROOT / cfg[key])
    return cfg


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """Where the local corpus lives: the parameter, else $DATA_DIR, else ../shared/data if it exists."""
    if data_dir:
        return Path(data_dir).expanduser().resolve()
    env = os.environ.get("DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    beside = PROJECT_ROOT.parent / "shared" / "data"
    if (beside / "manifest.csv").exists():
        return beside.resolve()
    return None


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` from the command line; the value is read as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. seed=1 or snrs_db=[0,10]")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)
