"""Chapter 06 in words: Markdown printed from the numbers of ``lib.comparisons.analyses``, never typed in.

Every function returns Markdown text for one section; ``smoke`` is the run's model prefix (``book.smoke_label``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import seed_claims, stats
from .analyses import PowerStudy, PsychometricStudy, SeedStudy, row
from ..systems import ENSEMBLE_KINDS, FAMILIES, derived_name, family
from .lineup import Gathered, Lineup, seeds_of


def interval(r: Any, metric: str, kind: str = "boot", digits: int = 3) -> str:
    """``estimate [lo, hi]`` of one metric of a table row."""
    return f"{r[metric]:.{digits}f} [{r[f'{metric}_{kind}_lo']:.{digits}f}, {r[f'{metric}_{kind}_hi']:.{digits}f}]"


def gathered(g: Gathered) -> str:
    """Section 1: what was read, what was dropped."""
    listed, complete = g.members_listed, g.members_complete
    text = (f"The main run and **{len(complete)}** complete sweep member(s)"
            + (f" (of {len(listed)} listed)" if len(listed) != len(complete) else "")
            + f" give {g.n_rows:,} rows; {g.n_dropped:,} exact duplicates were dropped"
            + (f" (they agree: largest difference in `p_speech` {g.max_p_range:.2g}, "
               f"{g.n_differing} clips with differing decisions)" if g.n_dropped else "")
            + f". Left: {len(g.predictions):,} rows, {g.predictions.groupby(['system', 'variant', 'seed']).ngroups} systems, "
            f"on the {g.n_test} test clips of the bank.")
    if g.off_test_rows:
        text += f"\n\nLeft out {g.off_test_rows} rows of clips outside the test split (systems {g.off_test_systems})."
    return text


def ensembles(line: Lineup, run_dir: str | Path) -> str:
    """Section 2: which ensembles were built, over which seeds."""
    if not line.multi_seed:
        return ("No fine-tuned system has two seeds in this run, so there is no ensemble. The seed sweep "
                "(`sweep_seeds`, run by `make book` before this chapter) trains more.")
    return "Ensembles: " + "; ".join(
        f"`{s}` over seeds {', '.join(str(x) for x in seeds_of(line.predictions, s, v))}" for s, v in line.multi_seed
    ) + f", written to `{Path(run_dir) / 'predictions.csv'}`."


def reference(line: Lineup) -> str:
    return f"Reference: **{line.reference_name}**, {line.reference_reason}."


def table_header(smoke: str, level: float, n_boot: int, run_dir: str | Path, balanced: bool) -> str:
    return (f"**{smoke}Test split, {level:.0%} intervals, {n_boot} bootstrap replicates** "
            f"(written to `{Path(run_dir) / 'metrics.csv'}` and `metrics.json`)"
            + ("; the split is balanced, so accuracy equals balanced accuracy and is not repeated" if balanced else ""))


def system_table(line: Lineup, table: pd.DataFrame, n_test: int, smoke: str, is_smoke: bool) -> str:
    """Section 3: the reference, the best of each family, and what clustering does to the intervals."""
    ref = line.reference_name
    ref_row = row(table, ref)
    ratios = table["ba_width_ratio_cluster_vs_clip"]
    ratio = float(np.nanmedian(ratios))
    lines = [f"{smoke}The reference **{ref}** reaches balanced accuracy {interval(ref_row, 'balanced_accuracy')} "
             f"(accuracy {interval(ref_row, 'accuracy')}; speech recall {ref_row['recall_speech']:.3f}, non-speech recall "
             f"{ref_row['recall_nonspeech']:.3f}; AUC {ref_row['auc']:.3f}) on {int(ref_row['n'])} test clips from "
             f"{int(ref_row['n_groups'])} sources."]
    for fam in FAMILIES:
        part = table[(table["family"] == fam) & (table["name"] != ref)]
        if part.empty:
            continue
        top = part.loc[part["balanced_accuracy"].idxmax()]
        lines.append(f"* {fam}{' (besides the reference)' if fam == family(line.reference[0]) else ''} ({len(part)} system{'s' if len(part) > 1 else ''}): highest balanced accuracy "
                     f"**{top['name']}**, {interval(top, 'balanced_accuracy')}"
                     + (f"; lowest {part['balanced_accuracy'].min():.3f}" if len(part) > 1 else "") + ".")
    lines.append(
        f"\nThe {n_test} test clips come from {int(table['n_groups'].max())} sources. Resampling sources instead of single clips "
        f"makes the balanced-accuracy interval {ratio:.2f} times as wide (median over systems; from {np.nanmin(ratios):.2f} to {np.nanmax(ratios):.2f})"
        + (": clips of one source tend to be right or wrong together, and an interval that ignores this is too narrow."
           if ratio > 1.05 else ": here the clips of a source behave almost independently.")
        + " Two reading notes on the table: the bootstrap keeps each class's number of sources fixed, as the bank's design "
        "does, while the Wilson interval for accuracy also counts the class mix as random, so for a system whose two recalls "
        "differ a lot (one answering nearly always the same class) the bootstrap interval is the narrower one; and the "
        "Wilson column for balanced accuracy is a conservative (Bonferroni) combination of the two recalls' intervals.")
    if is_smoke:
        lines.append("\nThe Qwen2-Audio systems here are the tiny model built from random weights and trained briefly: "
                     "their numbers test the pipeline, not the method. The baselines are real detectors on a small bank.")
    return "\n".join(lines)


def tests_header(line: Lineup, smoke: str) -> str:
    return (f"**{smoke}McNemar tests: reference {line.reference_name} against every other system** (difference = reference "
            "minus other; positive: the reference is right more often)")


def _verdicts(mc: pd.DataFrame, unit: str) -> tuple[pd.DataFrame, list[str], list[str]]:
    part = mc[mc["unit"] == unit]
    sig = part[part["p_exact_adj"] < 0.05]
    return part, sig[sig["difference"] > 0]["name"].tolist(), sig[sig["difference"] < 0]["name"].tolist()


def reference_tests(line: Lineup, mc: pd.DataFrame, skipped: list[Any], smoke: str) -> str:
    """Section 4: how many systems the reference beats or trails after Holm, on clips and on sources."""
    lines = []
    for unit, what in (("clip_id", "clips"), ("group_id", "sources")):
        part, better, worse = _verdicts(mc, unit)
        lines.append(
            f"* On **{what}** ({int(part['n'].min()) if unit == 'clip_id' else int(part['n'].max())} {what}): after Holm's adjustment "
            f"over {len(part)} comparisons the reference is significantly better than {len(better)} system(s)"
            + (f" ({', '.join(better[:8])}{', ...' if len(better) > 8 else ''})" if better else "")
            + f" and significantly worse than {len(worse)}" + (f" ({', '.join(worse)})" if worse else "")
            + f"; {len(part) - len(better) - len(worse)} show no evidence of a difference at the 5% level.")
    _, b_clip, w_clip = _verdicts(mc, "clip_id")
    _, b_src, w_src = _verdicts(mc, "group_id")
    flips = sorted(set(b_clip + w_clip) ^ set(b_src + w_src))
    grp = mc[mc["unit"] == "group_id"]
    lines.append(
        f"* Ties within sources: the reference tied in {int(grp['ties_a'].iloc[0]) if len(grp) else 0} of "
        f"{int(grp['n'].iloc[0] + grp['dropped'].iloc[0]) if len(grp) else 0} sources; across the comparisons "
        f"{int(grp['dropped'].sum())} source comparisons stayed undecided and were left out.")
    if flips:
        lines.append(f"* The two units disagree for {len(flips)} system(s) ({', '.join(flips)}): significant on one unit "
                     "and not the other. Sources are the independent units; the clip test counts two clips of one "
                     "source as two pieces of evidence, which they are not fully.")
    if skipped:
        lines.append(f"* Not tested (scored other clips than the reference): {', '.join(line.names[k] for k in skipped)}.")
    return smoke + "\n" + "\n".join(lines)


def study_pairs(tests: pd.DataFrame, smoke: str) -> str:
    """The study pairs of chapters 02 and 04, one line per pair and unit (``seed_claims.pair_verdicts``)."""
    if tests.empty:
        return "No study systems in this run (chapters 02 and 04 train them)."
    verdicts = seed_claims.pair_verdicts(tests)
    lines = [f"* `{r.a}` against `{r.b}` on {r.unit}: mean difference {r.mean_difference:+.3f} over {r.seeds} seed(s); "
             + (f"significant (Holm) in {r.significant_a} seed(s) for the first and {r.significant_b} for the second"
                if r.significant_a + r.significant_b else "no significant difference") + "."
             for r in verdicts.itertuples()]
    return smoke + "\n" + "\n".join(lines)


def seeds(line: Lineup, study: SeedStudy, table: pd.DataFrame, level: float, smoke: str) -> str:
    """Section 5: each multi-seed system's spread against one seed's interval, and each ensemble against its seeds."""
    if study.rows.empty:
        return ("This run has one seed per system: the spread over seeds cannot be estimated. "
                "Set `sweep_seeds` (the cpu profile runs two extra seeds in `make book`).")
    lines = []
    ens_mc = study.ensemble_tests
    for s, v in line.multi_seed:
        sm = study.spread(s, v)
        lines.append(f"\n**{s}** over {int(sm['n_seeds'])} seeds ({sm['seeds']}): balanced accuracy mean {sm['mean']:.3f}, "
                     f"sd {sm['sd']:.3f}, range {sm['min']:.3f} to {sm['max']:.3f} ({100 * sm['range']:.1f} points).")
        own = table["system"].eq(s) & table["variant"].eq(v)
        typical = float(np.median(table.loc[own, "balanced_accuracy_boot_hi"] - table.loc[own, "balanced_accuracy_boot_lo"]))
        lines.append(("Every seed gave the same balanced accuracy, and one seed's bootstrap interval has zero width (the "
                      "system gives every clip of a class the same answer): there is no spread to compare.\n") if typical == 0 else
                     f"The seed-to-seed range is {sm['range'] / typical:.2f} times the width of one seed's {level:.0%} "
                     f"bootstrap interval ({typical:.3f}): "
                     + ("the seed moves the result about as much as the choice of test clips does, so a single-seed "
                        "comparison says little on its own." if sm['range'] / typical > 0.5 else
                        "the seed matters less than the sampling of test clips.") + "\n")
        for kind in ENSEMBLE_KINDS:
            er = row(table, line.names[[k for k in line.keys if k[0] == derived_name(s, kind)][0]])
            part = ens_mc[(ens_mc["ensemble"] == er["name"]) & (ens_mc["unit"] == "clip_id")]
            n_sig_b = int(((part["p_exact_adj"] < 0.05) & (part["difference"] > 0)).sum())
            n_sig_w = int(((part["p_exact_adj"] < 0.05) & (part["difference"] < 0)).sum())
            lines.append(f"* `{er['name']}`: {interval(er, 'balanced_accuracy')}, {_against_seeds(er, sm)}; "
                         + (f"exact McNemar tests (Holm) find no significant difference from any of the {len(part)} seeds on clips."
                            if n_sig_b + n_sig_w == 0 else
                            f"on clips it is significantly better than {n_sig_b} and significantly worse than {n_sig_w} of the "
                            f"{len(part)} seeds (exact McNemar, Holm)."))
    return smoke + "\n".join(lines)


def _against_seeds(er: pd.Series, sm: pd.Series) -> str:
    # compared as printed (3 decimals): a value the range shows as its end is level with it, not above it
    e3, lo3, hi3 = (round(float(v), 3) for v in (er["balanced_accuracy"], sm["min"], sm["max"]))
    return (f"above the single seeds' range ({lo3:.3f} to {hi3:.3f})" if e3 > hi3 else
            f"below the single seeds' range ({lo3:.3f} to {hi3:.3f})" if e3 < lo3 else
            f"level with every single seed ({lo3:.3f})" if lo3 == hi3 else
            f"level with the best single seed (seeds {lo3:.3f} to {hi3:.3f})" if e3 == hi3 else
            f"level with the worst single seed (seeds {lo3:.3f} to {hi3:.3f})" if e3 == lo3 else
            f"within the single seeds' range ({lo3:.3f} to {hi3:.3f})")


def psychometric(psy: PsychometricStudy, best_baseline: str | None, normalization: str, smoke: str) -> str:
    """Section 6: observed performance at the ends of each axis and the threshold, per system."""
    lines = [f"{axis}: {n} level(s) in this bank, no curve" for axis, n in psy.skipped.items()]
    for axis in psy.axes:
        if axis.column not in psy.fits:
            continue
        lv = sorted(psy.joined[axis.column].dropna().unique())
        fmt, unit = axis.fmt, axis.unit
        lines.append(f"\n**{axis.label}**, tested at {', '.join(fmt.format(v) for v in lv)} {unit}; target {axis.target:.0%} balanced accuracy:")
        for name in psy.systems:
            f, r = psy.fits[axis.column][name], psy.thresholds[axis.column][name]
            obs = f.levels.sort_values("x")
            lines.append(f"* {name}: observed {obs['p'].iloc[0]:.3f} at {fmt.format(obs['x'].iloc[0])} {unit} and {obs['p'].iloc[-1]:.3f} at "
                         f"{fmt.format(obs['x'].iloc[-1])} {unit}; threshold {stats.describe_threshold(r, unit, fmt)}"
                         + (f" ({r['share_outside_range']:.0%} of bootstrap replicates put it outside the tested range)"
                            if r["flag"] == "ok" and r["share_outside_range"] > 0 else "")
                         + f"; fitted lapse {f.lapse:.3f}.")
    if best_baseline:
        lines.append(f"\nThe strongest baseline under `{normalization}` normalization is {best_baseline} (chosen on test, see above).")
    return smoke + "\n" + "\n".join(lines)


def calibration(line: Lineup, cal: pd.DataFrame, smoke: str) -> str:
    """Section 7: the reference's calibration, the best and worst calibrated systems, the best ranking."""
    ref = line.reference_name
    c_ref = cal[cal["name"] == ref].iloc[0]
    best_ece, worst_ece, best_auc = cal.loc[cal["ece"].idxmin()], cal.loc[cal["ece"].idxmax()], cal.loc[cal["auc"].idxmax()]
    preds = line.predictions
    return "\n\n".join([
        f"{smoke}The reference {ref} has Brier score {c_ref['brier']:.3f}, ECE {c_ref['ece']:.3f} and AUC {c_ref['auc']:.3f}; "
        f"its mean `p_speech` is {c_ref['mean_p_speech']:.3f} against a speech share of "
        f"{(preds.loc[preds['name'] == ref, 'label'] == 'speech').mean():.3f}.",
        f"Best calibrated: {best_ece['name']} (ECE {best_ece['ece']:.3f}, with AUC {best_ece['auc']:.3f}"
        + ("; a score that says about 0.5 for every clip is calibrated and useless" if best_ece["auc"] < 0.6 else "")
        + f"); worst: {worst_ece['name']} (ECE {worst_ece['ece']:.3f}). "
        f"Best ranking: {best_auc['name']} (AUC {best_auc['auc']:.3f}).",
        "Scores that are not probabilities by construction (WebRTC VAD's share of voiced frames, the vote ensemble's "
        "share of seeds) take few distinct values, so their reliability diagrams have few points and their ROC curves "
        "few steps; their calibration says how the score maps to a probability, not whether the detector is good.",
    ])


