"""The whole book on the Qwen2-Audio-7B architecture with RANDOM weights, on one GPU: time and memory per chapter.

    python -m bench.book_gpu --model-dir /tmp/qwen2audio-7b-random --set clips_per_cell=10 --set sweep_seeds=[] ...

What a user with the real weights runs first is ``make book PROFILE=full SET='model_name_or_path=<folder>'``.
This runs exactly that (:func:`lib.book.run_book` on the ``full`` profile) on a model folder that
:func:`bench.architecture.save_random_model` writes first if it is missing (the 7B architecture, random bf16
weights, the real processor), with the reductions given by ``--set`` (a smaller bank, fewer prompt-optimisation
steps). Per chapter it records the wall time (``status.json``), the peak GPU memory as PyTorch reserved and
allocated it in the chapter's kernel (:func:`lib.model.record_gpu_peaks`) and as ``nvidia-smi`` reported it while
the chapter ran; it also times building the folder and loading it with the book's loader in bf16 (``--bf16-load``).
Then :func:`extrapolate` scales each chapter to the full profile's bank.

These runs test the code and its cost, never accuracy: every model number in them comes from random weights and
is labelled so (:func:`lib.book.smoke_label`). Results: ``book_gpu.json``, ``book_gpu.md`` and ``log.txt`` in
``--out`` (``$OUT``), with the run folder's small files as ``run.tar.gz``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import time
import traceback
from pathlib import Path

from bench.gpu import LOG, SmiSampler, env_info, log, strip_machine_paths

# What each chapter's work grows with (the rest of its time is start-up: kernel, imports, loading the model):
# the clips of one split or of the whole bank, as lib's chapters use them.
CHAPTER_SCALES = {
    "01_data_prep": "bank", "02_normalization_study": "bank", "03_training": "train_epochs", "04_loss_masking_ablation":
    "train_epochs", "05_evaluation": "test", "06_statistics": "test", "07_prompt_optimization": "dev_capped", "sweep": "train_epochs",
}


def parse_sets(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = yaml.safe_load(value)
    return out


def bank_sizes(cfg: dict) -> dict:
    """Clips per split of a factorial bank as ``cfg`` asks for it (durations x SNRs x 2 classes x clips per cell)."""
    from lib.data.plan import split_counts

    cells = len(cfg["durations_ms"]) * len(cfg["snrs_db"]) * 2
    per_split = split_counts(int(cfg["clips_per_cell"]), cfg["split_fractions"])
    return {"bank": cells * int(cfg["clips_per_cell"]), "train": cells * per_split[0], "dev": cells * per_split[1],
            "test": cells * per_split[2]}


def extrapolate(chapters: dict, reduced: dict, full: dict, load_s: float, cfg_reduced: dict, cfg_full: dict) -> dict:
    """Each chapter's time on the full profile's bank: a fixed start-up part (``load_s`` per model load, at most
    the chapter's time) plus the rest scaled by the clips that chapter's work grows with. A first-order estimate:
    it assumes throughput stays as measured on the reduced bank (larger banks only fill batches better)."""
    out = {}
    for name, c in chapters.items():
        if c.get("state") != "done":
            continue
        kind = CHAPTER_SCALES.get(name, "bank")
        if kind == "train_epochs":
            factor = (full["train"] * cfg_full["epochs"]) / max(1, reduced["train"] * cfg_reduced["epochs"])
        elif kind == "dev_capped":
            cap_r = cfg_reduced.get("prompt_opt_dev_max_clips") or reduced["dev"]
            cap_f = cfg_full.get("prompt_opt_dev_max_clips") or full["dev"]
            steps_r = (cfg_reduced["opro_steps"] * cfg_reduced["opro_candidates_per_step"] + (cfg_reduced.get("template_search_max") or 30))
            steps_f = (cfg_full["opro_steps"] * cfg_full["opro_candidates_per_step"] + (cfg_full.get("template_search_max") or 30))
            factor = (min(cap_f, full["dev"]) * steps_f) / max(1, min(cap_r, reduced["dev"]) * steps_r)
        else:
            factor = full[kind] / max(1, reduced[kind])
        fixed = min(c["seconds"], load_s if name not in ("01_data_prep", "06_statistics") else 0.0)
        out[name] = {"scales_with": kind, "factor": round(factor, 1), "fixed_s": round(fixed, 1),
                     "full_s": round(fixed + (c["seconds"] - fixed) * factor, 0)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True, help="the random-weight model folder (written first if missing)")
    ap.add_argument("--set", action="append", default=[], help="key=value overrides of the full profile (the reductions)")
    ap.add_argument("--chapters", default=None, help="space-separated chapters (default: the whole book)")
    ap.add_argument("--run-id", default="book7b-random")
    ap.add_argument("--results", default="results", help="results root of the run")
    ap.add_argument("--bf16-load", action="store_true", help="also load the folder in bf16 with the book's loader and score")
    ap.add_argument("--out", default=os.environ.get("OUT") or "bench/out")
    args = ap.parse_args(argv)

    import torch

    from bench import architecture as A
    from lib import book
    from lib import model as M
    from lib.config import resolve

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"env": env_info("cuda"), "model": "Qwen2-Audio-7B architecture, RANDOM weights (not a real result)"}
    smi = SmiSampler()
    marks: list[tuple[float, str]] = []

    def portable(text: str) -> str:  # saved results name the project's files relative to it, the model folder by its option
        return strip_machine_paths(text).replace(str(args.model_dir), "<model-dir>")

    def save() -> None:
        (out / "book_gpu.json").write_text(portable(json.dumps(res, indent=1, default=str)))
        (out / "log.txt").write_text(portable("\n".join(LOG) + "\n"))

    def timed_log(line: str) -> None:
        marks.append((time.perf_counter(), line))
        log(f"[{time.strftime('%H:%M:%S')}] {line}")
        if ": done in " in line or line.endswith("running ..."):  # keep what is known if the call is cut short
            res["chapter_marks"] = [(round(t - marks[0][0], 1), m) for t, m in marks]
            save()

    try:
        folder = Path(args.model_dir)
        if not folder.exists():
            t0 = time.perf_counter()
            A.save_random_model(folder)
            torch.cuda.synchronize()
            res["build_folder_s"] = round(time.perf_counter() - t0, 1)
            res["build_folder_smi_gib"] = smi.peak_gib(t0)
            res["folder_gib"] = round(sum(p.stat().st_size for p in folder.iterdir()) / 2**30, 2)
            torch.cuda.empty_cache()
            log(f"built {folder} in {res['build_folder_s']} s ({res['folder_gib']} GiB on disk)")
        loads = {}
        # the book's own setting first (the full profile's nf4 unless --set quantization=none), then bf16 if asked
        book_quant = str(parse_sets(args.set).get("quantization", "nf4"))
        for quant, dtype in dict.fromkeys([(book_quant, "bfloat16")] + ([("none", "bfloat16")] if args.bf16_load else [])):
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            model, processor = M.load_model(str(folder), quantization=quant, torch_dtype=dtype)
            torch.cuda.synchronize()
            load_s = time.perf_counter() - t0
            import numpy as np

            rng = np.random.default_rng(0)
            clips = [rng.standard_normal(int(n)).astype(np.float32) * 0.1 for n in rng.integers(320, 16000, 64)]
            t1 = time.perf_counter()
            scores = M.score(model, processor, clips, batch_size=32)
            torch.cuda.synchronize()
            loads[quant] = {"load_s": round(load_s, 1), "score_64_s": round(time.perf_counter() - t1, 2),
                            "finite": bool(np.isfinite(scores.logits).all()),
                            "max_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                            "max_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
                            "smi_gib": smi.peak_gib(t0)}
            log(f"loaded the folder with lib.model.load_model ({quant}, {dtype}): {loads[quant]}")
            del model, processor, scores
            import gc

            gc.collect()
            torch.cuda.empty_cache()
        res["loads"] = loads
        save()

        overrides = {"model_name_or_path": str(folder), **parse_sets(args.set)}
        res["overrides"] = overrides
        chapters = args.chapters.split() if args.chapters else None
        t_book = time.perf_counter()
        run_dir = None
        try:
            run_dir = book.run_book("full", overrides, run_id=args.run_id, chapters=chapters, results_dir=args.results,
                                    log=timed_log)
        except Exception as err:  # noqa: BLE001 - record what ran; the traceback says what broke
            res["book_error"] = strip_machine_paths(f"{type(err).__name__}: {err}")
            log(res["book_error"])
        res["book_s"] = round(time.perf_counter() - t_book, 1)
        run_dir = run_dir or Path(args.results) / "full" / args.run_id
        status = book.read_status(run_dir)
        # nvidia-smi's peak per chapter: the samples between its "running" and "done" lines
        starts = {line.split("] ", 1)[1].split(":")[0]: t for t, line in marks if line.endswith("running ...")}
        ends = {line.split("] ", 1)[1].split(":")[0]: t for t, line in marks if ": done in " in line}
        for name, c in status.get("chapters", {}).items():
            if name in starts:
                c["smi_gib"] = smi.peak_gib(starts[name], ends.get(name))
        res["status"] = status
        cfg_r = resolve("full", overrides)
        cfg_f = resolve("full", {})
        res["bank_reduced"], res["bank_full"] = bank_sizes(cfg_r), bank_sizes(cfg_f)
        res["extrapolation"] = extrapolate(status.get("chapters", {}), res["bank_reduced"], res["bank_full"],
                                           loads["nf4"]["load_s"], cfg_r, cfg_f)
        with tarfile.open(out / "run.tar.gz", "w:gz") as tar:  # the run's small files: notebooks, tables, metrics
            for p in sorted(Path(run_dir).rglob("*")):
                if p.is_file() and p.stat().st_size < 4 * 2**20 and p.suffix not in (".safetensors", ".bin", ".pt", ".wav"):
                    tar.add(p, arcname=str(p.relative_to(Path(run_dir).parent)))
    except Exception:  # noqa: BLE001
        res["error"] = strip_machine_paths(traceback.format_exc())
        log(res["error"])
    smi.close()
    res["markdown"] = markdown(res)
    save()
    (out / "book_gpu.md").write_text(res["markdown"])
    log(res["markdown"])
    return 1 if ("error" in res or "book_error" in res) else 0


def markdown(res: dict) -> str:
    lines = [f"{res['model']}; {res['env'].get('gpu')}, {res['env'].get('cpu_count')} CPU cores.", ""]
    if "build_folder_s" in res:
        lines.append(f"- model folder written by bench.architecture.save_random_model in {res['build_folder_s']} s "
                     f"({res['folder_gib']} GiB)")
    for q, l in (res.get("loads") or {}).items():
        lines.append(f"- lib.model.load_model ({q}): {l['load_s']} s; 64 clips scored in {l['score_64_s']} s; peak GiB "
                     f"allocated / reserved / nvidia-smi {l['max_allocated_gib']} / {l['max_reserved_gib']} / {l['smi_gib']}")
    st = (res.get("status") or {}).get("chapters") or {}
    ex = res.get("extrapolation") or {}
    if st:
        lines += ["", "| chapter | state | wall s | peak GiB allocated / reserved (kernel) | peak GiB nvidia-smi | "
                  "scales with | full bank: est. s |", "|---|---|---|---|---|---|---|"]
        for name, c in st.items():
            e = ex.get(name, {})
            lines.append(f"| {name} | {c.get('state')} | {c.get('seconds', '-')} | {c.get('max_allocated_gib', '-')} / "
                         f"{c.get('max_reserved_gib', '-')} | {c.get('smi_gib', '-')} | {e.get('scales_with', '-')} "
                         f"(x{e.get('factor', '-')}) | {e.get('full_s', '-')} |")
        lines.append("")
        lines.append(f"Bank: reduced {res.get('bank_reduced')}, full profile {res.get('bank_full')}.")
    if res.get("book_error"):
        lines += ["", f"Book error: {res['book_error'][:2000]}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
