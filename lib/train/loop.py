"""The training loop: :func:`train` fine-tunes a peft model in place, read top to bottom like a textbook loop.

Per optimizer step: zero the gradients, accumulate them over the step's micro-batches, (sum them across
processes,) clip, step the optimizer and the schedule. After an epoch's last step the dev split is scored;
every ``checkpoint_every_steps`` steps and at each epoch's end a checkpoint is written. A caller watches (or
stops) the run through ``on_step``, called after every step once its checkpoint is on disk: the tests stop a
run there to prove that resuming gives the uninterrupted result.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ..model.fast import lora as FL
from .. import io
from .. import model as M
from . import batches
from .checkpoints import resume_from_latest, run_fingerprint, save_checkpoint, seed_everything
from .gradient_checkpointing import set_gradient_checkpointing
from .lora import parameter_counts
from .loss import accumulate_gradients, answers_for
from .data_parallel import DataParallel
from .recipe import TrainConfig

HISTORY_COLUMNS = ["step", "epoch", "loss", "lr"]
DEV_COLUMNS = ["epoch", "step", "dev_accuracy", "dev_balanced_accuracy", "dev_loss"]


@dataclass(frozen=True)
class Step:
    """What ``train(..., on_step=f)`` hands ``f`` after each optimizer step."""

    step: int  # optimizer steps done in the whole run (a resumed run counts on from its checkpoint)
    epoch: float  # epochs done, a fraction within an epoch
    loss: float
    lr: float  # the learning rate the step used
    dev: dict[str, float] | None  # the dev split's metrics when this step ended an epoch
    checkpoint: Path | None  # the checkpoint written after this step (by this process), if any


@dataclass
class TrainResult:
    model: Any
    history: pd.DataFrame  # one row per optimizer step: step, epoch, loss, lr
    dev: pd.DataFrame  # one row per epoch: epoch, step, dev_accuracy, dev_balanced_accuracy, dev_loss
    out_dir: Path
    resumed_from: int | None
    wall_s: float
    counts: dict[str, int]


@M.with_cpu_threads
def train(model, processor, train_audios: Sequence[np.ndarray], train_labels: Sequence[str], tc: TrainConfig,
          out_dir: str | os.PathLike, *, dev_audios: Sequence[np.ndarray] | None = None,
          dev_labels: Sequence[str] | None = None, train_ids: Sequence[str] | None = None,
          base: dict[str, Any] | None = None, progress: bool = True, resume: bool = True,
          on_step: Callable[[Step], None] | None = None, parallel: DataParallel | None = None) -> TrainResult:
    """Train ``model`` (a peft model from :func:`lib.train.apply_lora`) in place; checkpoints go to ``out_dir``,
    and the loss history to ``out_dir/loss.csv`` and ``dev.csv``.

    Resumes from the last checkpoint in ``out_dir/checkpoints`` (if ``resume``) after checking it belongs to
    this very run (base model, recipe, training data). ``on_step`` is called after every optimizer step (see
    :class:`Step`); an exception it raises stops the run as a kill would, after that step's checkpoint.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    t0 = time.time()
    out_dir = Path(out_dir)
    labels = list(train_labels)
    answers = answers_for(labels)
    n = len(train_audios)
    if n == 0:
        raise ValueError("the training split is empty: nothing to train on; check the bank's train split (chapter 01) "
                         "and max_train_clips")
    train_ids = list(train_ids) if train_ids is not None else [str(i) for i in range(n)]
    short = M.uses_short_encoder(model)
    fingerprint = run_fingerprint(tc, base or {}, train_ids, labels, {"short_encoder": short})
    total_steps = batches.steps_per_epoch(n, tc.micro_batch_size, tc.grad_accum_steps) * tc.epochs
    is_main = parallel is None or parallel.is_main

    set_gradient_checkpointing(model, tc.gradient_checkpointing)
    # the fused layers: peft's arithmetic with far less Python per call; the model leaves as peft made it
    with FL.fused_training(model, tc.lora_kernel):
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters: wrap it with apply_lora first")
        optimizer = torch.optim.AdamW(params, lr=tc.learning_rate, weight_decay=tc.weight_decay)
        scheduler = get_scheduler(tc.lr_schedule, optimizer, num_warmup_steps=math.ceil(tc.warmup_ratio * total_steps),
                                  num_training_steps=total_steps)
        ckpt_root = out_dir / "checkpoints"
        state = resume_from_latest(ckpt_root, fingerprint, model, optimizer, scheduler) if resume else None
        resumed_from = state["step"] if state is not None else None
        if state is None:
            state = {"step": 0, "epoch": 0, "micro": 0, "history": [], "dev": [], "fingerprint": fingerprint,
                     "total_steps": total_steps}
            seed_everything(tc.seed)

        model.train()
        with tqdm(total=total_steps, initial=state["step"], desc="training", unit="step",
                  disable=not progress or not is_main) as bar:
            while state["epoch"] < tc.epochs:
                epoch = state["epoch"]
                epoch_batches = batches.micro_batches(n, tc.micro_batch_size, tc.seed, epoch)
                for step_batches in batches.optimizer_steps(epoch_batches, tc.grad_accum_steps, start=state["micro"]):
                    optimizer.zero_grad(set_to_none=True)
                    loss = accumulate_gradients(model, processor, train_audios, answers, step_batches, tc, short,
                                                parallel)
                    if parallel is not None:  # each process holds its share of the step's gradient: add them up
                        loss = parallel.sum_gradients(params, loss)
                    if tc.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
                    lr = scheduler.get_last_lr()[0]
                    optimizer.step()
                    scheduler.step()

                    state["step"] += 1
                    state["micro"] += len(step_batches)
                    done = epoch + state["micro"] / len(epoch_batches)
                    state["history"].append({"step": state["step"], "epoch": done, "loss": loss, "lr": lr})
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", epoch=epoch + 1)
                    epoch_done = state["micro"] >= len(epoch_batches)
                    dev_row = None
                    if epoch_done:
                        if dev_audios is not None and len(dev_audios):
                            dev_row = {"epoch": epoch + 1, "step": state["step"],
                                       **dev_metrics(model, processor, dev_audios, dev_labels, tc)}
                            state["dev"].append(dev_row)
                            bar.write(f"epoch {epoch + 1}: dev accuracy {dev_row['dev_accuracy']:.3f}, balanced "
                                      f"{dev_row['dev_balanced_accuracy']:.3f}, loss {dev_row['dev_loss']:.4f}")
                        state["epoch"] += 1
                        state["micro"] = 0
                    checkpoint = None
                    if epoch_done or state["step"] % tc.checkpoint_every_steps == 0:
                        if is_main:
                            checkpoint = save_checkpoint(ckpt_root, state, model, optimizer, scheduler)
                        if parallel is not None:
                            parallel.barrier()
                    if on_step is not None:
                        on_step(Step(state["step"], done, loss, lr, dev_row, checkpoint))
    model.eval()
    history = pd.DataFrame(state["history"], columns=HISTORY_COLUMNS)
    dev = pd.DataFrame(state["dev"], columns=DEV_COLUMNS)
    if is_main:
        write_history(out_dir, history, dev)
    return TrainResult(model=model, history=history, dev=dev, out_dir=out_dir, resumed_from=resumed_from,
                       wall_s=time.time() - t0, counts=parameter_counts(model))


