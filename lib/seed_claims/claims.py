"""The seed's published claims and what its numbers can show: paired tests per seed (:func:`pairwise_mcnemar`),
the possible tables behind 95/96 against 92/96 (:func:`accuracy_pair_tables`), clips needed for 3 points
(:func:`clips_to_detect`), adapter sizes from the architecture (:func:`lora_parameter_table`) and one forward
pass against constrained ``generate`` (:func:`scoring_vs_generate`).
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from .. import stats

# The seed's published figures (its report; quoted, never computed here).
SEED_CLAIMS = {
    "attn": {"right": 95, "n": 96, "params_m": 20.7, "adapter_mb": 84},
    "attn_mlp": {"right": 92, "n": 96, "params_m": 43.9, "adapter_mb": 168},
    "seeds": [42, 123, 456, 789, 2024],
    "seeds_claim": "all five seeds converged to an identical 96.9% on the 32-clip test",
}

# ------------------------------------------------------------------------------------------ paired tests
def pairwise_mcnemar(predictions: pd.DataFrame, systems: Sequence[str], bank: pd.DataFrame | str | Path,
                     seeds: Iterable[int] | None = None, units: Sequence[str | None] = (None, "group_id"),
                     adjust: str = "holm") -> pd.DataFrame:
    """McNemar (exact and mid-p) for every pair of ``systems`` (names in the ``system`` column), per seed, on
    clips and on sources (majority vote per source, ``stats.mcnemar_test``). ``p_exact_adj``: Holm over every
    row of a unit (all pairs and seeds at once: the family of comparisons the chapter makes). A system without
    predictions for a seed is left out of that seed's pairs."""
    df = stats.with_bank(predictions, bank, columns=["group_id"])
    seeds = sorted({int(s) for s in df.loc[df["system"].isin(systems), "seed"]}) if seeds is None else list(seeds)
    rows = []
    for seed in seeds:
        present = [s for s in systems if ((df["system"] == s) & (df["seed"].astype(int) == seed)).any()]
        for a, b in itertools.combinations(present, 2):
            for unit in units:
                ka = stats.system_keys(df[(df["system"] == a) & (df["seed"].astype(int) == seed)])[0]
                kb = stats.system_keys(df[(df["system"] == b) & (df["seed"].astype(int) == seed)])[0]
                r = stats.mcnemar_test(df, ka, kb, collapse=unit)
                rows.append({"seed": seed, "a": a, "b": b, **{k: v for k, v in r.items() if k not in ("system_a", "system_b")}})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["unit"] = out["unit"].map({"clip_id": "clips", "group_id": "sources"}).fillna(out["unit"])
    out["p_exact_adj"] = stats.adjust_within(out, "unit", "p_exact", adjust)
    return out


def pair_verdicts(tests: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """One row per pair and unit: seeds tested, seeds where ``a`` was right more often, mean accuracy difference
    (a minus b), and the seeds with a Holm-adjusted p below ``alpha`` in each direction."""
    rows = []
    for (a, b, unit), part in tests.groupby(["a", "b", "unit"], sort=False):
        rows.append({"a": a, "b": b, "unit": unit, "seeds": len(part), "mean_difference": float(part["difference"].mean()),
                     "seeds_a_higher": int((part["difference"] > 0).sum()), "seeds_b_higher": int((part["difference"] < 0).sum()),
                     "significant_a": int(((part["p_exact_adj"] < alpha) & (part["difference"] > 0)).sum()),
                     "significant_b": int(((part["p_exact_adj"] < alpha) & (part["difference"] < 0)).sum()),
                     "min_p_adj": float(part["p_exact_adj"].min())})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ adapter sizes
# Readings of a LoRA target list, as peft matches them: a plain list matches module names by their last part
# anywhere in the model (the audio tower's q_proj/k_proj/v_proj included; Whisper's output projection is
# out_proj, so o_proj is matched in the language model only); the book restricts targets to the language model.
TARGET_READINGS: dict[str, dict[str, Any]] = {
    "attn, language model only (the book)": {"names": ("q_proj", "k_proj", "v_proj", "o_proj"), "lm_only": True},
    "attn, anywhere (a plain target list)": {"names": ("q_proj", "k_proj", "v_proj", "o_proj"), "lm_only": False},
    "attn_mlp, language model only (the book)": {"names": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), "lm_only": True},
    "attn_mlp, anywhere (a plain target list)": {"names": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), "lm_only": False},
}


def lora_parameter_count(config, names: Sequence[str], r: int = 16, lm_only: bool = True) -> dict[str, int]:
    """LoRA parameters (``r * (in + out)`` per adapted ``nn.Linear``) for targets ``names`` on the architecture
    of ``config``, built on the meta device (no memory). Split by part: language model and audio tower."""
    import torch

    from ..model.build.qwen7b import meta_model

    model = meta_model(config)
    counts = {"language_model": 0, "audio_tower": 0, "other": 0, "modules": 0}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.split(".")[-1] not in names:
            continue
        part = "language_model" if ".language_model." in f".{name}." else "audio_tower" if ".audio_tower." in f".{name}." else "other"
        if lm_only and part != "language_model":
            continue
        counts[part] += r * (module.in_features + module.out_features)
        counts["modules"] += 1
    counts["total"] = counts["language_model"] + counts["audio_tower"] + counts["other"]
    return counts


