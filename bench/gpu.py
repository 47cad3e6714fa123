"""GPU benchmark of the book's model path on the Qwen2-Audio-7B architecture with random weights.

    python -m bench.gpu --only check,scoring,steady   # about 6 minutes on an H200
    python -m bench.gpu --only training,scale          # about 7 minutes
    python -m bench.gpu --quick    # fewer clips, the plain 2 x 8 recipe for one epoch only
    python -m bench.gpu --small --device cpu   # a dry run of every step on a reduced config, on the CPU

The run judges itself: every target of :data:`bench.targets.TARGETS` is printed as met, missed or not measured
(a part left out by ``--only``), every correctness check as passed or FAILED, and the exit status is non-zero
on a miss (2) or a failed check (3) (``--no-targets``: misses are reported, not enforced).

One run prints, side by side, for bf16 and NF4:

* scoring clips/s, the plain Hugging Face path (features padded to 30 s, the stock encoder, HF's own forward
  with the full ``lm_head`` at every position, batches in the given order) against the book's path
  (:func:`lib.model.score`: the clip's own frames, the short encoder, the shared prompt prefix, two head rows,
  length buckets, the next batch prepared while the GPU runs), for 200 ms clips, 1 s clips and a 200-1000 ms
  mix, at batch 1 and at the best batch (swept on the mix). ``e2e`` figures time everything from the WAV files
  on disk to the logits on the host (the book's loader :func:`lib.data.load_clip`, feature extraction,
  tokenization, transfers, the forward passes); ``gpu`` figures time the forward passes alone, inputs ready;
* the seed recipe's wall time (128 clips x 3 epochs, LoRA r=16 on q,k,v,o, effective batch 16, lr 2e-4 cosine):
  plain (HF forward with labels, padded encoder; micro-batch 2 x accumulation 8 as the seed, and 16 x 1 as the
  book, ``--plain-recipes``) against the book's
  :func:`lib.train.train` (micro-batch 16, short encoder, frozen encoder without autograd), with
  :mod:`lib.model.fast.lora`'s layers and with peft's side by side (``--book-lora-kernels``), in NF4 also under the
  gradient-checkpointing modes of ``--nf4-checkpointing``; end to end from the WAV files, checkpoints included;
* training at scale (``scale``): one epoch over ``--scale-clips`` (4096) new mix clips, the book's path against
  plain 16 x 1, clips/s and the ratio to the bound;
* the peak GPU memory of each figure, three ways: allocated by tensors, reserved by PyTorch's allocator, and in
  use on the device as ``nvidia-smi`` reports it (sampled every 20 ms while the figure runs: what must fit a
  card), and each figure's ratio to its bound: the larger of the FLOP floor (the
  least arithmetic the task needs, counted from the config and the clips' token counts by
  :mod:`bench.architecture`, over the bf16 matrix-product rate measured in the same run) and the byte floor (the
  weights read once per forward pass, over the copy bandwidth measured in the same run);
* a check that the short-encoder path gives the padded path's logits within tolerance and the same decisions
  on every clip, on the 7B in fp32 (TF32 off) and in bf16; and that one training micro-batch gives peft's loss
  and LoRA gradients through the fused layers (fp32, bf16, NF4).

Results go to ``$OUT`` (or ``bench/out``): ``bench_gpu.json`` (every number), ``bench_gpu.md`` (the tables),
``log.txt``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from bench import targets as TG
from bench import architecture as A
from lib import model as M

SR = 16000
SETS = ("200ms", "1s", "mix")
LOG: list[str] = []


PROJECT_ROOT = Path(__file__).resolve().parent.parent
_MACHINE_PATHS = [(re.compile(r"[^\s\"'(]*/(?:site|dist)-packages/"), "<site-packages>/"),
                  (re.compile(r"/tmp/site/"), "<site-packages>/"),  # the device machine's carried wheels
                  (re.compile(r"/usr/lib/python3\.\d+/"), "<stdlib>/")]


def strip_machine_paths(text: str) -> str:
    """Paths in tracebacks and profiles, made relative (the project) or generic (installed packages), so that
    saved results do not carry one machine's folders."""
    text = text.replace(str(PROJECT_ROOT) + "/", "")
    for pattern, repl in _MACHINE_PATHS:
        text = pattern.sub(repl, text)
    return text


def log(*parts) -> None:
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    LOG.append(line)


# ----------------------------------------------------------------------------------------------- helpers
def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


class SmiSampler:
    """The GPU's memory in use as ``nvidia-smi`` reports it, sampled every ``interval_ms`` by one ``nvidia-smi -lms``
    process for the whole run (a reader thread keeps (time, MiB) pairs); :meth:`peak_gib` is the largest sample
    in a time window. This is what a user sees and what must fit a card: PyTorch's reserved memory plus the CUDA
    context and the libraries' own allocations."""

    def __init__(self, interval_ms: int = 20):
        import threading

        self.samples: list[tuple[float, int]] = []
        self.proc = None
        try:
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                          f"-lms={interval_ms}", "-i", os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except (OSError, ValueError):
            return
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.samples.append((time.perf_counter(), int(line.strip())))
            except ValueError:
                continue

    def peak_gib(self, t0: float, t1: float | None = None) -> float | None:
        t1 = time.perf_counter() if t1 is None else t1
        time.sleep(0.05)  # let the sample that covers t1 arrive
        inside = [mib for t, mib in self.samples if t0 <= t <= t1 + 0.03]
        return round(max(inside) / 1024, 2) if inside else None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()


SMI: SmiSampler | None = None


def reset_peak(device: str) -> float:
    """Reset PyTorch's peak counters; return the start of the window for the nvidia-smi peak."""
    import torch

    if device.startswith("cuda"):
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return time.perf_counter()


def peaks(device: str, t0: float) -> dict:
    """Peak memory since ``reset_peak`` returned ``t0``: allocated by tensors (``peak_gib``, the measure of
    the H100 runs), reserved by PyTorch's allocator (``reserved_gib``) and in use on the device as nvidia-smi
    reports it (``smi_gib``)."""
    import torch

    if not device.startswith("cuda"):
        return {"peak_gib": None, "reserved_gib": None, "smi_gib": None}
    return {"peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
            "smi_gib": SMI.peak_gib(t0) if SMI is not None else None}


def peak_gib(device: str) -> float | None:
    import torch

    if device.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return None


def mem_text(m: dict) -> str:
    return f"{m['peak_gib']} / {m['reserved_gib']} / {m['smi_gib']}"


