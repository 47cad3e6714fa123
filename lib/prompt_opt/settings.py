"""The settings of prompt optimisation, read from the run's parameters with :func:`lib.config.section`: each
field is the parameter of the same name, whose one default is in the profile (``lib/profiles/cpu.yaml``,
section ``prompt_opt``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from ..config import section
from .templates import PromptTemplate, template_grid


@dataclass
class OproSettings:
    """OPRO's budget and sampling: steps after the hand-written prompt, candidates sampled per step, the best
    earlier instructions shown in the meta-prompt, the optimizer's temperature and token budget, the longest
    candidate kept, a custom meta-prompt (null: ``META_PROMPT``) and the seed of sampling and the dev subsample."""

    opro_steps: int
    opro_candidates_per_step: int
    opro_history_size: int
    opro_temperature: float
    opro_max_new_tokens: int
    opro_max_chars: int
    opro_meta_prompt: str | None
    seed: int
    SECTION: ClassVar[str] = "OPRO"  # how lib.config.section names this group in its messages

    @classmethod
    def of(cls, cfg: Mapping[str, Any], **overrides: Any) -> "OproSettings":
        return section(cfg, cls, **overrides)


@dataclass
class TemplateSettings:
    """The template grid: instruction wordings, (speech, nonspeech) label wordings, an optional seeded subset size."""

    template_instructions: list[str]
    template_labels: list[list[str]]
    template_search_max: int | None
    seed: int
    SECTION: ClassVar[str] = "template search"

    @classmethod
    def of(cls, cfg: Mapping[str, Any], **overrides: Any) -> "TemplateSettings":
        return section(cfg, cls, **overrides)

    def grid(self, reference: PromptTemplate) -> list[PromptTemplate]:
        """The templates searched: the hand-written instruction and labels first, then the profile's others, each
        wording in both option orders (:func:`template_grid`; a seeded subset keeps the hand-written template)."""
        instructions = [reference.instruction] + [i for i in self.template_instructions if i.strip() != reference.instruction]
        labels = [tuple(reference.labels)] + [tuple(l) for l in self.template_labels if tuple(l) != tuple(reference.labels)]
        return template_grid(instructions, labels, reference.answer_line, max_templates=self.template_search_max,
                             seed=self.seed, keep=reference)
