"""Seed x variant sweeps: which members a sweep has, their run folders, and their predictions together.

A sweep belongs to a main run (``results/<profile>/<run_id>/``). Each member is a run of its own,
``<run_id>--seed<S>-<variant>``, that executes the training and evaluation chapters on the main
run's bank (the same clips, so members can be compared clip by clip and ensembled). The book's runner runs them
(:func:`lib.book.run_sweep`): members already complete are skipped; an interrupted one resumes. With ``gpus=N``
members run as separate processes (:func:`run_on_gpus`), one per GPU at a time, each pinned with
``CUDA_VISIBLE_DEVICES``; with ``gpus=0`` one after another in the runner's process. On a CPU with ``cpu_workers``
>= 2 the book starts the sweep in a background process as soon as the bank exists
(:func:`lib.book.start_beside_book`), so members train on a core the chapters leave idle; the sweep step then
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

from . import io
from .book.run_folder import read_status
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


def prepare(main_run_dir: Path, overrides: Mapping[str, Any], seeds: Sequence[int], variants: Sequence[str],
            chapters: Sequence[str]) -> tuple[list[tuple[Member, Path]], list[tuple[Member, Path]]]:
    """``(todo, done)``: the sweep's members with their run folders, those still to run and those complete. Records
    the members in ``<main run>/sweep.yaml`` and gives every member to run the main run's bank (``bank.yaml``)."""
    bank_pointer = main_run_dir / "bank.yaml"
    if not bank_pointer.exists():
        raise FileNotFoundError(f"{bank_pointer} is missing: run chapter 01 of run {main_run_dir.name} before its sweep")
    todo, done = [], []
    for m in members(main_run_dir.name, overrides, seeds, variants):
        run_dir = main_run_dir.parent / m.run_id
        (done if read_status(run_dir)["state"] == "complete" else todo).append((m, run_dir))
    io.write_yaml(
        main_run_dir / "sweep.yaml",
        {"members": [{"run_id": m.run_id, "seed": m.seed, "variant": m.variant} for m, _ in done + todo], "chapters": list(chapters)},
    )
    for _, run_dir in todo:
        run_dir.mkdir(parents=True, exist_ok=True)
        io.write_text(run_dir / "bank.yaml", bank_pointer.read_text())  # same clips as the main run (atomic copy)
    return todo, done


def run_on_gpus(todo: Sequence[Member], profile: str, results_dir: Path, notebooks_dir: Path, chapters: Sequence[str],
                gpus: int, done_one: Callable[[], Any] = lambda: None) -> None:
    """Run members as ``python -m lib book`` processes, one per GPU at a time (``CUDA_VISIBLE_DEVICES``)."""
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
            done_one()

    with ThreadPoolExecutor(max_workers=gpus) as pool:
        for future in [pool.submit(launch, m) for m in todo]:
            future.result()


def member_dirs(main_run_dir: str | Path) -> list[Path]:
    path = Path(main_run_dir) / "sweep.yaml"
    if not path.exists():
        return []
    listed = yaml.safe_load(path.read_text())["members"]
    return [Path(main_run_dir).parent / m["run_id"] for m in listed]


def collect_predictions(main_run_dir: str | Path) -> pd.DataFrame:
    """The main run's predictions and those of its complete sweep members, in one table."""
    frames = [read_predictions(main_run_dir)]
    for run_dir in member_dirs(main_run_dir):
        if read_status(run_dir)["state"] == "complete":
            frames.append(read_predictions(run_dir))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else read_predictions(main_run_dir)
