"""The seed's own design (chapter 08): 128 training clips (64/64, durations 200-1000 ms x SNR 0-20 dB,
factorial), its 32-clip test and its 96-clip "extended" test (48/48; 200 and 1000 ms; 0, 5, 10, 20 dB), drawn
from a bank built with the book's own ``lib.data`` (:func:`seed_design_splits`), and every arm trained and
scored on them (:func:`train_and_score_seed_design`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import data, parallel, results
from .study import FULL_LOSS_COST

# The seed's design: training factorial, its 32-clip test, its 96-clip extended test.
SEED_TRAIN_DURATIONS_MS = (200, 400, 600, 800, 1000)
SEED_TRAIN_SNRS_DB = (0, 5, 10, 15, 20)
SEED_TRAIN_CLIPS = 128
SEED_TEST_CLIPS = 32
SEED_EXTENDED_DURATIONS_MS = (200, 1000)
SEED_EXTENDED_SNRS_DB = (0, 5, 10, 20)
SEED_EXTENDED_PER_CELL = 6  # 2 durations x 4 SNRs x 2 classes x 6 = 96
SEED_NORMALIZATION = "peak"

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
    from ..systems import trained_system_name
    from ..systems import load_system
    from ..train import train_system

    root = Path(cfg["run_dir"]) / "seed_replication"
    recipe = seed_design_recipe(cfg)
    norm = recipe["normalization"]
    system = trained_system_name(arm["lora_variant"], arm["loss_masking"])
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
