"""The whole recipe, as the chapters run it: load the base model, add LoRA, train (resuming if checkpoints
exist) and save the result as a system that ``lib.systems.load_system`` (and ``python -m lib predict``) loads.

:func:`train_on_bank` trains a run's system on its bank (the train split, the dev split scored per epoch);
:func:`train_system` does the same on clips already loaded.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import data, io
from .. import model as M
from ..config import section
from ..data import split_rows
from ..systems import trained_system_name
from .lora import adapter_report, apply_lora
from .loop import Step, train
from .data_parallel import DataParallel
from .recipe import TrainConfig


@dataclass(frozen=True)
class BaseModelConfig:
    """The base model a system is trained on, and how it is loaded (the profile's ``model`` keys)."""

    SECTION: ClassVar[str] = "base model"

    model_name_or_path: str
    quantization: str
    torch_dtype: str
    short_encoder: bool



def train_on_bank(cfg: Mapping[str, Any], manifest: str | Path, name: str | None = None, progress: bool = True,
                  **overrides: Any) -> dict[str, Any]:
    """Train this run's LoRA system (variant, loss masking and seed from ``cfg``, ``overrides`` win) on the bank's
    train split (``max_train_clips`` of it), scoring the dev split after each epoch; clips are loaded at the run's
    ``normalization``. Keyword arguments of :func:`train_system` (``device``, ``parallel``, ``on_step``) pass on."""
    bank = data.load_bank(manifest)
    train_rows = split_rows(bank, "train", cfg["max_train_clips"], int(cfg["seed"]))
    dev_rows = split_rows(bank, "dev")
    norm = cfg["normalization"]
    name = name or trained_system_name(overrides.get("lora_variant", cfg["lora_variant"]),
                               overrides.get("loss_masking", cfg["loss_masking"]))
    return train_system(
        dict(cfg), cfg["run_dir"], name, data.load_clips(train_rows, manifest, normalization=norm),
        train_rows["label"].tolist(), train_ids=train_rows["clip_id"].tolist(),
        dev_audios=data.load_clips(dev_rows, manifest, normalization=norm), dev_labels=dev_rows["label"].tolist(),
        progress=progress, **overrides,
    )


def train_system(cfg: Mapping[str, Any], run_dir: str | os.PathLike, name: str, train_audios: Sequence[np.ndarray],
                 train_labels: Sequence[str], *, train_ids: Sequence[str] | None = None,
                 dev_audios: Sequence[np.ndarray] | None = None, dev_labels: Sequence[str] | None = None,
                 progress: bool = True, device: str = "auto", on_step: Callable[[Step], None] | None = None,
                 parallel: DataParallel | None = None, **overrides: Any) -> dict[str, Any]:
    """Load the base model, add LoRA, train (resuming if checkpoints exist) and save the system.

    ``cfg`` holds the run's parameters (a resolved profile); ``overrides`` change the recipe
    (:class:`TrainConfig`'s fields). Writes ``<run_dir>/training/<name>/`` (checkpoints, loss.csv, dev.csv, the
    loss curve ``loss_curve.png``/``.pdf``, summary.json) and ``<run_dir>/systems/<name>/`` (``adapter/`` +
    ``system.yaml``); returns a summary dict with the trained model and processor.
    """
    from .. import systems

    tc = section(cfg, TrainConfig, **overrides)
    bm = section(cfg, BaseModelConfig)
    run_dir = Path(run_dir)
    training_dir = run_dir / "training" / name
    model, processor = M.load_model(bm.model_name_or_path, quantization=bm.quantization, torch_dtype=bm.torch_dtype,
                                    device=device, short_encoder=bm.short_encoder)
    base = M.base_fingerprint(bm.model_name_or_path)
    peft_model = apply_lora(model, tc)
    result = train(peft_model, processor, train_audios, train_labels, tc, training_dir, dev_audios=dev_audios,
                   dev_labels=dev_labels, train_ids=train_ids, base=base, progress=progress, on_step=on_step,
                   parallel=parallel)
    system_dir = run_dir / "systems" / name
    if parallel is not None and not parallel.is_main:  # the main process saves the (identical) adapter
        parallel.barrier()
        return {"name": name, "model": peft_model, "processor": processor, "system_dir": system_dir}
    with io.atomic_dir(system_dir / "adapter") as tmp:
        peft_model.save_pretrained(tmp)
    report = adapter_report(system_dir / "adapter")
    last_dev = result.dev.iloc[-1].to_dict() if len(result.dev) else {}
    smoke = bool(cfg["smoke"]) or bm.model_name_or_path == M.TINY
    summary = {
        "name": name, "base_model": bm.model_name_or_path, "smoke": smoke, "model": M.model_label(bm.model_name_or_path),
        "lora_variant": tc.lora_variant, "loss_masking": tc.loss_masking, "seed": tc.seed,
        "extra_trainable": tc.extra_trainable, "trainable_params": result.counts["trainable_params"],
        "total_params": result.counts["total_params"], **report, "train_clips": len(train_audios),
        "epochs": tc.epochs, "steps": int(result.history["step"].max()) if len(result.history) else 0,
        "train_wall_s": round(result.wall_s, 2), "resumed_from_step": result.resumed_from,
        "data_parallel_processes": parallel.world if parallel is not None else 1,
        **{k: float(v) for k, v in last_dev.items() if k.startswith("dev_")},
    }
    systems.save_system(run_dir, name, "lora", base_model=bm.model_name_or_path, adapter="adapter", prompt=tc.prompt,
                        quantization=bm.quantization, torch_dtype=bm.torch_dtype,
                        normalization=cfg["normalization"],  # clips must be scored as they were trained
                        eval_batch_size=tc.eval_batch_size, base_fingerprint=base, train_config=asdict(tc),
                        summary=summary)
    draw_loss_curve(training_dir, result.history, result.dev, tc.epochs, name=name, run=run_dir.name,
                    model=summary["model"], seed=tc.seed, smoke=smoke)
    io.write_json(training_dir / "summary.json", summary)
    if parallel is not None:
        parallel.barrier()
    return {**summary, "model": peft_model, "processor": processor, "history": result.history, "dev": result.dev,
            "system_dir": system_dir}


def draw_loss_curve(training_dir: Path, history: pd.DataFrame, dev: pd.DataFrame, epochs: int, *, name: str,
                    run: str, model: str, seed: int, smoke: bool) -> None:
    """``loss_curve.png``/``.pdf`` beside the training's CSVs: the book's training figure (``lib.plots``)."""
    import matplotlib.pyplot as plt

    from .. import plots

    source = plots.Source(run=run, model=model, seeds=seed, smoke=smoke, note=f"system {name}")
    fig = plots.training_plot(history, dev, chosen_epoch=epochs, smoke=smoke, source=source,
                              path=training_dir / "loss_curve")
    plt.close(fig)
