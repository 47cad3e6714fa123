"""Statistics for the book: every number is computed here from a predictions table (DESIGN.md, Tables 3-4).

Modules, in the order a reader meets them:

* ``predictions`` — the table as the statistics read it: the bank joined on, systems picked and named.
* ``metrics`` — the one metrics core: accuracy, balanced accuracy, per-class recall (and ROC AUC).
* ``intervals`` — Wilson intervals; the percentile interval of replicates.
* ``bootstrap`` — the cluster bootstrap over sources (``group_id``), the intervals the book reports.
* ``summary`` — one row per system with every interval, ``metrics.json``, categories, seeds.
* ``paired`` — McNemar's test on clips or sources, and Holm's adjustment.
* ``psychometric`` — performance against duration and SNR, and thresholds never extrapolated.
* ``calibration`` — Brier score, reliability, expected calibration error, ROC.
* ``power`` — clips needed, detectable differences, the design effect of clustered clips.

Conventions
-----------
* A *system* is one ``(system, variant, seed)`` of the predictions table (``lib.results.SYSTEM_KEY``).
  Functions that take ``predictions`` work on all systems in it at once; ``select`` picks one.
* ``speech`` is the positive class: ``p_speech`` is the score, ``recall_speech`` the sensitivity and
  ``recall_nonspeech`` the specificity. A clip is *correct* when ``pred == label``.
* The unit of independence is ``group_id`` (a speaker or an original sound file): clips cut from one
  source share its voice, room and microphone, so they are not independent.
* Intervals are at ``level`` = 0.95 unless asked otherwise; each function's docstring states its formula.

``from lib import stats; stats.metrics_table(...)``: every public name of the modules is re-exported here.
"""
from __future__ import annotations

from ..results import SYSTEM_KEY
from .bootstrap import DEFAULT_N_BOOT, ClusterBootstrap, cluster_bootstrap_metrics
from .calibration import (brier_score, calibration_table, expected_calibration_error, reliability_frame,
                          reliability_table, roc_frame)
from .intervals import percentile_interval, wilson_interval, wilson_intervals
from .metrics import (METRICS, POSITIVE, balanced_accuracy, binary_metrics, class_counts, metrics_from_counts,
                      truth_and_correct, weighted_auc)
from .paired import adjust_p, adjust_within, collapse_majority, holm, mcnemar_exact, mcnemar_midp, mcnemar_table, mcnemar_test
from .power import (design_effect, design_effect_within_class, discordance, paired_power, mcnemar_detectable_difference, mcnemar_exact_power, mcnemar_sample_size,
                    power_table, two_proportion_sample_size)
from .predictions import add_system_label, read_bank, select, system_keys, system_label, with_bank
from .psychometric import FLAGS, PsychometricFit, describe_threshold, fit_psychometric, psychometric_levels, psychometric_threshold
from .summary import (INTERVAL_METHODS, category_table, hardest_categories, metrics_json, metrics_table, per_seed_table,
                      seed_summary)

__all__ = [
    "SYSTEM_KEY", "DEFAULT_N_BOOT", "ClusterBootstrap", "cluster_bootstrap_metrics",
    "brier_score", "calibration_table", "expected_calibration_error", "reliability_frame", "reliability_table", "roc_frame",
    "percentile_interval", "wilson_interval", "wilson_intervals",
    "METRICS", "POSITIVE", "balanced_accuracy", "binary_metrics", "class_counts", "metrics_from_counts",
    "truth_and_correct", "weighted_auc",
    "adjust_p", "adjust_within", "collapse_majority", "holm", "mcnemar_exact", "mcnemar_midp", "mcnemar_table", "mcnemar_test",
    "design_effect", "design_effect_within_class", "discordance", "paired_power", "mcnemar_detectable_difference", "mcnemar_exact_power", "mcnemar_sample_size",
    "power_table", "two_proportion_sample_size",
    "add_system_label", "read_bank", "select", "system_keys", "system_label", "with_bank",
    "FLAGS", "PsychometricFit", "describe_threshold", "fit_psychometric", "psychometric_levels", "psychometric_threshold",
    "INTERVAL_METHODS", "category_table", "hardest_categories", "metrics_json", "metrics_table", "per_seed_table", "seed_summary",
]
