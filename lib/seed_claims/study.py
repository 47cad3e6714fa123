"""Study systems (chapters 02 and 04): the run's model trained under each level normalization and with each
LoRA variant, all with one *study recipe* (the same seeded subset of the train split and the same epochs,
:func:`study_recipe`), each scored under the normalization it was trained with, so that every comparison is
like for like. Their names are formed by ``lib.systems.study_system_name``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from .. import data, parallel, results
from ..systems import study_system_name

FULL_LOSS_COST = 10.0  # a full-sequence-loss training's cost against a masked one's on a CPU (151,649-way logits at
                       # every text position): the scheduling weight of lib.parallel, so the costly arm starts first


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
    from ..train import train_on_bank

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
    from ..evaluate import score_split
    from ..systems import load_system, read_system_yaml

    run_dir = Path(cfg["run_dir"])
    info = read_system_yaml(run_dir / "systems" / system_dir_name)
    tc = info.get("train_config", {})
    bank = data.load_bank(manifest) if bank is None else bank
    scorer = load_system(f"{run_dir}:{system_dir_name}")
    system = re.sub(r"-seed\d+$", "", system_dir_name)
    return score_split(scorer, bank, manifest, {**cfg, "normalization": info["normalization"]}, system, split=split,
                       variant=tc.get("lora_variant", ""), seed=tc.get("seed"))


def adapter_sizes(run_dir: str | Path, names: Iterable[str]) -> pd.DataFrame:
    """Trainable parameters and size on disk of saved LoRA systems, read from their adapters
    (``lib.train.adapter_report``): LoRA weights and whole modules trained beside them apart."""
    from ..train import adapter_report

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
