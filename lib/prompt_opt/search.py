"""The template search, and the selection of every method for every scorer on the dev split only."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .clips import ClipSet, load_split, require_dev
from .opro import TextOptimizer, opro_search
from .scoring import PromptScorer, SearchResult, best_row, dev_scores
from .settings import OproSettings, TemplateSettings
from .templates import PromptTemplate


def template_search(scorer: PromptScorer, dev: ClipSet, templates: Sequence[PromptTemplate], reference: PromptTemplate,
                    progress: bool = True) -> SearchResult:
    """Score every template on the dev split; the best (first maximum) is selected."""
    from tqdm.auto import tqdm

    require_dev(dev)
    templates = list(templates)
    if reference not in templates:
        templates = [reference, *templates]
    rows = []
    for k, tpl in enumerate(tqdm(templates, desc=f"templates ({scorer.name})", unit="prompt", disable=not progress)):
        _, pred = scorer.score(dev, tpl)
        rows.append({"template": k, **tpl.describe(), "is_reference": tpl == reference, **dev_scores(dev.labels, pred)})
    traj = pd.DataFrame(rows)
    i = best_row(traj)
    ref_i = int(np.flatnonzero(traj["is_reference"])[0])
    return SearchResult("template", scorer.name, traj, templates[i], float(traj.loc[i, "dev_balanced_accuracy"]),
                        reference, float(traj.loc[ref_i, "dev_balanced_accuracy"]))


@dataclass
class Selection:
    """Everything chosen on dev, per scorer and method; nothing in it has seen a test clip."""

    dev_clip_ids: list[str]
    results: dict[tuple[str, str], SearchResult]  # (scorer name, method) -> result

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([r.summary() for r in self.results.values()])


def select_prompts(bank: pd.DataFrame, scorers: Sequence[PromptScorer], optimizer: TextOptimizer | None,
                   reference: PromptTemplate, opro: OproSettings, templates: TemplateSettings,
                   normalization: str = "rms", dev_max_clips: int | None = None, progress: bool = True,
                   methods: Sequence[str] = ("opro", "template")) -> Selection:
    """Run the selection methods for every scorer on the bank's DEV split only.

    Only the dev rows of ``bank`` are loaded (optionally a stratified, seeded subsample of
    ``dev_max_clips``); the test split is never read here.
    """
    dev = load_split(bank, "dev", normalization, max_clips=dev_max_clips, seed=opro.seed)
    grid = templates.grid(reference)
    results: dict[tuple[str, str], SearchResult] = {}
    for scorer in scorers:
        if "opro" in methods:
            if optimizer is None:
                raise ValueError("OPRO needs an optimizer LLM")
            results[(scorer.name, "opro")] = opro_search(scorer, dev, optimizer, reference, opro, progress=progress)
        if "template" in methods:
            results[(scorer.name, "template")] = template_search(scorer, dev, grid, reference, progress=progress)
    return Selection(dev.clip_ids, results)
