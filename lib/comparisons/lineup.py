"""The line-up of chapter 06: which predictions, which systems, their names and families, and the reference.

Every system of a book run is gathered from its ``predictions.csv`` and those of its complete seed-sweep
members, ensembles across seeds are built and written back through ``lib.results``, each system gets a short
display name and a family (which orders tables, never a test result), and one system is chosen by name as the
reference the others are tested against.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from .. import book, ensemble, results, stats, sweep
from ..systems import ZERO_SHOT, SystemKey, family, is_ensemble, trained_system_name

KEY = results.SYSTEM_KEY
Key = tuple  # (system, variant, seed) as the predictions table holds it; lib.systems.SystemKey types it


def require_run(run_dir: str | Path | None) -> Path:
    """The run folder chapter 06 summarises; says what to run when there is none."""
    if run_dir is None or not (Path(run_dir) / "predictions.csv").exists():
        raise FileNotFoundError(
            "chapter 06 summarises the predictions of a book run, and "
            + ("no run_dir was given" if run_dir is None else f"{Path(run_dir) / 'predictions.csv'} does not exist")
            + ": run the earlier chapters first (`make book`, or `python -m lib book --chapters '01 02 03 05'`) "
            "and pass that run folder as run_dir (results/<profile>/<run_id>)"
        )
    return Path(run_dir)


# ------------------------------------------------------------------------------------------ gathering
@dataclass
class Gathered:
    """The run's predictions on the test split, one row per (system, clip), and how they were gathered."""

    predictions: pd.DataFrame
    n_rows: int  # rows read (ensembles of an earlier execution left out)
    n_dropped: int  # exact duplicates dropped (the zero-shot model scored again by every sweep member)
    max_p_range: float  # the largest difference in p_speech between duplicates
    n_differing: int  # duplicated clips whose decisions differ
    members_listed: list[Path]
    members_complete: list[Path]
    off_test_rows: int  # rows of clips outside the test split, left out
    off_test_systems: list[str]
    n_test: int  # test clips in the bank


def gather(run_dir: str | Path, bank: pd.DataFrame) -> Gathered:
    """The main run's predictions and those of its complete sweep members (``sweep.collect_predictions``),
    without earlier ensembles, exact duplicates (the main run's copy kept) or clips outside the test split."""
    raw = sweep.collect_predictions(run_dir)
    listed = sweep.member_dirs(run_dir)
    complete = [m for m in listed if book.read_status(m)["state"] == "complete"]
    raw = raw[~raw["system"].map(is_ensemble)]
    dup_mask = raw.duplicated(KEY + ["clip_id"], keep=False)
    spread = raw[dup_mask].groupby(KEY + ["clip_id"]).agg(p_range=("p_speech", lambda p: p.max() - p.min()),
                                                           preds=("pred", "nunique"))
    n_dropped = int(raw.duplicated(KEY + ["clip_id"]).sum())
    base = raw.drop_duplicates(KEY + ["clip_id"], keep="first").reset_index(drop=True)  # the main run's copy comes first
    test_ids = set(bank.loc[bank["split"] == "test", "clip_id"])
    off_test = ~base["clip_id"].isin(test_ids)
    return Gathered(predictions=base[~off_test].reset_index(drop=True), n_rows=len(raw), n_dropped=n_dropped,
                    max_p_range=float(spread["p_range"].max()) if len(spread) else float("nan"),
                    n_differing=int((spread["preds"] > 1).sum()), members_listed=listed, members_complete=complete,
                    off_test_rows=int(off_test.sum()), off_test_systems=sorted(base.loc[off_test, "system"].unique()),
                    n_test=len(test_ids))


# ------------------------------------------------------------------------------------------ ensembles
def multi_seed_systems(predictions: pd.DataFrame) -> list[tuple[str, str]]:
    """The fine-tuned ``(system, variant)``s with at least two training seeds."""
    seeded = predictions[predictions["seed"].astype(int) >= 0]
    n_seeds = seeded.groupby(["system", "variant"])["seed"].nunique()
    return [(s, v) for (s, v), k in n_seeds.items() if k >= 2 and SystemKey(s).family == "fine-tuned"]


def seeds_of(predictions: pd.DataFrame, system: str, variant: str) -> list[int]:
    part = predictions[(predictions["system"] == system) & (predictions["variant"] == variant)]
    return sorted(int(s) for s in part["seed"].unique() if int(s) >= 0)


