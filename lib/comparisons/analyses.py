"""Chapter 06's analyses of a line-up: the table of every system, paired tests against the reference and
among the study systems, seeds and ensembles, psychometric thresholds, calibration and power.

Each function returns tables (the chapter shows them and writes them to the run's ``statistics/`` folder);
the words about them are in ``lib.comparisons.prose``. Tables are ordered by family, never by a test result.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from .. import io, seed_claims, stats
from ..systems import ENSEMBLE_KINDS, FAMILIES, FULL_LOSS_SUFFIX, MODEL_PREFIX, ZERO_SHOT, SystemKey, derived_name, family, is_study_system, study_system_name
from .lineup import Key, Lineup


class Stopwatch:
    """Seconds since the chapter began, and the time each named step took (``with watch("step"): ...``)."""

    def __init__(self) -> None:
        self.start, self.laps = time.monotonic(), {}

    def __call__(self, step: str) -> "_Lap":
        return _Lap(self, step)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.start


@dataclass
class _Lap:
    watch: Stopwatch
    step: str
    t0: float = 0.0

    def __enter__(self) -> None:
        self.t0 = time.monotonic()

    def __exit__(self, *exc: Any) -> None:
        self.watch.laps[self.step] = time.monotonic() - self.t0


# ------------------------------------------------------------------------------------------ section 3
def system_table(line: Lineup, bank: pd.DataFrame, level: float, n_boot: int, seed: int) -> pd.DataFrame:
    """``stats.metrics_table`` of every system with its name, family (the row order) and whether the figures
    show it, plus how much wider the balanced-accuracy interval is when sources, not clips, are resampled."""
    preds = line.predictions
    table = stats.metrics_table(preds, bank, level=level, n_boot=n_boot, seed=seed)
    table.insert(0, "name", line.name_of(table))
    table.insert(1, "family", [family(s) for s in table["system"]])
    table["family"] = pd.Categorical(table["family"], FAMILIES, ordered=True)
    table = table.sort_values(["family", "system", "variant", "seed"], kind="mergesort").reset_index(drop=True)
    table["headline"] = line.headline(table)
    # the same bootstrap with clips resampled alone (each clip its own source): how much the clustering widens intervals
    naive = stats.metrics_table(preds, bank.assign(group_id=bank["clip_id"]), level=level, n_boot=n_boot, seed=seed)
    naive_w = {(r.system, r.variant, r.seed): r.balanced_accuracy_boot_hi - r.balanced_accuracy_boot_lo for r in naive.itertuples()}
    table["ba_width_ratio_cluster_vs_clip"] = [
        (r.balanced_accuracy_boot_hi - r.balanced_accuracy_boot_lo) / naive_w[(r.system, r.variant, r.seed)]
        if naive_w[(r.system, r.variant, r.seed)] > 0 else np.nan for r in table.itertuples()]
    return table


def write_metrics(run_dir: str | Path, line: Lineup, bank: pd.DataFrame, table: pd.DataFrame, smoke: bool) -> None:
    """The run's ``metrics.csv`` and ``metrics.json``; in a smoke run the Qwen2-Audio systems are marked smoke."""
    smoke_systems = sorted({s for s in table["system"] if SystemKey(s).is_qwen2audio}) if smoke else False
    io.write_csv(Path(run_dir) / "metrics.csv", table)
    io.write_json(Path(run_dir) / "metrics.json", stats.metrics_json(line.predictions, bank, smoke=smoke_systems, table=table))


def row(table: pd.DataFrame, name: str) -> pd.Series:
    return table[table["name"] == name].iloc[0]


def strongest_baseline(table: pd.DataFrame) -> str | None:
    """The shown baseline with the highest test balanced accuracy: a choice on test, made only to give the
    reference its hardest comparator."""
    base_head = table[(table["family"] == "baseline") & table["headline"]]
    return base_head.loc[base_head["balanced_accuracy"].idxmax(), "name"] if len(base_head) else None


def zero_shot_names(table: pd.DataFrame) -> list[str]:
    return table.loc[table["system"] == ZERO_SHOT, "name"].tolist()


def focus_systems(line: Lineup, table: pd.DataFrame) -> list[str]:
    """The systems of the psychometric curves: the reference, the strongest baseline and the zero-shot model."""
    best = strongest_baseline(table)
    return list(dict.fromkeys([line.reference_name] + ([best] if best else []) + zero_shot_names(table)[:1]))


def power_comparator(line: Lineup, table: pd.DataFrame) -> str | None:
    """The system the power analysis compares the reference with: the strongest baseline, else the zero-shot model."""
    zero_shot = zero_shot_names(table)
    return strongest_baseline(table) or (zero_shot[0] if zero_shot and zero_shot[0] != line.reference_name else None)


