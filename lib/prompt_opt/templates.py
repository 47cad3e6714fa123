"""Prompt templates: an instruction, the option order, the label wording and the answer line; the letter that
means speech follows the template (:func:`build_prompt`)."""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .. import model as M

SPEECH, NONSPEECH = "speech", "nonspeech"
LETTERS = M.ANSWERS  # ("A", "B"): the two answer tokens the scorer reads
DEFAULT_LABELS = ("SPEECH", "NONSPEECH")
DEFAULT_ANSWER_LINE = "Answer with A or B."


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt built from parts: instruction, option order, label wording and answer line."""

    instruction: str
    speech_first: bool = True  # True: A) <speech label>, B) <nonspeech label>
    labels: tuple[str, str] = DEFAULT_LABELS  # (speech label, nonspeech label)
    answer_line: str = DEFAULT_ANSWER_LINE

    @property
    def text(self) -> str:
        return build_prompt(self.instruction, self.speech_first, self.labels, self.answer_line)[0]

    @property
    def speech_letter(self) -> str:
        return build_prompt(self.instruction, self.speech_first, self.labels, self.answer_line)[1]

    @property
    def order(self) -> str:
        return "A=speech" if self.speech_first else "A=nonspeech"

    def with_instruction(self, instruction: str) -> "PromptTemplate":
        return PromptTemplate(instruction, self.speech_first, tuple(self.labels), self.answer_line)

    def describe(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "order": self.order, "labels": " / ".join(self.labels),
                "speech_letter": self.speech_letter, "prompt": self.text}


def build_prompt(instruction: str, speech_first: bool = True, labels: Sequence[str] = DEFAULT_LABELS,
                 answer_line: str = DEFAULT_ANSWER_LINE) -> tuple[str, str]:
    """The prompt text and the letter that means speech in it.

    ``speech_first=True``: ``A) <speech label>`` then ``B) <nonspeech label>``, so ``A`` means speech;
    ``False`` swaps the options and ``B`` means speech.
    """
    speech_label, nonspeech_label = labels
    first, second = (speech_label, nonspeech_label) if speech_first else (nonspeech_label, speech_label)
    letter = LETTERS[0] if speech_first else LETTERS[1]
    lines = [instruction.strip(), f"{LETTERS[0]}) {first}", f"{LETTERS[1]}) {second}"]
    if answer_line:
        lines.append(answer_line)
    return "\n".join(lines), letter


_PROMPT_RE = re.compile(r"^(?P<instruction>.*?)\nA\) (?P<a>[^\n]+)\nB\) (?P<b>[^\n]+)(?:\n(?P<answer>[^\n]*))?$", re.S)


def parse_prompt(text: str) -> PromptTemplate:
    """The template of a prompt of the form ``<instruction>\\nA) <speech>\\nB) <nonspeech>\\n<answer line>``.

    ``A`` means speech in it, as in every prompt the scorer of ``lib.model`` reads (``cfg["prompt"]``).
    """
    m = _PROMPT_RE.match(text.strip())
    if not m:
        raise ValueError(
            f"prompt {text!r} does not have the form '<instruction>\\nA) <speech label>\\nB) <nonspeech label>\\n"
            "<answer line>'; prompt optimisation inserts candidate instructions into that template. Set the "
            "parameter 'prompt' to a prompt of that form.")
    tpl = PromptTemplate(m["instruction"].strip(), True, (m["a"].strip(), m["b"].strip()), (m["answer"] or "").strip())
    if tpl.text != text.strip():
        raise ValueError(f"prompt {text!r} does not round-trip through its template ({tpl.text!r})")
    return tpl


def template_grid(instructions: Sequence[str], label_sets: Sequence[Sequence[str]],
                  answer_line: str = DEFAULT_ANSWER_LINE, orders: Sequence[bool] = (True, False),
                  max_templates: int | None = None, seed: int = 0, keep: PromptTemplate | None = None) -> list[PromptTemplate]:
    """Every combination of instruction x option order x label wording (in that nesting order).

    With ``max_templates`` smaller than the grid, a seeded random subset of that size is kept; ``keep``
    (the hand-written template) stays in it if it is in the grid.
    """
    if not instructions or not label_sets:
        raise ValueError("the template grid needs at least one instruction and one label set")
    for labels in label_sets:
        if len(labels) != 2:
            raise ValueError(f"a label set is a pair (speech label, nonspeech label), got {labels!r}")
    grid = [PromptTemplate(str(i).strip(), bool(o), (str(l[0]), str(l[1])), answer_line)
            for i, o, l in itertools.product(instructions, orders, label_sets)]
    grid = list(dict.fromkeys(grid))  # drop exact repeats, keep order
    if max_templates is None or max_templates >= len(grid):
        return grid
    if max_templates < 1:
        raise ValueError(f"template_search_max must be >= 1 or null, got {max_templates}")
    rng = np.random.default_rng(seed)
    must = [t for t in grid if t == keep]
    rest = [t for t in grid if t != keep]
    picked = set(rng.choice(len(rest), size=max_templates - len(must), replace=False).tolist())
    chosen = set(must) | {rest[i] for i in picked}
    return [t for t in grid if t in chosen]
