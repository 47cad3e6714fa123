"""OPRO (Yang et al. 2023): the meta-prompt, the optimizer LLM, cleaning its proposals, and the search on dev."""
from __future__ import annotations

import re
import unicodedata
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .. import model as M
from .clips import ClipSet, require_dev
from .scoring import PromptScorer, SearchResult, best_row, dev_scores
from .settings import OproSettings
from .templates import PromptTemplate

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


def step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(step)]).generate_state(1)[0])


def opro_search(scorer: PromptScorer, dev: ClipSet, optimizer: TextOptimizer, base: PromptTemplate,
                settings: OproSettings, progress: bool = True,
                on_step: Callable[[int, pd.DataFrame], None] | None = None) -> SearchResult:
    """OPRO on the dev split: returns the trajectory (one row per candidate) and the best instruction.

    Step 0 scores ``base`` (the hand-written prompt). Steps 1..``steps`` each sample
    ``candidates_per_step`` proposals from the meta-prompt built on the history so far; each is cleaned,
    checked against every earlier instruction (duplicates are not scored again) and scored.
    """
    from tqdm.auto import tqdm

    require_dev(dev)
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
    bar = tqdm(range(1, settings.opro_steps + 1), desc=f"OPRO ({scorer.name})", unit="step", disable=not progress)
    for step in bar:
        meta = build_meta_prompt(history, base, settings.opro_history_size, settings.opro_meta_prompt)
        metas.append(meta)
        raws = optimizer.propose(meta, settings.opro_candidates_per_step, step_seed(settings.seed, step))
        for j, raw in enumerate(raws):
            text, note = clean_candidate(raw, settings.opro_max_chars)
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
    i = best_row(traj)
    return SearchResult("opro", scorer.name, traj, base.with_instruction(traj.loc[i, "instruction"]),
                        float(traj.loc[i, "dev_balanced_accuracy"]), base, float(traj.loc[0, "dev_balanced_accuracy"]), metas)


def _trajectory(rows: list[dict[str, Any]]) -> pd.DataFrame:
    traj = pd.DataFrame(rows)
    traj["best_so_far"] = traj["dev_balanced_accuracy"].cummax().ffill()
    return traj


def status_counts(traj: pd.DataFrame) -> dict[str, int]:
    """Proposals after step 0 by status: scored, rejected (unusable) and duplicates."""
    c = traj[traj["step"] > 0]["status"].value_counts()
    return {s: int(c.get(s, 0)) for s in ("scored", "rejected", "duplicate")}
