"""Chapter 08's reading of the seed-design systems: their metrics per clip set, the spread over seeds, the
paired tests, the power to tell 3 points apart, scoring against constrained ``generate``, and the words.

Every function takes what the chapter has (the run's parameters, the seed-design banks, the predictions by clip
set) and returns a table or Markdown text; the chapter writes and shows them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import data, stats
from ..systems import trained_system_name
from ..data import split_rows
from .claims import SEED_CLAIMS, accuracy_pair_tables, clips_to_detect, pair_verdicts, pairwise_mcnemar, scoring_vs_generate
from .design import check_no_shared_sources, seed_bank_config, seed_design_recipe, seed_design_splits

SETS = ("test32", "extended96", "book_test")  # the clip sets every arm is scored on
MASKED_ATTN, MASKED_MLP = trained_system_name("attn", True), trained_system_name("attn_mlp", True)
DELTA = 0.03  # the difference the seed reported (99.0 against 95.8): about 3 points


@dataclass
class SeedDesign:
    """The seed-design bank and its clip sets beside the book's bank and the (optionally subsampled) test split."""

    book_manifest: Path
    book_bank: pd.DataFrame
    seed_manifest: Path
    seed_bank: pd.DataFrame
    splits: dict[str, pd.DataFrame]  # train, test32, extended96
    book_test: pd.DataFrame
    recipe: dict[str, Any]
    seeds: list[int]

    def bank_of(self, which: str) -> pd.DataFrame:
        return self.book_bank if which == "book_test" else self.seed_bank


def prepare(cfg: Mapping[str, Any], book_manifest: str | Path) -> SeedDesign:
    """Build the seed-design bank (``lib.data``, the run's corpus and bank seed), draw its three clip sets, refuse a
    training source that is in the book's test split, and take the book's test rows (a seeded subset of
    ``seed_replication_book_test_max_clips`` when set)."""
    book_bank = data.load_bank(book_manifest)
    seed_manifest = data.build_bank(seed_bank_config(cfg), progress=False)
    seed_bank = data.load_bank(seed_manifest)
    splits = seed_design_splits(seed_bank, seed=int(cfg["bank_seed"]))
    check_no_shared_sources(splits["train"], book_bank[book_bank["split"] == "test"])
    book_test = split_rows(book_bank, "test", cfg["seed_replication_book_test_max_clips"], seed=int(cfg["bank_seed"]))
    return SeedDesign(Path(book_manifest), book_bank, Path(seed_manifest), seed_bank, splits, book_test,
                      seed_design_recipe(cfg), [int(s) for s in cfg["seed_replication_seeds"]])


def design_table(design: SeedDesign) -> pd.DataFrame:
    """One row per clip set: clips, speech clips, sources, durations and SNRs."""
    return pd.DataFrame([{"set": k, "clips": len(v), "speech": int((v["label"] == "speech").sum()),
                          "sources": v["group_id"].nunique(), "durations (ms)": ", ".join(map(str, sorted(v["duration_ms"].unique()))),
                          "SNRs (dB)": ", ".join(f"{s:g}" for s in sorted(v["snr_db"].unique()))}
                         for k, v in {**design.splits, "book test": design.book_test}.items()])


def metric_tables(preds: Mapping[str, pd.DataFrame], design: SeedDesign, level: float, n_boot: int, seed: int) -> dict[str, pd.DataFrame]:
    """``stats.metrics_table`` of every arm and seed on each clip set (Wilson and cluster-bootstrap intervals)."""
    return {k: stats.metrics_table(preds[k], design.bank_of(k), level=level, n_boot=n_boot, seed=seed).assign(set=k)
            for k in SETS}