def lora_parameter_table(config=None, r: int = 16) -> pd.DataFrame:
    """Every reading of :data:`TARGET_READINGS` on ``config`` (default: Qwen2-Audio-7B): parameters, size in
    fp32 and bf16 (MB = 10^6 bytes), and the seed's published figure for that variant beside it."""
    from ..model.build.qwen7b import config_7b

    config = config if config is not None else config_7b()
    rows = []
    for reading, spec in TARGET_READINGS.items():
        c = lora_parameter_count(config, spec["names"], r=r, lm_only=spec["lm_only"])
        variant = reading.split(",")[0]
        rows.append({"targets": reading, "variant": variant, "modules": c["modules"], "params": c["total"],
                     "params_language_model": c["language_model"], "params_audio_tower": c["audio_tower"],
                     "mb_fp32": c["total"] * 4 / 1e6, "mb_bf16": c["total"] * 2 / 1e6,
                     "seed_params_m": SEED_CLAIMS[variant]["params_m"], "seed_mb": SEED_CLAIMS[variant]["adapter_mb"]})
    out = pd.DataFrame(rows)
    out["matches_seed"] = np.isclose(out["params"] / 1e6, out["seed_params_m"], atol=0.05)
    return out


# ------------------------------------------------------------------------------------------ what 96 clips show
def accuracy_pair_tables(n: int, right_a: int, right_b: int) -> pd.DataFrame:
    """Every paired 2x2 table two systems on the same ``n`` clips can have with ``right_a`` and ``right_b``
    correct, with McNemar's exact and mid-p p-values: what the seed's 95/96 against 92/96 can give at any
    discordance (the fewest discordant clips is the most favourable case)."""
    if not (0 <= right_a <= n and 0 <= right_b <= n):
        raise ValueError(f"need 0 <= right_a, right_b <= n; got {right_a}, {right_b}, {n}")
    rows = []
    for both in range(max(0, right_a + right_b - n), min(right_a, right_b) + 1):
        a_only, b_only = right_a - both, right_b - both
        rows.append({"both_right": both, "a_only": a_only, "b_only": b_only, "both_wrong": n - both - a_only - b_only,
                     "discordant": a_only + b_only, "p_exact": stats.mcnemar_exact(a_only, b_only),
                     "p_midp": stats.mcnemar_midp(a_only, b_only)})
    return pd.DataFrame(rows).sort_values("discordant").reset_index(drop=True)


def clips_to_detect(delta: float, discordances: Sequence[float], accuracy: float = 0.99, deff: float = 1.0,
                    alpha: float = 0.05, power: float = 0.8) -> pd.DataFrame:
    """Clips needed to detect an accuracy difference ``delta`` with ``power``: paired (McNemar, Connor 1987) at
    each discordance, times the design effect, and unpaired (two proportions, ``accuracy`` against
    ``accuracy - delta``) for contrast."""
    rows = []
    for psi in discordances:
        if not 0 < abs(delta) <= psi <= 1:
            continue
        n = stats.mcnemar_sample_size(delta, psi, alpha, power)
        rows.append({"design": "paired (McNemar)", "delta": delta, "discordance": psi, "n_independent": n, "deff": deff,
                     "n_clips": int(math.ceil(n * deff - 1e-9))})
    n2 = stats.two_proportion_sample_size(accuracy, accuracy - delta, alpha, power)
    rows.append({"design": f"unpaired (two proportions, {accuracy:.3f} vs {accuracy - delta:.3f})", "delta": delta,
                 "discordance": np.nan, "n_independent": n2, "deff": deff, "n_clips": int(math.ceil(n2 * deff - 1e-9))})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ scoring vs generate
def scoring_vs_generate(model, processor, audios: Sequence[np.ndarray], labels: Sequence[str], prompt: str,
                        batch_size: int = 16) -> dict[str, Any]:
    """One forward pass (:func:`lib.model.score`) against constrained ``generate`` (:func:`lib.model.generate_answers`)
    on the same clips: decisions agreeing, the largest difference in p(speech), and each one's accuracy."""
    from .. import model as M

    s = M.score(model, processor, audios, prompt, batch_size=batch_size)
    answers, raw = M.generate_answers(model, processor, audios, prompt, batch_size=batch_size)
    p_gen = M.softmax2(raw)
    dec_score = np.where(s.logits[:, 0] >= s.logits[:, 1], "A", "B")
    dec_gen = np.asarray(answers)
    y = np.where(np.asarray(labels) == "speech", "A", "B")
    return {"clips": len(audios), "agree": int((dec_score == dec_gen).sum()), "agreement": float(np.mean(dec_score == dec_gen)),
            "max_abs_p_difference": float(np.max(np.abs(np.asarray(s.p_speech, float) - p_gen))) if len(audios) else float("nan"),
            "accuracy_scoring": float(np.mean(dec_score == y)), "accuracy_generate": float(np.mean(dec_gen == y))}