# ------------------------------------------------------------------------------------------ section 4
def reference_tests(line: Lineup, bank: pd.DataFrame, table: pd.DataFrame) -> tuple[pd.DataFrame, list[Key]]:
    """McNemar (``stats.mcnemar_table``) of the reference against every system scored on the same clips, on
    clips and on sources, in the table's order; and the systems left out because they scored other clips."""
    keys, ref = line.keys, line.reference
    clip_sets = {k: frozenset(part["clip_id"]) for k, part in line.predictions.groupby(stats.SYSTEM_KEY, sort=False)}
    table_order = {n: i for i, n in enumerate(table["name"])}  # families first, never a test result
    others = sorted((k for k in keys if k != ref and clip_sets[k] == clip_sets[ref]), key=lambda k: table_order[line.names[k]])
    skipped = [k for k in keys if k != ref and clip_sets[k] != clip_sets[ref]]
    mc = stats.mcnemar_table(line.predictions, ref, bank, collapse=(None, "group_id"), others=others)
    mc["name"] = [line.names[k] for k in others] * 2  # mcnemar_table: every other system on clips, then on groups
    mc["family"] = [family(k[0]) for k in others] * 2
    return mc, skipped


def wide_tests(mc: pd.DataFrame) -> pd.DataFrame:
    """The reference's tests as a reader sees them: one row per system, clips and sources side by side."""
    clip, grp = mc[mc["unit"] == "clip_id"].set_index("name"), mc[mc["unit"] == "group_id"].set_index("name")
    return pd.DataFrame({
        "family": clip["family"],
        "difference (clips)": clip["difference"].round(3), "ref only": clip["a_only"], "other only": clip["b_only"],
        "p exact": clip["p_exact"], "p mid-p": clip["p_midp"], "p Holm": clip["p_exact_adj"],
        "sources": grp["n"], "difference (sources)": grp["difference"].round(3),
        "ref only (src)": grp["a_only"], "other only (src)": grp["b_only"], "ties ref/other": grp["ties_a"].astype(str) + "/" + grp["ties_b"].astype(str),
        "dropped": grp["dropped"], "p exact (src)": grp["p_exact"], "p Holm (src)": grp["p_exact_adj"],
    }).reset_index().rename(columns={"name": "system"})


def study_pair_tests(line: Lineup, bank: pd.DataFrame, lora_variant: str) -> pd.DataFrame:
    """Every pair of the study systems of chapters 02 (normalizations) and 04 (``attn`` against ``attn_mlp``),
    per seed, on clips and sources (``seed_claims.pairwise_mcnemar``; a pair shared by both sets once)."""
    preds = line.predictions
    study = sorted({s for s in preds["system"] if is_study_system(s)})
    norm_set = [s for s in study if s.startswith(f"{MODEL_PREFIX}-{lora_variant}-") and FULL_LOSS_SUFFIX not in s]
    variant_set = [study_system_name(v, line.normalization) for v in ("attn", "attn_mlp")]
    tests = [t for t in (seed_claims.pairwise_mcnemar(preds, norm_set, bank),
                         seed_claims.pairwise_mcnemar(preds, [s for s in variant_set if s in study], bank)) if len(t)]
    return pd.concat(tests, ignore_index=True).drop_duplicates(subset=["seed", "a", "b", "unit"]) if tests else pd.DataFrame()


# ------------------------------------------------------------------------------------------ section 5
@dataclass
class SeedStudy:
    """The multi-seed systems' rows of the table, their spread over seeds, and each ensemble against its seeds."""

    rows: pd.DataFrame
    summary: pd.DataFrame
    per_seed: pd.DataFrame
    ensemble_tests: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def per_seed_wide(self) -> pd.DataFrame:
        """Balanced accuracy per seed, one column per seed (``seed 0``, ``seed 1`` ...)."""
        return self.per_seed.reset_index().rename(columns=lambda c: f"seed {c}" if isinstance(c, (int, np.integer)) else c)

    def spread(self, system: str, variant: str) -> pd.Series:
        s = self.summary
        return s[(s["system"] == system) & (s["variant"] == variant) & (s["metric"] == "balanced_accuracy")].iloc[0]


