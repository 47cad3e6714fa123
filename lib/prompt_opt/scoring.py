"""Scoring clips under any prompt (its own speech letter), the dev scores of a candidate, what a selection
method returns (:class:`SearchResult`), and the test predictions of a chosen prompt (:func:`evaluate_prompt`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .. import model as M
from ..stats import binary_metrics
from .clips import ClipSet
from .templates import LETTERS, NONSPEECH, SPEECH, PromptTemplate


class PromptScorer:
    """A model that scores clips under any prompt, with the prompt's own speech letter.

    ``p_speech = softmax([logit_A, logit_B])`` taken at the letter that means speech in the template, so
    a swapped template gives ``1 - softmax(...)[A]``; ``pred`` is speech when the speech letter's logit is
    at least the other's (the rule of ``lib.model.Scores.pred`` for ``A``).
    """

    def __init__(self, name: str, model, processor, batch_size: int = 16, variant: str = "", progress: bool = False):
        self.name, self.model, self.processor = name, model, processor
        self.batch_size, self.variant, self.progress = batch_size, variant, progress
        self._cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def score(self, clips: ClipSet, template: PromptTemplate | str, speech_letter: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(p_speech, pred) for every clip of ``clips`` under ``template``; cached per (clip set, prompt)."""
        text = template.text if isinstance(template, PromptTemplate) else template
        letter = template.speech_letter if isinstance(template, PromptTemplate) else (speech_letter or LETTERS[0])
        key = (clips.split, tuple(clips.clip_ids), text, letter)
        if key not in self._cache:
            self._cache[key] = score_prompt(self.model, self.processor, clips.audios, text, letter,
                                            batch_size=self.batch_size, progress=self.progress)
        return self._cache[key]


def score_prompt(model, processor, audios: Sequence[np.ndarray], prompt: str, speech_letter: str = "A",
                 batch_size: int = 16, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(p_speech, pred)`` under ``prompt`` where ``speech_letter`` (``A`` or ``B``) means speech."""
    if speech_letter not in LETTERS:
        raise ValueError(f"speech_letter must be one of {LETTERS}, got {speech_letter!r}")
    s = M.score(model, processor, audios, prompt, batch_size=batch_size, progress=progress, desc="dev scoring")
    logits = np.asarray(s.logits, dtype=np.float64)
    if speech_letter == LETTERS[1]:
        logits = logits[:, ::-1]  # column 0 = the speech letter
    p_speech = M.softmax2(logits)
    pred = np.where(logits[:, 0] >= logits[:, 1], SPEECH, NONSPEECH)
    return p_speech, pred


def dev_scores(labels: Sequence[str], pred: Sequence[str]) -> dict[str, float]:
    m = binary_metrics(labels, pred)
    return {"dev_balanced_accuracy": m["balanced_accuracy"], "dev_accuracy": m["accuracy"],
            "dev_recall_speech": m["recall_speech"], "dev_recall_nonspeech": m["recall_nonspeech"]}


@dataclass
class SearchResult:
    """What a selection method found on dev: the trajectory, the best template and its dev score."""

    method: str  # "opro" | "template"
    scorer: str  # the scoring system's name
    trajectory: pd.DataFrame
    best: PromptTemplate
    best_dev: float
    reference: PromptTemplate
    reference_dev: float
    meta_prompts: list[str] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        return {"method": self.method, "scorer": self.scorer, "best_dev_balanced_accuracy": self.best_dev,
                "reference_dev_balanced_accuracy": self.reference_dev, **{f"best_{k}": v for k, v in self.best.describe().items()}}


def best_row(traj: pd.DataFrame) -> int:
    scored = traj[traj["dev_balanced_accuracy"].notna()]
    return int(scored["dev_balanced_accuracy"].idxmax())  # first maximum: the earlier candidate wins a tie


def evaluate_prompt(scorer: PromptScorer, test: ClipSet, template: PromptTemplate, *, system: str, run_id: str,
                    variant: str = "", seed: int | None = None) -> pd.DataFrame:
    """The predictions table of ``scorer`` under ``template`` on the test split (called once per method)."""
    from ..results import predictions_frame

    if test.split != "test":
        raise ValueError(f"evaluate_prompt scores the test split, got {test.split!r}")
    p, pred = scorer.score(test, template)
    source = getattr(M.unwrap(scorer.model), "speechbook_source", {}).get("model_name_or_path", "")
    return predictions_frame(run_id=run_id, system=system, variant=variant, seed=seed, clip_ids=test.clip_ids,
                             labels=list(test.labels), p_speech=p, pred=list(pred), model=M.model_label(source) if source else "")