def seed_spread(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """``stats.seed_summary`` of accuracy and balanced accuracy over seeds, per clip set."""
    spread = pd.concat([stats.seed_summary(t, metrics=("accuracy", "balanced_accuracy")).assign(set=k)
                        for k, t in tables.items()], ignore_index=True)
    return spread[spread["n_seeds"] >= 1]


def spread_text(spread: pd.DataFrame, n_book_test: int) -> str:
    """One line per clip set: how far the masked attn system's accuracy moves over seeds, in clips."""
    acc = spread[spread["metric"] == "accuracy"].set_index(["set", "system"])
    lines = []
    for k, n in (("test32", 32), ("extended96", 96), ("book_test", n_book_test)):
        if (k, MASKED_ATTN) in acc.index:
            r = acc.loc[(k, MASKED_ATTN)]
            lines.append(f"* `{MASKED_ATTN}` on the {'book test split' if k == 'book_test' else k} ({n} clips): accuracy {r['min']:.3f} to "
                         f"{r['max']:.3f} over {int(r['n_seeds'])} seeds (sd {r['sd']:.3f}; one clip is {1 / n:.3f})"
                         + (": identical, as the seed reported, which at this size says little." if r["range"] == 0 else
                            f": a range of {r['range'] / (1 / n):.0f} clip(s)."))
    return "\n".join(lines)


def seed_claim() -> tuple[pd.DataFrame, str]:
    """Every paired table behind the seed's 95/96 (attn) against 92/96 (attn_mlp), and what the best of them gives."""
    claim = accuracy_pair_tables(96, SEED_CLAIMS["attn"]["right"], SEED_CLAIMS["attn_mlp"]["right"])
    text = (f"Even in the most favourable case ({int(claim.iloc[0]['a_only'])} clips only attn got right, none only attn_mlp got right) "
            f"the exact McNemar p is {float(claim['p_exact'].min()):.3g}; at {int(claim.iloc[-1]['discordant'])} discordant clips it is "
            f"{float(claim.iloc[-1]['p_exact']):.3g}. The seed's ranking is not evidence of a difference at any discordance.")
    return claim, text


def comparison_pairs(cfg: Mapping[str, Any]) -> list[tuple[str, str]]:
    """attn against attn_mlp (loss masked), then masked against full-sequence loss for each variant trained both ways."""
    return [(MASKED_ATTN, MASKED_MLP)] + [(trained_system_name(v, True), trained_system_name(v, False))
                                          for v in cfg["seed_replication_fullloss_variants"]]


def pair_tests(preds: pd.DataFrame, pairs: Sequence[tuple[str, str]], bank: pd.DataFrame) -> pd.DataFrame:
    """:func:`pairwise_mcnemar` of every pair, stacked (pairs without predictions left out)."""
    frames = [f for f in (pairwise_mcnemar(preds, list(p), bank) for p in pairs) if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def power_table(tests: pd.DataFrame, pair: tuple[str, str]) -> tuple[float, pd.DataFrame]:
    """The observed discordance of ``pair`` on clips (mean over seeds) and :func:`clips_to_detect` for 3 points at
    it, at the seed's 3 of 96, and at 10%."""
    clip = tests[(tests["unit"] == "clips") & (tests["a"] == pair[0]) & (tests["b"] == pair[1])] if len(tests) else tests
    psi_obs = float(((clip["a_only"] + clip["b_only"]) / clip["n"]).mean()) if len(clip) else float("nan")
    psis = sorted({round(p, 4) for p in (psi_obs, 3 / 96, 0.1) if np.isfinite(p) and p >= DELTA})
    return psi_obs, clips_to_detect(DELTA, psis, accuracy=0.99)


def power_text(psi_obs: float, power: pd.DataFrame) -> str:
    paired = power[power["design"].str.startswith("paired")]
    return (f"Observed discordance between attn and attn_mlp on the 96 clips: {psi_obs:.3f} (mean over seeds). "
            + (f"To detect 3 points, a paired test needs {int(paired['n_clips'].min())} to {int(paired['n_clips'].max())} "
               f"independent clips over the discordances above, and two separate test sets " if len(paired) else "")
            + f"{int(power.iloc[-1]['n_clips'])} clips per system: the seed's 96 are "
            f"{int(power['n_clips'].min()) / 96:.1f} to {int(power['n_clips'].max()) / 96:.1f} times too few.")


def scoring_checks(cfg: Mapping[str, Any], design: SeedDesign) -> pd.DataFrame:
    """One forward pass against constrained ``generate`` (:func:`scoring_vs_generate`) on a seeded subset of the
    book's test split, for the run's fine-tuned system and the first seed's masked attn seed-design system (those
    saved), each under the normalization it was trained with."""
    from ..systems import list_systems, load_system

    main = trained_system_name(cfg["lora_variant"], cfg["loss_masking"])
    run_dir = Path(cfg["run_dir"])
    seed_dir = run_dir / "seed_replication"
    rows = split_rows(design.book_bank, "test", cfg["scoring_check_max_clips"], seed=int(cfg["bank_seed"]))
    checks = []
    for name, folder, saved in ((main, run_dir, main),
                                (f"{MASKED_ATTN} (seed design, seed {design.seeds[0]})", seed_dir, f"{MASKED_ATTN}-seed{design.seeds[0]}")):
        if saved not in list_systems(folder):
            continue
        scorer = load_system(f"{folder}:{saved}")
        audios = data.load_clips(rows, design.book_manifest, normalization=scorer.normalization or cfg["normalization"])
        checks.append({"system": name, **scoring_vs_generate(scorer.model, scorer.processor, audios, rows["label"].tolist(), scorer.prompt)})
    return pd.DataFrame(checks)


def scoring_text(check: pd.DataFrame) -> str:
    return " ".join(
        f"`{r['system']}`: the two agree on {int(r['agree'])} of {int(r['clips'])} clips (largest difference in p(speech) "
        f"{r['max_abs_p_difference']:.2g}); accuracy {r['accuracy_scoring']:.3f} by scoring and {r['accuracy_generate']:.3f} by generate."
        for _, r in check.iterrows()) + (
        " A 50% against 99% gap can only come from reading another position or other tokens (for example the logits after "
        "the answer, or a prompt without the assistant turn), not from the method.")


@dataclass
class Findings:
    """What chapter 08 found, for ``summary.json`` and its closing words."""

    extended: pd.DataFrame  # accuracy mean/min/max over seeds on the 96 clips, per system
    book: pd.DataFrame  # balanced accuracy mean/min/max over seeds on the book's test split, per system
    verdict96: pd.DataFrame  # attn vs attn_mlp on clips, the 96 clips
    verdict_book: pd.DataFrame  # the same on the book's test split


def findings(tables: Mapping[str, pd.DataFrame], verdicts96: pd.DataFrame, verdicts_book: pd.DataFrame) -> Findings:
    def pick(v: pd.DataFrame) -> pd.DataFrame:
        return v[(v["a"] == MASKED_ATTN) & (v["b"] == MASKED_MLP) & (v["unit"] == "clips")] if len(v) else v

    return Findings(tables["extended96"].groupby("system")["accuracy"].agg(["mean", "min", "max"]),
                    tables["book_test"].groupby("system")["balanced_accuracy"].agg(["mean", "min", "max"]),
                    pick(verdicts96), pick(verdicts_book))


def summary(f: Findings, design: SeedDesign, model: str, best_p: float, psi_obs: float, power: pd.DataFrame,
            check: pd.DataFrame, seconds: float) -> dict[str, Any]:
    """``seed_replication/summary.json``."""
    return {"model": model, "seeds": design.seeds, "epochs": design.recipe["epochs"], "train_clips": len(design.splits["train"]),
            "extended96_accuracy": f.extended.to_dict("index"), "book_test_balanced_accuracy": f.book.to_dict("index"),
            "book_test_clips": len(design.book_test), "seed_claim_min_p": best_p, "psi_extended96": psi_obs,
            "clips_needed_3_points": power[["design", "discordance", "n_clips"]].to_dict("records"),
            "attn_vs_attn_mlp_extended96": f.verdict96.to_dict("records"), "attn_vs_attn_mlp_book_test": f.verdict_book.to_dict("records"),
            "scoring_vs_generate": check.to_dict("records"), "seconds": round(seconds, 1)}


def conclusions(f: Findings, design: SeedDesign, model: str, best_p: float, power: pd.DataFrame, smoke: str = "") -> str:
    """The chapter's closing words: what the seed's design shows here, and what a reader may conclude from 96 clips."""
    e, b, a, m = f.extended, f.book, MASKED_ATTN, MASKED_MLP
    lines = [f"**{smoke}What the seed's design shows here** (model: {model}; {len(design.splits['train'])} training clips, "
             f"{design.recipe['epochs']} epoch(s), seeds {', '.join(map(str, design.seeds))}):", ""]
    if a in e.index and m in e.index:
        lines.append(f"1. On the 96 extended clips, attn averages {e.loc[a, 'mean']:.3f} ({e.loc[a, 'min']:.3f} to "
                     f"{e.loc[a, 'max']:.3f} over seeds) and attn_mlp {e.loc[m, 'mean']:.3f} ({e.loc[m, 'min']:.3f} to "
                     f"{e.loc[m, 'max']:.3f}).")
    if len(f.verdict96):
        r = f.verdict96.iloc[0]
        lines.append(f"1. attn was right more often than attn_mlp in {int(r['seeds_a_higher'])} of {int(r['seeds'])} seeds on those clips, "
                     f"attn_mlp in {int(r['seeds_b_higher'])}; Holm-adjusted exact McNemar p < 0.05 in {int(r['significant_a'] + r['significant_b'])} "
                     f"(smallest adjusted p {r['min_p_adj']:.3g}).")
    if len(f.verdict_book):
        r = f.verdict_book.iloc[0]
        lines.append(f"1. On the book's {len(design.book_test)} test clips: balanced accuracy {b.loc[a, 'mean']:.3f} (attn) against "
                     f"{b.loc[m, 'mean']:.3f} (attn_mlp), seed means; attn higher in {int(r['seeds_a_higher'])} of {int(r['seeds'])} seeds, "
                     f"significant (Holm) in {int(r['significant_a'])} for attn and {int(r['significant_b'])} for attn_mlp: the seed's ranking "
                     + ("holds in direction here." if b.loc[a, 'mean'] > b.loc[m, 'mean'] else "does not hold here."))
    lines.append(f"1. The seed's own 95/96 against 92/96 gives an exact McNemar p of at least {best_p:.3g}; detecting 3 points needs "
                 f"{int(power['n_clips'].min())} or more clips. From 96 clips and one seed per arm a reader may conclude what each "
                 "system scored on those clips, within intervals as wide as those above; not that one variant is better, and not "
                 "that seeds do not matter.")
    return "\n".join(lines)


def verdicts(tests: pd.DataFrame) -> pd.DataFrame:
    """:func:`pair_verdicts` of a test table (an empty table when there were no tests)."""
    return pair_verdicts(tests) if len(tests) else pd.DataFrame(columns=["a", "b", "unit"])
