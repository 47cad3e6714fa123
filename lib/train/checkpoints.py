"""Training checkpoints: everything a killed run needs to go on as if it had never stopped.

A checkpoint holds the trainable weights, the optimizer and scheduler states, every random generator's state
and the position in the data (``state.json``: step, epoch, micro-batch, history), written atomically; the
last :data:`CHECKPOINTS_KEPT` are kept. A run killed anywhere and started again ends with exactly the adapter
of an uninterrupted run (bit for bit on CPU). Each checkpoint carries the run's fingerprint (base model,
recipe, training data): a checkpoint of another run is refused with a clear error.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import io
from .. import model as M
from .recipe import TrainConfig

CHECKPOINTS_KEPT = 2
# Recipe settings that change neither the data order nor the results beyond float rounding: a run may resume
# with other values.
FREE_ON_RESUME = ("checkpoint_every_steps", "eval_batch_size", "gradient_checkpointing", "lora_kernel")


class CheckpointMismatchError(M.AdapterMismatchError):
    """A checkpoint folder holds a run of another base model, variant or recipe."""


def seed_everything(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _rng_state() -> dict[str, Any]:
    import torch

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _trainable_state(model) -> dict[str, Any]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(ckpt_root: Path, state: dict[str, Any], model, optimizer, scheduler) -> Path:
    import torch
    from safetensors.torch import save_file

    path = ckpt_root / f"step-{state['step']:07d}"
    with io.atomic_dir(path) as tmp:
        save_file(_trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(_rng_state(), tmp / "rng.pt")
        io.write_json(tmp / "state.json", state)
    for old in sorted(ckpt_root.glob("step-*"))[:-CHECKPOINTS_KEPT]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    done = [p for p in sorted(ckpt_root.glob("step-*")) if (p / "state.json").exists()]
    return done[-1] if done else None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing or any(n not in params or params[n].shape != t.shape for n, t in weights.items()):
        raise CheckpointMismatchError(f"checkpoint {path} does not fit this model's trainable weights "
                                      f"({len(missing)} missing); it belongs to another model or variant")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    _set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return json.loads((path / "state.json").read_text())


def resume_from_latest(ckpt_root: Path, fingerprint: dict[str, Any], model, optimizer, scheduler) -> dict[str, Any] | None:
    """Load the last complete checkpoint under ``ckpt_root`` into the model, optimizer, scheduler and random
    generators and return its state; ``None`` when there is none. What a kill half-wrote is cleared first."""
    if ckpt_root.exists():
        io.clear_leftovers(ckpt_root)
    last = latest_checkpoint(ckpt_root)
    if last is None:
        return None
    saved = json.loads((last / "state.json").read_text())
    check_fingerprint(saved["fingerprint"], json.loads(json.dumps(fingerprint)), ckpt_root)
    return load_checkpoint(last, model, optimizer, scheduler)


def run_fingerprint(tc: TrainConfig, base: dict[str, Any], clip_ids: Sequence[str], labels: Sequence[str],
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    data = hashlib.sha256(json.dumps([list(map(str, clip_ids)), list(labels)]).encode()).hexdigest()
    fp = {k: v for k, v in asdict(tc).items() if k not in FREE_ON_RESUME}
    return {**fp, "base_model": base, "train_data_sha256": data, **(extra or {})}


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    diffs = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diffs:
        detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in diffs[:6])
        raise CheckpointMismatchError(
            f"the checkpoints in {where} belong to another training run ({detail}). Use another run folder "
            f"or system name, or delete {where} to start this one from scratch.")