def power_header(line: Lineup, power: PowerStudy) -> str:
    if power.comparator is None:
        return "No baseline and no zero-shot system to compare with: no power analysis."
    return (f"**Clips needed (80% power, 5% level), design effect {power.design['deff']:.2f}**; the observed "
            f"discordance between {line.reference_name} and {power.comparator} is {power.discordance['psi']:.3f}")


def power(power: PowerStudy, smoke: str) -> str:
    """Section 8: the design effect, the difference this split detects, and which comparisons it can settle."""
    if power.comparator is None:
        return ""
    disc, de, de_ref, comparator, det = power.discordance, power.design, power.design_reference, power.comparator, power.detectable
    n_now, psi, power_sys = int(disc["n"]), disc["psi"], power.by_system
    enough = int((power_sys["large_enough"] == True).sum())  # noqa: E712 - None marks "no difference seen"
    short = power_sys[power_sys["large_enough"] == False]  # noqa: E712
    n_same = int(power_sys["large_enough"].isna().sum())
    return "\n\n".join([
        f"{smoke}Between the reference and {comparator}: accuracy difference {disc['p10'] - disc['p01']:+.3f}, discordance "
        f"{psi:.3f} ({disc['p10']:.3f} reference-only, {disc['p01']:.3f} {comparator}-only) on {n_now} clips. The per-clip "
        f"difference has intraclass correlation {de['icc']:.2f} within sources (average {de['m0']:.1f} clips per source): "
        f"design effect {de['deff']:.2f}, so the {n_now} clips are worth about {n_now / de['deff']:.0f} independent ones "
        f"(for the reference's own correctness: ICC {de_ref['icc']:.2f}, deff {de_ref['deff']:.2f}).",
        (f"At this discordance the split detects, with 80% power, an accuracy difference of {det:.3f} ({100 * det:.1f} points) "
         "or more; smaller true differences will often be missed." if np.isfinite(det) else
         "At this discordance no difference is detectable with 80% power on this split."),
        f"Of the {len(power_sys)} systems compared with the reference, the split is large enough (80% power) to detect a "
        f"true difference of the size observed for {enough}"
        + (f"; for {len(short)} it is not (a difference that size would need a median of {short['clips_needed'].median():.0f} "
           f"clips, against {n_now} here)" if len(short) else "")
        + (f"; {n_same} made exactly as many errors as the reference" if n_same else "")
        + ". A non-significant McNemar test on an underpowered comparison is absence of evidence, not evidence of equality.",
    ])


