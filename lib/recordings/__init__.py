"""Systems over whole recordings (``python -m lib segment`` and chapter 09), in data-flow order: **recordings** (any
audio, or seeded test ``scenes`` with exact RTTM references built from one split's sources) are cut into sliding
``windows`` that a clip system scores, and the window scores become **frame probabilities** (a VAD gives its own);
the ``segment`` engine turns frames into speech **segments** (hysteresis, minimum speech and silence), ``output``
writes them as ``segments.csv``, ``frames/`` and **RTTM**, and ``detection`` measures them against references
(**detection metrics** from pyannote.metrics, frame AUC, bootstrap over recordings). ``study`` is what chapter 09
runs on top (settings tuned on dev scenes, one pass on test scenes), ``analysis`` its error tables and findings,
``figures`` its figures.

``from lib import recordings`` gives the names the chapter and the command use; the rest lives in its module
(``lib.recordings.segment``, ``lib.recordings.detection``, ...).
"""
from .analysis import (METRIC_COLUMNS, false_alarms_by_category, findings, missed_by, scene_overview, speech_errors,
                       timeline_examples)
from .figures import detection_figure, missed_speech_figure, scene_timeline
from .segment import SegmentParams, segment_recordings
from .study import RecordingsStudy, default_systems, require_run_folder, run_test, scene_splits, tune_on_dev

__all__ = [
    "METRIC_COLUMNS", "RecordingsStudy", "SegmentParams", "default_systems", "detection_figure", "false_alarms_by_category",
    "findings", "missed_by", "missed_speech_figure", "require_run_folder", "run_test", "scene_overview", "scene_splits",
    "scene_timeline", "segment_recordings", "speech_errors", "timeline_examples", "tune_on_dev",
]
