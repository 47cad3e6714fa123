"""The GPU fast path of :mod:`lib.model`, switched on by one flag: ``lib.model.score(..., fast=True)`` (the default
``fast=None`` turns it on when the model is on CUDA, off on the CPU).

Nothing here changes what the model computes beyond float rounding; each piece has a test proving it against the
plain path (``tests/test_fast_scoring.py``, ``tests/test_fast_lora.py``):

* :mod:`.scorer` -- the scorer with the speed-ups below and a worker thread that prefetches the next batches;
* :mod:`.prefix` -- the shared prompt prefix, computed once as cached keys/values (:class:`SharedPrefix`);
* :mod:`.kernels` -- fused elementwise kernels (one-kernel RMSNorm by class swapping, ``torch.compile`` of the MLP's
  gating and the rotary embedding) and attention kept off cuDNN;
* :mod:`.lora` -- LoRA training layers with one autograd function per projection (training's ``lora_kernel:
  fused``).
"""
from __future__ import annotations

from .kernels import attention_backends, fused_kernels, fused_norms, scoring_kernels
from .lora import fused_layers, fused_training, lora_kernel, use_fused_lora
from .prefix import SharedPrefix, prompt_prefix, with_prefix
from .scorer import prefetched, score

__all__ = ["SharedPrefix", "attention_backends", "fused_kernels", "fused_layers", "fused_norms", "fused_training",
           "lora_kernel", "prefetched", "prompt_prefix", "score", "scoring_kernels", "use_fused_lora", "with_prefix"]