def free(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def env_info(device: str) -> dict:
    import torch
    import transformers

    info = {"date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "cpu_count": os.cpu_count(),
            "device": device}
    for name in ("peft", "bitsandbytes", "accelerate"):
        try:
            info[name] = __import__(name).__version__
        except Exception as err:  # noqa: BLE001
            info[name] = f"missing ({type(err).__name__})"
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count,
                    cuda=torch.version.cuda)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception:  # noqa: BLE001
            info["driver"] = "?"
    else:
        info["gpu"] = "none (CPU dry run)"
    return info


# ---------------------------------------------------------------------------------------------- ceilings
def measure_ceilings(device: str, small: bool) -> dict:
    """The bf16 matrix-product rate (random operands, rotated among 3 sets) and the device-to-device copy
    bandwidth (bytes read + written), measured here; they are the ceilings every bound uses."""
    import torch

    n = 1024 if small else 8192
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    ops = [(torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype))
           for _ in range(3)]
    out = torch.empty(n, n, device=device, dtype=dtype)
    for a, b in ops:
        torch.matmul(a, b, out=out)
    sync(device)
    rates = []
    reps = 3 if small else 30
    for _ in range(5):
        t0 = time.perf_counter()
        for i in range(reps):
            a, b = ops[i % 3]
            torch.matmul(a, b, out=out)
        sync(device)
        rates.append(2 * n**3 * reps / (time.perf_counter() - t0))
    del ops, out
    nbytes = (64 if small else 2048) * 2**20
    src = torch.randint(0, 255, (nbytes,), device=device, dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    bws = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(10):
            dst.copy_(src)
        sync(device)
        bws.append(2 * nbytes * 10 / (time.perf_counter() - t0))
    del src, dst
    free(device)
    return {"matmul_flops": float(np.median(rates)), "matmul_flops_all": rates, "matmul_n": n,
            "matmul_dtype": str(dtype), "copy_bytes_per_s": float(np.median(bws)), "copy_all": bws}


# -------------------------------------------------------------------------------------------------- clips
def synth_clip(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SR
    x = 0.2 * rng.uniform(0.2, 1.0) * np.sin(2 * np.pi * rng.uniform(80, 3000) * t + rng.uniform(0, 6.3))
    x = x + 0.05 * rng.standard_normal(n)
    return np.clip(x, -1, 1).astype(np.float32)


LENGTHS: dict[str, int] = {}  # path -> samples, as a bank's manifest knows them (duration_ms)


def make_sets(root: Path, n: int, seed: int = 0, names=("200ms", "1s", "mix")) -> dict[str, list[Path]]:
    """WAV files of 200 ms clips, 1 s clips and a 200-1000 ms mix, ``n`` of each (lib.audio.write_audio)."""
    from lib import audio

    rng = np.random.default_rng(seed)
    lengths = {"200ms": [3200] * n, "1s": [16000] * n, "mix": list(rng.integers(3200, 16001, n))}
    lengths = {k: v for k, v in lengths.items() if k in names}
    sets = {}
    for name, lens in lengths.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        sets[name] = [audio.write_audio(folder / f"{i:05d}.wav", synth_clip(int(k), rng)) for i, k in enumerate(lens)]
        LENGTHS.update({str(p): int(k) for p, k in zip(sets[name], lens)})
    return sets


def load(paths) -> list[np.ndarray]:
    """The book's loader: lib.data.load_clip (soundfile, checks, rms normalization at load time)."""
    from lib import data

    return [data.load_clip(p, "rms") for p in paths]


# ------------------------------------------------------------------------------------------------ scoring
@contextlib.contextmanager
def stock_encoder(model):
    """The plain Hugging Face audio encoder (30-s inputs only) for the duration of the block."""
    from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

    tower = M.unwrap(model).model.audio_tower
    cls = tower.__class__
    tower.__class__ = Qwen2AudioEncoder
    try:
        yield
    finally:
        tower.__class__ = cls


def _device_inputs(inputs, device: str, keep_ids_on_host: bool):
    out = {}
    for k, v in inputs.items():
        if hasattr(v, "to") and not (keep_ids_on_host and k in ("input_ids", "attention_mask")):
            v = v.to(device)
        out[k] = v
    return out


def plain_score(model, processor, audios, batch: int, device: str) -> np.ndarray:
    """The plain HF path: processor defaults (30-s padding), the stock encoder, ``model(**inputs)`` with the full
    ``lm_head`` at every position, the A/B logits read at the last position; batches in the given order."""
    import torch

    ids = list(M.answer_token_ids(processor.tokenizer))
    out = np.zeros((len(audios), 2), dtype=np.float32)
    with stock_encoder(model), torch.inference_mode():
        for i in range(0, len(audios), batch):
            inputs = M.make_inputs(processor, audios[i:i + batch], short_encoder=False)
            inputs = _device_inputs(inputs, device, keep_ids_on_host=False)
            out[i:i + batch] = model(**inputs).logits[:, -1, ids].float().cpu().numpy()
    return out


def book_score(model, processor, audios, batch: int, device: str) -> np.ndarray:
    return M.score(model, processor, audios, batch_size=batch).logits


def book_score_files(model, processor, paths, batch: int, device: str) -> np.ndarray:
    """The book's path from the files: lazy clips read in the prefetch worker, lengths from the manifest."""
    return M.score(model, processor, M.ClipFiles(paths), batch_size=batch,
                   lengths=[LENGTHS[str(p)] for p in paths]).logits


def gpu_side(model, processor, audios, batch: int, path: str, device: str, plan_free: bool = True) -> dict:
    """The forward passes alone: inputs made and moved to the device first (untimed), one warm-up batch.
    ``plan_free``: the book path's attention off cuDNN, as ``lib.model.score`` runs it on a GPU."""
    import torch

    cfg = M.unwrap(model).config
    ids = M.answer_token_ids(processor.tokenizer)
    t_prep = time.perf_counter()
    if path == "book":
        groups = M.length_buckets([len(a) for a in audios], batch)
        batches = [M.make_inputs(processor, [audios[i] for i in g], short_encoder=True) for g in groups]
        batches = [_device_inputs(x, device, keep_ids_on_host=True) for x in batches]
    else:
        batches = [_device_inputs(M.make_inputs(processor, audios[i:i + batch], short_encoder=False), device, False)
                   for i in range(0, len(audios), batch)]
    sync(device)
    t_prep = time.perf_counter() - t_prep

    def run(xs):
        with torch.inference_mode():
            if path == "book":
                on_gpu = device.startswith("cuda")
                with M.scoring_kernels(model, fused=on_gpu, plan_free_attention=on_gpu and plan_free):
                    prefix = M.SharedPrefix.for_prompt(model, processor)
                    outs = [M.answer_logits(model, x, ids, prefix=prefix) for x in xs]
                return outs, len(prefix)
            with stock_encoder(model):
                return [model(**x).logits[:, -1, list(ids)] for x in xs], 0

    run(batches[:1])
    sync(device)
    t0 = time.perf_counter()
    outs, prefix_len = run(batches)
    sync(device)
    seconds = time.perf_counter() - t0
    flops = sum(A.flops_of_batch(cfg, x, prefix_len=prefix_len, full_head=(path == "plain")) for x in batches)
    del outs, batches
    return {"seconds": seconds, "clips_per_s": len(audios) / seconds, "flops_executed": int(flops), "prep_s": t_prep}


def prompt_tokens(processor) -> tuple[int, int, int]:
    """(text tokens of the prompt, tokens before the audio, tokens of the answer turn)."""
    tok = processor.tokenizer
    text = M.prompt_text(processor)
    ids = tok(text, add_special_tokens=False).input_ids
    audio_id = tok.convert_tokens_to_ids("<|AUDIO|>")
    n_text = len(ids) - ids.count(audio_id)
    prefix = ids.index(audio_id)
    suffix = len(tok(M.answer_suffix(processor, M.DEFAULT_PROMPT, "A"), add_special_tokens=False).input_ids)
    return n_text, prefix, suffix


def sweep_batch(model, processor, audios, path: str, candidates, device: str, mem_cap_gib: float | None = None):
    """Best batch size by GPU-side clips/s on the mix (among those whose peak memory, as nvidia-smi reports it, or
    reserved where nvidia-smi is missing, stays under ``mem_cap_gib``); stops at an out-of-memory error, past the
    cap, or when a larger batch stops paying twice."""
    rows, best, best_rate = [], candidates[0], 0.0
    worse = 0
    for b in candidates:
        n = min(len(audios), max(2 * b, 4 * candidates[0]))
        t_mem = reset_peak(device)
        try:
            r = gpu_side(model, processor, audios[:n], b, path, device)
        except Exception as err:  # noqa: BLE001
            if not is_oom(err):
                raise
            rows.append({"batch": b, "error": "out of memory"})
            free(device)
            break
        mem = peaks(device, t_mem)
        rows.append({"batch": b, "n_clips": n, "gpu_clips_per_s": round(r["clips_per_s"], 1), **mem})
        log(f"    sweep {path} batch {b:4d}: {r['clips_per_s']:8.1f} clips/s (gpu side, {n} clips), peak GiB "
            f"allocated / reserved / nvidia-smi {mem_text(mem)}")
        used = mem["smi_gib"] if mem["smi_gib"] is not None else mem["reserved_gib"]
        if mem_cap_gib is not None and used is not None and used > mem_cap_gib:
            rows[-1]["over_cap"] = True
            break
        if r["clips_per_s"] > best_rate * 1.01:
            best, best_rate, worse = b, r["clips_per_s"], 0
        else:
            worse += 1
            if worse >= 2:
                break
        free(device)
    return best, rows


def scoring_figures(model, processor, sets, dtype: str, path: str, ctx: dict) -> list[dict]:
    cfg = M.unwrap(model).config
    device, ceil = ctx["device"], ctx["ceilings"]
    n_text, n_prefix, _ = ctx["prompt"]
    wbytes = A.weight_bytes(M.unwrap(model))
    scorer = book_score if path == "book" else plain_score
    mix_audios = load(sets["warm"][:ctx["n_sweep"]])  # other files than the timed ones: those stay new
    candidates = (ctx["nf4_book_batches" if dtype == "nf4" else "book_batches"] if path == "book"
                  else ctx["plain_batches"])
    cap = ctx["nf4_mem_cap_gib"] if (dtype == "nf4" and path == "book") else None
    best, sweep_rows = sweep_batch(model, processor, mix_audios, path, candidates, device, cap)
    log(f"  {dtype} {path}: best batch {best}")
    rows = []
    for name in SETS:
        for batch in (1, best):
            n = ctx["n_batch1"] if batch == 1 else (ctx["n_book"] if path == "book" else max(ctx["n_plain"], 2 * best))
            paths = sets[name][:n]
            # warm-up on other files (compiles the fused kernels once); the timed pass is the first over its files
            warm = sets["warm"][:batch] if path == "book" else sets["warm"][:min(batch, 8)]
            scorer(model, processor, load(warm), batch, device)
            t_mem = reset_peak(device)
            sync(device)
            t0 = time.perf_counter()
            if path == "book":  # files read inside lib.model.score's prefetch worker
                t_load = None
                logits = book_score_files(model, processor, paths, batch, device)
            else:  # plain: read everything, then score
                audios = load(paths)
                t_load = time.perf_counter() - t0
                logits = scorer(model, processor, audios, batch, device)
            sync(device)
            e2e = time.perf_counter() - t0
            mem = peaks(device, t_mem)
            if path == "book":
                audios = load(paths)
            g = gpu_side(model, processor, audios, batch, path, device)
            bound_flops = sum(A.clip_bound_flops(cfg, len(a), n_text, n_prefix) for a in audios)
            full_prompt_flops = sum(A.clip_bound_flops(cfg, len(a), n_text, 0) for a in audios)
            floor_bytes = math.ceil(n / batch) * wbytes
            bound_s = max(bound_flops / ceil["matmul_flops"], floor_bytes / ceil["copy_bytes_per_s"])
            row = {"dtype": dtype, "path": path, "clips": name, "batch": batch, "n_clips": n,
                   "e2e_s": round(e2e, 3), "load_s": None if t_load is None else round(t_load, 3), "e2e_clips_per_s": round(n / e2e, 1),
                   "gpu_s": round(g["seconds"], 3), "gpu_clips_per_s": round(g["clips_per_s"], 1),
                   "inputs_s": round(g["prep_s"], 3),  # making + moving all inputs in one thread, untimed in gpu_s
                   **mem, "flops_bound": int(bound_flops), "flops_bound_full_prompt": int(full_prompt_flops),
                   "flops_executed": g["flops_executed"], "bytes_floor": int(floor_bytes),
                   "bound_kind": "flop" if bound_flops / ceil["matmul_flops"] >= floor_bytes / ceil["copy_bytes_per_s"] else "byte",
                   "bound_s": bound_s, "bound_clips_per_s": round(n / bound_s, 1),
                   "e2e_over_bound": round(e2e / bound_s, 2), "gpu_over_bound": round(g["seconds"] / bound_s, 2),
                   "gpu_tflops_executed": round(g["flops_executed"] / g["seconds"] / 1e12, 1),
                   "finite": bool(np.isfinite(logits).all())}
            rows.append(row)
            log(f"  {dtype:5s} {path:5s} {name:5s} batch {batch:4d}: e2e {row['e2e_clips_per_s']:8.1f} clips/s "
                f"(load {'in worker' if t_load is None else f'{t_load:.2f}s'} of {e2e:.2f}s; inputs alone {g['prep_s']:.2f}s), gpu {row['gpu_clips_per_s']:8.1f} clips/s, peak GiB allocated / reserved / nvidia-smi {mem_text(mem)}, "
                f"bound {row['bound_clips_per_s']:.0f} clips/s ({row['bound_kind']}), gpu/bound {row['gpu_over_bound']}, "
                f"executed {row['gpu_tflops_executed']} TFLOP/s")
            free(device)
    ctx.setdefault("sweeps", []).append({"dtype": dtype, "path": path, "best": best, "rows": sweep_rows})
    ctx.setdefault("best_batch", {})[(dtype, path)] = best
    return rows


def steady_scoring(model, processor, paths, dtype: str, batch: int, ctx: dict, n_passes: int = 3) -> dict:
    """lib.model.score from the files, ``n_passes`` times over the same clips: the first pass pays the one-time
    costs of each new batch shape (the fused kernels' dynamic shapes), the later ones are what a long scoring job
    sees."""
    device, ceil = ctx["device"], ctx["ceilings"]
    cfg = M.unwrap(model).config
    n_text, n_prefix, _ = ctx["prompt"]
    bound_flops = sum(A.clip_bound_flops(cfg, LENGTHS[str(p)], n_text, n_prefix) for p in paths)
    bound_s = bound_flops / ceil["matmul_flops"]
    passes = []
    for i in range(n_passes):
        t_mem = reset_peak(device)
        sync(device)
        t0 = time.perf_counter()
        book_score_files(model, processor, paths, batch, device)
        sync(device)
        e2e = time.perf_counter() - t0
        passes.append({"e2e_s": round(e2e, 3), "e2e_clips_per_s": round(len(paths) / e2e, 1), **peaks(device, t_mem),
                       "e2e_over_bound": round(e2e / bound_s, 2)})
        log(f"  {dtype} book mix batch {batch} pass {i + 1}: e2e {passes[-1]['e2e_clips_per_s']} clips/s, "
            f"peak GiB allocated / reserved / nvidia-smi {mem_text(passes[-1])}, e2e/bound {passes[-1]['e2e_over_bound']}")
    g = gpu_side(model, processor, load(paths), batch, "book", device)
    out = {"dtype": dtype, "batch": batch, "n_clips": len(paths), "passes": passes,
           "gpu_clips_per_s": round(g["clips_per_s"], 1), "gpu_over_bound": round(g["seconds"] / bound_s, 2),
           "bound_clips_per_s": round(len(paths) / bound_s, 1)}
    log(f"  {dtype} book mix batch {batch}: gpu {out['gpu_clips_per_s']} clips/s, gpu/bound {out['gpu_over_bound']}")
    free(device)
    return out


# ---------------------------------------------------------------------------------------------- training
def warm_matplotlib() -> None:
    """Import matplotlib and draw once: a fresh machine builds its font cache on first use (seconds), a one-time
    cost of the machine, not of the recipe (lib.train saves its loss curve with it)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    fig.savefig(io.BytesIO(), format="png")
    fig.savefig(io.BytesIO(), format="pdf")
    plt.close(fig)


def recipe(micro: int, accum: int, epochs: int = 3, gradient_checkpointing: bool | str = False,
           lora_kernel: str = "fused"):
    from lib import train as T

    return T.profile_recipe("full", lora_variant="attn", lora_r=16, lora_alpha=32, lora_dropout=0.05,
                            extra_trainable=[], loss_masking=True, epochs=epochs, learning_rate=2e-4,
                            micro_batch_size=micro, grad_accum_steps=accum, lr_schedule="cosine", warmup_ratio=0.05,
                            checkpoint_every_steps=200, seed=0, gradient_checkpointing=gradient_checkpointing,
                            lora_kernel=lora_kernel)


def plain_train(peft_model, processor, audios, labels, tc, device: str) -> list[float]:
    """The seed's way: HF forward with labels (full lm_head at every position, loss on the answer token), padded
    30-s features through the stock encoder, micro-batches with gradient accumulation, AdamW, cosine schedule."""
    import torch
    from transformers import get_scheduler

    from lib import train as T

    answers = [T.LABEL_TO_ANSWER[x] for x in labels]
    n = len(audios)
    steps_per_epoch = math.ceil(math.ceil(n / tc.micro_batch_size) / tc.grad_accum_steps)
    total = steps_per_epoch * tc.epochs
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.learning_rate, weight_decay=tc.weight_decay)
    sched = get_scheduler(tc.lr_schedule, opt, num_warmup_steps=math.ceil(tc.warmup_ratio * total),
                          num_training_steps=total)
    suffix = len(processor.tokenizer(M.answer_suffix(processor, tc.prompt, "A"), add_special_tokens=False).input_ids)
    losses = []
    peft_model.train()
    with stock_encoder(peft_model):
        for epoch in range(tc.epochs):
            order = np.random.default_rng([tc.seed, epoch]).permutation(n)
            micro = [order[i:i + tc.micro_batch_size] for i in range(0, n, tc.micro_batch_size)]
            for s in range(0, len(micro), tc.grad_accum_steps):
                group = micro[s:s + tc.grad_accum_steps]
                opt.zero_grad(set_to_none=True)
                total_loss = 0.0
                for idx in group:
                    inputs = M.make_inputs(processor, [audios[i] for i in idx], tc.prompt, short_encoder=False,
                                           answers=[answers[i] for i in idx])
                    inputs = _device_inputs(inputs, device, keep_ids_on_host=False)
                    lab = torch.full_like(inputs["input_ids"], -100)
                    pos = inputs["input_ids"].shape[1] - suffix
                    lab[:, pos] = inputs["input_ids"][:, pos]
                    loss = peft_model(**inputs, labels=lab).loss
                    (loss / len(group)).backward()
                    total_loss += float(loss.detach()) / len(group)
                torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
                opt.step()
                sched.step()
                losses.append(total_loss)
    peft_model.eval()
    return losses


def training_figure(model, processor, paths, labels, dtype: str, path: str, tc, ctx: dict, epochs_run: int | None = None):
    """Wall time of the recipe from the WAV files to the trained adapter (LoRA set-up, loading, features, steps,
    the book's checkpoints); the LoRA is removed again afterwards (the base weights are untouched)."""
    from lib import train as T

    device, ceil = ctx["device"], ctx["ceilings"]
    cfg = M.unwrap(model).config
    n_text, _, n_suffix = ctx["prompt"]
    t_mem = reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    peft_model = T.apply_lora(model, tc)
    audios = load(paths)
    if path == "book":
        with tempfile.TemporaryDirectory() as tmp:
            res = T.train(peft_model, processor, audios, labels, tc, tmp, progress=False)
        losses = res.history["loss"].tolist()
    else:
        losses = plain_train(peft_model, processor, audios, labels, tc, device)
    sync(device)
    wall = time.perf_counter() - t0
    mem = peaks(device, t_mem)
    lora_params = T.parameter_counts(peft_model)["trainable_params"]
    base = peft_model.unload()
    T.set_gradient_checkpointing(base, "none")
    bound_flops = tc.epochs * sum(A.clip_train_bound_flops(cfg, len(a), n_text + n_suffix, lora_params) for a in audios)
    wbytes = A.weight_bytes(M.unwrap(base))
    n_micro = tc.epochs * math.ceil(len(audios) / tc.micro_batch_size)
    floor_bytes = 2 * n_micro * wbytes  # forward + backward each read the weights once
    bound_s = max(bound_flops / ceil["matmul_flops"], floor_bytes / ceil["copy_bytes_per_s"])
    lora_kernel = tc.lora_kernel if path == "book" else "peft"  # the plain loop is peft's layers as they come
    row = {"dtype": dtype, "path": path, "micro_batch": tc.micro_batch_size, "grad_accum": tc.grad_accum_steps,
           "gradient_checkpointing": tc.gradient_checkpointing, "lora_kernel": lora_kernel, "epochs": tc.epochs, "clips": len(audios),
           "wall_s": round(wall, 2), "clips_per_s": round(tc.epochs * len(audios) / wall, 1), **mem, "flops_bound": int(bound_flops), "bytes_floor": int(floor_bytes),
           "bound_s": round(bound_s, 3), "wall_over_bound": round(wall / bound_s, 1),
           "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4),
           "finite": bool(np.isfinite(losses).all()), "trainable_params": lora_params}
    log(f"  {dtype:5s} {path:5s} train micro {tc.micro_batch_size:2d} x accum {tc.grad_accum_steps}"
        f"{'' if tc.gradient_checkpointing == 'none' else ' +gc ' + tc.gradient_checkpointing} lora {lora_kernel} epochs {tc.epochs}, {len(audios)} clips: {wall:7.2f} s, peak GiB allocated / reserved / nvidia-smi {mem_text(mem)}, "
        f"bound {bound_s:.2f} s, ratio {row['wall_over_bound']}, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    del peft_model
    free(device)
    return base, row


# ------------------------------------------------------------------------------------------------- checks
def equivalence_check(model, processor, clips, device: str, label: str) -> dict:
    """Short-encoder + shared-prefix path vs the padded path (same code, 30-s features) vs HF's own forward."""
    ref = M.fast.score(model, processor, clips, batch_size=8, short_encoder=False, shared_prefix=False, prefetch=False).logits
    short = M.fast.score(model, processor, clips, batch_size=8, shared_prefix=False, prefetch=False).logits
    book = M.score(model, processor, clips, batch_size=8).logits
    hf_idx = [i for i, c in enumerate(clips) if len(c) >= 0.06 * SR]  # HF's merge differs under 60 ms
    hf = plain_score(model, processor, [clips[i] for i in hf_idx], 8, device)

    def cmp(a, b):  # b: the reference
        d = np.abs(a - b)
        same = (a[:, 0] >= a[:, 1]) == (b[:, 0] >= b[:, 1])
        confident = np.abs(b[:, 0] - b[:, 1]) >= TG.CONFIDENT_MARGIN
        return {"max_abs": float(d.max()), "rel_l2": float(np.linalg.norm(a - b) / np.linalg.norm(b)),
                "same_decisions": int(same.sum()), "n": int(len(a)),
                "confident_flips": int((~same & confident).sum()), "n_confident": int(confident.sum())}

    margin = np.abs(ref[:, 0] - ref[:, 1])
    out = {"dtype": label, "n_clips": len(clips), "durations_ms": sorted({round(len(c) / 16) for c in clips}),
           "short_vs_padded": cmp(short, ref), "book_vs_padded": cmp(book, ref),
           "padded_vs_hf_forward": cmp(ref[hf_idx], hf), "min_margin": float(margin.min()),
           "median_margin": float(np.median(margin)), "logit_scale": float(np.abs(ref).max()),
           "speech_share": float(np.mean(ref[:, 0] >= ref[:, 1]))}
    for k in ("short_vs_padded", "book_vs_padded", "padded_vs_hf_forward"):
        c = out[k]
        log(f"  check {label}: {k:21s} max |d logit| {c['max_abs']:.2e}, rel {c['rel_l2']:.2e}, "
            f"same decisions {c['same_decisions']}/{c['n']}")
    log(f"  check {label}: |logit_A - logit_B| min {out['min_margin']:.3g}, median {out['median_margin']:.3g}; "
        f"logit scale {out['logit_scale']:.3g}; share A {out['speech_share']:.2f}")
    return out


def training_check(model, processor, clips, device: str, label: str) -> dict:
    """One training micro-batch (loss and LoRA gradients, dropout on, the same seed) through peft's layers, the
    fused ones (``lib.model.fast.lora``), and the fused ones with one-kernel norms as ``lib.train.train`` runs them on a
    GPU. LoRA's B starts at zero in peft; here it is drawn at random so that every gradient is exercised."""
    import torch

    from lib.model.fast import lora as FL
    from lib import train as T

    tc = recipe(len(clips), 1)
    peft_model = T.apply_lora(model, tc)
    gen = torch.Generator(device="cpu").manual_seed(5)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    answers = ["A", "B"] * (len(clips) // 2) + ["A"] * (len(clips) % 2)
    results = {}
    for variant in ("peft", "fused", "fused+norms"):
        peft_model.train()
        torch.manual_seed(0)
        with FL.fused_training(peft_model, variant.split("+")[0], norms=variant.endswith("norms")):
            loss = T.batch_loss(peft_model, processor, clips, answers, tc)
            with M.attention_backends(peft_model):
                loss.backward()
        results[variant] = (float(loss.detach()), {n: p.grad.detach().float().clone()
                                                    for n, p in peft_model.named_parameters() if p.requires_grad})
        peft_model.zero_grad(set_to_none=True)
    peft_model.unload()
    free(device)
    loss0, g0 = results["peft"]
    out = {"dtype": label, "n_clips": len(clips), "loss_peft": loss0}
    for variant in ("fused", "fused+norms"):
        loss1, g1 = results[variant]
        flat0 = torch.cat([g0[n].flatten() for n in g0])
        flat1 = torch.cat([g1[n].flatten() for n in g0])
        worst = max(float((g1[n] - g0[n]).abs().max() / g0[n].abs().max().clamp_min(1e-30)) for n in g0)
        out[variant] = {"loss": loss1, "loss_abs_diff": abs(loss1 - loss0),
                        "grad_rel_l2": float((flat1 - flat0).norm() / flat0.norm()),
                        "grad_cosine": float(torch.nn.functional.cosine_similarity(flat1, flat0, dim=0)),
                        "worst_tensor_max_rel": worst, "n_tensors": len(g0)}
        log(f"  training check {label}: {variant:11s} vs peft: loss {loss1:.5f} vs {loss0:.5f}, gradients rel L2 "
            f"{out[variant]['grad_rel_l2']:.2e}, cosine {out[variant]['grad_cosine']:.6f}, worst tensor "
            f"max |d| / max |g| {worst:.2e} ({len(g0)} tensors)")
    return out


def check_clips(n: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    durs = [20, 50, 100, 200, 500, 1000]
    lens = [int(durs[i % len(durs)] * 16) for i in range(n // 2)] + list(rng.integers(320, 16001, n - n // 2))
    return [synth_clip(k, rng) for k in lens]


# ------------------------------------------------------------------------------------------------- report
def md_table(header: list[str], rows: list[list]) -> list[str]:
    """A markdown table's lines, then a blank line."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows), ""]


def markdown(res: dict) -> str:
    e, c = res["env"], res["ceilings"]
    lines = [f"Run {e['date_utc']} UTC on {e.get('gpu')} (driver {e.get('driver', '-')}, CUDA {e.get('cuda', '-')}), "
             f"torch {e['torch']}, transformers {e['transformers']}, peft {e['peft']}, bitsandbytes {e['bitsandbytes']}, "
             f"{e['cpu_count']} CPU cores; mode: {res['mode']}.",
             "", f"Ceilings measured in the run: bf16 matrix product {c['matmul_flops'] / 1e12:.0f} TFLOP/s "
             f"({c['matmul_n']}^3, random operands); device copy {c['copy_bytes_per_s'] / 1e12:.2f} TB/s (read + write).", ""]
    if res.get("scoring"):
        lines += md_table(["dtype", "path", "clips", "batch", "e2e clips/s", "gpu clips/s", "load s / e2e s",
                           "peak GiB alloc. / reserved / nvidia-smi",
                           "bound clips/s", "e2e / bound", "gpu / bound", "executed TFLOP/s"],
                          [[r["dtype"], r["path"], r["clips"], r["batch"], r["e2e_clips_per_s"], r["gpu_clips_per_s"],
                            f"{'in worker' if r['load_s'] is None else r['load_s']} / {r['e2e_s']}", mem_text(r),
                            f"{r['bound_clips_per_s']} ({r['bound_kind']})", r["e2e_over_bound"], r["gpu_over_bound"],
                            f"{r['gpu_tflops_executed']:.3g}"] for r in res["scoring"]])
    for section in ("training", "scale"):
        rows = [r for r in res.get(section) or [] if "error" not in r]
        if rows:
            if section == "scale":
                lines.append("Training at scale (one epoch):")
                lines.append("")
            lines += md_table(["dtype", "path", "micro x accum", "grad. ckpt", "LoRA layers", "clips x epochs", "wall s (e2e)",
                               "clips/s", "peak GiB alloc. / reserved / nvidia-smi", "bound s", "wall / bound", "loss first -> last"],
                              [[r["dtype"], r["path"], f"{r['micro_batch']} x {r['grad_accum']}", r["gradient_checkpointing"],
                                r.get("lora_kernel", "peft"), f"{r['clips']} x {r['epochs']}", r["wall_s"], r.get("clips_per_s"),
                                mem_text(r), r["bound_s"], r["wall_over_bound"],
                                f"{r['first_loss']} -> {r['last_loss']}"] for r in rows])
        lines += [f"- {section} {r['dtype']} {r['path']}: {r['error']}" for r in res.get(section) or [] if "error" in r]
    for st in res.get("steady", []):
        passes = ", ".join(f"{p['e2e_clips_per_s']}" for p in st["passes"])
        lines.append(f"- steady state, {st['dtype']} book mix, {st['n_clips']} clips, batch {st['batch']}: e2e {passes} clips/s "
                     f"(pass 1{' to ' + str(len(st['passes'])) if len(st['passes']) > 1 else ''}, peak GiB allocated / reserved / "
                     f"nvidia-smi {mem_text(st['passes'][-1])}); "
                     f"gpu {st['gpu_clips_per_s']} clips/s, gpu / bound {st['gpu_over_bound']} (bound {st['bound_clips_per_s']} clips/s)")
    for chk in res.get("checks", []):
        parts = [f"{k}: max |d| {chk[k]['max_abs']:.1e}, rel {chk[k]['rel_l2']:.1e}, same decisions "
                 f"{chk[k]['same_decisions']}/{chk[k]['n']}" for k in ("short_vs_padded", "book_vs_padded", "padded_vs_hf_forward")]
        lines.append(f"- check {chk['dtype']} ({chk['n_clips']} clips, {min(chk['durations_ms'])}-{max(chk['durations_ms'])} ms; "
                     f"min |logit_A - logit_B| {chk['min_margin']:.2g}): " + "; ".join(parts))
    for chk in res.get("training_checks", []):
        parts = [f"{v}: loss {chk[v]['loss']:.5f}, gradients rel L2 {chk[v]['grad_rel_l2']:.1e}, cosine "
                 f"{chk[v]['grad_cosine']:.6f}, worst tensor {chk[v]['worst_tensor_max_rel']:.1e}" for v in ("fused", "fused+norms")]
        lines.append(f"- training check {chk['dtype']} ({chk['n_clips']} clips, one micro-batch, dropout on; peft's layers: "
                     f"loss {chk['loss_peft']:.5f}): " + "; ".join(parts))
    if res.get("verdict"):
        lines += [""] + TG.report_lines(res["verdict"], enforce_targets=res.get("targets_enforced", True))
    return "\n".join(lines) + "\n"


def save(res: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_gpu.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "bench_gpu.md").write_text(markdown(res) if res.get("ceilings") else "")
    (out / "log.txt").write_text("\n".join(LOG) + "\n")


# --------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer clips; the plain recipe for one epoch only")
    ap.add_argument("--small", action="store_true", help="a reduced config (dry run of every step, e.g. on the CPU)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "out"))
    ap.add_argument("--only", default="check,scoring,training,scale",
                    help="comma list of: check, scoring, steady, training, scale (training at scale)")
    ap.add_argument("--dtypes", default="bf16,nf4")
    ap.add_argument("--paths", default="plain,book")
    ap.add_argument("--scoring-paths", default=None, help="paths of the scoring figures (default: --paths)")
    ap.add_argument("--nf4-checkpointing", default="mlp,layers:24,layers",
                    help="gradient-checkpointing modes of the extra NF4 book recipes (lib.train.set_gradient_checkpointing)")
    ap.add_argument("--book-lora-kernels", default="fused,peft",
                    help="LoRA layers of the book's recipes, each run side by side (lib.model.fast.lora: fused, peft)")
    ap.add_argument("--plain-recipes", default="16x1,2x8",
                    help="micro-batch x accumulation of the plain recipes (the seed's 2 x 8; 16 x 1 as the book uses)")
    ap.add_argument("--plain-2x8-epochs", type=int, default=None,
                    help="epochs of the plain 2 x 8 recipe (default 3, --quick 1: it takes about 60 s)")
    ap.add_argument("--scale-clips", type=int, default=4096, help="training at scale: mix clips of the book's epoch")
    ap.add_argument("--scale-plain-clips", type=int, default=4096,
                    help="training at scale: clips of the plain 16 x 1 epoch (fewer saves device time; clips/s compare)")
    ap.add_argument("--no-targets", action="store_true",
                    help="report targets as met / missed but exit 0 on a miss (a failed correctness check still fails)")
    args = ap.parse_args(argv)
    global SMI

    import torch

    device = args.device
    out = Path(args.out)
    only = set(args.only.split(","))
    dtypes = args.dtypes.split(",")
    paths = args.paths.split(",")
    if not device.startswith("cuda") and "nf4" in dtypes:
        dtypes = [d for d in dtypes if d != "nf4"]
        log("NF4 needs CUDA (bitsandbytes): left out of this run")
    res: dict = {"mode": ("quick" if args.quick else "full") + (" small-config" if args.small else ""), "env": env_info(device)}
    log(json.dumps(res["env"]))
    config = (A.small_config(audio={"d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_dim": 128},
                             text={"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                                   "num_attention_heads": 4, "num_key_value_heads": 4})
              if args.small else A.config_7b())
    res["config"] = A.describe(config)
    res["parameters"] = A.parameter_counts(config)
    log("config:", res["config"], "| parameters:", res["parameters"])
    q, s = args.quick, args.small
    ctx = {"device": device,
           "n_sweep": 64 if s else (512 if q else 1024),
           "n_batch1": 8 if s else 24,
           "n_book": 64 if s else (1024 if q else 2048),
           "n_plain": 16 if s else (96 if q else 192),
           "book_batches": [8, 16, 32] if s else [32, 64, 128, 256, 512],
           "nf4_book_batches": [8, 16, 32] if s else [16, 32, 64, 128],
           "plain_batches": [4, 8] if s else [16, 48, 96],
           # NF4 scoring target: fits an 8 GiB card (nvidia-smi's figure); the sweep picks the fastest batch under
           # 7.75 GiB on its own clips, leaving a quarter GiB for other lengths in the timed pass
           "nf4_mem_cap_gib": 7.75}
    t_start = time.perf_counter()
    processor = A.processor_7b()
    ctx["prompt"] = prompt_tokens(processor)
    res["prompt_tokens"] = dict(zip(("text", "before_audio", "answer_turn"), ctx["prompt"]))
    log("prompt tokens:", res["prompt_tokens"])
    res["ceilings"] = ctx["ceilings"] = measure_ceilings(device, s)
    log(f"ceilings: matmul {res['ceilings']['matmul_flops'] / 1e12:.1f} TFLOP/s, copy "
        f"{res['ceilings']['copy_bytes_per_s'] / 1e12:.2f} TB/s")
    res["scoring"], res["training"], res["checks"] = [], [], []
    if device.startswith("cuda"):
        SMI = SmiSampler()
        torch.zeros(1, device=device)
        sync(device)
        res["smi_idle_gib"] = SMI.peak_gib(time.perf_counter() - 0.5)  # the CUDA context alone
    save(res, out)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            n_files = max(ctx["n_book"], ctx["n_sweep"], 128)
            sets = make_sets(Path(tmp), n_files)
            # the batch sweeps and the warm-ups run on these, so that every timed pass is the first over its files
            sets["warm"] = make_sets(Path(tmp) / "warm", max(ctx["n_sweep"], max(ctx["book_batches"])), seed=3,
                                     names=("mix",))["mix"]
            if "check" in only:
                log("== check fp32 (TF32 off)")
                torch.backends.cuda.matmul.allow_tf32 = False
                torch.backends.cudnn.allow_tf32 = False
                model = A.build_random_model(config, device=device, torch_dtype="float32")
                res["checks"].append(equivalence_check(model, processor, check_clips(16 if s else 48), device, "fp32"))
                # the same training check in fp32: what is left of the fused layers' difference without bf16 rounding
                res.setdefault("training_checks", []).append(
                    training_check(model, processor, check_clips(16, seed=2), device, "fp32"))
                torch.backends.cudnn.allow_tf32 = True
                del model
                free(device)
                save(res, out)
            t0 = time.perf_counter()
            model = A.build_random_model(config, device=device, torch_dtype="bfloat16")
            sync(device)
            res["build_bf16_s"] = round(time.perf_counter() - t0, 2)
            log(f"built bf16 model in {res['build_bf16_s']} s, weights {A.weight_bytes(model) / 2**30:.2f} GiB")
            for dtype in dtypes:
                if dtype == "nf4":
                    t0 = time.perf_counter()
                    A.quantize_nf4_(model, "bfloat16")
                    sync(device)
                    res["quantize_nf4_s"] = round(time.perf_counter() - t0, 2)
                    log(f"quantized to NF4 in {res['quantize_nf4_s']} s, weights {A.weight_bytes(model) / 2**30:.2f} GiB")
                if "check" in only:
                    log(f"== check {dtype}")
                    res["checks"].append(equivalence_check(model, processor, check_clips(16 if s else 48), device, dtype))
                    res.setdefault("training_checks", []).append(
                        training_check(model, processor, check_clips(16, seed=2), device, dtype))
                    save(res, out)
                if "scoring" in only:
                    log(f"== scoring {dtype}")
                    for path in (args.scoring_paths.split(",") if args.scoring_paths else paths):
                        res["scoring"] += scoring_figures(model, processor, sets, dtype, path, ctx)
                        save(res, out)
                if "steady" in only:
                    log(f"== steady-state scoring {dtype} (book, mix, the same files scored three times)")
                    res.setdefault("steady", []).append(steady_scoring(model, processor, sets["mix"][:ctx["n_book"]], dtype,
                                                                       ctx.get("best_batch", {}).get((dtype, "book"), 512 if dtype == "bf16" else 32), ctx))
                    save(res, out)
                    if dtype == "bf16" and not s:  # a longer job over new files: buckets narrow as clips are added
                        log("== scoring bf16, 8192 new mix clips (book, one pass)")
                        long = make_sets(Path(tmp) / "long", 8192, seed=7, names=("mix",))["mix"]
                        res["steady"].append(steady_scoring(model, processor, long, dtype, 512, ctx, n_passes=1))
                        save(res, out)
                if "training" in only:
                    log(f"== training {dtype}")
                    warm_matplotlib()
                    rng = np.random.default_rng(0)
                    n_recipe = 32 if s else 128  # the seed recipe's 128 clips (a dry run: 32)
                    train_paths = sets["mix"][:n_recipe]
                    labels = list(rng.choice(["speech", "nonspeech"], n_recipe))
                    runs = []
                    if "plain" in paths:
                        for spec in args.plain_recipes.split(","):
                            micro, accum = (int(x) for x in spec.split("x"))
                            epochs = 3 if (micro, accum) != (2, 8) else (args.plain_2x8_epochs or (1 if q else 3))
                            runs.append(("plain", recipe(micro, accum, epochs=epochs)))
                    if "book" in paths:
                        modes = ["none"] + (args.nf4_checkpointing.split(",") if dtype == "nf4" else [])
                        for mode in modes:
                            for kernel in args.book_lora_kernels.split(","):
                                runs.append(("book", recipe(16, 1, gradient_checkpointing=mode, lora_kernel=kernel)))
                    if runs and not ctx.get("trained"):  # the process's first steps load kernels and plans: not the recipe's
                        model, _ = training_figure(model, processor, train_paths[:16], labels[:16], dtype, "book",
                                                   recipe(16, 1, epochs=1), ctx)
                        ctx["trained"] = True
                        log("  (warm-up above: one untimed micro-batch; the recipes below are what a process pays after it)")
                    for path, tc in runs:
                        try:
                            model, row = training_figure(model, processor, train_paths, labels, dtype, path, tc, ctx)
                        except Exception as err:  # noqa: BLE001
                            if not is_oom(err):
                                raise
                            log(f"  {dtype} {path} training: out of memory")
                            row = {"dtype": dtype, "path": path, "error": "out of memory"}
                            free(device)
                        res["training"].append(row)
                        save(res, out)
                if "scale" in only:
                    log(f"== training at scale {dtype}: one epoch")
                    warm_matplotlib()
                    if "scale_set" not in ctx:
                        n_scale = 64 if s else args.scale_clips
                        ctx["scale_set"] = make_sets(Path(tmp) / "scale", n_scale, seed=11, names=("mix",))["mix"]
                        ctx["scale_labels"] = list(np.random.default_rng(1).choice(["speech", "nonspeech"], n_scale))
                    if not ctx.get("trained"):
                        model, _ = training_figure(model, processor, ctx["scale_set"][:16], ctx["scale_labels"][:16], dtype,
                                                   "book", recipe(16, 1, epochs=1), ctx)
                        ctx["trained"] = True
                    scale_runs = []
                    if "book" in paths:
                        scale_runs.append(("book", len(ctx["scale_set"])))
                    if "plain" in paths:
                        scale_runs.append(("plain", min(len(ctx["scale_set"]), 32 if s else args.scale_plain_clips)))
                    for path, n in scale_runs:
                        try:
                            model, row = training_figure(model, processor, ctx["scale_set"][:n], ctx["scale_labels"][:n],
                                                         dtype, path, recipe(16, 1, epochs=1), ctx)
                        except Exception as err:  # noqa: BLE001
                            if not is_oom(err):
                                raise
                            log(f"  {dtype} {path} training at scale: out of memory")
                            row = {"dtype": dtype, "path": path, "error": "out of memory"}
                            free(device)
                        res.setdefault("scale", []).append(row)
                        save(res, out)
    except Exception:  # noqa: BLE001 - keep what was measured
        res["error"] = strip_machine_paths(traceback.format_exc())
        log(res["error"])
    res["sweeps"] = ctx.get("sweeps", [])
    res["total_s"] = round(time.perf_counter() - t_start, 1)
    res["verdict"] = TG.judge(res)
    res["targets_enforced"] = not args.no_targets
    res["exit_code"] = TG.exit_code(res["verdict"], errored="error" in res, enforce_targets=not args.no_targets)
    if SMI is not None:
        SMI.close()
    save(res, out)
    log("")
    log(markdown(res))
    log(TG.summary_line(res["verdict"]) + f"; exit code {res['exit_code']}")
    log(f"total {res['total_s']} s; results in {out}")
    save(res, out)  # log.txt with the verdict's lines
    return res["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
