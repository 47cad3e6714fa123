"""The two fitted baselines, trained on train and thresholded on dev: an energy detector and a log-mel classifier.

Fitted baselines see only train and dev: ``fit(train_audios, train_labels, dev_audios, dev_labels)`` has no
argument through which a test label could enter. The threshold that maximises balanced accuracy on dev is stored
with the model and used for ``pred``; :func:`load_fitted` reads a saved one back (``lib.systems.load_system``).
"""
from __future__ import annotations

import contextlib
import platform
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..audio import NORMALIZATIONS
from ..audio import SR as SAMPLE_RATE  # the book's one sample rate
from ..stats.metrics import balanced_accuracy
from .saved import MODEL_FILE, load_fitted_state, save_fitted_state
from .shared import as_clip, choose_threshold, labels_to_y


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
        y_train = labels_to_y(train_labels, "train labels")
        y_dev = labels_to_y(dev_labels, "dev labels")
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
        from ..systems import save_system

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
            e = frame_log_energy(as_clip(a, i), frame, hop)
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
            m = self.logmel(as_clip(a, i))
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
