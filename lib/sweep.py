"""Seed x variant sweeps: one run folder per member, driven by the same papermill runner.

A sweep belongs to a main run (``results/<profile>/<run_id>/``). Each member is a run of its own,
``<run_id>--seed<S>-<variant>``, that executes the training and evaluation chapters on the main
run's bank (the same clips, so members can be compared clip by clip and ensembled). Members already
complete are skipped; an interrupted one resumes. With ``gpus=N`` members run as separate processes,
one per GPU at a time, each pinned with ``CUDA_VISIBLE_DEVICES``; with ``gpus=0`` one after another
in this process. On a CPU with ``cpu_workers`` >= 2 the book starts the sweep in a background process as soon as
the bank exists (:func:`start_beside_book`), so members train on a core the chapters leave idle; the sweep step then
waits for it and finds its members complete.
"""
from __future__ import annotations

import os
import queue
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import yaml
from tqdm.auto import tqdm

from . import io
from .config import PROJECT_ROOT
from .results import read_predictions


@dataclass(frozen=True)
class Member:
    run_id: str
    seed: int
    variant: str
    overrides: dict[str, Any] = field(hash=False)


def members(main_run_id: str, overrides: Mapping[str, Any], seeds: Sequence[int], variants: Sequence[str]) -> list[Member]:
    out = []
    for seed in seeds:
        for variant in variants:
            merged = {**overrides, "seed": int(seed), "lora_variant": variant}
            out.append(Member(f"{main_run_id}--seed{seed}-{variant}", int(seed), variant, merged))
    return out


def _set_args(overrides: Mapping[str, Any]) -> list[str]:
    args = []
    for key, value in overrides.items():
        args += ["--set", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"]
    return args


def run_sweep(
    profile: str,
    overrides: Mapping[str, Any],
    main_run_dir: str | Path,
    seeds: Sequence[int],
    variants: Sequence[str],
    chapters: Sequence[str],
    gpus: int = 0,
    log: Callable[[str], None] = lambda s: print(s, flush=True),
    notebooks_dir: str | Path | None = None,
) -> list[Path]:
    """Run (or finish) every member of the sweep; returns their run folders."""
    from .book import NOTEBOOKS_DIR, read_status, run_book

    notebooks_dir = Path(notebooks_dir or NOTEBOOKS_DIR)
    main_run_dir = Path(main_run_dir)
    bank_pointer = main_run_dir / "bank.yaml"
    if not bank_pointer.exists():
        raise FileNotFoundError(f"{bank_pointer} is missing: run chapter 01 of run {main_run_dir.name} before its sweep")
    results_dir = main_run_dir.parent.parent
    todo, done = [], []
    for m in members(main_run_dir.name, overrides, seeds, variants):
        run_dir = main_run_dir.parent / m.run_id
        (done if read_status(run_dir)["state"] == "complete" else todo).append((m, run_dir))
    io.write_yaml(
        main_run_dir / "sweep.yaml",
        {"members": [{"run_id": m.run_id, "seed": m.seed, "variant": m.variant} for m, _ in done + todo], "chapters": list(chapters)},
    )
    log(f"sweep of {main_run_dir.name}: {len(done) + len(todo)} members, {len(done)} already complete, {len(todo)} to run" + (f" on {gpus} GPUs" if gpus else ""))
    for _, run_dir in todo:
        run_dir.mkdir(parents=True, exist_ok=True)
        io.write_text(run_dir / "bank.yaml", bank_pointer.read_text())  # same clips as the main run (atomic copy)
    bar = tqdm(total=len(done) + len(todo), initial=len(done), desc="sweep", unit="run")
    if gpus <= 0:
        for m, _ in todo:
            run_book(profile, m.overrides, run_id=m.run_id, chapters=chapters, results_dir=results_dir, log=lambda s: None,
                     notebooks_dir=notebooks_dir, publish_figures=False)  # the project's figures/ are the main run's
            bar.update()
    else:
        free: queue.Queue[int] = queue.Queue()
        for gpu in range(gpus):
            free.put(gpu)

        def launch(m: Member) -> None:
            gpu = free.get()
            try:
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)}
                cmd = [sys.executable, "-m", "lib", "book", "--profile", profile, "--run-id", m.run_id,
                       "--results-dir", str(results_dir), "--notebooks-dir", str(notebooks_dir), "--chapters", " ".join(chapters), "--no-publish-figures", *_set_args(m.overrides)]
                proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"sweep member {m.run_id} failed on GPU {gpu}:\n{proc.stderr[-3000:]}")
            finally:
                free.put(gpu)
                bar.update()

        with ThreadPoolExecutor(max_workers=gpus) as pool:
            for future in [pool.submit(launch, m) for m, _ in todo]:
                future.result()
    bar.close()
    return [run_dir for _, run_dir in done + todo]


def start_beside_book(profile: str, overrides: Mapping[str, Any], main_run_dir: Path, cfg: Mapping[str, Any],
                      notebooks_dir: str | Path):
    """Start the CPU sweep in a background process (spawned; it dies with this one), logging to
    ``<run>/sweep.log``; returns the process (``join()`` it, or :func:`stop_beside_book`)."""
    import multiprocessing

    proc = multiprocessing.get_context("spawn").Process(
        target=_sweep_beside_book, name="speechbook-sweep",
        args=(profile, dict(overrides), str(main_run_dir), list(cfg["sweep_seeds"]), list(cfg["sweep_variants"]),
              [str(c) for c in cfg["sweep_chapters"]], str(notebooks_dir)))
    proc.start()
    return proc


def stop_beside_book(proc, timeout: float = 60.0) -> None:
    """Interrupt a background sweep (its members record themselves as interrupted and resume next time)."""
    import signal

    if proc.is_alive():
        os.kill(proc.pid, signal.SIGINT)
        proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()


def _sweep_beside_book(profile: str, overrides: dict[str, Any], main_run_dir: str, seeds: list[int],
                       variants: list[str], chapters: list[str], notebooks_dir: str) -> None:
    from .parallel import die_with_parent

    die_with_parent()
    log_path = Path(main_run_dir) / "sweep.log"
    with open(log_path, "a", encoding="utf-8") as out:
        sys.stdout = sys.stderr = out  # progress bars too: the book's console shows its own chapters only

        def log(line: str) -> None:
            out.write(line + "\n")
            out.flush()

        run_sweep(profile, overrides, main_run_dir, seeds, variants, chapters, gpus=0, log=log,
                  notebooks_dir=notebooks_dir)


def member_dirs(main_run_dir: str | Path) -> list[Path]:
    path = Path(main_run_dir) / "sweep.yaml"
    if not path.exists():
        return []
    listed = yaml.safe_load(path.read_text())["members"]
    return [Path(main_run_dir).parent / m["run_id"] for m in listed]


def collect_predictions(main_run_dir: str | Path) -> pd.DataFrame:
    """The main run's predictions and those of its complete sweep members, in one table."""
    from .book import read_status

    frames = [read_predictions(main_run_dir)]
    for run_dir in member_dirs(main_run_dir):
        if read_status(run_dir)["state"] == "complete":
            frames.append(read_predictions(run_dir))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else read_predictions(main_run_dir)
