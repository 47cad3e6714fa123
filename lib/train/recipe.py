"""The training recipe (:class:`TrainConfig`) and the rule for changing its batch sizes.

The recipe's values come from the profile (``lib/profiles/*.yaml``, the one place where defaults live),
read with ``lib.config.section(cfg, TrainConfig, **overrides)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ..model.fast import lora as FL
from ..config import resolve, section
from .gradient_checkpointing import checkpointing_mode

# The named LoRA variants (the recipe picks one; lib.train.lora wraps the model with it): the projections of the
# language model they adapt.
LORA_VARIANTS: dict[str, tuple[str, ...]] = {
    "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "attn_mlp": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}


def check_variant(variant: str) -> str:
    if variant not in LORA_VARIANTS:
        raise ValueError(f"lora_variant {variant!r} unknown; valid: {', '.join(LORA_VARIANTS)}")
    return variant


@dataclass
class TrainConfig:
    """The recipe. ``learning_rate`` belongs to the effective batch ``micro_batch_size x grad_accum_steps`` (the
    seed's: 16). The learning-rate rule when batches change:

    * the micro-batch changes and accumulation keeps the effective batch (e.g. 2 x 8 -> 16 x 1, to fill a GPU):
      the learning rate stays. Each optimizer step sees the mean loss over the same clips (micro-batches are
      weighted by their clip counts), so the optimization is the same up to float rounding;
    * the effective batch itself changes: scale the learning rate with the square root of the ratio (Adam's
      rule: :func:`scaled_learning_rate`); warmup stays a fraction of the steps. :func:`split_batch` gives the
      largest micro-batch that fits and the accumulation that keeps a given effective batch.
    """

    SECTION: ClassVar[str] = "training"  # how lib.config.section names this group in its messages

    lora_variant: str  # one of LORA_VARIANTS
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    extra_trainable: list[str]  # whole modules trained beside LoRA
    loss_masking: bool  # the loss on the answer token only (False: on every text token, the ablation)
    epochs: int
    learning_rate: float
    micro_batch_size: int
    grad_accum_steps: int
    lr_schedule: str  # a transformers.get_scheduler name
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float  # 0: no clipping
    checkpoint_every_steps: int
    eval_batch_size: int  # the dev split's scoring batch
    seed: int
    prompt: str
    gradient_checkpointing: bool | str  # False | "layers" (True) | "layers:N" | "mlp": set_gradient_checkpointing
    lora_kernel: str  # "fused": lib.model.fast.lora's layers (+ one-kernel RMSNorm on a GPU) | "peft": peft's forward

    def __post_init__(self) -> None:
        check_variant(self.lora_variant)
        self.extra_trainable = list(self.extra_trainable or [])
        self.gradient_checkpointing = checkpointing_mode(self.gradient_checkpointing)
        self.lora_kernel = FL.lora_kernel(self.lora_kernel)


def profile_recipe(profile: str = "cpu", **overrides: Any) -> TrainConfig:
    """The recipe of a profile as it stands (``full``: the seed's), ``overrides`` changing some of it."""
    return section(resolve(profile), TrainConfig, **overrides)


def scaled_learning_rate(learning_rate: float, from_batch: int, to_batch: int, rule: str = "sqrt") -> float:
    """The learning rate for effective batch ``to_batch`` given one tuned for ``from_batch``: ``sqrt`` (Adam/AdamW,
    the default), ``linear`` (SGD) or ``none``. Only for a changed *effective* batch: see :class:`TrainConfig`."""
    if from_batch < 1 or to_batch < 1:
        raise ValueError("batch sizes must be >= 1")
    ratio = to_batch / from_batch
    factors = {"sqrt": math.sqrt(ratio), "linear": ratio, "none": 1.0}
    if rule not in factors:
        raise ValueError(f"rule {rule!r} unknown; use one of {', '.join(factors)}")
    return learning_rate * factors[rule]


def split_batch(effective_batch: int, max_micro_batch: int) -> tuple[int, int]:
    """``(micro_batch_size, grad_accum_steps)``: the largest micro-batch <= ``max_micro_batch`` that divides
    ``effective_batch``, and the accumulation that keeps the effective batch exactly."""
    if effective_batch < 1 or max_micro_batch < 1:
        raise ValueError("batch sizes must be >= 1")
    micro = max(d for d in range(1, min(effective_batch, max_micro_batch) + 1) if effective_batch % d == 0)
    return micro, effective_batch // micro
