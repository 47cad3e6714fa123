"""LoRA training on the tiny Qwen2-Audio: variants, loss masking, seeding, checkpoints, resume, systems."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from lib import model as M
from lib import systems
from lib import train as T
from _synth_audio import clip_set

ROOT = Path(__file__).resolve().parent.parent
FAST = dict(epochs=2, micro_batch_size=4, grad_accum_steps=2, checkpoint_every_steps=2, learning_rate=2e-3,
            warmup_ratio=0.1, extra_trainable=["multi_modal_projector"], eval_batch_size=16)


def _tc(**kw) -> T.TrainConfig:
    """The seed's recipe (the full profile's) made fast for the tiny model."""
    return T.profile_recipe("full", **{**FAST, **kw})


class Stop(Exception):
    """The tests' stand-in for a kill, raised by an ``on_step`` callback."""


def _stop_after(steps: int, seen: list[int]):
    """An ``on_step`` callback that stops the run after ``steps`` optimizer steps of this call (noted in ``seen``)."""
    def on_step(step: T.Step) -> None:
        seen.append(step.step)
        if len(seen) >= steps:
            raise Stop(f"stopped after {len(seen)} steps (step {step.step})")
    return on_step


def _fresh(tc: T.TrainConfig, **load):
    model, processor = M.load_model("tiny", **load)
    return T.apply_lora(model, tc), processor


@pytest.fixture(scope="module")
def clips():
    return clip_set(20, seed=11, lengths=(1600, 3200, 4800, 2400))


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("variant", ["attn", "attn_mlp"])
def test_lora_variants_adapt_only_the_language_model(variant):
    model, _ = _fresh(_tc(lora_variant=variant, extra_trainable=["multi_modal_projector", "audio_tower"]))
    adapted = T.adapted_modules(model)
    n_layers = M.unwrap(model).config.text_config.num_hidden_layers
    assert len(adapted) == n_layers * len(T.LORA_VARIANTS[variant])
    assert all(".language_model.layers." in name for name in adapted)
    assert not any("audio_tower" in name or "multi_modal_projector" in name for name in adapted)
    assert {name.rsplit(".", 1)[-1] for name in adapted} == set(T.LORA_VARIANTS[variant])
    # the audio tower has q/k/v projections too: none of them carries LoRA, trained whole or not
    assert sorted(T.trainable_modules(model)) == ["base_model.model.model.audio_tower",
                                                  "base_model.model.model.multi_modal_projector"]
    assert M.uses_short_encoder(model)


def test_adapter_report_is_read_from_the_saved_adapter(tmp_path):
    tc = _tc(extra_trainable=[], lora_r=8)
    model, _ = _fresh(tc)
    model.save_pretrained(tmp_path / "adapter")
    report = T.adapter_report(tmp_path / "adapter")
    expected = sum(8 * (m.in_features + m.out_features) for n, m in model.named_modules()
                   if n in set(T.adapted_modules(model)))
    assert report["lora_params"] == expected == T.parameter_counts(model)["trainable_params"]
    assert report["extra_trainable_params"] == 0 and report["r"] == 8
    assert report["adapter_bytes"] > expected * 4  # fp32 weights plus the config
    with_extra, _ = _fresh(_tc())
    with_extra.save_pretrained(tmp_path / "extra")
    report = T.adapter_report(tmp_path / "extra")
    assert report["adapter_params"] == T.parameter_counts(with_extra)["trainable_params"]
    assert report["extra_trainable_params"] > 0


