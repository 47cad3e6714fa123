"""speechbook's package: the logic behind the notebooks (see DESIGN.md for the contracts between chapters).

The one place where harmless third-party noise is silenced, so the chapters print only what matters:

* bitsandbytes, imported by transformers and peft, logs a warning block on CPUs with AVX512-BF16 ("Failed
  to load CPU gemm_4bit_forward from kernels-community ... pip install kernels"): its optional fast CPU
  kernel for 4-bit matrices would be fetched from the Hugging Face hub, which these machines cannot reach.
  The book never runs a 4-bit model on a CPU (NF4 is for CUDA only; the cpu profiles load float32), so
  the kernel is never needed. Only that message is dropped; every other bitsandbytes message still shows.
"""
from __future__ import annotations

import logging

HARMLESS_LOG_MESSAGES = {
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
}


class _DropHarmless(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


for _name, _prefixes in HARMLESS_LOG_MESSAGES.items():
    _logger = logging.getLogger(_name)
    if not any(isinstance(f, _DropHarmless) for f in _logger.filters):
        _logger.addFilter(_DropHarmless(_prefixes))
