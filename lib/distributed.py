"""One training run spread over several processes (GPUs) with Hugging Face Accelerate.

    accelerate launch --num_processes 2 -m lib.distributed --run-dir results/full/book --name qwen2audio-attn
    torchrun --nproc_per_node 2 -m lib.distributed --run-dir ... --name ...      # the same, with torchrun

Trains the system ``name`` on the run folder's bank (its train and dev splits, the run's parameters) and
saves it into the run folder exactly as chapter 03 does. Each process takes its share of every
micro-batch and gradients are summed before each optimizer step (lib.train.DataParallel), so N processes
with the same micro-batch and accumulation give the one-process result on the same effective batch, up
to floating-point summation order. On a machine without CUDA the processes use the gloo backend on CPU
(that is how the tests check the equivalence).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence


def train_in_run_folder(run_dir: str | Path, name: str, overrides: dict[str, Any] | None = None,
                        distributed: bool = True) -> dict[str, Any]:
    """Train system ``name`` on the run folder's bank with its recorded parameters (``overrides`` win), each
    process (if started by torchrun or Accelerate) taking its share of every micro-batch."""
    import torch

    from . import train
    from .book import read_params
    from .config import resolve
    from .results import read_bank_pointer

    recorded = read_params(run_dir)
    cfg = resolve(recorded["profile"], {**(recorded.get("overrides") or {}), **(overrides or {})})
    cfg["run_dir"] = str(run_dir)
    parallel, device = None, "auto"
    if distributed:
        from accelerate import Accelerator

        acc = Accelerator(cpu=not torch.cuda.is_available())
        if acc.num_processes > 1:
            parallel = train.DataParallel(acc.process_index, acc.num_processes)
        device = str(acc.device)
    # The same data and recipe as chapter 03, each process taking its share of every batch.
    return train.train_on_bank(cfg, read_bank_pointer(run_dir), name=name,
                               progress=parallel is None or parallel.is_main, device=device, parallel=parallel)


def main(argv: Sequence[str] | None = None) -> int:
    from .config import parse_override

    parser = argparse.ArgumentParser(prog="python -m lib.distributed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="a run folder whose chapter 01 is done (bank.yaml, params.yaml)")
    parser.add_argument("--name", required=True, help="the system name to save under <run dir>/systems/")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a parameter of the run")
    parser.add_argument("--no-distributed", action="store_true", help="one plain process, no Accelerate (the reference)")
    args = parser.parse_args(argv)
    overrides = dict(parse_override(s) for s in args.set or [])
    out = train_in_run_folder(args.run_dir, args.name, overrides, distributed=not args.no_distributed)
    if "trainable_params" in out:
        print(f"trained {args.name}: {out['steps']} steps in {out['train_wall_s']}s -> {out['system_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