def seed_study(line: Lineup, bank: pd.DataFrame, table: pd.DataFrame) -> SeedStudy:
    """``stats.seed_summary`` and the per-seed balanced accuracies of every multi-seed system, and McNemar
    tests of each ensemble against each of its seeds (Holm within unit)."""
    rows = table[table.apply(lambda r: (r["system"], r["variant"]) in line.multi_seed, axis=1)]
    if rows.empty:
        return SeedStudy(rows, pd.DataFrame(), pd.DataFrame())
    tests = []
    for s, v in line.multi_seed:
        seed_keys = [k for k in line.keys if k[0] == s and k[1] == v]
        for kind in ENSEMBLE_KINDS:
            ek = [k for k in line.keys if k[0] == derived_name(s, kind)][0]
            t = stats.mcnemar_table(line.predictions, ek, bank, collapse=(None, "group_id"), others=seed_keys)
            t["ensemble"], t["seed_name"] = line.names[ek], [line.names[k] for k in seed_keys] * 2
            tests.append(t)
    return SeedStudy(rows, stats.seed_summary(rows), stats.per_seed_table(rows, "balanced_accuracy"),
                     pd.concat(tests, ignore_index=True) if tests else pd.DataFrame())


# ------------------------------------------------------------------------------------------ section 6
class Axis(NamedTuple):
    column: str
    target: float  # the balanced accuracy whose threshold is reported
    label: str
    unit: str
    fmt: str


AXES = (Axis("duration_ms", 0.90, "duration (ms)", "ms", "{:.0f}"), Axis("snr_db", 0.75, "SNR (dB)", "dB", "{:.1f}"))


@dataclass
class PsychometricStudy:
    systems: list[str]
    joined: pd.DataFrame  # the predictions with group_id, duration_ms and snr_db
    fits: dict[str, dict[str, Any]]  # axis -> system name -> stats.PsychometricFit
    thresholds: dict[str, dict[str, Any]]  # axis -> system name -> stats.psychometric_threshold's result
    table: pd.DataFrame  # one row per (system, axis)
    skipped: dict[str, int]  # axes with fewer than two levels in the bank -> their number of levels
    axes: tuple[Axis, ...] = AXES


def psychometric_study(line: Lineup, bank: pd.DataFrame, systems: list[str], level: float, n_boot: int, seed: int,
                       axes: tuple[Axis, ...] = AXES) -> PsychometricStudy:
    """A psychometric fit and a threshold with its cluster-bootstrap interval per system and axis."""
    joined = stats.with_bank(line.predictions, bank, columns=["group_id", "duration_ms", "snr_db"])
    rows, all_fits, all_thr, skipped = [], {}, {}, {}
    for axis in axes:
        levels_present = joined.loc[np.isfinite(joined[axis.column].astype(float)), axis.column].nunique()
        if levels_present < 2:
            skipped[axis.column] = int(levels_present)
            continue
        fits, thr = {}, {}
        for name in systems:
            part = joined[joined["name"] == name]
            fits[name] = stats.fit_psychometric(part, axis.column)
            thr[name] = stats.psychometric_threshold(part, axis.column, axis.target, n_boot=n_boot, seed=seed, level=level, fit=fits[name])
            rows.append({"system": name, "axis": axis.column, "target": axis.target,
                         **{k: v for k, v in thr[name].items() if k not in ("x", "target")},
                         "described": stats.describe_threshold(thr[name], axis.unit, axis.fmt)})
        all_fits[axis.column], all_thr[axis.column] = fits, thr
    return PsychometricStudy(systems, joined, all_fits, all_thr, pd.DataFrame(rows), skipped, axes)


# ------------------------------------------------------------------------------------------ section 7
def calibration(line: Lineup) -> pd.DataFrame:
    """``stats.calibration_table`` of every system, named and ordered by family."""
    cal = stats.calibration_table(line.predictions)
    cal.insert(0, "name", line.name_of(cal))
    cal.insert(1, "family", pd.Categorical([family(s) for s in cal["system"]], FAMILIES, ordered=True))
    return cal.sort_values(["family", "system", "variant", "seed"], kind="mergesort").reset_index(drop=True)


def headline_predictions(line: Lineup, table: pd.DataFrame) -> pd.DataFrame:
    """The predictions of the systems the figures show, in the table's order."""
    preds = line.predictions
    head = preds[line.headline(preds)]
    rank = {n: i for i, n in enumerate(table["name"])}  # the table's order: families first
    return head.iloc[np.argsort([rank[n] for n in head["name"]], kind="stable")]


def reliability(line: Lineup, head_predictions: pd.DataFrame) -> pd.DataFrame:
    """``stats.reliability_frame`` of the systems shown, named."""
    rel = stats.reliability_frame(head_predictions)
    rel["name"] = line.name_of(rel)
    return rel


