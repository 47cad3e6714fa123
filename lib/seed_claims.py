"""The seed project's claims, tested with the book's own code (issue 14).

The seed (OPRO-Qwen v1.0: Qwen2-Audio-7B + attention-only QLoRA) reported, from 96 test clips and one
training seed per arm: peak normalization 62.5% -> 90.6% ("RMS would destroy SNR discriminative power"),
loss masking +28 points, attention-only LoRA 99.0% (95/96) over attention+MLP 95.8% (92/96) at half the
size (20.7 M / 84 MB against 43.9 M / 168 MB), five seeds "identical at 96.9%" on 32 clips, and "logit
scoring gives 50%, generate 99%". This module holds what the chapters need to test those claims:

* **Study systems** (chapters 02 and 04): the run's model trained under each level normalization
  (``none``, ``peak``, ``rms``) and with each LoRA variant, all with one *study recipe* (the same seeded
  subset of the train split and the same epochs, :func:`study_recipe`), each scored under the
  normalization it was trained with, so that every comparison is like for like.
* **Pairwise paired tests** (:func:`pairwise_mcnemar`): McNemar on clips and on sources, Holm within unit,
  per seed.
* **Adapter sizes from the architecture** (:func:`lora_parameter_table`): LoRA parameters counted on the
  meta device for each reading of a target list, to find which modules the seed's numbers imply.
* **The seed's own design** (chapter 08: :func:`seed_design_splits`): 128 training clips (64/64, durations
  200-1000 ms x SNR 0-20 dB, factorial), its 32-clip test and its 96-clip "extended" test (48/48; 200 and
  1000 ms; 0, 5, 10, 20 dB), drawn from a bank built with the book's own ``lib.data``.
* **What 96 clips can show** (:func:`accuracy_pair_tables`, :func:`clips_to_detect`).
"""
from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import data, parallel, results, stats

NORMALIZATIONS = ("none", "peak", "rms")
STUDY_SUFFIX = "-study"

# The seed's published figures (its report; quoted, never computed here).
SEED_CLAIMS = {
    "attn": {"right": 95, "n": 96, "params_m": 20.7, "adapter_mb": 84},
    "attn_mlp": {"right": 92, "n": 96, "params_m": 43.9, "adapter_mb": 168},
    "seeds": [42, 123, 456, 789, 2024],
    "seeds_claim": "all five seeds converged to an identical 96.9% on the 32-clip test",
}
# The seed's design: training factorial, its 32-clip test, its 96-clip extended test.
SEED_TRAIN_DURATIONS_MS = (200, 400, 600, 800, 1000)
SEED_TRAIN_SNRS_DB = (0, 5, 10, 15, 20)
SEED_TRAIN_CLIPS = 128
SEED_TEST_CLIPS = 32
SEED_EXTENDED_DURATIONS_MS = (200, 1000)
SEED_EXTENDED_SNRS_DB = (0, 5, 10, 20)
SEED_EXTENDED_PER_CELL = 6  # 2 durations x 4 SNRs x 2 classes x 6 = 96
SEED_NORMALIZATION = "peak"


# ---------------------------------------------------------------------------------------------- study systems
FULL_LOSS_COST = 10.0  # a full-sequence-loss training's cost against a masked one's on a CPU (151,649-way logits at
                       # every text position): the scheduling weight of lib.parallel, so the costly arm starts first


