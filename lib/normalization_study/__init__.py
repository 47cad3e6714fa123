"""Chapter 02's study: level normalization at load time (``none``, ``peak``, ``rms``), what it does to the
level cue and to the accuracy of baselines and of the fine-tuned model.

* ``levels``: the RMS and peak level of every clip under each normalization, and how much they say about
  the class and the SNR;
* ``baselines``: the trained baselines fitted and the free VADs scored under each normalization; the
  encoder probe;
* ``comparison``: metrics with intervals, per SNR, McNemar against the stored level (Holm);
* ``findings``: what the tables say, in words built from their numbers.

The model itself is trained under each normalization by ``lib.seed_claims.run_study``.
"""
from __future__ import annotations

from .baselines import fit_baselines, fit_encoder_probe, free_vads, save_and_reload, score_vads
from .comparison import (
    BASELINES, TABLE_COLUMNS, by_snr_figure, by_snr_table, baselines_figure, finetuned_section, interval_grid,
    mcnemar_against_stored_level, metrics_by_normalization, split_variant, test_predictions,
)
from .findings import baseline_findings, model_study_findings, small_bank_note
from .levels import (
    NORMS, clips_by_normalization, cue, level_cue_table, level_findings, level_table, levels_figure, split_clips,
)
