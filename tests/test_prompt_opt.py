"""Prompt optimisation (lib.prompt_opt): meta-prompt, candidate cleaning, OPRO, template grid, letter
mapping, and the proof that selection never reads the test split. On the tiny model, synthetic clips."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from lib import config, data
from lib import model as M
from lib import prompt_opt as P

SR = 16000
REF = P.parse_prompt(M.DEFAULT_PROMPT)
CFG = config.resolve("cpu")


def _opro(**overrides) -> P.OproSettings:
    """OPRO's settings from the profile (where their defaults live), ``overrides`` winning."""
    return P.OproSettings.of(CFG, **overrides)


@pytest.fixture(scope="module")
def tiny():
    return M.load_model(M.TINY)


def _clips(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = np.arange(int(SR * (0.1 + 0.1 * (i % 3)))) / SR
        x = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) if i % 2 == 0 else 0.1 * rng.standard_normal(len(t))
        out.append(x.astype(np.float32))
    return out


def _clipset(split: str = "dev", n: int = 8, seed: int = 0) -> P.ClipSet:
    labels = np.array(["speech", "nonspeech"] * (n // 2))
    ids = [f"{split}{i}" for i in range(n)]
    return P.ClipSet(split, ids, labels, _clips(n, seed), pd.DataFrame({"clip_id": ids, "label": labels}))


def _scorer(tiny, name="qwen2audio-zeroshot"):
    model, processor = tiny
    return P.PromptScorer(name, model, processor, batch_size=8)


# ------------------------------------------------------------------------------------------ prompts
def test_hand_written_prompt_round_trips_and_swapped_options_move_the_speech_letter():
    assert REF.text == M.DEFAULT_PROMPT and REF.speech_letter == "A"
    text, letter = P.build_prompt(REF.instruction, speech_first=False, labels=("speech", "no speech"))
    assert text == "Does this audio clip contain human speech?\nA) no speech\nB) speech\nAnswer with A or B."
    assert letter == "B"
    with pytest.raises(ValueError, match="does not have the form"):
        P.parse_prompt("Is it speech? Say yes or no.")


def test_template_grid_covers_the_product_of_parts():
    instructions = ["I1?", "I2?", "I3?"]
    labels = [("SPEECH", "NONSPEECH"), ("speech", "no speech")]
    grid = P.template_grid(instructions, labels)
    assert len(grid) == 3 * 2 * 2 == len(set(grid))
    assert {(t.instruction, t.speech_first, t.labels) for t in grid} == {
        (i, o, l) for i in instructions for o in (True, False) for l in labels}
    keep = P.PromptTemplate("I2?", False, ("speech", "no speech"))
    sub = P.template_grid(instructions, labels, max_templates=4, seed=3, keep=keep)
    assert len(sub) == 4 and keep in sub and set(sub) <= set(grid)
    assert sub == P.template_grid(instructions, labels, max_templates=4, seed=3, keep=keep)  # seeded


def test_swapped_letters_map_p_speech_to_the_letter_that_means_speech(tiny):
    model, processor = tiny
    audios = _clips(6, 1)
    swapped = P.PromptTemplate(REF.instruction, speech_first=False)
    raw = M.score(model, processor, audios, swapped.text)  # p(A), A now means NONSPEECH
    p, pred = P.score_prompt(model, processor, audios, swapped.text, swapped.speech_letter)
    np.testing.assert_allclose(p, 1 - raw.p_speech, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(pred, np.where(raw.logits[:, 1] >= raw.logits[:, 0], "speech", "nonspeech"))
    # Through the scorer the template's own letter is used; with A = speech it is lib.model's p_speech.
    scorer = _scorer(tiny)
    clips = _clipset(n=6)
    clips.audios = audios
    np.testing.assert_allclose(scorer.score(clips, swapped)[0], p)
    np.testing.assert_allclose(scorer.score(clips, REF)[0], M.score(model, processor, audios, REF.text).p_speech, rtol=1e-6)


# ------------------------------------------------------------------------------------------ OPRO parts
def test_meta_prompt_holds_the_top_history_in_ascending_order():
    history = [("first", 0.55), ("best", 0.91), ("worst", 0.20), ("middle", 0.70), ("tie-later", 0.55)]
    meta = P.build_meta_prompt(history, REF, history_size=4)
    assert "worst" not in meta  # only the top 4 are shown
    shown = ["first", "tie-later", "middle", "best"]
    positions = [meta.index(f"text:\n{s}\nscore:") for s in shown]
    assert positions == sorted(positions)
    assert "text:\nbest\nscore:\n91" in meta and "A) SPEECH\nB) NONSPEECH\nAnswer with A or B." in meta
    assert "<INS>" in meta and "</INS>" in meta
    with pytest.raises(ValueError, match="history"):
        P.build_meta_prompt(history, REF, meta_prompt="no placeholder here")


def test_candidate_cleaning():
    assert P.clean_candidate("Sure! <INS>Is a person talking?</INS> more text") == ("Is a person talking?", "ok")
    assert P.clean_candidate('  "Listen  carefully.\n\tSpeech or not?"  ')[0] == "Listen carefully. Speech or not?"
    assert P.clean_candidate("<|im_end|>Say<|AUDIO|> it\x03\ufffd") == ("Say it", "ok")  # no special tokens survive
    assert P.clean_candidate("") == (None, "empty after cleaning")
    assert P.clean_candidate(" \ufffd\x0f <|endoftext|> ") == (None, "empty after cleaning")
    assert P.clean_candidate("12 34 ?!")[0] is None
    long = " ".join(["word"] * 200)
    text, note = P.clean_candidate(long, max_chars=50)
    assert note == "truncated" and len(text) <= 50 and text.endswith("word")
    assert P.candidate_key("Is It  Speech?") == P.candidate_key(" is it speech? ")


class FixedProposals:
    """Proposals written in the test, to check the loop's bookkeeping (the scorer is the real model)."""

    def __init__(self, batches):
        self.batches, self.metas = list(batches), []

    def propose(self, meta_prompt, n, seed):
        self.metas.append(meta_prompt)
        return self.batches.pop(0)[:n]


def test_opro_records_rejected_and_duplicate_candidates_without_scoring_them(tiny):
    opt = FixedProposals([["<INS>Is someone speaking?</INS>", "\ufffd\x03", "does this audio clip contain human SPEECH?"],
                          ["is someone  speaking?", "<INS>Speech or not?</INS>", "<|im_end|>"]])
    res = P.opro_search(_scorer(tiny), _clipset(), opt, REF, _opro(opro_steps=2, opro_candidates_per_step=3), progress=False)
    t = res.trajectory
    assert t["status"].tolist() == ["initial", "scored", "rejected", "duplicate", "duplicate", "scored", "rejected"]
    assert t.loc[t["status"].isin(["rejected", "duplicate"]), "dev_balanced_accuracy"].isna().all()
    assert t.loc[t["status"] == "rejected", "instruction"].isna().all()  # nothing invented
    assert "text:\nIs someone speaking?\nscore:" in opt.metas[1]  # step 2 sees step 1's scored candidate


@pytest.mark.slow  # about 20 s of CPU: an OPRO loop that generates with the tiny model
def test_opro_loop_on_the_tiny_model_returns_a_trajectory_whose_best_is_the_max(tiny):
    model, processor = tiny
    opt = P.TextOptimizer.from_audio_model(model, processor, max_new_tokens=24)
    settings = _opro(opro_steps=2, opro_candidates_per_step=2, opro_max_new_tokens=24, seed=7)
    res = P.opro_search(_scorer(tiny), _clipset(), opt, REF, settings, progress=False)
    t = res.trajectory
    assert len(t) == 1 + 2 * 2 and t["step"].tolist() == [0, 1, 1, 2, 2] and len(res.meta_prompts) == 2
    assert t.loc[0, "status"] == "initial" and t.loc[0, "instruction"] == REF.instruction
    scored = t[t["dev_balanced_accuracy"].notna()]
    assert res.best_dev == scored["dev_balanced_accuracy"].max()
    assert res.best.instruction == scored.loc[scored["dev_balanced_accuracy"].idxmax(), "instruction"]
    assert res.best.text.endswith("\nA) SPEECH\nB) NONSPEECH\nAnswer with A or B.")  # the template is fixed
    assert np.all(np.diff(t["best_so_far"].to_numpy()) >= 0) and t["best_so_far"].iloc[-1] == res.best_dev
    assert res.reference_dev == t.loc[0, "dev_balanced_accuracy"]
    # Seeded: the same call proposes the same candidates.
    again = P.opro_search(_scorer(tiny), _clipset(), opt, REF, settings, progress=False)
    pd.testing.assert_frame_equal(again.trajectory, t)


def test_template_search_picks_the_dev_maximum(tiny):
    grid = P.template_grid([REF.instruction, "Is a person speaking?"], [("SPEECH", "NONSPEECH")])
    res = P.template_search(_scorer(tiny), _clipset(), grid, REF, progress=False)
    assert len(res.trajectory) == 4 and res.trajectory["is_reference"].sum() == 1
    assert res.best_dev == res.trajectory["dev_balanced_accuracy"].max()
    assert res.best == grid[int(res.trajectory["dev_balanced_accuracy"].idxmax())]


# ------------------------------------------------------------------------------------------ isolation
def _bank(tmp_path) -> pd.DataFrame:
    rows = []
    for split, n, seed in (("train", 4, 10), ("dev", 8, 11), ("test", 8, 12)):
        for i, x in enumerate(_clips(n, seed)):
            path = tmp_path / f"{split}{i}.wav"
            sf.write(path, x, SR, subtype="FLOAT")
            rows.append({"clip_id": f"{split}{i}", "label": "speech" if i % 2 == 0 else "nonspeech", "split": split,
                         "group_id": f"g{split}{i // 2}", "audio_path": str(path), "path": path.name})
    return pd.DataFrame(rows)


def test_selection_never_reads_the_test_split(tiny, tmp_path):
    model, processor = tiny
    bank = _bank(tmp_path)
    opt = P.TextOptimizer.from_audio_model(model, processor, max_new_tokens=16)
    settings = _opro(opro_steps=1, opro_candidates_per_step=2, opro_max_new_tokens=16, seed=3)
    templates = P.TemplateSettings.of(CFG, template_instructions=[REF.instruction, "Is a person speaking?"],
                                       template_labels=[REF.labels, ("speech", "no speech")])

    def select(b):
        return P.select_prompts(b, [_scorer(tiny)], opt, REF, settings, templates, normalization="rms", progress=False)

    first = select(bank)
    tampered = bank.copy()
    test = tampered["split"] == "test"
    tampered.loc[test, "label"] = tampered.loc[test, "label"].map({"speech": "nonspeech", "nonspeech": "speech"})
    tampered.loc[test, "audio_path"] = str(tmp_path / "no-such-file.wav")  # any read of test audio would fail
    second = select(tampered)
    assert first.results.keys() == second.results.keys()
    for key, res in first.results.items():
        pd.testing.assert_frame_equal(res.trajectory, second.results[key].trajectory)
        assert res.best == second.results[key].best and res.best_dev == second.results[key].best_dev
    assert set(first.dev_clip_ids) == set(bank.loc[bank.split == "dev", "clip_id"])
    with pytest.raises(Exception):
        P.load_split(tampered, "test")  # the tampered test split really is unreadable


def test_search_functions_refuse_any_split_but_dev(tiny):
    test = _clipset("test")
    with pytest.raises(ValueError, match="dev split only"):
        P.template_search(_scorer(tiny), test, [REF], REF, progress=False)
    with pytest.raises(ValueError, match="dev split only"):
        P.opro_search(_scorer(tiny), test, FixedProposals([]), REF, _opro(opro_steps=1), progress=False)
    with pytest.raises(ValueError, match="test split"):
        P.evaluate_prompt(_scorer(tiny), _clipset("dev"), REF, system="x", run_id="r")


def test_evaluate_prompt_writes_the_predictions_table(tiny):
    swapped = P.PromptTemplate(REF.instruction, speech_first=False)
    df = P.evaluate_prompt(_scorer(tiny), _clipset("test"), swapped, system="qwen2audio-zeroshot+template", run_id="r", seed=0)
    assert list(df.columns) == ["run_id", "system", "variant", "seed", "clip_id", "label", "pred", "p_speech", "model"]
    assert ((df["p_speech"] >= 0.5) == (df["pred"] == "speech")).all()


def test_dev_subsample_is_stratified_and_seeded():
    df = pd.DataFrame({"clip_id": [str(i) for i in range(100)], "label": ["speech"] * 70 + ["nonspeech"] * 30})
    sub = data.subset(df, 20, seed=1, by_label=True)  # the book's one subset picker (lib.data.splits)
    assert len(sub) == 20 and (sub["label"] == "speech").sum() == 14
    assert sub.equals(data.subset(df, 20, seed=1, by_label=True)) and list(sub.index) == sorted(sub.index)
    assert data.subset(df, None, by_label=True).equals(df)
    plain = data.subset(df, 20, seed=1)  # without by_label: a plain seeded draw, as split_rows makes
    assert len(plain) == 20 and plain.equals(df.sample(n=20, random_state=1).sort_index())


def test_optimizer_from_a_qwen2_audio_checkpoint_uses_its_language_model():
    opt = P.TextOptimizer.from_pretrained(M.TINY, max_new_tokens=8)
    assert "language model" in opt.name and opt.processor is not None
    out = opt.propose(P.build_meta_prompt([(REF.instruction, 0.5)], REF), n=2, seed=1)
    assert len(out) == 2 and out == opt.propose(P.build_meta_prompt([(REF.instruction, 0.5)], REF), n=2, seed=1)


def test_settings_come_from_the_profile_only():
    with pytest.raises(TypeError):
        P.OproSettings()  # no defaults of its own: the profile holds them
    ci = config.resolve("ci")
    opro = P.OproSettings.of(ci)
    assert (opro.opro_steps, opro.opro_candidates_per_step, opro.opro_history_size) == (1, 2, ci["opro_history_size"])
    assert P.OproSettings.of(ci, opro_steps=4).opro_steps == 4
    with pytest.raises(config.ConfigError, match="OPRO"):
        P.OproSettings.of(ci, steps=4)  # the parameter's name, not a short one
    words = dict(template_instructions=["Is a person speaking?", REF.instruction], template_labels=[["speech", "no speech"]])
    grid = P.TemplateSettings.of(CFG, **words).grid(REF)  # cpu: template_search_max null, the whole grid
    assert grid[0] == REF  # the hand-written instruction and labels come first, in the A = speech order
    assert len(grid) == 2 * 2 * 2 and len({t.instruction for t in grid}) == 2
    subset = P.TemplateSettings.of(ci, **words).grid(REF)  # ci: a seeded subset of 4 that keeps the hand-written one
    assert len(subset) == ci["template_search_max"] == 4 and REF in subset and set(subset) <= set(grid)


def test_best_table_and_status_counts():
    traj = pd.DataFrame({"step": [0, 1, 1, 1], "status": ["initial", "scored", "rejected", "duplicate"],
                         "dev_balanced_accuracy": [0.5, 0.75, np.nan, np.nan]})
    assert P.status_counts(traj) == {"scored": 1, "rejected": 1, "duplicate": 1}
    better = REF.with_instruction("Is a person speaking?")
    res = P.SearchResult("opro", "qwen2audio-zeroshot", traj, better, 0.75, REF, 0.5)
    same = P.SearchResult("template", "qwen2audio-zeroshot", traj.iloc[:1], REF, 0.5, REF, 0.5)
    sel = P.Selection(["d0"], {("qwen2audio-zeroshot", "opro"): res, ("qwen2audio-zeroshot", "template"): same})
    best = P.chapter.best_table(sel, REF).set_index("method")
    assert best.loc["opro", "candidates_scored"] == 2 and best.loc["opro", "dev_gain"] == pytest.approx(0.25)
    assert not best.loc["opro", "is_hand_written"] and best.loc["template", "is_hand_written"]
    assert best.loc["opro", "best_prompt"].startswith("Is a person speaking?\nA) SPEECH")
    assert list(P.chapter.by_method(sel, "template")) == ["qwen2audio-zeroshot"]