def study_system_name(lora_variant: str, normalization: str, loss_masking: bool = True) -> str:
    """``qwen2audio-<variant>-<normalization>-study``: a system trained with the study recipe (``-fullloss``
    before ``-study`` when the loss covers the whole sequence). No ``+`` (chapter 06 reads ``+`` as a
    prompt-optimised or ensemble system)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization {normalization!r} unknown; valid: {', '.join(NORMALIZATIONS)}")
    return f"qwen2audio-{lora_variant}-{normalization}" + ("" if loss_masking else "-fullloss") + STUDY_SUFFIX


def is_study_system(system: str) -> bool:
    """A study system's name (or its folder's: ``-seed<k>`` after the name for an extra seed)."""
    name = re.sub(r"-seed\d+$", "", str(system))
    return name.startswith("qwen2audio-") and name.endswith(STUDY_SUFFIX)


def study_recipe(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The study recipe: ``max_train_clips`` and ``epochs`` of every study system (``study_max_train_clips`` /
    ``study_epochs``; null = the run's own), and a sentence that states the reduction against the main run."""
    main_clips, main_epochs = cfg.get("max_train_clips"), int(cfg["epochs"])
    clips = cfg.get("study_max_train_clips") if cfg.get("study_max_train_clips") is not None else main_clips
    epochs = int(cfg["study_epochs"]) if cfg.get("study_epochs") is not None else main_epochs
    if clips is not None and main_clips is not None:
        clips = min(int(clips), int(main_clips))
    parts = []
    if clips is not None and clips != main_clips:
        parts.append(f"a seeded subset of {clips} train clips (the main run: {main_clips or 'the whole train split'})")
    if epochs != main_epochs:
        parts.append(f"{epochs} epoch(s) (the main run: {main_epochs})")
    text = ("the main run's recipe (no reduction)" if not parts else
            "a reduced recipe, " + " and ".join(parts) + ", the same for every study system so that comparisons are fair")
    return {"max_train_clips": None if clips is None else int(clips), "epochs": epochs, "reduced": bool(parts), "text": text}


def study_seeds(cfg: Mapping[str, Any]) -> list[int]:
    """The run's seed first, then ``study_seeds`` (extra training seeds of the study systems)."""
    seeds = [int(cfg["seed"])] + [int(s) for s in (cfg.get("study_seeds") or [])]
    return list(dict.fromkeys(seeds))


def train_study_system(cfg: Mapping[str, Any], manifest: str | Path, lora_variant: str, normalization: str,
                       seed: int | None = None, loss_masking: bool = True, progress: bool = False) -> dict[str, Any]:
    """Train one study system (the study recipe; ``normalization`` applied at load time to train and dev clips,
    and recorded in its system.yaml so that it is scored as it was trained). Resumes from its checkpoints."""
    from .train import train_on_bank

    recipe = study_recipe(cfg)
    seed = int(cfg["seed"]) if seed is None else int(seed)
    name = study_system_name(lora_variant, normalization, loss_masking)
    if seed != int(cfg["seed"]):
        name = f"{name}-seed{seed}"
    run_cfg = {**cfg, "normalization": normalization, "max_train_clips": recipe["max_train_clips"],
               "epochs": recipe["epochs"], "seed": seed}
    return train_on_bank(run_cfg, manifest, name=name, progress=progress, lora_variant=lora_variant,
                            loss_masking=loss_masking)


def score_study_system(cfg: Mapping[str, Any], manifest: str | Path, system_dir_name: str, bank: pd.DataFrame | None = None,
                       split: str = "test") -> pd.DataFrame:
    """Score a saved study system on ``split`` under the normalization it was trained with; predictions named
    by the study name (the ``-seed<k>`` folder suffix becomes the ``seed`` column)."""
    from .evaluate import score_split
    from .systems import load_system, read_system_yaml

    run_dir = Path(cfg["run_dir"])
    info = read_system_yaml(run_dir / "systems" / system_dir_name)
    tc = info.get("train_config", {})
    bank = data.load_bank(manifest) if bank is None else bank
    scorer = load_system(f"{run_dir}:{system_dir_name}")
    system = re.sub(r"-seed\d+$", "", system_dir_name)
    return score_split(scorer, bank, manifest, {**cfg, "normalization": info["normalization"]}, system, split=split,
                       variant=tc.get("lora_variant", ""), seed=tc.get("seed"))


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

    from .model.build.qwen7b import meta_model

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
    from .model.build.qwen7b import config_7b

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


# ------------------------------------------------------------------------------------------ the seed's design
def seed_bank_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The run's configuration with the seed's durations and SNRs: a factorial bank built by ``lib.data`` from
    the same corpus, bank seed, sources and split fractions as the run's bank (so its source groups fall in the
    same splits: the seed-design systems never train on a source of the book's test split). Enough clips per
    cell that the test split holds the extended test's six clips per cell (``seed_replication_clips_per_cell``)."""
    return {**cfg, "design": "factorial", "durations_ms": list(SEED_TRAIN_DURATIONS_MS), "snrs_db": list(SEED_TRAIN_SNRS_DB),
            "clips_per_cell": int(cfg["seed_replication_clips_per_cell"])}


