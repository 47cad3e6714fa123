"""Prompt optimisation: OPRO and a template search, selected on the dev split only (chapter 07).

One idea per module: ``templates`` (a prompt from its parts), ``clips`` (the split a method sees),
``scoring`` (clips under any prompt, dev scores, test predictions), ``opro`` and ``search`` (the two methods
and the selection on dev), ``settings`` (their parameters, read with ``lib.config.section``), ``chapter``
(chapter 07's steps: scorers, test evaluation, its words) and ``figures`` (its figures). The optimised systems
are named ``<scorer>+opro`` and ``<scorer>+template`` by ``lib.systems.derived_name``.

Two ways to find a better prompt for the A/B question, for any scoring model (the frozen zero-shot model
or a fine-tuned system):

* **OPRO** (Yang et al. 2023, "Large Language Models as Optimizers", arXiv:2309.03409). A *meta-prompt*
  shows an optimizer LLM the task and the scored history (the ``history_size`` best earlier
  instructions with their dev scores, in ascending order, so the best comes last), and asks for a new
  instruction between ``<INS>`` and ``</INS>``. Each step samples ``candidates_per_step`` instructions
  (temperature sampling, seeded), scores each on the dev split, and adds them to the history. The
  paper's exemplars (problems with their answers) would be audio here, which a text-only optimizer
  cannot read, so the meta-prompt describes the task in words instead.

  **What a candidate is.** A candidate is the *instruction text only*. It is inserted into the fixed
  template of the hand-written prompt (``cfg["prompt"]``): ``<instruction>\\nA) SPEECH\\nB) NONSPEECH\\nAnswer
  with A or B.``. The options and the answer format never change, so the scorer still reads the logits of
  ``A`` and ``B`` and ``A`` still means speech, as the fine-tuned model was trained.

  The optimizer LLM is a parameter; by default it is the Qwen2 language model inside the audio model,
  used text-only (chat template of the processor, ``generate`` with sampling). On the ``cpu`` profile that
  is the tiny model with random weights: its proposals are near-random text, which is expected. They are
  cleaned (tags and special tokens removed, whitespace collapsed, length limited) and never repaired:
  a proposal that is empty after cleaning, or a duplicate of an earlier one, is recorded as rejected.

* **Template search**: a grid over instruction wording x answer-option order (``A`` = speech or ``A`` =
  non-speech) x label wording (``SPEECH``/``NONSPEECH``, ``speech``/``no speech`` ...). The letter that
  means speech follows the template (:func:`build_prompt` returns it), and ``p_speech`` is the softmax over
  the two letter logits taken at that letter (:func:`score_prompt`).

**Test-split isolation.** Selection (:func:`select_prompts`, :func:`opro_search`,
:func:`template_search`) receives the dev split only: :func:`select_prompts` takes the bank and loads the
dev rows itself (:func:`load_split`), and the search functions refuse a clip set of any other split. The
test split is loaded only afterwards, to evaluate each method's single best prompt once
(:func:`evaluate_prompt`). A test proves that shuffling the test labels and removing the test audio leaves
the selection unchanged.

The dev score of every candidate is its balanced accuracy (mean of the two recalls, ``lib.stats``); ties go
to the earlier candidate, so the hand-written prompt wins a tie.
"""
from __future__ import annotations

from . import chapter, clips, figures, opro, scoring, search, settings, templates
from .clips import ClipSet, load_split, require_dev
from .opro import (META_PROMPT, SPECIAL_TOKEN_RE, STATUS_DUPLICATE, STATUS_INITIAL, STATUS_REJECTED, STATUS_SCORED,
                   TextOptimizer, build_meta_prompt, candidate_key, clean_candidate, format_history, opro_search, status_counts, step_seed)
from .scoring import PromptScorer, SearchResult, dev_scores, evaluate_prompt, score_prompt
from .search import Selection, select_prompts, template_search
from .settings import OproSettings, TemplateSettings
from .templates import (DEFAULT_ANSWER_LINE, DEFAULT_LABELS, LETTERS, NONSPEECH, SPEECH, PromptTemplate, build_prompt,
                        parse_prompt, template_grid)

__all__ = [
    "chapter", "clips", "figures", "opro", "scoring", "search", "settings", "templates",
    "ClipSet", "load_split", "require_dev", "META_PROMPT", "SPECIAL_TOKEN_RE", "STATUS_DUPLICATE",
    "STATUS_INITIAL", "STATUS_REJECTED", "STATUS_SCORED", "TextOptimizer", "build_meta_prompt", "candidate_key",
    "clean_candidate", "format_history", "opro_search", "status_counts", "step_seed", "PromptScorer", "SearchResult", "dev_scores",
    "evaluate_prompt", "score_prompt", "Selection", "select_prompts", "template_search", "OproSettings",
    "TemplateSettings", "DEFAULT_ANSWER_LINE", "DEFAULT_LABELS", "LETTERS", "NONSPEECH", "SPEECH", "PromptTemplate",
    "build_prompt", "parse_prompt", "template_grid",
]
