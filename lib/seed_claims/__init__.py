"""The seed project's claims, tested with the book's own code (issue 14).

The seed (OPRO-Qwen v1.0: Qwen2-Audio-7B + attention-only QLoRA) reported, from 96 test clips and one
training seed per arm: peak normalization 62.5% -> 90.6% ("RMS would destroy SNR discriminative power"),
loss masking +28 points, attention-only LoRA 99.0% (95/96) over attention+MLP 95.8% (92/96) at half the
size (20.7 M / 84 MB against 43.9 M / 168 MB), five seeds "identical at 96.9%" on 32 clips, and "logit
scoring gives 50%, generate 99%". This package holds what the chapters need to
test those claims, one module per idea:

* ``study`` — **study systems** (chapters 02 and 04): the run's model trained under each level normalization
  (``none``, ``peak``, ``rms``) and with each LoRA variant, all with one *study recipe* (the same seeded
  subset of the train split and the same epochs, :func:`study_recipe`), each scored under the
  normalization it was trained with, so that every comparison is like for like.
* ``claims`` — the seed's figures (``SEED_CLAIMS``); **pairwise paired tests** (:func:`pairwise_mcnemar`):
  McNemar on clips and on sources, Holm within unit, per seed; **adapter sizes from the architecture** (:func:`lora_parameter_table`): LoRA parameters counted on the
  meta device for each reading of a target list, to find which modules the seed's numbers imply.
* ``design`` — **the seed's own design** (chapter 08: :func:`seed_design_splits`): 128 training clips (64/64, durations
  200-1000 ms x SNR 0-20 dB, factorial), its 32-clip test and its 96-clip "extended" test (48/48; 200 and
  1000 ms; 0, 5, 10, 20 dB), drawn from a bank built with the book's own ``lib.data``; every arm trained and
  scored on them. ``claims`` also says **what 96 clips can show** (:func:`accuracy_pair_tables`,
  :func:`clips_to_detect`).
* ``replication`` — chapter 08's reading of the seed-design systems: metrics per clip set, spread over seeds,
  paired tests, power, scoring against ``generate``, and its words.

Study systems are named by ``lib.systems.study_system_name`` (the one place that forms system names).
"""
from __future__ import annotations

from . import claims, design, replication, study
from .claims import (SEED_CLAIMS, TARGET_READINGS, accuracy_pair_tables, clips_to_detect, lora_parameter_count,
                     lora_parameter_table, pair_verdicts, pairwise_mcnemar, scoring_vs_generate)
from .design import (SEED_EXTENDED_DURATIONS_MS, SEED_EXTENDED_PER_CELL, SEED_EXTENDED_SNRS_DB, SEED_NORMALIZATION,
                     SEED_TEST_CLIPS, SEED_TRAIN_CLIPS, SEED_TRAIN_DURATIONS_MS, SEED_TRAIN_SNRS_DB, check_no_shared_sources,
                     seed_bank_config, seed_design_arms, seed_design_recipe, seed_design_splits, train_and_score_seed_design)
from .study import (FULL_LOSS_COST, adapter_sizes, run_study, score_study_system, study_recipe, study_seeds,
                    train_study_system, train_study_systems)

__all__ = [
    "claims", "design", "replication", "study", "SEED_CLAIMS", "TARGET_READINGS", "accuracy_pair_tables", "clips_to_detect",
    "lora_parameter_count", "lora_parameter_table", "pair_verdicts", "pairwise_mcnemar", "scoring_vs_generate",
    "SEED_EXTENDED_DURATIONS_MS", "SEED_EXTENDED_PER_CELL", "SEED_EXTENDED_SNRS_DB", "SEED_NORMALIZATION", "SEED_TEST_CLIPS",
    "SEED_TRAIN_CLIPS", "SEED_TRAIN_DURATIONS_MS", "SEED_TRAIN_SNRS_DB", "check_no_shared_sources", "seed_bank_config",
    "seed_design_arms", "seed_design_recipe", "seed_design_splits", "train_and_score_seed_design", "FULL_LOSS_COST",
    "adapter_sizes", "run_study", "score_study_system", "study_recipe", "study_seeds", "train_study_system",
    "train_study_systems",
]