def build_ensembles(predictions: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """The vote and mean ensembles (``lib.ensemble``: ``<system>+vote``, ``<system>+mean``) of every multi-seed
    fine-tuned system."""
    frames = [ensemble.ensemble_predictions(predictions, s, v, run_id=run_id) for s, v in multi_seed_systems(predictions)]
    return pd.concat(frames, ignore_index=True) if frames else predictions.iloc[:0]


def write_ensembles(run_dir: str | Path, ensembles: pd.DataFrame) -> None:
    """Write the ensembles into the run's predictions, through ``lib.results``; ensembles of an earlier
    execution whose seeds have changed (so their keys differ) are removed."""
    on_disk = results.read_predictions(run_dir)
    new_keys = set(map(tuple, ensembles[KEY].astype(str).drop_duplicates().values))
    old_keys = set(map(tuple, on_disk.loc[on_disk["system"].map(is_ensemble), KEY].astype(str).values))
    results.remove_predictions(run_dir, old_keys - new_keys)
    if len(ensembles):
        results.write_predictions(run_dir, ensembles)


# ------------------------------------------------------------------------------------------ names
def variant_parts(keys: Sequence[Key]) -> dict[tuple[str, str], str]:
    """Per (system, variant): the tokens of the variant that tell the system's variants apart
    (``rms/mode0-30ms`` among ``none/mode0-30ms`` -> ``rms``); ``""`` for a system with one variant."""
    kf = pd.DataFrame(list(keys), columns=KEY)
    out = {}
    for system, part in kf.groupby("system"):
        toks = {v: [t for chunk in str(v).split("/") for t in chunk.split("-") if t] for v in part["variant"].unique()}
        common = set.intersection(*(set(t) for t in toks.values()))
        out.update({(system, v): "/".join(x for x in t if x not in common) for v, t in toks.items()})
    return out


def display_names(keys: Sequence[Key]) -> dict[Key, str]:
    """Short, unique display names: the system, its distinguishing variant parts, ``#seed`` where it has
    several seeds; the full labels (``SystemKey.label``) if shortening would merge two systems."""
    kf = pd.DataFrame(list(keys), columns=KEY)
    n_sd = kf.groupby(["system", "variant"])["seed"].nunique()
    parts = variant_parts(keys)
    names = {k: SystemKey(k[0], parts[(k[0], k[1])], k[2]).label(show_seed=n_sd[(k[0], k[1])] > 1) for k in keys}
    if len(set(names.values())) < len(names):
        names = {k: SystemKey.from_tuple(k).label(show_seed=n_sd[(k[0], k[1])] > 1) for k in keys}
    return names


def is_headline(system: str, variant: str, normalization: str) -> bool:
    """Shown in the figures: every Qwen2-Audio system, and the baselines under the profile's normalization."""
    return family(system) != "baseline" or str(variant).split("/")[0] == normalization


# ------------------------------------------------------------------------------------------ the line-up
@dataclass
class Lineup:
    """Every system compared: predictions (with a ``name`` column), names, and the reference."""

    predictions: pd.DataFrame
    names: dict[Key, str]
    multi_seed: list[tuple[str, str]]
    normalization: str
    reference: Key = ()
    reference_reason: str = ""
    ensembles: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def keys(self) -> list[Key]:
        return list(self.names)

    @property
    def reference_name(self) -> str:
        return self.names[self.reference]

    def key_of(self, name: str) -> Key:
        return {v: k for k, v in self.names.items()}[name]

    def name_of(self, df: pd.DataFrame) -> list[str]:
        return [self.names[(s, v, sd)] for s, v, sd in zip(df["system"], df["variant"], df["seed"])]

    def headline(self, df: pd.DataFrame) -> list[bool]:
        return [is_headline(s, v, self.normalization) for s, v in zip(df["system"], df["variant"])]

    def ensemble_names(self) -> list[str]:
        return [n for k, n in self.names.items() if is_ensemble(k[0])]


def build_lineup(gathered: Gathered, run_dir: str | Path, cfg: dict[str, Any], reference_system: str | None = None) -> Lineup:
    """The systems of a run with ensembles added (and written to its predictions), named, and the reference."""
    base = gathered.predictions
    ens = build_ensembles(base, cfg["run_id"])
    write_ensembles(run_dir, ens)
    preds = pd.concat([base, ens], ignore_index=True)
    names = display_names(stats.system_keys(preds))
    line = Lineup(predictions=preds, names=names, multi_seed=multi_seed_systems(base), normalization=cfg["normalization"],
                  ensembles=ens)
    line.predictions = preds.assign(name=line.name_of(preds))
    line.reference, line.reference_reason = choose_reference(line, trained_system_name(cfg["lora_variant"], cfg["loss_masking"]),
                                                             int(cfg["seed"]), reference_system)
    return line


def choose_reference(line: Lineup, main_system: str, seed: int, reference_system: str | None = None) -> tuple[Key, str]:
    """The reference, chosen by name, never by a test score: ``reference_system`` when given, else the run's
    fine-tuned ``main_system`` trained with the run's seed, else (said so) the zero-shot model."""
    preds = line.predictions
    if reference_system is not None:
        by_name = {v: k for k, v in line.names.items()}
        key = by_name.get(reference_system) or stats.system_keys(stats.select(preds, reference_system))[0]
        return key, f"the `reference_system` parameter ({reference_system!r})"
    cand = preds[(preds["system"] == main_system) & (preds["seed"].astype(int) == seed)]
    if len(cand):
        return stats.system_keys(cand)[0], f"the run's fine-tuned system `{main_system}`, seed {seed}"
    if (preds["system"] == ZERO_SHOT).any():
        return (stats.system_keys(preds[preds["system"] == ZERO_SHOT])[0],
                f"**the zero-shot model, as a fallback**: this run has no predictions of `{main_system}` with seed {seed} "
                "(run chapters 03 and 05 for it)")
    raise ValueError(f"no reference: the run has neither {main_system} (seed {seed}) nor {ZERO_SHOT}; "
                     "run chapters 03 and 05, or pass reference_system=<one of the systems above>")
