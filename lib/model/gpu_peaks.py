"""GPU memory peaks of a chapter, recorded for the book runner (GPU runs only)."""
from __future__ import annotations

import os

GPU_PEAKS_ENV = "SPEECHBOOK_GPU_PEAKS_FILE"
_GPU_PEAKS_RECORDING = False


def record_gpu_peaks(interval_s: float = 1.0) -> None:
    """Where the book runner asks for it (``$SPEECHBOOK_GPU_PEAKS_FILE``, set per chapter by
    :func:`lib.book.run_book`), keep this process's peak GPU memory (allocated and reserved by PyTorch) in that
    JSON file: rewritten every ``interval_s`` by a daemon thread and once more at exit, so the runner can record
    each chapter's peak in ``status.json`` even though chapters run in their own kernels."""
    global _GPU_PEAKS_RECORDING
    path = os.environ.get(GPU_PEAKS_ENV)
    if not path or _GPU_PEAKS_RECORDING:
        return
    import atexit
    import threading
    import time

    import torch

    def write() -> None:
        try:
            data = {"max_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                    "max_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}
            from .. import io

            io.write_json(path, data)
        except Exception:  # noqa: BLE001 - a record of memory must never break a chapter
            pass

    def loop() -> None:
        while True:
            write()
            time.sleep(interval_s)

    _GPU_PEAKS_RECORDING = True
    threading.Thread(target=loop, daemon=True, name="speechbook-gpu-peaks").start()
    atexit.register(write)