@pytest.mark.parametrize("masking", [True, False])
def test_loss_matches_hugging_face_labels(clips, masking):
    audios, labels = clips
    tc = _tc(loss_masking=masking)
    model, processor = _fresh(tc)
    model.eval()
    answers = [T.LABEL_TO_ANSWER[x] for x in labels[:6]]
    inputs = M.make_inputs(processor, audios[:6], tc.prompt, answers=answers)
    ids = inputs["input_ids"]
    if masking:  # only the answer token
        hf_labels = torch.full_like(ids, -100)
        pos = ids.shape[1] - len(processor.tokenizer("A<|im_end|>\n", add_special_tokens=False).input_ids)
        hf_labels[:, pos] = ids[:, pos]
        assert set(processor.tokenizer.convert_ids_to_tokens(ids[:, pos].tolist())) <= {"A", "B"}
    else:  # every text token; audio placeholders and padding are no targets
        hf_labels = ids.masked_fill((ids == model.config.audio_token_id) | (inputs["attention_mask"] == 0), -100)
    with torch.no_grad():
        ours = T.batch_loss(model, processor, audios[:6], answers, tc)
        ref = model(**inputs, labels=hf_labels).loss
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_training_is_seeded_bit_for_bit(clips, tmp_path):
    audios, labels = clips
    runs = []
    for i, seed in enumerate([0, 0, 1]):
        tc = _tc(seed=seed)
        model, processor = _fresh(tc)
        T.train(model, processor, audios, labels, tc, tmp_path / f"r{i}", progress=False)
        runs.append(_trainable(model))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_resume_after_a_crash_ends_with_the_uninterrupted_adapter(clips, tmp_path):
    audios, labels = clips
    dev = audios[:6], labels[:6]
    tc = _tc()
    whole, processor = _fresh(tc)
    full = T.train(whole, processor, audios, labels, tc, tmp_path / "whole", dev_audios=dev[0], dev_labels=dev[1],
                   progress=False)
    # 20 clips / micro 4 = 5 micro-batches -> 3 steps an epoch; crash at step 4 (mid-epoch 2, after
    # the checkpoint of step 3), then start again from a fresh process' point of view.
    model, processor = _fresh(tc)
    seen: list[int] = []
    with pytest.raises(Stop):
        T.train(model, processor, audios, labels, tc, tmp_path / "crashed", dev_audios=dev[0], dev_labels=dev[1],
                progress=False, on_step=_stop_after(4, seen))
    assert seen == [1, 2, 3, 4]
    assert T.latest_checkpoint(tmp_path / "crashed" / "checkpoints").name == "step-0000004"
    model, processor = _fresh(tc)
    seen = []
    with pytest.raises(Stop):  # once more, crashing before the next checkpoint
        T.train(model, processor, audios, labels, tc, tmp_path / "crashed", dev_audios=dev[0], dev_labels=dev[1],
                progress=False, on_step=_stop_after(1, seen))
    assert seen == [5]
    model, processor = _fresh(tc)
    resumed = T.train(model, processor, audios, labels, tc, tmp_path / "crashed", dev_audios=dev[0],
                      dev_labels=dev[1], progress=False)
    assert resumed.resumed_from == 4
    a, b = _trainable(whole), _trainable(model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.history.equals(full.history) and resumed.dev.equals(full.dev)
    assert len(full.history) == 6 and len(full.dev) == 2
    lrs = full.history["lr"].tolist()
    assert lrs[0] == 0.0 and max(lrs) == pytest.approx(tc.learning_rate) and lrs[-1] < lrs[1]  # warmup, then decay


def test_checkpoints_of_another_run_are_refused(clips, tmp_path):
    audios, labels = clips
    tc = _tc(epochs=1)
    model, processor = _fresh(tc)
    T.train(model, processor, audios, labels, tc, tmp_path / "run", progress=False)
    other = _tc(epochs=1, lora_variant="attn_mlp")
    model, processor = _fresh(other)
    with pytest.raises(T.CheckpointMismatchError, match="lora_variant"):
        T.train(model, processor, audios, labels, other, tmp_path / "run", progress=False)
    model, processor = _fresh(tc)
    with pytest.raises(T.CheckpointMismatchError, match="base_model"):
        T.train(model, processor, audios, labels, tc, tmp_path / "run", progress=False, base={"model_name_or_path": "x"})


@pytest.mark.parametrize("checkpointing", [False, True, "mlp"])
def test_a_frozen_encoder_keeps_no_activations(clips, checkpointing):
    audios, labels = clips
    tc = _tc(extra_trainable=[], gradient_checkpointing=checkpointing)
    model, processor = _fresh(tc)
    T.set_gradient_checkpointing(model, checkpointing)  # what train() does, including the trap's fix
    tower = M.unwrap(model).model.audio_tower
    seen = []
    hooks = [tower.conv1.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad)),
             tower.register_forward_hook(lambda m, i, o: seen.append(o.last_hidden_state.requires_grad))]
    model.train()
    loss = T.batch_loss(model, processor, audios[:4], [T.LABEL_TO_ANSWER[x] for x in labels[:4]], tc)
    loss.backward()
    for h in hooks:
        h.remove()
    assert seen == [False, False]
    assert all(p.grad is None for p in tower.parameters())
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def test_the_tiny_model_learns_a_synthetic_task(tmp_path):
    audios, labels = clip_set(48, seed=21, lengths=(3200, 4800, 6400))
    dev_a, dev_l = clip_set(24, seed=22, lengths=(3200, 4800, 6400))
    tc = _tc(epochs=3, micro_batch_size=8, grad_accum_steps=1, learning_rate=2e-3, checkpoint_every_steps=100,
             extra_trainable=["multi_modal_projector", "audio_tower", "lm_head"])
    model, processor = _fresh(tc)
    res = T.train(model, processor, audios, labels, tc, tmp_path / "learn", dev_audios=dev_a, dev_labels=dev_l,
                  progress=False)
    assert res.dev["dev_accuracy"].iloc[-1] >= 0.9
    # train() writes the history; the figure of it is lib.plots' (train_system draws it: see below)
    assert len(pd.read_csv(tmp_path / "learn" / "loss.csv")) == len(res.history) == 18
    assert pd.read_csv(tmp_path / "learn" / "dev.csv")["dev_accuracy"].tolist() == pytest.approx(res.dev["dev_accuracy"].tolist())
    assert not (tmp_path / "learn" / "loss_curve.png").exists()


