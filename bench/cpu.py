"""CPU benchmark (``make bench``): the tiny Qwen2-Audio and the baselines, scoring and training, on this machine.

    python -m bench.cpu [--clips 256] [--out bench/out]

What it times, each from the WAV files on disk (the book's loader :func:`lib.data.load_clip`, rms
normalization) to the scores:

* the tiny model (``model_name_or_path: tiny``, fp32, the cpu profile's path): scoring clips/s at batch 1 and
  at the cpu profile's ``eval_batch_size``, the book's path (short encoder) against the plain 30-s padded path;
  training clips/s (one epoch of the cpu profile's recipe: LoRA on q,k,v,o + the audio tower and projector,
  micro-batch 16, the book's checkpoints included);
* the baselines of :mod:`lib.baselines`: Silero VAD, WebRTC VAD, the energy detector and the log-mel classifier
  (scoring clips/s; fit time on the train clips for the two fitted ones).

Clips are synthetic (tones and noise, a 100-1000 ms mix): speed does not depend on what they hold. The numbers
are for this machine (``os.cpu_count()`` cores) and printed with its description; ``BENCHMARKS.md`` keeps the
latest. Results: ``bench_cpu.json`` and ``bench_cpu.md`` in ``--out`` (default ``bench/out``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SR = 16000


def synth(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SR
    x = 0.2 * rng.uniform(0.2, 1.0) * np.sin(2 * np.pi * rng.uniform(80, 3000) * t) + 0.05 * rng.standard_normal(n)
    return np.clip(x, -1, 1).astype(np.float32)


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="CPU benchmark: tiny model and baselines")
    ap.add_argument("--clips", type=int, default=256, help="clips scored per figure (batch-1 figures: a quarter)")
    ap.add_argument("--train-clips", type=int, default=128)
    ap.add_argument("--out", default=str(Path(__file__).parent / "out"))
    args = ap.parse_args(argv)

    import torch
    import transformers

    from lib import audio, baselines, config, data
    from lib import model as M
    from lib import train as T

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config.resolve("cpu")
    eval_batch = int(cfg.get("eval_batch_size", 64))
    res: dict = {"env": {"date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
                         "python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__, "cpu_count": os.cpu_count(),
                         "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
                         "load_average_1min_at_start": round(os.getloadavg()[0], 2),
                         "processor": platform.processor() or platform.machine()},
                 "rows": []}
    print(json.dumps(res["env"]), flush=True)

    def row(system: str, what: str, n: int, seconds: float, **extra) -> None:
        r = {"system": system, "what": what, "clips": n, "seconds": round(seconds, 3),
             "clips_per_s": round(n / seconds, 1), **extra}
        res["rows"].append(r)
        print(f"{system:22s} {what:34s} {n:5d} clips {seconds:8.2f} s {r['clips_per_s']:9.1f} clips/s "
              + " ".join(f"{k}={v}" for k, v in extra.items()), flush=True)

    rng = np.random.default_rng(0)
    n = args.clips
    with tempfile.TemporaryDirectory() as tmp:
        lens = rng.integers(1600, 16001, n + 2 * args.train_clips)
        paths = [audio.write_audio(Path(tmp) / f"{i:05d}.wav", synth(int(k), rng)) for i, k in enumerate(lens)]
        labels = list(rng.choice(["speech", "nonspeech"], len(paths)))
        test, train_p, dev_p = paths[:n], paths[n:n + args.train_clips], paths[n + args.train_clips:]
        y_train, y_dev = labels[n:n + args.train_clips], labels[n + args.train_clips:]

        def load(ps):
            return [data.load_clip(p, "rms") for p in ps]

        # ------------------------------------------------------------------------------------ tiny model
        model, processor = M.load_model(M.TINY, torch_dtype="float32", device="cpu")
        M.score(model, processor, load(test[:8]), batch_size=8)  # warm-up
        for batch, k, short in ((1, n // 4, True), (eval_batch, n, True), (eval_batch, n // 4, False)):
            t0 = time.perf_counter()
            clips = load(test[:k])
            M.score(model, processor, clips, batch_size=batch, short_encoder=short)
            row("tiny qwen2-audio", f"score batch {batch}, {'short encoder' if short else 'plain 30-s padding'}", k,
                time.perf_counter() - t0)
        tc = config.section(cfg, T.TrainConfig, epochs=1)
        t0 = time.perf_counter()
        peft_model = T.apply_lora(model, tc)
        with tempfile.TemporaryDirectory() as tdir:
            result = T.train(peft_model, processor, load(train_p), y_train, tc, tdir, progress=False)
        row("tiny qwen2-audio", f"train 1 epoch, micro-batch {tc.micro_batch_size}", len(train_p),
            time.perf_counter() - t0, trainable_params=result.counts["trainable_params"])
        del model, peft_model

        # ------------------------------------------------------------------------------------- baselines
        clips = load(test)
        train_clips, dev_clips = load(train_p), load(dev_p)
        for make in (lambda: baselines.SileroVAD(), lambda: baselines.WebRTCVAD()):
            scorer = make()
            scorer.score(clips[:4])
            _, s = timed(scorer.score, clips)
            row(scorer.name, "score", len(clips), s)
        for make in (lambda: baselines.EnergyDetector(), lambda: baselines.LogMelClassifier()):
            scorer = make()
            _, fit_s = timed(scorer.fit, train_clips, y_train, dev_clips, y_dev)
            _, s = timed(scorer.score, clips)
            row(scorer.name, "score (fit on train + dev threshold)", len(clips), s, fit_s=round(fit_s, 2))

    lines = [f"CPU run {res['env']['date_utc']} UTC: {res['env']['cpu_count']} cores ({res['env']['processor']}), "
             f"torch {res['env']['torch']} ({res['env']['torch_threads']} threads), transformers "
             f"{res['env']['transformers']}, Python {res['env']['python']}; load average at start "
             f"{res['env']['load_average_1min_at_start']} (other processes share these cores: compare within a run).", "",
             "| system | what | clips | seconds | clips/s |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        extra = f" (fit {r['fit_s']} s)" if "fit_s" in r else ""
        lines.append(f"| {r['system']} | {r['what']} | {r['clips']} | {r['seconds']} | {r['clips_per_s']}{extra} |")
    (out / "bench_cpu.json").write_text(json.dumps(res, indent=1))
    (out / "bench_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
