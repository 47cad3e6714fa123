"""LoRA on the language model: wrapping a model with peft, and what the adapter holds.

The named variants (:data:`lib.train.recipe.LORA_VARIANTS`; ``attn``: q,k,v,o; ``attn_mlp``: + gate, up, down)
are restricted to the language model by a regular expression over module names; ``extra_trainable`` names whole modules trained beside LoRA (peft
``modules_to_save``). The tiny model has random weights, so the cpu profile trains its projector too; the
real model keeps its audio tower and projector frozen.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .recipe import LORA_VARIANTS, TrainConfig, check_variant


def target_modules_regex(variant: str) -> str:
    """Full-match regex for peft: the variant's projections inside the language model only."""
    names = "|".join(LORA_VARIANTS[check_variant(variant)])
    return rf".*language_model\.layers\.\d+\.(self_attn|mlp)\.({names})"


def lora_config(variant: str, r: int, alpha: int, dropout: float, extra_trainable: Sequence[str] = ()):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                      target_modules=target_modules_regex(variant),
                      modules_to_save=list(extra_trainable) or None)


def apply_lora(model, tc: TrainConfig):
    """Wrap ``model`` in a trainable peft model (LoRA weights initialised from ``tc.seed``)."""
    import torch
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tc.seed)
        peft_model = get_peft_model(model, lora_config(tc.lora_variant, tc.lora_r, tc.lora_alpha, tc.lora_dropout,
                                                       tc.extra_trainable))
    return peft_model


def adapted_modules(peft_model) -> list[str]:
    """Names of the modules that carry a LoRA adapter."""
    from peft.tuners.lora import LoraLayer

    return [name for name, module in peft_model.named_modules() if isinstance(module, LoraLayer)]


def trainable_modules(peft_model) -> list[str]:
    """Whole modules trained beside LoRA (peft ``modules_to_save``)."""
    from peft.utils.other import ModulesToSaveWrapper

    return [name for name, module in peft_model.named_modules() if isinstance(module, ModulesToSaveWrapper)]


def parameter_counts(model) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": int(trainable), "total_params": int(total)}


def adapter_report(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    """Parameter count and size on disk, read from the saved adapter itself."""
    from safetensors import safe_open

    adapter_dir = Path(adapter_dir)
    weights = adapter_dir / "adapter_model.safetensors"
    n_lora = n_other = 0
    with safe_open(str(weights), "pt") as f:
        for key in f.keys():
            n = int(np.prod(f.get_slice(key).get_shape()))
            if "lora_" in key:
                n_lora += n
            else:
                n_other += n
    size = sum(p.stat().st_size for p in adapter_dir.rglob("*") if p.is_file())
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    return {"adapter_params": n_lora + n_other, "lora_params": n_lora, "extra_trainable_params": n_other,
            "adapter_bytes": int(size), "adapter_mb": round(size / 2**20, 3), "r": cfg.get("r"),
            "lora_alpha": cfg.get("lora_alpha"), "target_modules": cfg.get("target_modules"),
            "modules_to_save": cfg.get("modules_to_save")}