def roc_panels(line: Lineup, head_predictions: pd.DataFrame, best_baseline: str | None) -> list[tuple[pd.DataFrame, str, str, bool]]:
    """Two ROC figures, so that each legend stays readable: the Qwen2-Audio systems with the strongest baseline for
    comparison (``06_roc``), and the baselines under the profile's normalization (``06_roc_baselines``); each as
    (curves, file stem, title, whether it shows baselines only: no model to name in its caption)."""
    roc = stats.roc_frame(head_predictions)
    roc["name"] = line.name_of(roc)
    is_base = np.array([family(s) == "baseline" for s in roc["system"]])
    return [(roc[~is_base | roc["name"].isin([best_baseline])], "06_roc",
             "ROC curves: Qwen2-Audio systems" + (" and the strongest baseline" if best_baseline else ""), False),
            (roc[is_base], "06_roc_baselines", f"ROC curves: baselines under {line.normalization} normalization", True)]


# ------------------------------------------------------------------------------------------ section 8
DELTAS = (0.01, 0.02, 0.05, 0.10, 0.20)


@dataclass
class PowerStudy:
    comparator: str | None
    discordance: dict[str, float] = field(default_factory=dict)  # stats.discordance: p10, p01, psi, n
    design: dict[str, float] = field(default_factory=dict)  # of the per-clip difference in correctness
    design_reference: dict[str, float] = field(default_factory=dict)  # of the reference's own correctness
    grid: pd.DataFrame = field(default_factory=pd.DataFrame)  # stats.power_table
    by_system: pd.DataFrame = field(default_factory=pd.DataFrame)  # every system against the reference
    detectable: float = float("nan")  # the difference this split detects with 80% power against the comparator

    @property
    def grid_wide(self) -> pd.DataFrame:
        """Clips needed, one row per difference and one column per discordance."""
        return (self.grid.pivot(index="delta", columns="discordance", values="n_clips").reset_index()
                .rename(columns=lambda c: c if c == "delta" else f"discordance {c:g}"))


def power_study(line: Lineup, joined: pd.DataFrame, mc: pd.DataFrame, comparator: str | None) -> PowerStudy:
    """The power analysis against ``comparator``: the design effect of the reference-minus-comparator correctness
    within sources (taken within each class: the bank fixes the class mix), Connor's clips needed over a grid,
    and for every system tested against the reference the clips it would need and what this split detects."""
    if comparator is None:
        return PowerStudy(None)
    ref = line.reference_name
    ref_part = joined[joined["name"] == ref].sort_values("clip_id")
    cmp_part = joined[joined["name"] == comparator].sort_values("clip_id")
    disc = stats.discordance(line.predictions, line.reference, line.key_of(comparator))
    ref_correct = ref_part["pred"].values == ref_part["label"].values
    diff_clip = ref_correct.astype(float) - (cmp_part["pred"].values == cmp_part["label"].values)
    labels, groups = ref_part["label"].values, ref_part["group_id"].values
    de = stats.design_effect_within_class(diff_clip, labels, groups)
    de_ref = stats.design_effect_within_class(ref_correct, labels, groups)
    psi = disc["psi"]
    grid = stats.power_table(list(DELTAS), sorted({round(psi, 3), 0.1, 0.2, 0.3} - {0.0}), deff=de["deff"])
    clip_mc = mc[mc["unit"] == "clip_id"]
    by_system = stats.paired_power(clip_mc, deff=de["deff"])[["name", "family", "n", "difference", "psi", "clips_needed",
                                                                "detectable", "large_enough", "p_exact_adj"]]
    det = stats.mcnemar_detectable_difference(int(disc["n"]), psi, deff=de["deff"]) if psi > 0 else float("nan")
    return PowerStudy(comparator, disc, de, de_ref, grid, by_system, det)


# ------------------------------------------------------------------------------------------ summary.json
def statistics_summary(line: Lineup, gathered: Any, table: pd.DataFrame, psy: PsychometricStudy, power: PowerStudy,
                       best_baseline: str | None, cfg: dict[str, Any], watch: Stopwatch) -> dict[str, Any]:
    """The content of ``statistics/summary.json``: what was compared, the reference and why, the thresholds."""
    cols = ["system", "axis", "target", "threshold", "flag", "boot_lo", "boot_hi", "described"]
    return {
        "smoke": bool(cfg.get("smoke")), "run_id": cfg["run_id"], "reference": line.reference_name,
        "reference_reason": line.reference_reason, "n_test_clips": gathered.n_test,
        "n_systems": int(len(table)), "sweep_members_complete": [m.name for m in gathered.members_complete],
        "ensembles": line.ensemble_names(), "duplicates_dropped": gathered.n_dropped, "level": float(cfg["ci_level"]),
        "n_boot": int(cfg["bootstrap_reps"]), "bootstrap_seed": int(cfg["seed"]),
        "best_baseline": best_baseline, "power_comparator": power.comparator,
        "thresholds": psy.table[cols].to_dict("records") if len(psy.table) else [],
        "seconds": round(watch.seconds, 1), "timings": {k: round(v, 1) for k, v in watch.laps.items()},
    }
