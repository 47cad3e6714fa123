"""Chapter 06's comparison of every system of a book run, as tested functions.

* ``lineup`` — gather the run's predictions, build and write the ensembles, name the systems, sort them into
  families (``lib.systems.SystemKey.family``), choose the reference.
* ``analyses`` — the tables: every system with both intervals, paired tests, seeds and ensembles,
  psychometric thresholds, calibration, power, ``summary.json``.
* ``prose`` — the chapter's words, printed from those tables.

The statistics themselves live in ``lib.stats``; this package decides what is compared with what.
"""
from __future__ import annotations

from . import analyses, lineup, prose
from .analyses import (AXES, Stopwatch, calibration, focus_systems, headline_predictions, power_comparator, power_study,
                       psychometric_study, reference_tests, reliability, roc_panels, seed_study, statistics_summary,
                       strongest_baseline, study_pair_tests, system_table, wide_tests, write_metrics, zero_shot_names)
from .lineup import Gathered, Lineup, build_lineup, gather, require_run

__all__ = [
    "analyses", "lineup", "prose", "AXES", "Stopwatch", "calibration", "focus_systems", "headline_predictions",
    "power_comparator", "power_study", "reliability",
    "psychometric_study", "reference_tests", "roc_panels", "seed_study", "statistics_summary", "strongest_baseline",
    "study_pair_tests", "system_table", "wide_tests", "write_metrics", "zero_shot_names",
    "Gathered", "Lineup", "gather", "require_run", "build_lineup",
]