def _stratified(rows: pd.DataFrame, n: int, rng: np.random.Generator, cells: Sequence[str]) -> pd.DataFrame:
    """``n`` rows, half per class, spread as evenly as possible over ``cells`` (seeded): cells take turns in a
    seeded order, each giving one clip per turn while it has any."""
    picked = []
    for label in results.LABELS:
        part = rows[rows["label"] == label]
        groups = [g.sample(frac=1, random_state=int(rng.integers(2**31))) for _, g in part.groupby(list(cells), sort=True)]
        order = rng.permutation(len(groups))
        want, taken, depth = n // 2, [], 0
        while len(taken) < want:
            added = False
            for i in order:
                if depth < len(groups[i]) and len(taken) < want:
                    taken.append(groups[i].iloc[depth])
                    added = True
            if not added:
                raise ValueError(f"the seed-design bank has only {len(taken)} {label} clips where {want} are needed: "
                                 "raise seed_replication_clips_per_cell")
            depth += 1
        picked.append(pd.DataFrame(taken))
    return pd.concat(picked).sort_index()


def seed_design_splits(bank: pd.DataFrame, seed: int = 0) -> dict[str, pd.DataFrame]:
    """The seed's three clip sets from a seed-design bank (:func:`seed_bank_config`), drawn with ``seed``:

    * ``train``: 128 clips of the train split, 64 per class, spread over the 25 duration x SNR cells;
    * ``extended96``: the test split's clips at 200 and 1000 ms and 0, 5, 10, 20 dB, six per (duration, SNR,
      class) cell: 96 clips, 48 per class;
    * ``test32``: 32 other test clips, 16 per class, spread over the cells.
    Raises when the bank cannot give them (not enough clips per cell)."""
    rng = np.random.default_rng([int(seed), 14])
    train = _stratified(bank[bank["split"] == "train"], SEED_TRAIN_CLIPS, rng, ("duration_ms", "snr_db"))
    test = bank[bank["split"] == "test"]
    ext_rows = test[test["duration_ms"].isin(SEED_EXTENDED_DURATIONS_MS) & test["snr_db"].isin(SEED_EXTENDED_SNRS_DB)]
    ext = []
    for key, part in ext_rows.groupby(["duration_ms", "snr_db", "label"], sort=True):
        if len(part) < SEED_EXTENDED_PER_CELL:
            raise ValueError(f"the seed-design bank's test split has {len(part)} clips in cell {key}, where the extended "
                             f"test needs {SEED_EXTENDED_PER_CELL}: raise seed_replication_clips_per_cell")
        ext.append(part.sample(SEED_EXTENDED_PER_CELL, random_state=int(rng.integers(2**31))))
    extended = pd.concat(ext).sort_index()
    if len(extended) != 2 * len(SEED_EXTENDED_DURATIONS_MS) * len(SEED_EXTENDED_SNRS_DB) * SEED_EXTENDED_PER_CELL:
        raise ValueError("the seed-design bank lacks some duration x SNR cells of the extended test")
    test32 = _stratified(test.drop(extended.index), SEED_TEST_CLIPS, rng, ("duration_ms", "snr_db"))
    return {"train": train, "test32": test32, "extended96": extended}


def check_no_shared_sources(train: pd.DataFrame, other_test: pd.DataFrame) -> None:
    """Refuse training clips that share a source group with another bank's test clips (a leak)."""
    shared = sorted(set(train["group_id"]) & set(other_test["group_id"]))
    if shared:
        raise ValueError(f"{len(shared)} source group(s) of the seed-design training clips are in the book's test split "
                         f"(e.g. {shared[:3]}): the two banks must share sources, bank seed and split_fractions")


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
    from . import model as M

    s = M.score(model, processor, audios, prompt, batch_size=batch_size)
    answers, raw = M.generate_answers(model, processor, audios, prompt, batch_size=batch_size)
    p_gen = M.softmax2(raw)
    dec_score = np.where(s.logits[:, 0] >= s.logits[:, 1], "A", "B")
    dec_gen = np.asarray(answers)
    y = np.where(np.asarray(labels) == "speech", "A", "B")
    return {"clips": len(audios), "agree": int((dec_score == dec_gen).sum()), "agreement": float(np.mean(dec_score == dec_gen)),
            "max_abs_p_difference": float(np.max(np.abs(np.asarray(s.p_speech, float) - p_gen))) if len(audios) else float("nan"),
            "accuracy_scoring": float(np.mean(dec_score == y)), "accuracy_generate": float(np.mean(dec_gen == y))}