def _cfg(**kw):
    from lib import config

    cfg = config.resolve("cpu")
    cfg.update(FAST)
    cfg.update(model_name_or_path="tiny")  # the unit tests' fast model (the cpu profile's is the mini model)
    cfg.update(kw)
    return cfg


def test_train_system_saves_a_system_that_predict_can_load(clips, tmp_path):
    audios, labels = clips
    out = T.train_system(_cfg(epochs=1), tmp_path, "lora_attn", audios, labels, dev_audios=audios[:4],
                         dev_labels=labels[:4], progress=False)
    info = yaml.safe_load((tmp_path / "systems" / "lora_attn" / "system.yaml").read_text())
    assert info["kind"] == "lora" and info["base_model"] == "tiny" and info["adapter"] == "adapter"
    assert info["summary"]["smoke"] is True and out["adapter_params"] == out["trainable_params"]
    scorer = systems.load_system(str(tmp_path))
    assert scorer.normalization == info["normalization"] == "rms"  # predict loads clips the way training saw them
    np.testing.assert_allclose(scorer.score(audios), M.score(out["model"], out["processor"], audios).p_speech,
                               atol=1e-6)
    assert (tmp_path / "training" / "lora_attn" / "loss_curve.png").exists()


def test_an_adapter_on_another_base_model_is_refused(clips, tmp_path):
    audios, labels = clips
    T.train_system(_cfg(epochs=1), tmp_path, "s", audios[:8], labels[:8], progress=False)
    other = M.build_tiny_model(tmp_path / "other-tiny", seed=1)
    with pytest.raises(M.AdapterMismatchError, match="differs"):
        systems.load_system(f"{tmp_path}:s", model_name_or_path=str(other))


def test_qlora_trains_on_cpu_with_nf4(clips, tmp_path):
    import bitsandbytes as bnb

    audios, labels = clips
    tc = _tc(epochs=2, extra_trainable=[], warmup_ratio=0.0)
    model, processor = _fresh(tc, quantization="nf4", torch_dtype="float32", device="cpu")
    q_proj = M.unwrap(model).model.language_model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit)
    frozen = q_proj.base_layer.weight.detach().clone()
    before = _trainable(model)
    res = T.train(model, processor, audios[:8], labels[:8], tc, tmp_path / "q", progress=False)
    after = _trainable(model)
    assert np.isfinite(res.history["loss"]).all()
    assert any(not torch.equal(before[k], after[k]) for k in before if "lora_B" in k)
    assert torch.equal(q_proj.base_layer.weight, frozen)


SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    from lib import config, train as T
    from _synth_audio import clip_set
    audios, labels = clip_set(40, seed=5, lengths=(1600, 3200))
    cfg = config.resolve("cpu"); cfg.update({fast!r}); cfg.update(model_name_or_path="tiny", epochs=3, micro_batch_size=2, grad_accum_steps=1,
                                                                checkpoint_every_steps=3)
    T.train_system(cfg, sys.argv[1], "s", audios, labels, progress=False)
