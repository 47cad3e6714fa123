"""Prompt optimisation: OPRO and a template search, selected on the dev split only (chapter 07).

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

import itertools
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import model as M
from .stats import binary_metrics

SPEECH, NONSPEECH = "speech", "nonspeech"
LETTERS = M.ANSWERS  # ("A", "B"): the two answer tokens the scorer reads
DEFAULT_LABELS = ("SPEECH", "NONSPEECH")
DEFAULT_ANSWER_LINE = "Answer with A or B."
ZEROSHOT = "zeroshot"
STATUS_INITIAL, STATUS_SCORED, STATUS_REJECTED, STATUS_DUPLICATE = "initial", "scored", "rejected", "duplicate"
SPECIAL_TOKEN_RE = re.compile(r"<\|[^|<>]{0,40}\|>")

# Adapted from OPRO's instruction-optimisation meta-prompt (Yang et al. 2023, appendix C): the task in
# words instead of exemplars, the history as "text:/score:" pairs in ascending order of score.
META_PROMPT = """Your task is to generate the instruction <INS> for an audio assistant. The assistant hears one very short audio clip (20 to 1000 ms; it may be noisy, reverberant or band-limited) and then reads:

<INS>
{options}

It must say whether the clip contains human speech. Laughing, coughing, crying, sneezing, breathing and snoring are not speech.

Below are some previous instructions with their scores. The score is the balanced accuracy on a set of development clips and ranges from 0 to 100.

{history}

