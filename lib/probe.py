"""The audio tower alone, as a control: a linear probe on the mini model's frozen Whisper encoder.

The question a reviewer asks first of an audio-language model is what the language model adds over its own audio
encoder. This system answers it: the very encoder the mini model uses (same weights, same features, same cache),
its outputs for a clip pooled over the clip's positions (mean and maximum: 2 x d_model numbers), then a logistic
regression (standardised inputs) fitted on the train split, its ``C`` chosen on dev from a small grid and its
decision threshold chosen on dev (maximum balanced accuracy). Nothing here sees test clips.

Saved as plain JSON (scaler, coefficients, intercept, threshold): loading it runs no code, unlike a pickle.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import io

KIND = "whisper_probe"
MODEL_FILE = "probe.json"
C_GRID = (0.01, 0.1, 1.0, 10.0)


class WhisperProbe:
    """Linear probe on the frozen audio tower of ``base_model`` (``mini`` or ``mini-base``)."""

    kind = KIND

    def __init__(self, base_model: str = "mini", normalization: str = "rms", name: str = "whisper-probe",
                 batch_size: int = 64, seed: int = 0) -> None:
        self.base_model, self.normalization, self.name = base_model, normalization, name
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.mean = self.scale = self.coef = None
        self.intercept = 0.0
        self.C = None
        self.threshold = 0.5
        self.fit_info: dict[str, Any] = {}
        self._model = self._processor = None
        from .model.build.mini import MINI_MODELS, label

        # its numbers come from the mini model's encoder: say so wherever they are shown
        self.model_label = (f"linear probe on the audio encoder of the {label(base_model)}" if base_model in MINI_MODELS
                            else f"linear probe on the audio encoder of {base_model}")

    # -------------------------------------------------------------------------------------- features
    def _load(self):
        if self._model is None:
            from . import model as M

            self._model, self._processor = M.load_model(self.base_model)
        return self._model, self._processor

    def features(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        """(n, 2 d_model): the encoder outputs of each clip, mean- and max-pooled over its positions."""
        from . import model as M

        model, processor = self._load()
        outs = M.encoder_outputs(model, processor, audios, batch_size=self.batch_size)
        return np.stack([np.concatenate([o.mean(axis=0), o.max(axis=0)]) for o in outs])

    # ------------------------------------------------------------------------------------ fit, score
    def _logits(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.coef + self.intercept

    def fit(self, train_audios, train_labels, dev_audios, dev_labels) -> "WhisperProbe":
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        from .baselines import choose_threshold, labels_to_y
        from .stats.metrics import balanced_accuracy

        y_train, y_dev = labels_to_y(train_labels, "train labels"), labels_to_y(dev_labels, "dev labels")
        x_train, x_dev = self.features(train_audios), self.features(dev_audios)
        scaler = StandardScaler().fit(x_train)
        self.mean, self.scale = scaler.mean_, scaler.scale_
        grid = []
        for C in C_GRID:
            clf = LogisticRegression(C=C, max_iter=5000).fit(scaler.transform(x_train), y_train)
            p_dev = clf.predict_proba(scaler.transform(x_dev))[:, 1]
            thr = choose_threshold(p_dev, y_dev)
            grid.append((balanced_accuracy(y_dev, p_dev >= thr), C, clf, thr))
        best = max(grid, key=lambda g: (g[0], -g[1]))  # ties: the stronger regularisation
        _, self.C, clf, self.threshold = best
        self.coef, self.intercept = clf.coef_[0].astype(float), float(clf.intercept_[0])
        p_train = self.score_features(x_train)
        self.fit_info = {"n_train": int(len(y_train)), "n_dev": int(len(y_dev)), "C_chosen_on_dev": float(self.C),
                         "dev_balanced_accuracy_by_C": {str(c): float(b) for b, c, _, _ in grid},
                         "train_balanced_accuracy": float(balanced_accuracy(y_train, p_train >= self.threshold)),
                         "dev_balanced_accuracy": float(best[0]), "threshold_chosen_on": "dev"}
        return self

    def score_features(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self._logits(x)))

    def score(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        if self.coef is None:
            raise RuntimeError(f"{self.name}: fit() or load it before scoring")
        if len(audios) == 0:
            return np.zeros(0)
        return self.score_features(self.features(audios))

    # ------------------------------------------------------------------------------------- save, load
    def save_to_run(self, run_dir: str | Path, name: str | None = None) -> Path:
        from .systems import save_system

        name = name or self.name
        folder = Path(run_dir) / "systems" / name
        folder.mkdir(parents=True, exist_ok=True)
        io.write_json(folder / MODEL_FILE, {
            "mean": list(map(float, self.mean)), "scale": list(map(float, self.scale)),
            "coef": list(map(float, self.coef)), "intercept": self.intercept, "C": self.C})
        return save_system(run_dir, name, KIND, file=MODEL_FILE, base_model=self.base_model,
                           normalization=self.normalization, threshold=float(self.threshold), seed=self.seed,
                           fit_info=self.fit_info, eval_batch_size=self.batch_size)


def load_probe(system_dir: str | Path, info: dict[str, Any], **options: Any) -> WhisperProbe:
    """A saved probe (``lib.systems`` calls this for kind ``whisper_probe``)."""
    import json

    system_dir = Path(system_dir)
    path = system_dir / info.get("file", MODEL_FILE)
    if not path.exists():
        raise FileNotFoundError(f"{system_dir}: its system.yaml names {path.name}, which is missing")
    try:
        state = json.loads(path.read_text())
        arrays = {k: np.asarray(state[k], dtype=float) for k in ("mean", "scale", "coef")}
        intercept = float(state["intercept"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a saved probe ({type(err).__name__}: {err}); re-run chapter 02 to fit it again") from err
    if not (len(arrays["mean"]) == len(arrays["scale"]) == len(arrays["coef"])):
        raise ValueError(f"{path}: mean, scale and coef differ in length; re-run chapter 02 to fit it again")
    probe = WhisperProbe(base_model=options.get("model_name_or_path") or info.get("base_model", "mini"),
                         normalization=info.get("normalization", "rms"), name=info.get("name", system_dir.name),
                         batch_size=int(options.get("batch_size") or info.get("eval_batch_size", 64)),
                         seed=int(info.get("seed", 0)))
    probe.mean, probe.scale, probe.coef, probe.intercept = arrays["mean"], arrays["scale"], arrays["coef"], intercept
    probe.C = state.get("C")
    probe.threshold = float(options["threshold"]) if options.get("threshold") is not None else float(info.get("threshold", 0.5))
    probe.fit_info = dict(info.get("fit_info", {}))
    return probe
