"""Profiles: one YAML file holds every parameter a run needs; overrides win over it.

``cpu.yaml`` is the reference profile: its keys are the complete list of valid parameter names, and its
values are the only defaults. Every other profile names only what it changes (``extends`` defaults to
``cpu``). Sections in the YAML group keys for the reader; the resolved config is flat, because papermill
parameters are flat. Code that wants a typed group of parameters declares a dataclass without defaults
and reads it with :func:`section` (e.g. ``section(cfg, lib.train.TrainConfig)``).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

PROFILES_DIR = Path(__file__).parent / "profiles"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
BASE_PROFILE = "cpu"
PROJECT_PATH_KEYS = ("results_root", "figures_dir", "bank_dir")


class ConfigError(ValueError):
    """A profile or parameter is wrong; the message says which and what the valid choices are."""


Section = TypeVar("Section")


# A profile name or run id is one plain folder name: no separator, no "." or "..", no leading dot or dash.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

# Parameters whose type the reference profile's value does not tell (it is null, or several types are valid).
PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "data_dir": (str,), "max_sources_per_class": (int,), "max_train_clips": (int,), "prompt_opt_system": (str,),
    "prompt_opt_dev_max_clips": (int,), "opro_optimizer_model": (str,), "opro_meta_prompt": (str,),
    "template_search_max": (int,), "gradient_checkpointing": (bool, str),
    "study_max_train_clips": (int,), "study_epochs": (int,), "seed_replication_epochs": (int,),
    "seed_replication_book_test_max_clips": (int,), "scoring_check_max_clips": (int,),
}
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}


def check_name(value: str, what: str) -> str:
    """Refuse a profile name or run id that is not one plain folder name (it would write outside results/)."""
    if not isinstance(value, str) or not NAME_PATTERN.match(value) or value in {".", ".."}:
        raise ConfigError(
            f"{what} {value!r} is not a valid name: use letters, digits, '.', '_', '+' or '-', starting with a "
            "letter or digit (no '/', no '..'), e.g. book or seed1"
        )
    return value


def check_type(key: str, value: Any, reference: Any, where: str = "") -> Any:
    """``value`` for parameter ``key`` with the type the reference profile gives it (None = keep the profile's).

    A number written as text (``1e-3``, which YAML reads as a string) is accepted for a float parameter.
    Raises ConfigError naming the parameter, the type it needs and the value given.
    """
    if value is None:
        return None
    if key in PARAM_TYPES:
        allowed = PARAM_TYPES[key]
    elif reference is None:
        return value
    elif isinstance(reference, bool):
        allowed = (bool,)
    elif isinstance(reference, float):
        allowed = (float, int)
    else:
        allowed = (type(reference),)
    if float in allowed and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    if ok and isinstance(value, list) and isinstance(reference, list) and reference:
        def kind(v: Any) -> str:
            return "number" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__
        want = {kind(v) for v in reference}
        bad = [v for v in value if kind(v) not in want]
        if bad:
            raise ConfigError(
                f"parameter {key}{where}: list items must be {' or '.join(sorted(want))} like the profile's {reference!r}; "
                f"got {bad[0]!r} in {value!r}"
            )
    if not ok:
        words = " or ".join(_TYPE_WORDS.get(t, t.__name__) for t in allowed)
        raise ConfigError(
            f"parameter {key}{where} must be {words} (the profile has {reference!r}); got {value!r} "
            f"({type(value).__name__}): fix it, e.g. --set {key}={_example(reference, allowed)}"
        )
    return value


def _example(reference: Any, allowed: tuple[type, ...]) -> str:
    import yaml

    if reference is not None:
        return yaml.safe_dump(reference, default_flow_style=True).strip().removesuffix("...").strip()
    return {bool: "true", int: "1", float: "0.5", str: "text", list: "[1, 2]"}[allowed[0]]


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def _read_profile_file(name: str) -> dict[str, Any]:
    path = PROFILES_DIR / f"{name}.yaml"
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or not path.exists():
        raise ConfigError(
            f"unknown profile {name!r}; valid profiles: {', '.join(available_profiles())}"
            + _did_you_mean(name, available_profiles())
        )
    return flatten_sections(yaml.safe_load(path.read_text()) or {}, f"profile {name} ({path})")


def flatten_sections(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Parameters grouped in sections (as profiles and params.yaml files group them for the reader) made flat;
    a key in two sections is an error, since the resolved parameters are flat."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):  # a section
            for k, v in value.items():
                if k in flat:
                    raise ConfigError(f"{where}: key {k!r} appears in two sections")
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
        if cfg:
            own[k] = check_type(k, own[k], cfg[k], where=f" in profile {name!r}")
    cfg.update(own)
    cfg["profile"] = name
    return cfg


def resolve(profile: str = BASE_PROFILE, overrides: Mapping[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    """Profile values, then overrides (``None`` means "keep the profile's value").

    Unknown names raise with the list of valid ones: a typo never silently falls back to a default.
    """
    cfg = load_profile(profile)
    reference = load_profile(BASE_PROFILE)
    merged = dict(overrides or {})
    merged.update(kw)
    for k, v in merged.items():
        if k == "profile":
            continue
        if k not in cfg:
            raise ConfigError(
                f"unknown parameter {k!r}" + _did_you_mean(k, sorted(cfg)) + f"; valid parameters: {', '.join(sorted(cfg))}"
            )
        v = check_type(k, v, reference[k])  # at start-up, not in the chapter that first uses it
        if v is not None:
            cfg[k] = v
    data_dir = resolve_data_dir(cfg.get("data_dir"))
    cfg["data_dir"] = str(data_dir) if data_dir else None
    # Folders the project writes to are relative to the project root, whatever the working directory.
    for key in PROJECT_PATH_KEYS:
        if cfg.get(key) and not Path(cfg[key]).is_absolute():
            cfg[key] = str(PROJECT_ROOT / cfg[key])
    return cfg


def section(cfg: Mapping[str, Any], cls: type[Section], **overrides: Any) -> Section:
    """The dataclass ``cls`` built from a run's flat parameters: each field takes the parameter of the same name
    (the profile's value: the profile is where defaults live, so ``cls`` declares none), ``overrides`` win
    (``None`` keeps the parameter's value, as in :func:`resolve`). Other parameters in ``cfg`` are ignored.

    Raises ConfigError naming an override that is no field of ``cls`` (with the valid names), or a field that
    ``cfg`` lacks. ``cls.SECTION`` (if set) names the group in messages, e.g. "training".
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"section() builds a dataclass; got {cls!r}")
    what = getattr(cls, "SECTION", cls.__name__)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = sorted(f.name for f in fields)
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ConfigError(f"unknown {what} parameter(s) {unknown}; valid: {', '.join(names)}")
    values = {k: cfg[k] for k in names if k in cfg}
    values.update({k: v for k, v in overrides.items() if v is not None})
    missing = [f.name for f in fields if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(
            f"{what} parameter(s) {missing} missing from the run's parameters: pass a resolved profile "
            f"(lib.config.resolve), whose {BASE_PROFILE}.yaml defines every parameter"
        )
    return cls(**values)


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
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise ConfigError(
            f"override {text!r}: the value is not valid YAML ({str(err).splitlines()[0]}); quote text, "
            "e.g. prompt='\"...\"', and write lists as [0, 10]"
        ) from None