Generate an instruction that is different from all the instructions <INS> above, and has a higher score than all the instructions <INS> above. The instruction should begin with <INS> and end with </INS>. The instruction should be concise, effective, and generally applicable to all clips."""


# ================================================================================================ prompts
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


# ================================================================================================ clips
@dataclass
class ClipSet:
    """Clips of one split: ids, labels, audio (loaded, normalized) and their bank rows."""

    split: str
    clip_ids: list[str]
    labels: np.ndarray
    audios: list[np.ndarray] = field(repr=False)
    frame: pd.DataFrame = field(repr=False)

    def __len__(self) -> int:
        return len(self.clip_ids)


def subsample(df: pd.DataFrame, max_clips: int | None, seed: int = 0) -> pd.DataFrame:
    """At most ``max_clips`` rows, drawn per label in proportion to its share (seeded), in bank order."""
    if max_clips is None or len(df) <= max_clips:
        return df
    rng = np.random.default_rng(seed)
    counts = df["label"].value_counts()
    take = {lab: int(round(max_clips * n / len(df))) for lab, n in counts.items()}
    keep = []
    for lab, part in df.groupby("label", sort=True):
        idx = part.index.to_numpy()
        keep.extend(rng.choice(idx, size=min(len(idx), max(1, take[lab])), replace=False).tolist())
    return df.loc[sorted(keep, key=df.index.get_loc)]


def load_split(bank: pd.DataFrame, split: str, normalization: str = "rms", max_clips: int | None = None,
               seed: int = 0, manifest: str | Path | None = None) -> ClipSet:
    """The clips of one split of a bank table (``lib.data.load_bank``), optionally subsampled."""
    from .data import load_clips

    rows = bank[bank["split"] == split]
    if rows.empty:
        raise ValueError(f"the bank has no {split!r} clips")
    if set(rows["label"]) != {SPEECH, NONSPEECH}:
        raise ValueError(f"the {split} split needs both classes to compute balanced accuracy; it has {sorted(set(rows['label']))}")
    rows = subsample(rows, max_clips, seed).reset_index(drop=True)
    audios = load_clips(rows, manifest, normalization=normalization)
    return ClipSet(split, rows["clip_id"].astype(str).tolist(), rows["label"].to_numpy().astype(str), audios, rows)


def _require_dev(clips: ClipSet) -> None:
    if clips.split != "dev":
        raise ValueError(f"prompt selection runs on the dev split only, got the {clips.split!r} split")


# ================================================================================================ scoring
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


# ================================================================================================ OPRO
def format_history(history: Sequence[tuple[str, float]], history_size: int) -> str:
    """The ``history_size`` best (instruction, score) pairs, ascending by score (best last), OPRO style.

    Scores are balanced accuracies in [0, 1], shown as integers 0-100. Among equal scores the earlier
    instruction comes first.
    """
    ranked = sorted(enumerate(history), key=lambda t: (-t[1][1], t[0]))[:max(0, int(history_size))]
    ascending = sorted(ranked, key=lambda t: (t[1][1], t[0]))
    return "\n\n".join(f"text:\n{ins}\nscore:\n{round(100 * score)}" for _, (ins, score) in ascending)


def build_meta_prompt(history: Sequence[tuple[str, float]], base: PromptTemplate, history_size: int = 20,
                      meta_prompt: str | None = None) -> str:
    """The meta-prompt: task, the fixed options of ``base``, and the scored history (see ``META_PROMPT``)."""
    template = meta_prompt or META_PROMPT
    if "{history}" not in template:
        raise ValueError("opro_meta_prompt must contain the placeholder {history}")
    options = base.text[len(base.instruction.strip()):].strip("\n")
    return template.replace("{options}", options).replace("{history}", format_history(history, history_size))


def clean_candidate(raw: str, max_chars: int = 300) -> tuple[str | None, str]:
    """A proposal as an instruction, or ``(None, reason)`` when nothing usable is left.

    Takes the text between ``<INS>`` and ``</INS>`` when the tags are there (else the whole text), removes
    chat special tokens, control characters and undecodable bytes, collapses whitespace, strips quotes and
    cuts at ``max_chars`` (at a word boundary when there is one). Nothing is added or repaired.
    """
    text = raw or ""
    if "<INS>" in text:
        text = text.split("<INS>", 1)[1]
    text = text.split("</INS>", 1)[0]
    text = SPECIAL_TOKEN_RE.sub(" ", text).replace("<INS>", " ")
    text = "".join(" " if unicodedata.category(ch).startswith(("C", "Z")) or ch == "\ufffd" else ch for ch in text)
    text = re.sub(r"\s+", " ", text).strip().strip("\"'`").strip()
    note = "ok"
    if len(text) > max_chars:
        cut = text[:max_chars]
        space = cut.rfind(" ")
        text = (cut[:space] if space >= max_chars // 2 else cut).rstrip()
        note = "truncated"
    if not any(ch.isalpha() for ch in text):
        return None, "empty after cleaning" if not text else "no letters"
    return text, note


def candidate_key(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


class TextOptimizer:
    """The optimizer LLM: samples continuations of a chat-templated meta-prompt (text only)."""

    def __init__(self, model, tokenizer, processor=None, name: str = "", temperature: float = 1.0,
                 max_new_tokens: int = 64):
        self.model, self.tokenizer, self.processor = model, tokenizer, processor
        self.name, self.temperature, self.max_new_tokens = name, float(temperature), int(max_new_tokens)

    @classmethod
    def from_audio_model(cls, model, processor, **kw: Any) -> "TextOptimizer":
        """The Qwen2 language model inside a Qwen2-Audio model, used text-only (no audio in the input)."""
        name = getattr(M.unwrap(model), "speechbook_source", {}).get("model_name_or_path", "audio model")
        return cls(model, processor.tokenizer, processor, name=f"{name} (its language model, text only)", **kw)

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str = "auto", torch_dtype: str = "float32", **kw: Any) -> "TextOptimizer":
        """A separate optimizer LLM: a Qwen2-Audio checkpoint, or any causal LM with a chat template."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        path = M.resolve_model_path(name_or_path)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if config.model_type == "qwen2_audio":
            model, processor = M.load_model(name_or_path, torch_dtype=torch_dtype, device=device)
            return cls.from_audio_model(model, processor, **kw)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=M.resolve_dtype(torch_dtype))
        model.to(M.pick_device(device)).eval()
        return cls(model, tokenizer, None, name=name_or_path, **kw)

    def chat_text(self, meta_prompt: str) -> str:
        if self.processor is not None:
            messages = [{"role": "user", "content": [{"type": "text", "text": meta_prompt}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer.apply_chat_template([{"role": "user", "content": meta_prompt}],
                                                  add_generation_prompt=True, tokenize=False)

    def propose(self, meta_prompt: str, n: int, seed: int) -> list[str]:
        """``n`` sampled answers to the meta-prompt (temperature sampling, seeded), decoded as text."""
        import torch

        text = self.chat_text(meta_prompt)
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        device = M.unwrap(self.model).lm_head.weight.device if hasattr(M.unwrap(self.model), "lm_head") else next(self.model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(int(seed))
            out = self.model.generate(**enc, do_sample=True, temperature=self.temperature, top_p=1.0, top_k=0,
                                      max_new_tokens=self.max_new_tokens, num_return_sequences=int(n),
                                      pad_token_id=pad)
        new = out[:, enc["input_ids"].shape[1]:]
        return [self.tokenizer.decode(seq, skip_special_tokens=True) for seq in new]


@dataclass
class OproSettings:
    steps: int = 3
    candidates_per_step: int = 3
    history_size: int = 20
    temperature: float = 1.0
    max_new_tokens: int = 64
    max_chars: int = 300
    seed: int = 0
    meta_prompt: str | None = None

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> "OproSettings":
        return cls(steps=int(cfg["opro_steps"]), candidates_per_step=int(cfg["opro_candidates_per_step"]),
                   history_size=int(cfg["opro_history_size"]), temperature=float(cfg["opro_temperature"]),
                   max_new_tokens=int(cfg["opro_max_new_tokens"]), max_chars=int(cfg["opro_max_chars"]),
                   seed=int(cfg["seed"]), meta_prompt=cfg.get("opro_meta_prompt") or None)


def step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(step)]).generate_state(1)[0])


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


def _best_row(traj: pd.DataFrame) -> int:
    scored = traj[traj["dev_balanced_accuracy"].notna()]
    return int(scored["dev_balanced_accuracy"].idxmax())  # first maximum: the earlier candidate wins a tie


def opro_search(scorer: PromptScorer, dev: ClipSet, optimizer: TextOptimizer, base: PromptTemplate,
                settings: OproSettings, progress: bool = True,
                on_step: Callable[[int, pd.DataFrame], None] | None = None) -> SearchResult:
    """OPRO on the dev split: returns the trajectory (one row per candidate) and the best instruction.

    Step 0 scores ``base`` (the hand-written prompt). Steps 1..``steps`` each sample
    ``candidates_per_step`` proposals from the meta-prompt built on the history so far; each is cleaned,
    checked against every earlier instruction (duplicates are not scored again) and scored.
    """
    from tqdm.auto import tqdm

    _require_dev(dev)
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    history: list[tuple[str, float]] = []
    metas: list[str] = []

    def add(step: int, j: int, raw: str, instruction: str | None, status: str, note: str) -> None:
        row: dict[str, Any] = {"step": step, "candidate": j, "raw": raw, "instruction": instruction, "status": status,
                               "note": note, "dev_balanced_accuracy": np.nan, "dev_accuracy": np.nan}
        if status in (STATUS_INITIAL, STATUS_SCORED):
            _, pred = scorer.score(dev, base.with_instruction(instruction))
            row.update(dev_scores(dev.labels, pred))
            history.append((instruction, row["dev_balanced_accuracy"]))
            seen[candidate_key(instruction)] = len(rows)
        rows.append(row)

    add(0, 0, base.instruction, base.instruction, STATUS_INITIAL, "hand-written prompt")
    bar = tqdm(range(1, settings.steps + 1), desc=f"OPRO ({scorer.name})", unit="step", disable=not progress)
    for step in bar:
        meta = build_meta_prompt(history, base, settings.history_size, settings.meta_prompt)
        metas.append(meta)
        raws = optimizer.propose(meta, settings.candidates_per_step, step_seed(settings.seed, step))
        for j, raw in enumerate(raws):
            text, note = clean_candidate(raw, settings.max_chars)
            if text is None:
                add(step, j, raw, None, STATUS_REJECTED, note)
            elif not M.answer_is_one_token(scorer.processor, base.with_instruction(text).text):
                add(step, j, raw, text, STATUS_REJECTED, "the answer would not be one token after this prompt")
            elif candidate_key(text) in seen:
                prev = rows[seen[candidate_key(text)]]
                add(step, j, raw, text, STATUS_DUPLICATE, f"same as step {prev['step']} candidate {prev['candidate']}")
            else:
                add(step, j, raw, text, STATUS_SCORED, note)
        traj = _trajectory(rows)
        bar.set_postfix(best=f"{traj['best_so_far'].iloc[-1]:.3f}")
        if on_step:
            on_step(step, traj)
    traj = _trajectory(rows)
    i = _best_row(traj)
    return SearchResult("opro", scorer.name, traj, base.with_instruction(traj.loc[i, "instruction"]),
                        float(traj.loc[i, "dev_balanced_accuracy"]), base, float(traj.loc[0, "dev_balanced_accuracy"]), metas)


def _trajectory(rows: list[dict[str, Any]]) -> pd.DataFrame:
    traj = pd.DataFrame(rows)
    traj["best_so_far"] = traj["dev_balanced_accuracy"].cummax().ffill()
    return traj


# ================================================================================================ template search
def template_search(scorer: PromptScorer, dev: ClipSet, templates: Sequence[PromptTemplate], reference: PromptTemplate,
                    progress: bool = True) -> SearchResult:
    """Score every template on the dev split; the best (first maximum) is selected."""
    from tqdm.auto import tqdm

    _require_dev(dev)
    templates = list(templates)
    if reference not in templates:
        templates = [reference, *templates]
    rows = []
    for k, tpl in enumerate(tqdm(templates, desc=f"templates ({scorer.name})", unit="prompt", disable=not progress)):
        _, pred = scorer.score(dev, tpl)
        rows.append({"template": k, **tpl.describe(), "is_reference": tpl == reference, **dev_scores(dev.labels, pred)})
    traj = pd.DataFrame(rows)
    i = _best_row(traj)
    ref_i = int(np.flatnonzero(traj["is_reference"])[0])
    return SearchResult("template", scorer.name, traj, templates[i], float(traj.loc[i, "dev_balanced_accuracy"]),
                        reference, float(traj.loc[ref_i, "dev_balanced_accuracy"]))


# ================================================================================================ the chapter's flow
@dataclass
class TemplateSettings:
    instructions: list[str]
    label_sets: list[tuple[str, str]]
    max_templates: int | None = None
    seed: int = 0

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any], reference: PromptTemplate) -> "TemplateSettings":
        instructions = [reference.instruction] + [i for i in cfg["template_instructions"] if i.strip() != reference.instruction]
        labels = [tuple(reference.labels)] + [tuple(l) for l in cfg["template_labels"] if tuple(l) != tuple(reference.labels)]
        return cls(instructions, labels, cfg.get("template_search_max"), int(cfg["seed"]))


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
    grid = template_grid(templates.instructions, templates.label_sets, reference.answer_line,
                         max_templates=templates.max_templates, seed=templates.seed, keep=reference)
    results: dict[tuple[str, str], SearchResult] = {}
    for scorer in scorers:
        if "opro" in methods:
            if optimizer is None:
                raise ValueError("OPRO needs an optimizer LLM")
            results[(scorer.name, "opro")] = opro_search(scorer, dev, optimizer, reference, opro, progress=progress)
        if "template" in methods:
            results[(scorer.name, "template")] = template_search(scorer, dev, grid, reference, progress=progress)
    return Selection(dev.clip_ids, results)