def conclusions(line: Lineup, table: pd.DataFrame, mc: pd.DataFrame, seeds_: SeedStudy, psy: PsychometricStudy,
                cal: pd.DataFrame, power_: PowerStudy, best_baseline: str | None, zero_shot: list[str], *, n_test: int,
                level: float, model: str, smoke: str, is_smoke: bool, out_dir: str | Path, run_dir: str | Path,
                figures: str | Path, seconds: float) -> str:
    """The summary: one numbered conclusion per section, each naming the section it comes from."""
    ref = line.reference_name
    r = row(table, ref)
    mc_clip = mc[mc["unit"] == "clip_id"].set_index("name")
    mc_src = mc[mc["unit"] == "group_id"].set_index("name")
    better_or_worse = {True: "better", False: "worse"}
    concl = [f"**{smoke}What this run shows** (model: {model}; {n_test} test clips from {int(r['n_groups'])} sources; "
             f"{level:.0%} intervals):", ""]
    concl.append(f"1. **Headline** (section 3). The reference {ref} reaches balanced accuracy {interval(r, 'balanced_accuracy')} "
                 f"(cluster bootstrap over sources), speech recall {r['recall_speech']:.3f}, non-speech recall {r['recall_nonspeech']:.3f}.")
    for other, what in ((zero_shot[0] if zero_shot and zero_shot[0] != ref else None, "the zero-shot model"),
                        (best_baseline, "the strongest baseline")):
        if other is None or other not in mc_clip.index:
            continue
        c, s_ = mc_clip.loc[other], mc_src.loc[other]
        sig = [u for u, m in (("clips", c), ("sources", s_)) if m["p_exact_adj"] < 0.05]
        concl.append(f"1. **Against {what}** (section 4), {other} at {interval(row(table, other), 'balanced_accuracy')}: only the reference is "
                     f"right on {int(c['a_only'])} clip(s), only {other} on {int(c['b_only'])} "
                     f"(difference {c['difference']:+.3f}; Holm-adjusted exact McNemar p = {c['p_exact_adj']:.3g} on clips, "
                     f"{s_['p_exact_adj']:.3g} on sources): "
                     + (f"the reference is significantly {better_or_worse[c['difference'] > 0]} on " + " and ".join(sig) + "."
                        if sig else "no significant difference on either unit."))
    if len(seeds_.summary):
        for s, v in line.multi_seed:
            sm = seeds_.spread(s, v)
            concl.append(f"1. **Seeds** (section 5). Over {int(sm['n_seeds'])} seeds {s} ranges {sm['min']:.3f} to {sm['max']:.3f} "
                         f"({100 * sm['range']:.1f} points, sd {sm['sd']:.3f})"
                         + (": a single-seed comparison between systems closer than that says little." if sm["range"] > 0 else
                            ": the seeds agree exactly on this split, which says more about the split's size than about stability."))
            ens_rows = [row(table, line.names[k]) for k in line.keys if k[0] in {derived_name(s, kind) for kind in ENSEMBLE_KINDS}]
            if ens_rows:
                top_e = max(ens_rows, key=lambda e: e["balanced_accuracy"])
                concl.append(f"1. **Ensembles** (section 5). The better ensemble, {top_e['name']}, reaches {interval(top_e, 'balanced_accuracy')}, "
                             f"against the seeds' mean {sm['mean']:.3f}.")
    for rec in psy.table.to_dict("records"):
        if rec["system"] == ref:
            concl.append(f"1. **Where it fails** (section 6). The {'duration' if rec['axis'] == 'duration_ms' else 'SNR'} {ref} needs "
                         f"for {rec['target']:.0%} balanced accuracy: {rec['described']}.")
    c_ref = cal[cal["name"] == ref].iloc[0]
    concl.append(f"1. **Calibration** (section 7). {ref}: ECE {c_ref['ece']:.3f}, Brier {c_ref['brier']:.3f}, AUC {c_ref['auc']:.3f}.")
    if np.isfinite(power_.detectable):
        concl.append(f"1. **Power** (section 8). Against {power_.comparator}, this split detects an accuracy difference of about "
                     f"{100 * power_.detectable:.1f} points with 80% power; smaller differences above may be real and unseen.")
    if is_smoke:
        concl.append("\n*Smoke results of the model named above, on a small bank: they show the method and the machinery, "
                     "not how well the approach works.*")
    concl.append(f"\n<small>{len(table)} systems; tables in `{out_dir}`, metrics in `{Path(run_dir) / 'metrics.json'}`, figures `06_*` in "
                 f"`{figures}`; chapter time {seconds:.0f} s.</small>")
    return "\n".join(concl)
