"""Where the book's scoring time goes on the GPU, and what candidate changes would win (a development tool).

    python -m bench.profile_gpu [--small --device cpu]

On the 7B (bf16, random weights), the mix of 200-1000 ms clips at batch 512: the kernel-time breakdown of one
forward pass (torch.profiler), then GPU-side clips/s of variants of the forward, each checked against the
baseline's logits: fused RMSNorm (``F.rms_norm``), plus ``torch.compile`` of the MLP, the norms and the rotary
embedding. And the CPU side of end-to-end scoring: loading WAV files in one thread or several, making inputs
with the features on the CPU or on the GPU. Writes ``profile_gpu.json`` under ``$OUT``.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench import gpu as G
from bench import architecture as A
from bench import switches as SW
from lib import model as M


def kernel_breakdown(fn, device: str, top: int = 25) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        fn()
        G.sync(device)
    key = "device_time_total" if device.startswith("cuda") else "cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    if device.startswith("cuda"):
        events = [e for e in events if getattr(e, "device_type", None) is not None and "CUDA" in str(e.device_type)]
    total = sum(getattr(e, key) for e in events)
    cats = collections.Counter()
    for e in events:
        name = e.key.lower()
        cat = ("gemm" if any(s in name for s in ("gemm", "cutlass", "sm90", "nvjet", "cublas", "xmma")) and "fmha" not in name
               else "attention" if any(s in name for s in ("fmha", "flash", "attention", "softmax"))
               else "elementwise/reduce")
        cats[cat] += getattr(e, key)
    rows = sorted(events, key=lambda e: -getattr(e, key))[:top]
    return {"total_ms": total / 1e3, "by_category_ms": {k: v / 1e3 for k, v in cats.items()},
            "top": [{"kernel": e.key[:120], "ms": getattr(e, key) / 1e3, "calls": e.count} for e in rows]}


def fuse_norms(model) -> int:
    """Swap every Qwen2RMSNorm for one fused F.rms_norm (one kernel instead of seven)."""
    import torch.nn.functional as F
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    class FusedRMSNorm(Qwen2RMSNorm):
        def forward(self, hidden_states):
            return F.rms_norm(hidden_states, (hidden_states.shape[-1],), self.weight, self.variance_epsilon)

    n = 0
    for m in model.modules():
        if type(m) is Qwen2RMSNorm:
            m.__class__ = FusedRMSNorm
            n += 1
    return n


def compile_parts(model) -> None:
    import torch
    import transformers.models.qwen2.modeling_qwen2 as q2

    for layer in M.unwrap(model).model.language_model.layers:
        layer.mlp.forward = torch.compile(layer.mlp.forward, dynamic=True)
        layer.input_layernorm.forward = torch.compile(layer.input_layernorm.forward, dynamic=True)
        layer.post_attention_layernorm.forward = torch.compile(layer.post_attention_layernorm.forward, dynamic=True)
    q2.apply_rotary_pos_emb = torch.compile(q2.apply_rotary_pos_emb, dynamic=True)


def score_e2e(model, processor, paths, lengths, device: str, batch: int) -> dict:
    """lib.model.score end to end from the WAV files (ClipFiles + lengths: read in the prefetch worker), with the
    first call's one-time compile timed apart."""
    out = {}
    t0 = time.perf_counter()
    M.score(model, processor, M.ClipFiles(paths[:batch]), batch_size=batch // 4, lengths=lengths[:batch])
    G.sync(device)
    out["first_call_s"] = time.perf_counter() - t0
    for label, kw in (("fused", {}), ("unfused", {"fused": False})):
        for rep in range(2):
            G.reset_peak(device)
            t0 = time.perf_counter()
            M.fast.score(model, processor, M.ClipFiles(paths), batch_size=batch, lengths=lengths, **kw)
            G.sync(device)
            s = time.perf_counter() - t0
            out[f"{label}_{rep}"] = {"seconds": s, "clips_per_s": len(paths) / s, "peak_gib": G.peak_gib(device)}
            print("score e2e", label, rep, out[f"{label}_{rep}"], flush=True)
    t0 = time.perf_counter()
    audios = G.load(paths)
    out["load_all_first_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    M.score(model, processor, audios, batch_size=batch)
    G.sync(device)
    out["preloaded_score_s"] = time.perf_counter() - t0
    print("score preloaded", out["load_all_first_s"], out["preloaded_score_s"], flush=True)
    return out


def train_profiles(model, processor, paths, device: str, train_runs=("bf16:none", "nf4:none", "nf4:layers")) -> dict:
    """The book's recipe under cProfile (top functions by cumulative time), bf16 then NF4 variants."""
    import cProfile
    import io
    import pstats

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    fig.savefig(io.BytesIO(), format="png")
    fig.savefig(io.BytesIO(), format="pdf")
    plt.close(fig)
    rng = np.random.default_rng(0)
    labels = list(rng.choice(["speech", "nonspeech"], len(paths)))
    ctx = {"device": device, "ceilings": {"matmul_flops": 7e14, "copy_bytes_per_s": 3e12}, "prompt": G.prompt_tokens(processor)}
    out = {}
    runs = []
    for spec in train_runs:  # dtype:mode[@kernel], e.g. nf4:layers:24@peft
        spec, _, kernel = spec.partition("@")
        dtype, mode = spec.split(":", 1)
        runs.append((dtype, G.recipe(16, 1, gradient_checkpointing=mode, lora_kernel=kernel or "fused")))
    for i, (dtype, tc) in enumerate(runs):
        if dtype == "nf4" and not getattr(model, "is_loaded_in_4bit", False):
            A.quantize_nf4_(model, "bfloat16")
        prof = cProfile.Profile()
        prof.enable()
        model, row = G.training_figure(model, processor, paths, labels, dtype, "book", tc, ctx)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(30)
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
        text = G.strip_machine_paths(buf.getvalue())
        lines = [ln for ln in text.splitlines() if ln.strip() and "{built-in method builtins" not in ln]
        print(f"=== {dtype} {tc.gradient_checkpointing} lora {tc.lora_kernel}", flush=True)
        print("\n".join(ln[:160] for ln in lines if ln.lstrip()[:1].isdigit() or "ncalls" in ln), flush=True)
        out[f"{i}_{dtype}_{tc.micro_batch_size}x{tc.grad_accum_steps}{'' if tc.gradient_checkpointing == 'none' else '_gc_' + tc.gradient_checkpointing}_{tc.lora_kernel}"] = {
            "row": row, "profile": lines}
    return out


def step_times(model, processor, paths, device: str, variants: list[str], rounds: int = 3, steps: int = 8) -> dict:
    """One training micro-batch (16 clips of the mix: forward, loss, backward) timed per variant, the variants
    interleaved ``rounds`` times in one process: ``kernel:mode`` with kernel ``fused`` (as ``lib.train.train``
    runs it: fused LoRA layers and one-kernel norms) | ``fused-nocache`` (block scales decoded per call) | ``peft``,
    mode a gradient-checkpointing mode. Wall per step (synchronised; median of ``steps`` after one warm-up step), the GPU's busy time
    in one step (the sum of its kernels' times, torch.profiler) and the peak memory."""
    import torch

    from lib.model.fast import lora as FL
    from lib import train as T

    tc = G.recipe(16, 1)
    peft_model = T.apply_lora(model, tc)
    audios = G.load(paths[:16])
    answers = ["A", "B"] * 8
    out: dict = {v: {"rounds": []} for v in variants}

    def one_step():
        loss = T.batch_loss(peft_model, processor, audios, answers, tc)
        with M.attention_backends(peft_model):
            loss.backward()
        peft_model.zero_grad(set_to_none=True)

    for r in range(rounds):
        for v in variants:
            kernel, _, mode = v.partition(":")
            T.set_gradient_checkpointing(peft_model, mode)
            peft_model.train()
            G.free(device)
            G.reset_peak(device)
            # as lib.train.train runs it: fused layers come with one-kernel norms on a GPU
            with FL.fused_training(peft_model, kernel.removesuffix("-nocache"), cache_absmax=not kernel.endswith("-nocache")):
                one_step()  # warm-up
                times = []
                for _ in range(steps):
                    G.sync(device)
                    t0 = time.perf_counter()
                    one_step()
                    G.sync(device)
                    times.append(time.perf_counter() - t0)
                row = {"median_ms": round(1e3 * float(np.median(times)), 1), "min_ms": round(1e3 * min(times), 1),
                       "peak_gib": G.peak_gib(device)}
                if r == 0 and device.startswith("cuda"):
                    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                        one_step()
                        G.sync(device)
                    row["gpu_busy_ms"] = round(sum(e.self_device_time_total for e in prof.key_averages()) / 1e3, 1)
            out[v]["rounds"].append(row)
            print(f"step {v:28s} round {r}: median {row['median_ms']:7.1f} ms, min {row['min_ms']:7.1f} ms"
                  f"{', gpu busy ' + str(row['gpu_busy_ms']) + ' ms' if 'gpu_busy_ms' in row else ''}, peak {row['peak_gib']} GiB",
                  flush=True)
    T.set_gradient_checkpointing(peft_model, "none")
    peft_model.unload()
    return out


def plain_losses(model, processor, paths, device: str) -> dict:
    """The plain recipe's (``bench.gpu.plain_train``: the seed's Hugging Face loop) loss at every optimizer step,
    with attention as Hugging Face runs it and with cuDNN's attention kernels off (``lib.model.attention_backends``),
    to find where its loss turns NaN."""
    from lib import train as T

    rng = np.random.default_rng(0)
    labels = list(rng.choice(["speech", "nonspeech"], len(paths)))
    audios = G.load(paths)
    out = {}
    for variant in ("hf", "no-cudnn"):
        tc = G.recipe(2, 8)
        peft_model = T.apply_lora(model, tc)
        t0 = time.perf_counter()
        with (M.attention_backends(peft_model) if variant == "no-cudnn" else contextlib.nullcontext()):
            losses = G.plain_train(peft_model, processor, audios, labels, tc, device)
        nan_at = next((i + 1 for i, x in enumerate(losses) if not np.isfinite(x)), None)
        out[variant] = {"losses": [round(x, 4) for x in losses], "first_nan_step": nan_at,
                        "wall_s": round(time.perf_counter() - t0, 1)}
        print(f"plain {variant}: first NaN at step {nan_at} of {len(losses)}; losses {out[variant]['losses']}", flush=True)
        model = peft_model.unload()
        G.free(device)
    return out


def cold_passes(model, processor, root: Path, ctx: dict, device: str, batch: int, n: int, variants: list[str]) -> dict:
    """First and second pass of ``lib.model.score`` over NEW files (fresh lengths, so fresh batch shapes) per
    variant of the attention backend, after the process has compiled the fused kernels once; plus the GPU side
    and the kernel breakdown of one batch. Variants: ``book`` (the defaults of ``lib.model.score``), ``book+cudnn`` (attention on cuDNN, which plans
    every new shape), ``book+cat`` (the shared prefix joined to each batch's keys/values by ``torch.cat``)."""
    import torch

    cfg = M.unwrap(model).config
    n_text, n_prefix, _ = ctx["prompt"]
    rate = ctx["ceilings"]["matmul_flops"]
    ids = M.answer_token_ids(processor.tokenizer)
    out = {}
    for k, v in enumerate(variants):
        name, *rest = v.split(":")
        size = int(rest[0]) if rest else n
        b = int(rest[1]) if len(rest) > 1 else batch
        opts = set(name.split("+"))  # book (the defaults), +cudnn: attention on cuDNN, +cat: prefix joined by torch.cat
        plan_free = "cudnn" not in opts
        with SW.prefix_join("cat" if "cat" in opts else "copy"):
            paths = G.make_sets(root / f"cold{k}", size, seed=100 + k)["mix"]
            lengths = [G.LENGTHS[str(p)] for p in paths]
            bound_s = sum(A.clip_bound_flops(cfg, m, n_text, n_prefix) for m in lengths) / rate
            r = {"n_clips": size, "batch": b, "bound_clips_per_s": round(size / bound_s, 1), "passes": []}
            for i in range(2):
                G.sync(device)
                t0 = time.perf_counter()
                M.fast.score(model, processor, M.ClipFiles(paths), batch_size=b, lengths=lengths, plan_free_attention=plan_free)
                G.sync(device)
                s = time.perf_counter() - t0
                r["passes"].append({"e2e_clips_per_s": round(size / s, 1), "e2e_over_bound": round(s / bound_s, 3)})
            g = G.gpu_side(model, processor, G.load(paths), b, "book", device, plan_free=plan_free)
            r["gpu_clips_per_s"] = round(g["clips_per_s"], 1)
            r["gpu_over_bound"] = round(g["seconds"] / bound_s, 3)
            r["gpu_tflops_executed"] = round(g["flops_executed"] / g["seconds"] / 1e12, 1)
            r["padding_flops_ratio"] = round(g["flops_executed"] / (bound_s * rate), 3)
            if len(opts) > 1 or k == 0:
                audios = G.load(paths[:batch])
                x = G._device_inputs(M.make_inputs(processor, audios), device, True)

                def one():
                    with torch.inference_mode(), M.scoring_kernels(model, plan_free_attention=plan_free):
                        prefix = M.SharedPrefix.for_prompt(model, processor)
                        M.answer_logits(model, x, ids, prefix=prefix)

                one()
                prof = kernel_breakdown(one, device, top=20)
                r["profile_by_category_ms"] = prof["by_category_ms"]
                r["profile_top"] = prof["top"]
                print(v, "profile", prof["by_category_ms"], flush=True)
                for row in prof["top"][:14]:
                    print("   ", round(row["ms"], 2), row["calls"], row["kernel"], flush=True)
            out[v] = r
            print("cold", v, {kk: vv for kk, vv in r.items() if not kk.startswith("profile")}, flush=True)
            G.free(device)
    return out



def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--clips", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--train-clips", type=int, default=128)
    ap.add_argument("--train-runs", default="bf16:none,nf4:none,nf4:layers",
                    help="dtype:gradient_checkpointing[@lora_kernel] of each recipe profiled (in this order; NF4 after bf16; kernel fused unless @peft)")
    ap.add_argument("--variants", default="base,fused_norm,compiled")
    ap.add_argument("--only", default="cpu,variants", help="comma list of: cpu, variants, score_e2e, train, cold, steps, plain")
    ap.add_argument("--step-variants", default="peft:layers,fused-nocache:layers,fused:layers,peft:layers:24,fused:layers:24,"
                    "fused:layers:20,fused:mlp,peft:none,fused:none",
                    help="kernel:mode of each timed training step, for --only steps (NF4)")
    ap.add_argument("--cold-variants", default="book+cudnn,book,book+cat,book,book+cat,book:8192",
                    help="attention variants (base | no_cudnn), each optionally :<clips>[:<batch>], for --only cold")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "out"))
    args = ap.parse_args(argv)
    import torch

    device = args.device
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"env": G.env_info(device)}
    config = (A.small_config(audio={"d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_dim": 128},
                             text={"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                                   "num_attention_heads": 4, "num_key_value_heads": 4}) if args.small else A.config_7b())
    processor = A.processor_7b()
    res["ceilings"] = G.measure_ceilings(device, args.small)
    print("ceilings", res["ceilings"]["matmul_flops"] / 1e12, res["ceilings"]["copy_bytes_per_s"] / 1e12, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        sets = G.make_sets(Path(tmp), args.clips)
        paths = sets["mix"]
        only = set(args.only.split(","))
        if "cold" in only:
            model = A.build_random_model(config, device=device, torch_dtype="bfloat16")
            ctx = {"prompt": G.prompt_tokens(processor), "ceilings": res["ceilings"]}
            t0 = time.perf_counter()
            M.score(model, processor, M.ClipFiles(paths[:args.batch]), batch_size=args.batch // 4,
                    lengths=[G.LENGTHS[str(p)] for p in paths[:args.batch]])
            G.sync(device)
            res["first_call_s"] = time.perf_counter() - t0
            res["cold"] = cold_passes(model, processor, Path(tmp), ctx, device, args.batch, args.clips,
                                      args.cold_variants.split(","))
            (out / "profile_gpu.json").write_text(json.dumps(res, indent=1, default=str))
            return 0
        if "plain" in only:
            model = A.build_random_model(config, device=device, torch_dtype="bfloat16")
            res["plain"] = plain_losses(model, processor, paths[:args.train_clips], device)
            (out / "profile_gpu.json").write_text(json.dumps(res, indent=1, default=str))
            return 0
        if "steps" in only:
            model = A.build_random_model(config, device=device, torch_dtype="bfloat16")
            A.quantize_nf4_(model, "bfloat16")
            res["steps"] = step_times(model, processor, paths, device, args.step_variants.split(","))
            (out / "profile_gpu.json").write_text(json.dumps(res, indent=1, default=str))
            return 0
        if "score_e2e" in only or "train" in only:
            lengths = [len(a) for a in G.load(paths)]
            model = A.build_random_model(config, device=device, torch_dtype="bfloat16")
            if "score_e2e" in only:
                res["score_e2e"] = score_e2e(model, processor, paths, lengths, device, args.batch)
            if "train" in only:
                res["train"] = train_profiles(model, processor, sets["mix"][:args.train_clips], device,
                                              args.train_runs.split(","))
            (out / "profile_gpu.json").write_text(json.dumps(res, indent=1, default=str))
            return 0
        # ------------------------------------------------------------------------------------ CPU side
        t0 = time.perf_counter()
        audios = G.load(paths)
        res["load_1_thread_s"] = time.perf_counter() - t0
        for w in (4, 16):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(w) as pool:
                audios2 = list(pool.map(lambda p: G.load([p])[0], paths))
            res[f"load_{w}_threads_s"] = time.perf_counter() - t0
        assert all(np.array_equal(a, b) for a, b in zip(audios, audios2))
        batch_clips = audios[:args.batch]
        M.make_inputs(processor, batch_clips[:8])
        t0 = time.perf_counter()
        cpu_inputs = M.make_inputs(processor, batch_clips)
        res["make_inputs_cpu_features_s"] = time.perf_counter() - t0
        if device.startswith("cuda"):
            fe = processor.feature_extractor
            kw = {"sampling_rate": fe.sampling_rate, "max_length": M.short_feature_samples(max(len(a) for a in batch_clips), fe),
                  "device": device}
            processor(text=[M.prompt_text(processor)] * 8, audio=batch_clips[:8], padding=True, return_tensors="pt", audio_kwargs=kw)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            gpu_inputs = processor(text=[M.prompt_text(processor)] * len(batch_clips), audio=batch_clips, padding=True,
                                   return_tensors="pt", audio_kwargs=kw)
            torch.cuda.synchronize()
            res["make_inputs_gpu_features_s"] = time.perf_counter() - t0
            res["gpu_vs_cpu_features_max_abs"] = float((gpu_inputs["input_features"] - cpu_inputs["input_features"]).abs().max())
        t0 = time.perf_counter()
        processor.tokenizer([M.prompt_text(processor)] * len(batch_clips), padding=True)
        res["tokenize_only_s"] = time.perf_counter() - t0
        print({k: v for k, v in res.items() if k.endswith("_s") or k.endswith("abs")}, flush=True)

        # ------------------------------------------------------------------------------------ GPU side
        model = A.build_random_model(config, device=device, torch_dtype="bfloat16")
        ids = M.answer_token_ids(processor.tokenizer)
        groups = M.length_buckets([len(a) for a in audios], args.batch)
        batches = [G._device_inputs(M.make_inputs(processor, [audios[i] for i in g]), device, True) for g in groups]

        def forward():
            with torch.inference_mode():
                prefix = M.SharedPrefix.for_prompt(model, processor)
                return [M.answer_logits(model, x, ids, prefix=prefix) for x in batches]

        def timed(label):
            forward()
            G.sync(device)
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                outs = forward()
                G.sync(device)
                times.append(time.perf_counter() - t0)
            logits = torch.cat([o.float().cpu() for o in outs]).numpy()
            flops = sum(A.flops_of_batch(model.config, x, prefix_len=20) for x in batches)
            r = {"seconds": min(times), "clips_per_s": len(audios) / min(times),
                 "executed_tflops": flops / min(times) / 1e12, "times": times}
            print(label, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
            return r, logits

        variants = args.variants.split(",")
        res["variants"] = {}
        base_logits = None
        one = batches[len(batches) // 2]

        def one_forward():
            with torch.inference_mode():
                prefix = M.SharedPrefix.for_prompt(model, processor)
                M.answer_logits(model, one, ids, prefix=prefix)

        for v in variants:
            t0 = time.perf_counter()
            if v == "fused_norm":
                res["fused_norms"] = fuse_norms(model)
            elif v == "compiled":
                compile_parts(model)
            setup = time.perf_counter() - t0
            try:
                r, logits = timed(v)
            except Exception as err:  # noqa: BLE001
                res["variants"][v] = {"error": f"{type(err).__name__}: {err}"[:500]}
                print(v, "failed", err, flush=True)
                continue
            r["setup_s"] = setup
            if base_logits is None:
                base_logits = logits
            d = np.abs(logits - base_logits)
            r["max_abs_vs_base"] = float(d.max())
            r["same_decisions_vs_base"] = int(((logits[:, 0] >= logits[:, 1]) == (base_logits[:, 0] >= base_logits[:, 1])).sum())
            r["profile"] = kernel_breakdown(one_forward, device)
            res["variants"][v] = r
            print(v, "profile by category", r["profile"]["by_category_ms"], flush=True)
            for row in r["profile"]["top"][:12]:
                print("   ", round(row["ms"], 2), row["calls"], row["kernel"], flush=True)
            (out / "profile_gpu.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "profile_gpu.json").write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
