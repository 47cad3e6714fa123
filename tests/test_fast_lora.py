"""lib.model.fast.lora: the fused LoRA training layers do peft's arithmetic (bit for bit on CPU) and step aside
wherever peft's own forward is needed."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lib.model.fast import lora as FL
from lib import model as M
from lib import train as T
from _synth_audio import clip_set


@pytest.fixture(scope="module")
def clips():
    audios, labels = clip_set(8, seed=11, lengths=(1600, 3200, 4800, 2400))
    return audios, [T.LABEL_TO_ANSWER[x] for x in labels]


def _model(quantization="none", dtype="float32", **tc_kw):
    tc = T.profile_recipe("full", **{"extra_trainable": [], "lora_dropout": 0.05, "micro_batch_size": 4, **tc_kw})
    model, processor = M.load_model("tiny", quantization=quantization, torch_dtype=dtype, device="cpu")
    model = T.apply_lora(model, tc)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # peft starts B at zero: the LoRA branch, its dropout and A's gradient would all be zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model, processor, tc


def _backward_names(loss) -> list[str]:
    seen, stack, names = set(), [loss.grad_fn], []
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.append(type(fn).__name__)
        stack.extend(f for f, _ in fn.next_functions)
    return names


def _loss_and_grads(model, processor, tc, clips, seed=3):
    audios, answers = clips
    model.train()
    torch.manual_seed(seed)
    loss = T.batch_loss(model, processor, audios[:4], answers[:4], tc)
    names = _backward_names(loss)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads, names


@pytest.mark.parametrize("quantization,dtype", [("none", "float32"), ("none", "bfloat16"), ("nf4", "float32"),
                                                ("nf4", "bfloat16")])
def test_fused_layers_give_peft_loss_and_gradients_bit_for_bit(clips, quantization, dtype):
    results = {}
    for kernel in ("peft", "fused"):
        model, processor, tc = _model(quantization, dtype)
        switched = FL.use_fused_lora(model, kernel)
        assert FL.fused_layers(model) == switched
        results[kernel] = _loss_and_grads(model, processor, tc, clips)
    n_lora = len(T.adapted_modules(model))
    n_frozen_4bit = 3 * M.unwrap(model).config.text_config.num_hidden_layers if quantization == "nf4" else 0
    (loss0, g0, names0), (loss1, g1, names1) = results["peft"], results["fused"]
    # the fast path was taken, and its dropout is on: another seed draws other masks
    assert names1.count("LoRAProjectionBackward") == n_lora and "LoRAProjectionBackward" not in names0
    assert names1.count("FrozenLinear4bitBackward") == n_frozen_4bit
    assert not torch.equal(_loss_and_grads(model, processor, tc, clips, seed=4)[0], loss1)
    assert torch.equal(loss0, loss1)  # the forward is peft's, bit for bit
    assert g0.keys() == g1.keys() and len(g0) == 2 * n_lora
    # The last layer's gradients are bit for bit too. Further back they differ by rounding only: peft's graph
    # sums a shared input's gradient branch by branch (base and LoRA of q, k, v), the fused one projection by
    # projection; in bf16 the activation gradients then differ by up to an ulp.
    last = M.unwrap(model).config.text_config.num_hidden_layers - 1
    tol = 1e-5 if dtype == "float32" else 2.0 ** -6
    for name in g0:
        if f"layers.{last}." in name:
            assert torch.equal(g0[name], g1[name]), name
        scale = float(g0[name].abs().max())
        assert scale > 0, name
        torch.testing.assert_close(g1[name], g0[name], rtol=0.0, atol=tol * scale, msg=name)


@pytest.mark.parametrize("kernel", ["fused", "peft"])
@pytest.mark.parametrize("mode", ["layers", "layers:1", "mlp"])
def test_gradient_checkpointing_replays_the_dropout_masks(clips, mode, kernel):
    """Every checkpointing mode, with either layers, gives the gradients of no checkpointing (dropout on: the
    recomputation must draw the same masks); the frozen audio encoder keeps no activations."""
    model, processor, tc = _model()
    FL.use_fused_lora(model, "peft")
    loss0, reference, _ = _loss_and_grads(model, processor, tc, clips)
    model, processor, tc = _model(gradient_checkpointing=mode)
    T.set_gradient_checkpointing(model, mode)
    FL.use_fused_lora(model, kernel)
    encoder_grads = []
    conv = M.unwrap(model).model.audio_tower.conv1
    conv.register_forward_hook(lambda m, i, o: encoder_grads.append(o.requires_grad))
    loss, grads, names = _loss_and_grads(model, processor, tc, clips)
    assert encoder_grads == [False]
    torch.testing.assert_close(loss, loss0, rtol=1e-6, atol=0.0)
    assert grads.keys() == reference.keys()
    for name, g in reference.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_fused_layers_step_aside_for_scoring_disabled_adapters_and_mixed_batches(clips, monkeypatch):
    from peft.tuners.lora import Linear as LoraLinear

    model, processor, tc = _model()
    FL.use_fused_lora(model, "fused")
    calls = []
    peft_forward = LoraLinear.forward
    monkeypatch.setattr(LoraLinear, "forward", lambda self, x, *a, **k: calls.append(1) or peft_forward(self, x, *a, **k))
    audios, answers = clips
    inputs = M.make_inputs(processor, audios[:2], tc.prompt)
    layer = M.unwrap(model).model.language_model.layers[0].self_attn.q_proj
    x = torch.randn(2, 5, layer.in_features)
    model.eval()
    with torch.no_grad():  # scoring: peft's forward, unchanged
        M.hidden_states(model, inputs)
    assert len(calls) == len(T.adapted_modules(model))
    calls.clear()
    model.train()
    with model.disable_adapter():
        y = layer(x)
    assert calls == [1] and torch.equal(y, layer.base_layer(x))
    calls.clear()
    y = layer(x, adapter_names=["default", "__base__"])
    assert calls == [1] and y.shape == (2, 5, layer.out_features)
    calls.clear()
    layer(x).sum().backward()  # the plain training call: the fused path
    with torch.no_grad():  # training mode without autograd (e.g. torch's reentrant checkpointing): fused too
        torch.manual_seed(0)
        y_fused = layer(x)
        torch.manual_seed(0)
        y_peft = peft_forward(layer, x)
    assert calls == [] and torch.equal(y_fused, y_peft)


def test_switching_back_and_copies(clips):
    model, _, _ = _model()
    n = FL.use_fused_lora(model)
    assert n == len(T.adapted_modules(model)) and FL.fused_layers(model) == n
    twin = copy.deepcopy(model)  # the bound forwards follow the copy, not the original layers
    layer = M.unwrap(twin).model.language_model.layers[0].self_attn.q_proj
    assert vars(layer)["forward"].__self__ is layer
    assert FL.use_fused_lora(model, "peft") == 0 and FL.fused_layers(model) == 0
    assert all("forward" not in vars(m) for m in model.modules())
    # NF4: the 4-bit layers keep their decoded block scales while fused, and only then
    model, _, _ = _model("nf4")
    FL.use_fused_lora(model)
    scaled = [m for m in model.modules() if FL.ABSMAX_CACHE in vars(m)]
    n_layers = M.unwrap(model).config.text_config.num_hidden_layers
    assert len(scaled) == 7 * n_layers and all(getattr(m, FL.ABSMAX_CACHE).dtype == torch.float32 for m in scaled)
    FL.use_fused_lora(model, "peft")
    assert not any(FL.ABSMAX_CACHE in vars(m) for m in model.modules())
    with pytest.raises(ValueError, match="lora_kernel 'triton' unknown; valid: fused, peft"):
        FL.use_fused_lora(model, "triton")
    with pytest.raises(ValueError, match="lora_kernel 'fast' unknown"):
        T.profile_recipe("full", lora_kernel="fast")


def test_training_with_fused_layers_ends_with_peft_adapter(clips, tmp_path):
    audios, answers = clips
    labels = ["speech" if a == "A" else "nonspeech" for a in answers]
    adapters = {}
    for kernel in ("peft", "fused"):
        tc = T.profile_recipe("full", epochs=2, micro_batch_size=4, grad_accum_steps=1, learning_rate=2e-3,
                              lora_dropout=0.05, extra_trainable=[], checkpoint_every_steps=100, lora_kernel=kernel)
        model, processor = M.load_model("tiny", device="cpu")
        model = T.apply_lora(model, tc)
        result = T.train(model, processor, audios, labels, tc, tmp_path / kernel, progress=False)
        assert FL.fused_layers(model) == 0  # train() leaves the model as peft made it
        adapters[kernel] = ({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
                            result.history["loss"].tolist())
    (w0, loss0), (w1, loss1) = adapters["peft"], adapters["fused"]
    assert len(loss0) == len(loss1) == 4 and loss0[0] == loss1[0]
    np.testing.assert_allclose(loss1, loss0, rtol=1e-5)
    for name in w0:
        torch.testing.assert_close(w1[name], w0[name], rtol=1e-4, atol=1e-6, msg=name)


def test_fused_norms_swap_every_language_model_norm_and_change_gradients_by_rounding_only(clips):
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    model, processor, tc = _model()
    _, reference, _ = _loss_and_grads(model, processor, tc, clips)
    lm = M.unwrap(model).model.language_model
    n_norms = sum(type(m) is Qwen2RMSNorm for m in lm.modules())
    assert n_norms == 2 * lm.config.num_hidden_layers + 1
    with M.fused_norms(model, enabled=False):
        assert sum(type(m) is Qwen2RMSNorm for m in lm.modules()) == n_norms
    with M.fused_norms(model, enabled=True):
        assert not any(type(m) is Qwen2RMSNorm for m in lm.modules())
        _, grads, names = _loss_and_grads(model, processor, tc, clips)
    assert sum(type(m) is Qwen2RMSNorm for m in lm.modules()) == n_norms  # restored
    for name, g in reference.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