# ------------------------------------------------------------------------------------------ chapter 08's runs
def seed_design_arms(cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The (seed, LoRA variant, loss masking) arms chapter 08 trains: ``seed_replication_seeds`` x
    ``seed_replication_variants`` with the loss masked, plus the full-sequence loss for the variants in
    ``seed_replication_fullloss_variants`` and the seeds in ``seed_replication_fullloss_seeds`` (the expensive arm
    on a CPU: 151,649-way logits at every text position)."""
    arms = []
    for seed in cfg["seed_replication_seeds"]:
        for variant in cfg["seed_replication_variants"]:
            arms.append({"seed": int(seed), "lora_variant": variant, "loss_masking": True})
        if int(seed) in {int(s) for s in cfg["seed_replication_fullloss_seeds"]}:
            for variant in cfg["seed_replication_fullloss_variants"]:
                arms.append({"seed": int(seed), "lora_variant": variant, "loss_masking": False})
    return arms


def seed_design_recipe(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Training parameters of the seed-design systems: the run's recipe with ``seed_replication_epochs`` (null:
    the run's epochs) and the seed's peak normalization."""
    epochs = cfg.get("seed_replication_epochs")
    return {"epochs": int(cfg["epochs"] if epochs is None else epochs), "normalization": SEED_NORMALIZATION}


def train_and_score_seed_design(cfg: Mapping[str, Any], seed_manifest: str | Path, splits: Mapping[str, pd.DataFrame],
                                book_manifest: str | Path, book_test: pd.DataFrame, progress: bool = False,
                                log=print) -> dict[str, pd.DataFrame]:
    """Train every arm of :func:`seed_design_arms` on the 128 seed-design clips (peak normalization, no dev split:
    the seed had none), into ``<run>/seed_replication/`` (its own systems and training folders, resumable), and
    score each on the 32-clip test, the 96-clip extended test and ``book_test`` (rows of the book's bank), each
    under peak normalization. Predictions go to ``seed_replication/<set>/predictions.csv`` (one folder per clip
    set, so that each file holds one set of clips) and are returned by set."""
    sets = {"test32": (splits["test32"], str(seed_manifest)), "extended96": (splits["extended96"], str(seed_manifest)),
            "book_test": (book_test, str(book_manifest))}
    arms = seed_design_arms(cfg)
    # each arm trains and scores in its own job, side by side on cpu_workers processes (lib.parallel)
    jobs = [parallel.Job(_train_and_score_seed_arm, (dict(cfg), str(seed_manifest), splits["train"], sets, arm),
                         name=f"{arm['lora_variant']} seed {arm['seed']}" + ("" if arm["loss_masking"] else " full loss"),
                         cost=1.0 if arm["loss_masking"] else FULL_LOSS_COST) for arm in arms]
    done = parallel.run_jobs(jobs, parallel.worker_count(cfg, len(jobs)))
    for arm, (folder, seconds, _) in zip(arms, done):
        log(f"{folder}: trained in {seconds:.0f} s")
    out = {}
    for k in sets:
        out[k] = pd.concat([frames[k] for _, _, frames in done], ignore_index=True)
        results.write_predictions(Path(cfg["run_dir"]) / "seed_replication" / k, out[k])
    return out


def _train_and_score_seed_arm(cfg: Mapping[str, Any], seed_manifest: str, train: pd.DataFrame,
                              sets: Mapping[str, tuple[pd.DataFrame, str]], arm: Mapping[str, Any]
                              ) -> tuple[str, float, dict[str, pd.DataFrame]]:
    """One arm of :func:`train_and_score_seed_design`: its folder, training seconds and predictions by clip set."""
    from .evaluate import system_name
    from .systems import load_system
    from .train import train_system

    root = Path(cfg["run_dir"]) / "seed_replication"
    recipe = seed_design_recipe(cfg)
    norm = recipe["normalization"]
    system = system_name(arm["lora_variant"], arm["loss_masking"])
    folder = f"{system}-seed{arm['seed']}"
    run_cfg = {**cfg, "normalization": norm, "seed": arm["seed"], "epochs": recipe["epochs"], "run_dir": str(root)}
    summary = train_system(run_cfg, root, folder, data.load_clips(train, seed_manifest, normalization=norm),
                           train["label"].tolist(), train_ids=train["clip_id"].tolist(), progress=False,
                           lora_variant=arm["lora_variant"], loss_masking=arm["loss_masking"])
    seconds = float(summary["train_wall_s"])
    del summary
    scorer = load_system(f"{root}:{folder}")
    frames = {}
    for k, (rows, manifest) in sets.items():
        p = np.asarray(scorer.score(data.load_clips(rows, manifest, normalization=norm)), dtype=float)
        frames[k] = results.predictions_frame(
            run_id=cfg["run_id"], system=system, variant=arm["lora_variant"], seed=arm["seed"],
            clip_ids=rows["clip_id"].tolist(), labels=rows["label"].tolist(), p_speech=p, model=scorer.model_label)
    return folder, seconds, frames


def adapter_sizes(run_dir: str | Path, names: Iterable[str]) -> pd.DataFrame:
    """Trainable parameters and size on disk of saved LoRA systems, read from their adapters
    (``lib.train.adapter_report``): LoRA weights and whole modules trained beside them apart."""
    from .train import adapter_report

    rows = []
    for name in names:
        rep = adapter_report(Path(run_dir) / "systems" / name / "adapter")
        rows.append({"system": name, "lora_params": rep["lora_params"], "extra_trainable_params": rep["extra_trainable_params"],
                     "adapter_params": rep["adapter_params"], "adapter_mb": rep["adapter_bytes"] / 1e6})
    return pd.DataFrame(rows)


def train_study_systems(cfg: Mapping[str, Any], manifest: str | Path, arms: Sequence[tuple[str, str, bool]],
                        seed: int | None = None) -> list[dict[str, Any]]:
    """Train (or resume) the study systems ``arms`` = [(LoRA variant, normalization, loss masking), ...], side by side
    on ``cpu_workers`` processes (:mod:`lib.parallel`); their summaries (name, system_dir, times, dev metrics), in order."""
    arms = list(dict.fromkeys((str(v), str(n), bool(m)) for v, n, m in arms))
    jobs = [parallel.Job(_train_study_summary, (dict(cfg), str(manifest), v, n), {"seed": seed, "loss_masking": m},
                         name=study_system_name(v, n, m), cost=1.0 if m else FULL_LOSS_COST) for v, n, m in arms]
    return parallel.run_jobs(jobs, parallel.worker_count(cfg, len(jobs)))


def _train_study_summary(cfg: Mapping[str, Any], manifest: str, lora_variant: str, normalization: str,
                         seed: int | None = None, loss_masking: bool = True) -> dict[str, Any]:
    res = train_study_system(cfg, manifest, lora_variant, normalization, seed=seed, loss_masking=loss_masking)
    return {k: v for k, v in res.items() if k not in ("model", "processor", "history", "dev")}  # what a process can send


def _train_and_score_study(cfg: Mapping[str, Any], manifest: str, lora_variant: str, normalization: str,
                           seed: int) -> pd.DataFrame:
    res = train_study_system(cfg, manifest, lora_variant, normalization, seed=seed)
    name = Path(res["system_dir"]).name
    del res
    return score_study_system(cfg, manifest, name)


def run_study(cfg: Mapping[str, Any], manifest: str | Path, arms: Sequence[tuple[str, str]], progress: bool = False) -> pd.DataFrame:
    """Train (or resume) and score the study systems ``arms`` = [(LoRA variant, normalization), ...] for every seed
    of :func:`study_seeds`, on the test split, each under its own normalization; write them to the run's
    predictions.csv and return them. The systems train and score side by side on ``cpu_workers`` processes."""
    jobs = [parallel.Job(_train_and_score_study, (dict(cfg), str(manifest), variant, norm, seed),
                         name=study_system_name(variant, norm)) for seed in study_seeds(cfg) for variant, norm in arms]
    frames = parallel.run_jobs(jobs, parallel.worker_count(cfg, len(jobs)))
    preds = pd.concat(frames, ignore_index=True)
    results.write_predictions(cfg["run_dir"], preds)
    return preds