""")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_gives_the_same_adapter(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), fast=FAST))
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "whole")], check=True, env=env)
    ckpts = tmp_path / "killed" / "training" / "s" / "checkpoints"
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "killed")], env=env)
    deadline = time.time() + 300
    while time.time() < deadline and not (ckpts.exists() and any(p.name >= "step-0000024" for p in ckpts.glob("step-*"))):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid epoch 2 (20 steps an epoch)
    proc.wait()
    assert not (tmp_path / "killed" / "systems" / "s" / "system.yaml").exists()
    subprocess.run([sys.executable, str(script), str(tmp_path / "killed")], check=True, env=env)
    a = load_file(str(tmp_path / "whole" / "systems" / "s" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "systems" / "s" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = yaml.safe_load((tmp_path / "killed" / "systems" / "s" / "system.yaml").read_text())["summary"]
    assert summary["resumed_from_step"] is not None and summary["resumed_from_step"] >= 24


@pytest.mark.slow
@pytest.mark.data
def test_the_tiny_model_learns_on_the_cpu_bank(data_dir, tmp_path):
    """The cpu profile end to end on the real corpus: far above chance on the test split (a SMOKE result)."""
    from lib import config, data, stats

    cfg = config.resolve("cpu", data_dir=str(data_dir))
    bank = data.load_bank(data.build_bank(cfg, progress=False))
    parts = {s: bank[bank["split"] == s] for s in ("train", "dev", "test")}
    clips = {s: data.load_clips(df, normalization=cfg["normalization"]) for s, df in parts.items()}
    out = T.train_system(cfg, tmp_path, "lora", clips["train"], parts["train"]["label"].tolist(),
                         train_ids=parts["train"]["clip_id"].tolist(), dev_audios=clips["dev"],
                         dev_labels=parts["dev"]["label"].tolist(), progress=False)
    p = systems.load_system(f"{tmp_path}:lora").score(clips["test"])
    correct = (p >= 0.5) == (parts["test"]["label"].to_numpy() == "speech")
    lo, hi = stats.wilson_interval(int(correct.sum()), len(correct))
    assert lo > 0.6, f"test accuracy {correct.mean():.3f} [{lo:.3f}, {hi:.3f}] after {out['train_wall_s']:.0f} s of training"


def test_mlp_checkpointing_recomputes_only_the_mlps_and_gives_the_same_gradients(clips):
    audios, labels = clips
    answers = [T.LABEL_TO_ANSWER[x] for x in labels[:4]]
    grads = {}
    for mode in ("none", "mlp", "layers", "layers:1", "none"):
        tc = _tc(extra_trainable=[], lora_dropout=0.0, gradient_checkpointing=mode)
        model, processor = _fresh(tc)
        T.set_gradient_checkpointing(model, mode)
        calls = []
        layers = M.unwrap(model).model.language_model.layers
        hooks = [layer.mlp.gate_proj.register_forward_hook(lambda m, i, o, k=k: calls.append(f"mlp{k}"))
                 for k, layer in enumerate(layers[:2])]
        hooks += [layer.self_attn.q_proj.register_forward_hook(lambda m, i, o, k=k: calls.append(f"attn{k}"))
                  for k, layer in enumerate(layers[:2])]
        model.train()
        T.batch_loss(model, processor, audios[:4], answers, tc).backward()
        for h in hooks:
            h.remove()
        once = ["attn0", "mlp0", "attn1", "mlp1"]  # the forward; then what backward recomputes (last layer first)
        expected = {"none": once, "mlp": once + ["mlp1", "mlp0"], "layers": once + ["attn1", "mlp1", "attn0", "mlp0"],
                    "layers:1": once + ["attn0", "mlp0"]}
        assert len(layers) == 2 and calls == expected[mode], (mode, calls)
        grads[mode] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        T.set_gradient_checkpointing(model, "none")
        assert all("forward" not in vars(layer.mlp) for layer in layers)
        assert not M.unwrap(model).is_gradient_checkpointing
    for mode in ("mlp", "layers", "layers:1"):
        for name, g in grads["none"].items():
            torch.testing.assert_close(grads[mode][name], g, rtol=1e-4, atol=1e-6, msg=f"{mode}: {name}")


def test_checkpointing_modes_are_checked():
    from lib import config

    assert _tc(gradient_checkpointing=True).gradient_checkpointing == "layers"
    assert _tc(gradient_checkpointing=False).gradient_checkpointing == "none"
    assert _tc(gradient_checkpointing="mlp").gradient_checkpointing == "mlp"
    assert config.section({**config.resolve("full"), "gradient_checkpointing": "layers:24"},
                          T.TrainConfig).gradient_checkpointing == "layers:24"
    for bad in ("attention", "layers:N", "layers:0", "layers:-1", "mlp:2"):
        with pytest.raises(ValueError, match=f"gradient_checkpointing '{bad}' unknown; valid: true, false, none, layers, layers:N"):
            _tc(gradient_checkpointing=bad)
