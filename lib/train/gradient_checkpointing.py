"""Gradient checkpointing: recompute activations in backward instead of keeping them, to train in less memory.

The modes trade memory for time (their costs on the 7B: BENCHMARKS.md, "v4c. all checkpointing modes"):

* ``"layers"``: every decoder layer (Hugging Face's ``gradient_checkpointing_enable``): the least memory, but
  every layer's forward runs twice.
* ``"layers:N"``: only the first N layers of the language model: memory in between, in proportion; the time is
  not in proportion, because most of the cost comes with checkpointing at all.
* ``"mlp"``: only each language-model layer's MLP; attention (and its LoRA layers) run once. The MLP holds
  about a quarter of a layer's activations.
"""
from __future__ import annotations

from .. import model as M

CHECKPOINTING_MODES = ("none", "layers", "mlp")  # and "layers:N"


def checkpointing_mode(value: bool | str | None) -> str:
    """``gradient_checkpointing`` as one of :data:`CHECKPOINTING_MODES` or ``"layers:N"`` (``True`` = "layers",
    ``False`` = "none")."""
    mode = {True: "layers", False: "none", None: "none"}[value] if isinstance(value, (bool, type(None))) else str(value)
    head, _, count = mode.partition(":")
    if mode in CHECKPOINTING_MODES or (head == "layers" and count.isdigit() and int(count) > 0):
        return mode
    raise ValueError(f"gradient_checkpointing {value!r} unknown; valid: true, false, none, layers, layers:N "
                     f"(the first N language-model layers, N >= 1), mlp")


def set_gradient_checkpointing(model, mode: bool | str) -> None:
    """Switch ``model`` (a peft model) to checkpointing ``mode`` (see the module doc), or off with ``"none"``."""
    import torch
    import torch.utils.checkpoint as cp

    mode = checkpointing_mode(mode)
    base = M.unwrap(model)
    if mode.startswith("layers"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # gradient_checkpointing_enable hooks the input embeddings (for Qwen2-Audio: the frozen audio
        # encoder's first convolution) so that they require grad: the encoder would keep its activations.
        model.disable_input_require_grads()
        tower = base.model.audio_tower
        if not any(p.requires_grad for p in tower.parameters()):  # runs without autograd: nothing to recompute
            for module in tower.modules():
                if hasattr(module, "gradient_checkpointing"):
                    module.gradient_checkpointing = False
        if ":" in mode:
            for layer in base.model.language_model.layers[int(mode.split(":")[1]):]:
                layer.gradient_checkpointing = False
    elif getattr(base, "is_gradient_checkpointing", False):
        base.gradient_checkpointing_disable()
    for layer in base.model.language_model.layers:
        mlp = layer.mlp
        if "forward" in vars(mlp):
            del mlp.forward
        if mode == "mlp":
            def forward(x, _mlp=mlp):
                cls_forward = type(_mlp).forward  # looked up per call: scoring may swap in the fused class
                if _mlp.training and torch.is_grad_enabled():
                    return cp.checkpoint(cls_forward, _mlp, x, use_reentrant=False)
                return cls_forward(_mlp, x)
            mlp.forward = forward