def dev_metrics(model, processor, audios: Sequence[np.ndarray], labels: Sequence[str], tc: TrainConfig) -> dict[str, float]:
    """Accuracy, balanced accuracy (the metrics core's, ``lib.stats``) and the A/B cross-entropy on the dev split."""
    from ..stats import binary_metrics

    s = M.score(model, processor, audios, tc.prompt, batch_size=tc.eval_batch_size)
    y = np.asarray(labels) == "speech"
    pred = s.logits[:, 0] >= s.logits[:, 1]
    metrics = binary_metrics(y, pred, absent_class="other")  # a dev split of one class: that class's recall
    p_true = np.where(y, s.p_speech, 1 - s.p_speech)
    return {"dev_accuracy": metrics["accuracy"], "dev_balanced_accuracy": metrics["balanced_accuracy"],
            "dev_loss": float(-np.mean(np.log(np.clip(p_true, 1e-12, 1))))}


def write_history(out_dir: Path, history: pd.DataFrame, dev: pd.DataFrame) -> list[Path]:
    """``loss.csv`` (one row per optimizer step) and ``dev.csv`` (one row per epoch) in ``out_dir``; the figure
    of them is ``lib.plots.training_plot``."""
    paths = [out_dir / "loss.csv", out_dir / "dev.csv"]
    io.write_csv(paths[0], history)
    io.write_csv(paths[1], dev)
    return paths
