"""Chapter 07's steps around the selection: the scorers and the optimizer, the best prompts table, the single
evaluation on the test split (predictions written back, metrics, McNemar) and the chapter's words.

Selection (``search.select_prompts``) sees the dev split only; :func:`evaluate_on_test` is the first and only
read of the test split, after every choice was made.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from .. import io, results, stats
from .. import model as M
from ..systems import PROMPT_METHODS, ZERO_SHOT, derived_name, find_finetuned_system
from .clips import ClipSet, load_split
from .opro import TextOptimizer, status_counts
from .scoring import PromptScorer, evaluate_prompt
from .search import Selection
from .settings import OproSettings
from .templates import PromptTemplate


@dataclass
class Models:
    """The scorers (the zero-shot model, and the run's fine-tuned system if chapter 03 saved one) and the optimizer."""

    scorers: list[PromptScorer]
    optimizer: TextOptimizer
    finetuned: tuple[str, Path, dict] | None  # (name, folder, system.yaml) of the fine-tuned system, None if none


def load_models(cfg: Mapping[str, Any], opro: OproSettings) -> Models:
    """The base model as the zero-shot scorer, the fine-tuned system of the run (``prompt_opt_system``, else
    ``qwen2audio-<lora_variant>``, else its only LoRA system; ``lib.systems.find_finetuned_system``) loaded with its
    adapter, and the optimizer LLM (``opro_optimizer_model``, else the audio model's own language model, text only)."""
    base_model, processor = M.load_model(cfg["model_name_or_path"], quantization=cfg["quantization"],
                                         torch_dtype=cfg["torch_dtype"], short_encoder=bool(cfg["short_encoder"]))
    batch = int(cfg["eval_batch_size"])
    scorers = [PromptScorer(ZERO_SHOT, base_model, processor, batch_size=batch, variant="")]
    found = find_finetuned_system(cfg["run_dir"], cfg["lora_variant"], cfg.get("prompt_opt_system"))
    if found is not None:
        name, folder, info = found
        lora = M.load_scorer(folder, info, short_encoder=bool(cfg["short_encoder"]))
        scorers.append(PromptScorer(name, lora.model, lora.processor, batch_size=batch,
                                    variant=str(info.get("train_config", {}).get("lora_variant", cfg["lora_variant"]))))
    kw = dict(temperature=opro.opro_temperature, max_new_tokens=opro.opro_max_new_tokens)
    if cfg.get("opro_optimizer_model"):
        optimizer = TextOptimizer.from_pretrained(cfg["opro_optimizer_model"], torch_dtype=cfg["torch_dtype"], **kw)
    else:
        optimizer = TextOptimizer.from_audio_model(base_model, processor, **kw)
    return Models(scorers, optimizer, found)


def models_text(models: Models, reference: PromptTemplate, run_dir: str | Path) -> str:
    """Which scorers and optimizer run, and what prompt the fine-tuned system was trained with (Markdown)."""
    if models.finetuned is None:
        lines = [f"**No fine-tuned system in this run** (`{Path(run_dir) / 'systems'}` holds no LoRA system: chapter "
                 "03 has not run here). This chapter optimises the zero-shot model only; run chapter 03 in "
                 "this run folder first to optimise the fine-tuned model too."]
    else:
        name, folder, info = models.finetuned
        trained = info.get("prompt", M.DEFAULT_PROMPT)
        lines = [f"fine-tuned system: `{name}` ({folder}), trained with "
                 + ("the hand-written prompt" if trained == reference.text else f"another prompt: `{trained!r}`")]
    lines.append(f"scorers: {', '.join(s.name for s in models.scorers)}; optimizer LLM: {models.optimizer.name}")
    return "\n\n".join(lines)


def write_trajectories(selection: Selection, out_dir: str | Path) -> None:
    """``<method>_<scorer>.csv``: every candidate each method scored on dev."""
    for (scorer_name, method), res in selection.results.items():
        io.write_csv(Path(out_dir) / f"{method}_{scorer_name}.csv", res.trajectory)


def by_method(selection: Selection, method: str) -> dict:
    """The results of one method, by scorer name."""
    return {name: res for (name, m), res in selection.results.items() if m == method}


def best_table(selection: Selection, reference: PromptTemplate) -> pd.DataFrame:
    """One row per (scorer, method): candidates scored, the best prompt, its dev score against the hand-written one's."""
    rows = []
    for (name, method), res in selection.results.items():
        rows.append({"scorer": name, "method": method, "candidates_scored": int(res.trajectory["dev_balanced_accuracy"].notna().sum()),
                     "best_prompt": res.best.text, "speech_letter": res.best.speech_letter, "dev_balanced_accuracy": res.best_dev,
                     "hand_written_dev": res.reference_dev, "dev_gain": res.best_dev - res.reference_dev,
                     "is_hand_written": res.best == reference})
    return pd.DataFrame(rows)


@dataclass
class TestEvaluation:
    """The single evaluation on the test split: every system's predictions, metrics and McNemar tests."""

    test: ClipSet
    predictions: pd.DataFrame  # hand-written (reference) and optimised systems
    table: pd.DataFrame  # stats.metrics_table
    mcnemar: pd.DataFrame  # each optimised system against its scorer's hand-written prompt


def evaluate_on_test(cfg: Mapping[str, Any], bank: pd.DataFrame, scorers: Sequence[PromptScorer], selection: Selection,
                     reference: PromptTemplate, out_dir: str | Path) -> TestEvaluation:
    """Load the test split (first and only read), score each scorer under the hand-written prompt and each method's
    best, write the optimised systems (``<scorer>+opro``, ``<scorer>+template``) to the run's predictions (the
    reference ones to ``reference_predictions.csv``), and test each against its scorer's hand-written prompt
    (McNemar on clips and on groups, Holm)."""
    out_dir, seed = Path(out_dir), int(cfg["seed"])
    test = load_split(bank, "test", cfg["normalization"])
    frames, refs, tests = [], [], []
    for scorer in scorers:
        refs.append(evaluate_prompt(scorer, test, reference, system=scorer.name, run_id=cfg["run_id"],
                                    variant=scorer.variant, seed=seed))
        for method in PROMPT_METHODS:
            frames.append(evaluate_prompt(scorer, test, selection.results[(scorer.name, method)].best,
                                          system=derived_name(scorer.name, method), run_id=cfg["run_id"],
                                          variant=scorer.variant, seed=seed))
    optimised, reference_preds = pd.concat(frames, ignore_index=True), pd.concat(refs, ignore_index=True)
    results.write_predictions(cfg["run_dir"], optimised)
    io.write_csv(out_dir / "reference_predictions.csv", reference_preds)
    preds = pd.concat([reference_preds, optimised], ignore_index=True)
    table = stats.metrics_table(preds, bank, level=float(cfg["ci_level"]), n_boot=int(cfg["bootstrap_reps"]), seed=seed)
    io.write_csv(out_dir / "test_metrics.csv", table)
    for scorer in scorers:
        others = [(derived_name(scorer.name, m), scorer.variant, seed) for m in PROMPT_METHODS]
        part = preds[preds["system"].isin([scorer.name] + [o[0] for o in others])]
        tests.append(stats.mcnemar_table(part, (scorer.name, scorer.variant, seed), bank, collapse=(None, "group_id"), others=others))
    mcnemar = pd.concat(tests, ignore_index=True)
    io.write_csv(out_dir / "mcnemar.csv", mcnemar)
    return TestEvaluation(test, preds, table, mcnemar)


def _ba(table: pd.DataFrame, system: str) -> str:
    r = table[table["system"] == system].iloc[0]
    return f"{100 * r['balanced_accuracy']:.1f}% [{100 * r['balanced_accuracy_boot_lo']:.1f}, {100 * r['balanced_accuracy_boot_hi']:.1f}]"


def _verdict(m: pd.Series) -> str:
    if m["p_exact_adj"] >= 0.05:
        return "no evidence of a difference"
    return "favours " + ("the optimised prompt" if m["difference"] < 0 else "the hand-written prompt")


def conclusions(scorers: Sequence[PromptScorer], selection: Selection, reference: PromptTemplate, result: TestEvaluation,
                smoke: str = "") -> str:
    """The chapter's words: for each scorer and method, what was searched and chosen on dev, the test score against
    the hand-written prompt's, and McNemar on clips and on groups (and why the two units can disagree)."""
    table, mcnemar, n_dev = result.table, result.mcnemar, len(selection.dev_clip_ids)
    lines = []
    if smoke:
        lines.append(f"*{smoke.strip()}* The optimizer here is the tiny model's language model with random weights, so its "
                     "proposals are near-random text; the chapter shows that the machinery runs end to end, not that OPRO "
                     "helps. Read the numbers as a test of the pipeline.")
    for scorer in scorers:
        for method, label in (("opro", "OPRO"), ("template", "The template search")):
            res = selection.results[(scorer.name, method)]
            t = res.trajectory
            sysname = derived_name(scorer.name, method)
            tests_ = {u: mcnemar[(mcnemar["system_b"].str.startswith(sysname)) & (mcnemar["unit"] == u)].iloc[0]
                      for u in ("clip_id", "group_id")}
            if method == "opro":
                c = status_counts(t)
                n_steps = int(t['step'].max())
                what = (f"{label} ran {n_steps} step{'s' if n_steps != 1 else ''} and scored {c['scored']} new instructions "
                        f"({c['rejected']} proposals rejected as unusable, {c['duplicate']} duplicates)")
            else:
                what = f"{label} scored {len(t)} templates"
            chosen = "kept the hand-written prompt" if res.best == reference else f"chose `{res.best.text.replace(chr(10), ' / ')}`"
            r_opt = table[table["system"] == sysname].iloc[0]
            r_ref = table[table["system"] == scorer.name].iloc[0]
            test_gain = r_opt["balanced_accuracy"] - r_ref["balanced_accuracy"]
            mc, mg = tests_["clip_id"], tests_["group_id"]
            lines.append(
                f"**{scorer.name}.** {what} on {n_dev} dev clips and {chosen}: dev balanced accuracy "
                f"{100 * res.best_dev:.1f}% vs {100 * res.reference_dev:.1f}% for the hand-written prompt "
                f"({100 * (res.best_dev - res.reference_dev):+.1f} points on dev). On the test split it reaches {_ba(table, sysname)} "
                f"against {_ba(table, scorer.name)} ({100 * test_gain:+.1f} points; 95% cluster-bootstrap intervals). McNemar on "
                f"{int(mc['n'])} clips: {int(mc['b_only'])} clips only the optimised prompt gets right, {int(mc['a_only'])} only "
                f"the hand-written one, exact p = {mc['p_exact']:.3g} (Holm {mc['p_exact_adj']:.3g}): {_verdict(mc)}. On "
                f"{int(mg['n'])} groups collapsed by majority vote (ties broken by the mean probability of the true class): {int(mg['b_only'])} vs "
                f"{int(mg['a_only'])}, exact p = {mg['p_exact']:.3g} (Holm {mg['p_exact_adj']:.3g}): {_verdict(mg)}."
                + (" The two units disagree: a group counts as right only when most of its clips are right (a tie goes by "
                   "the mean probability of the true class), so a prompt that makes the model answer one class for "
                   "everything keeps every group of that class, while scattered errors can lose small groups. Groups are "
                   "the independent units; the clip test ignores that clips of a group are alike." if _verdict(mc) != _verdict(mg) else ""))
    if len(scorers) == 1:
        lines.append("The fine-tuned model was not optimised: this run folder holds no fine-tuned system (run chapter 03 first).")
    lines.append(f"Nothing on the test split chose anything: every choice above was made on the dev split "
                 f"({n_dev} clips) before the test split ({len(result.test)} clips) was loaded.")
    return "\n\n".join(lines)


def summary(cfg: Mapping[str, Any], models: Models, opro: OproSettings, reference: PromptTemplate, selection: Selection,
            best: pd.DataFrame, result: TestEvaluation, bank: pd.DataFrame, selection_seconds: float) -> dict[str, Any]:
    """``prompt_opt/summary.json``."""
    smoke = bool(cfg.get("smoke"))
    return {"smoke": smoke, "run_id": cfg["run_id"], "dev_clips": len(selection.dev_clip_ids), "test_clips": len(result.test),
            "optimizer": models.optimizer.name, "opro": vars(opro), "reference_prompt": reference.text,
            "best_prompts": best.to_dict("records"),
            "test": stats.metrics_json(result.predictions, bank, level=float(cfg["ci_level"]), n_boot=int(cfg["bootstrap_reps"]),
                                       seed=int(cfg["seed"]), smoke=smoke, table=result.table),
            "mcnemar": result.mcnemar.to_dict("records"), "selection_seconds": round(selection_seconds, 1)}
