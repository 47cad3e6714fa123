"""CPU time of the mini model's two candidate encoders, side by side in one process (the ratio is what the book uses:
it holds on a busy machine where the absolute times do not). Usage: ``python -m bench.encoder_time``.
Raw output behind the book's choice: bench/runs/2026-12-02_encoder_time.txt."""
from __future__ import annotations

import time

import numpy as np


def main() -> None:
    import torch

    from lib import model as M

    torch.set_num_threads(1)  # as the book runs the mini model (lib.model.cpu_threads_for)
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(int(16000 * d)).astype(np.float32) * 0.1 for d in [0.1, 0.2, 0.5, 1.0] * 16]
    models = {n: M.load_model(n) for n in ("mini", "mini-base")}
    times: dict[str, list[float]] = {}
    for _ in range(3):
        for name, (model, processor) in models.items():
            model.speechbook_encoder_cache = M.EncoderCache()  # empty, in memory: every clip is encoded
            t0 = time.perf_counter()
            M.encoder_outputs(model, processor, clips, batch_size=16)
            times.setdefault(name, []).append((time.perf_counter() - t0) / len(clips) * 1000)
    for name, v in times.items():
        print(f"{name}: encoder {min(v):.1f} ms per clip (best of 3 passes over 64 clips of 100-1000 ms, 1 thread)")
    print(f"ratio base / tiny.en: {min(times['mini-base']) / min(times['mini']):.2f}")
    group_against_alone(models["mini"], clips)


def group_against_alone(mini, clips) -> None:
    """The encoder cache's cost per clip: equal-length clips in fixed groups of lib.model.ENCODE_GROUP rows (what it
    does) against each clip alone (what it did before; both give batch-independent outputs), side by side."""
    from bench.switches import encode_group
    from lib import model as M

    model, processor = mini
    alone: list[float] = []
    grouped: list[float] = []
    for _ in range(3):
        with encode_group(1):  # groups of one row: each clip alone
            model.speechbook_encoder_cache = M.EncoderCache()
            t0 = time.perf_counter()
            M.encoder_outputs(model, processor, clips, batch_size=64)
            alone.append((time.perf_counter() - t0) / len(clips) * 1000)
        model.speechbook_encoder_cache = M.EncoderCache()
        t0 = time.perf_counter()
        M.encoder_outputs(model, processor, clips, batch_size=64)
        grouped.append((time.perf_counter() - t0) / len(clips) * 1000)
    print(f"encoder cache, each clip alone: {min(alone):.1f} ms per clip; in groups of {M.ENCODE_GROUP}: "
          f"{min(grouped):.1f} ms per clip; ratio {min(alone) / min(grouped):.2f}")


if __name__ == "__main__":
    main()