def evaluate_prompt(scorer: PromptScorer, test: ClipSet, template: PromptTemplate, *, system: str, run_id: str,
                    variant: str = "", seed: int | None = None) -> pd.DataFrame:
    """The predictions table of ``scorer`` under ``template`` on the test split (called once per method)."""
    from .results import predictions_frame

    if test.split != "test":
        raise ValueError(f"evaluate_prompt scores the test split, got {test.split!r}")
    p, pred = scorer.score(test, template)
    source = getattr(M.unwrap(scorer.model), "speechbook_source", {}).get("model_name_or_path", "")
    return predictions_frame(run_id=run_id, system=system, variant=variant, seed=seed, clip_ids=test.clip_ids,
                             labels=list(test.labels), p_speech=p, pred=list(pred), model=M.model_label(source) if source else "")


def find_finetuned_system(run_dir: str | Path, variant: str | None = None, name: str | None = None) -> tuple[str, Path, dict] | None:
    """The fine-tuned (``kind: lora``) system saved in the run folder (chapter 03), or ``None``.

    ``name`` picks one; otherwise ``qwen2audio-<variant>`` if saved, else the only (or first) LoRA system.
    """
    import yaml

    from .systems import list_systems

    found = {}
    for n in list_systems(run_dir):
        info = yaml.safe_load((Path(run_dir) / "systems" / n / "system.yaml").read_text())
        if info.get("kind") == "lora":
            found[n] = info
    if name:
        if name not in found:
            raise ValueError(f"run {run_dir} has no LoRA system {name!r}; it holds: {', '.join(found) or 'none'}")
        pick = name
    elif not found:
        return None
    elif variant and f"qwen2audio-{variant}" in found:
        pick = f"qwen2audio-{variant}"
    else:
        pick = sorted(found)[0]
    return pick, Path(run_dir) / "systems" / pick, found[pick]


def system_name(scorer: PromptScorer, method: str) -> str:
    return f"{scorer.name}+{method}"
