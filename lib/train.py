"""LoRA / QLoRA fine-tuning of Qwen2-Audio to answer ``A`` (SPEECH) or ``B`` (NONSPEECH).

* Variants (``attn``: q,k,v,o; ``attn_mlp``: + gate, up, down) are restricted to the language model by a
  regular expression over module names; ``extra_trainable`` names whole modules trained beside LoRA (peft
  ``modules_to_save``). The tiny model has random weights, so the cpu profile trains its audio tower and
  projector too; the real model keeps them frozen, and a frozen encoder runs without autograd (no
  activations kept for it).
* Loss on the answer token only (``loss_masking=True``) or on every text token (the ablation).
* Seeded and reproducible: the data order of an epoch is a function of ``(seed, epoch)``; checkpoints hold
  the trainable weights, optimizer, scheduler, RNG states and position, written atomically, so a run killed
  anywhere and started again ends with exactly the adapter of an uninterrupted run (bit for bit on CPU).
* A checkpoint from another base model, variant or recipe is refused with a clear error.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .model.fast import lora as FL
from . import io
from . import model as M
from .stats import binary_metrics

LORA_VARIANTS: dict[str, tuple[str, ...]] = {
    "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "attn_mlp": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
LABEL_TO_ANSWER = {"speech": "A", "nonspeech": "B"}
CHECKPOINTS_KEPT = 2


class CheckpointMismatchError(M.AdapterMismatchError):
    """A checkpoint folder holds a run of another base model, variant or recipe."""


@dataclass(frozen=True)
class DataParallel:
    """This process's part in data-parallel training over ``world`` processes (torchrun / Accelerate).

    Every process sees the same seeded data order and takes every ``world``-th clip of each micro-batch;
    gradients are summed across processes before the optimizer step, so the step equals the one-process
    step on the same effective batch (up to the order of floating-point sums).
    """

    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: np.ndarray) -> np.ndarray:
        return idx[self.rank::self.world]

    def sum_gradients(self, params: Sequence[Any], loss_share: float) -> float:
        import torch
        import torch.distributed as dist

        for p in params:
            if p.grad is None:  # a process with no clips in this step still takes part in the sum
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        total = torch.tensor([loss_share], dtype=torch.float64, device=params[0].device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return float(total)

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()


class SimulatedCrash(RuntimeError):
    """Raised by ``train(..., crash_after_steps=k)``: the tests' stand-in for a kill mid-run."""


# ------------------------------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    """The recipe. ``learning_rate`` belongs to the effective batch ``micro_batch_size x grad_accum_steps`` (the
    seed's: 16). The learning-rate rule when batches change:

    * the micro-batch changes and accumulation keeps the effective batch (e.g. 2 x 8 -> 16 x 1, to fill a GPU):
      the learning rate stays. Each optimizer step sees the mean loss over the same clips (micro-batches are
      weighted by their clip counts), so the optimization is the same up to float rounding;
    * the effective batch itself changes: scale the learning rate with the square root of the ratio (Adam's
      rule: :func:`scaled_learning_rate`); warmup stays a fraction of the steps. :func:`split_batch` gives the
      largest micro-batch that fits and the accumulation that keeps a given effective batch.
    """

    lora_variant: str = "attn"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    extra_trainable: list[str] = field(default_factory=list)
    loss_masking: bool = True
    epochs: int = 3
    learning_rate: float = 2e-4
    micro_batch_size: int = 16
    grad_accum_steps: int = 1
    lr_schedule: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    checkpoint_every_steps: int = 200
    eval_batch_size: int = 16
    seed: int = 0
    prompt: str = M.DEFAULT_PROMPT
    gradient_checkpointing: bool | str = False  # False | "layers" (True) | "layers:N" | "mlp": set_gradient_checkpointing
    lora_kernel: str = "fused"  # "fused": lib.fast_lora's layers (+ one-kernel RMSNorm on a GPU) | "peft": peft's forward

    def __post_init__(self) -> None:
        self.gradient_checkpointing = checkpointing_mode(self.gradient_checkpointing)
        self.lora_kernel = FL.lora_kernel(self.lora_kernel)

    @classmethod
    def from_cfg(cls, cfg: dict[str, Any], **overrides: Any) -> "TrainConfig":
        names = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(overrides) - names)  # cfg holds every run parameter; overrides must be training ones
        if unknown:
            raise ValueError(f"unknown training parameter(s) {unknown}; valid: {', '.join(sorted(names))}")
        values = {k: v for k, v in {**cfg, **overrides}.items() if k in names and v is not None}
        tc = cls(**values)
        tc.extra_trainable = list(tc.extra_trainable or [])
        if tc.lora_variant not in LORA_VARIANTS:
            raise ValueError(f"lora_variant {tc.lora_variant!r} unknown; valid: {', '.join(LORA_VARIANTS)}")
        return tc


def scaled_learning_rate(learning_rate: float, from_batch: int, to_batch: int, rule: str = "sqrt") -> float:
    """The learning rate for effective batch ``to_batch`` given one tuned for ``from_batch``: ``sqrt`` (Adam/AdamW,
    the default), ``linear`` (SGD) or ``none``. Only for a changed *effective* batch: see :class:`TrainConfig`."""
    if from_batch < 1 or to_batch < 1:
        raise ValueError("batch sizes must be >= 1")
    ratio = to_batch / from_batch
    factors = {"sqrt": math.sqrt(ratio), "linear": ratio, "none": 1.0}
    if rule not in factors:
        raise ValueError(f"rule {rule!r} unknown; use one of {', '.join(factors)}")
    return learning_rate * factors[rule]


def split_batch(effective_batch: int, max_micro_batch: int) -> tuple[int, int]:
    """``(micro_batch_size, grad_accum_steps)``: the largest micro-batch <= ``max_micro_batch`` that divides
    ``effective_batch``, and the accumulation that keeps the effective batch exactly."""
    if effective_batch < 1 or max_micro_batch < 1:
        raise ValueError("batch sizes must be >= 1")
    micro = max(d for d in range(1, min(effective_batch, max_micro_batch) + 1) if effective_batch % d == 0)
    return micro, effective_batch // micro


# --------------------------------------------------------------------------------------------------- LoRA
CHECKPOINTING_MODES = ("none", "layers", "mlp")  # and "layers:N"


def checkpointing_mode(value: bool | str | None) -> str:
    """``gradient_checkpointing`` as one of :data:`CHECKPOINTING_MODES` or ``"layers:N"`` (``True`` = "layers",
    ``False`` = "none")."""
    mode = {True: "layers", False: "none", None: "none"}[value] if isinstance(value, (bool, type(None))) else str(value)
    head, _, count = mode.partition(":")
    if mode in CHECKPOINTING_MODES or (head == "layers" and count.isdigit() and int(count) > 0):
        return mode
    raise ValueError(f"gradient_checkpointing {value!r} unknown; valid: true, false, none, layers, layers:N "
                     f"(the first N language-model layers, N >= 1), mlp")


def set_gradient_checkpointing(model, mode: bool | str) -> None:
    """Recompute activations in backward instead of keeping them (or stop doing so: ``"none"``).

    * ``"layers"``: every decoder layer (Hugging Face's ``gradient_checkpointing_enable``): the least memory, but
      every layer's forward runs twice.
    * ``"layers:N"``: only the first N layers of the language model: memory in between, in proportion (the time
      measured on the 7B was not: most of the cost comes with checkpointing at all).
    * ``"mlp"``: only each language-model layer's MLP; attention (and its LoRA layers) run once. The MLP holds
      about a quarter of a layer's activations. On the 7B in NF4 (micro-batch 16, :mod:`lib.fast_lora`'s layers)
      measured: 12.6 GiB without checkpointing, 10.6 with ``"mlp"``, 9.0 with ``"layers:24"``, 7.9 with
      ``"layers"`` (BENCHMARKS.md, v4).
    """
    import torch
    import torch.utils.checkpoint as cp

    mode = checkpointing_mode(mode)
    base = M.unwrap(model)
    if mode.startswith("layers"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # gradient_checkpointing_enable hooks the input embeddings (for Qwen2-Audio: the frozen audio
        # encoder's first convolution) so that they require grad: the encoder would keep its activations.
        model.disable_input_require_grads()
        tower = base.model.audio_tower
        if not any(p.requires_grad for p in tower.parameters()):  # runs without autograd: nothing to recompute
            for module in tower.modules():
                if hasattr(module, "gradient_checkpointing"):
                    module.gradient_checkpointing = False
        if ":" in mode:
            for layer in base.model.language_model.layers[int(mode.split(":")[1]):]:
                layer.gradient_checkpointing = False
    elif getattr(base, "is_gradient_checkpointing", False):
        base.gradient_checkpointing_disable()
    for layer in base.model.language_model.layers:
        mlp = layer.mlp
        if "forward" in vars(mlp):
            del mlp.forward
        if mode == "mlp":
            def forward(x, _mlp=mlp):
                cls_forward = type(_mlp).forward  # looked up per call: scoring may swap in the fused class
                if _mlp.training and torch.is_grad_enabled():
                    return cp.checkpoint(cls_forward, _mlp, x, use_reentrant=False)
                return cls_forward(_mlp, x)
            mlp.forward = forward


def target_modules_regex(variant: str) -> str:
    """Full-match regex for peft: the variant's projections inside the language model only."""
    if variant not in LORA_VARIANTS:
        raise ValueError(f"lora_variant {variant!r} unknown; valid: {', '.join(LORA_VARIANTS)}")
    names = "|".join(LORA_VARIANTS[variant])
    return rf".*language_model\.layers\.\d+\.(self_attn|mlp)\.({names})"


def lora_config(variant: str = "attn", r: int = 16, alpha: int = 32, dropout: float = 0.05,
                extra_trainable: Sequence[str] = ()):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                      target_modules=target_modules_regex(variant),
                      modules_to_save=list(extra_trainable) or None)


def apply_lora(model, tc: TrainConfig):
    """Wrap ``model`` in a trainable peft model (LoRA weights initialised from ``tc.seed``)."""
    import torch
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tc.seed)
        peft_model = get_peft_model(model, lora_config(tc.lora_variant, tc.lora_r, tc.lora_alpha, tc.lora_dropout,
                                                       tc.extra_trainable))
    return peft_model


def adapted_modules(peft_model) -> list[str]:
    """Names of the modules that carry a LoRA adapter."""
    from peft.tuners.lora import LoraLayer

    return [name for name, module in peft_model.named_modules() if isinstance(module, LoraLayer)]


def trainable_modules(peft_model) -> list[str]:
    """Whole modules trained beside LoRA (peft ``modules_to_save``)."""
    from peft.utils.other import ModulesToSaveWrapper

    return [name for name, module in peft_model.named_modules() if isinstance(module, ModulesToSaveWrapper)]


def parameter_counts(model) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": int(trainable), "total_params": int(total)}


def adapter_report(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    """Parameter count and size on disk, read from the saved adapter itself."""
    from safetensors import safe_open

    adapter_dir = Path(adapter_dir)
    weights = adapter_dir / "adapter_model.safetensors"
    n_lora = n_other = 0
    with safe_open(str(weights), "pt") as f:
        for key in f.keys():
            n = int(np.prod(f.get_slice(key).get_shape()))
            if "lora_" in key:
                n_lora += n
            else:
                n_other += n
    size = sum(p.stat().st_size for p in adapter_dir.rglob("*") if p.is_file())
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    return {"adapter_params": n_lora + n_other, "lora_params": n_lora, "extra_trainable_params": n_other,
            "adapter_bytes": int(size), "adapter_mb": round(size / 2**20, 3), "r": cfg.get("r"),
            "lora_alpha": cfg.get("lora_alpha"), "target_modules": cfg.get("target_modules"),
            "modules_to_save": cfg.get("modules_to_save")}


# --------------------------------------------------------------------------------------------------- loss
def batch_loss(model, processor, audios: Sequence[np.ndarray], answers: Sequence[str], tc: TrainConfig,
               short_encoder: bool = True):
    """Mean cross-entropy (full vocabulary) over the answer token, or over every text token."""
    import torch

    inputs = M.make_inputs(processor, audios, tc.prompt, short_encoder=short_encoder, answers=answers)
    with M.attention_backends(model):  # SDPA's backward uses the forward's kernel
        h = M.hidden_states(model, inputs)
    ids = inputs["input_ids"].to(h.device)
    mask = inputs["attention_mask"].to(h.device).bool()
    targets = ids[:, 1:]
    if tc.loss_masking:
        suffix_lens = {M.cached_on_processor(processor, ("suffix_len", tc.prompt, a), lambda a=a: len(processor.tokenizer(
            M.answer_suffix(processor, tc.prompt, a), add_special_tokens=False).input_ids)) for a in set(answers)}
        if len(suffix_lens) != 1:
            raise ValueError("the answers' turns differ in token length; cannot locate the answer position")
        answer_pos = ids.shape[1] - suffix_lens.pop()  # index of the answer token (left padding)
        select = torch.zeros_like(targets, dtype=torch.bool)
        select[:, answer_pos - 1] = True
    else:
        audio_id = M.unwrap(model).config.audio_token_id
        select = mask[:, 1:] & (targets != audio_id)
    head = M.unwrap(model).lm_head
    logits = head(h[:, :-1][select]).float()
    return torch.nn.functional.cross_entropy(logits, targets[select])


# ------------------------------------------------------------------------------------------- checkpoints
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


def run_fingerprint(tc: TrainConfig, base: dict[str, Any], clip_ids: Sequence[str], labels: Sequence[str],
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    data = hashlib.sha256(json.dumps([list(map(str, clip_ids)), list(labels)]).encode()).hexdigest()
    # settings that change neither the data order nor the results beyond float rounding may differ between a run
    # and its resume
    fp = {k: v for k, v in asdict(tc).items()
          if k not in ("checkpoint_every_steps", "eval_batch_size", "gradient_checkpointing", "lora_kernel")}
    return {**fp, "base_model": base, "train_data_sha256": data, **(extra or {})}


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    diffs = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diffs:
        detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in diffs[:6])
        raise CheckpointMismatchError(
            f"the checkpoints in {where} belong to another training run ({detail}). Use another run folder "
            f"or system name, or delete {where} to start this one from scratch.")


# ------------------------------------------------------------------------------------------------ training
@dataclass
class TrainResult:
    model: Any
    history: pd.DataFrame  # one row per optimizer step: step, epoch, loss, lr
    dev: pd.DataFrame  # one row per epoch: epoch, step, dev_accuracy, dev_balanced_accuracy, dev_loss
    out_dir: Path
    resumed_from: int | None
    wall_s: float
    counts: dict[str, int]


def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def _dev_eval(model, processor, audios, labels, tc: TrainConfig) -> dict[str, float]:
    s = M.score(model, processor, audios, tc.prompt, batch_size=tc.eval_batch_size)
    y = np.asarray(labels) == "speech"
    pred = s.logits[:, 0] >= s.logits[:, 1]
    m = binary_metrics(y, pred, absent_class="other")  # a dev split of one class: that class's recall
    p_true = np.where(y, s.p_speech, 1 - s.p_speech)
    return {"dev_accuracy": m["accuracy"], "dev_balanced_accuracy": m["balanced_accuracy"],
            "dev_loss": float(-np.mean(np.log(np.clip(p_true, 1e-12, 1))))}


@M.with_cpu_threads
def train(model, processor, train_audios: Sequence[np.ndarray], train_labels: Sequence[str], tc: TrainConfig,
          out_dir: str | os.PathLike, *, dev_audios: Sequence[np.ndarray] | None = None,
          dev_labels: Sequence[str] | None = None, train_ids: Sequence[str] | None = None,
          base: dict[str, Any] | None = None, progress: bool = True, resume: bool = True,
          crash_after_steps: int | None = None, on_epoch_end: Callable[[dict], None] | None = None,
          parallel: "DataParallel | None" = None) -> TrainResult:
    """Train ``model`` (a peft model from :func:`apply_lora`) in place; checkpoints go to ``out_dir``.

    Resumes from the last checkpoint in ``out_dir/checkpoints`` (if ``resume``) after checking it belongs to
    this very run (base model, recipe, training data).
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    t0 = time.time()
    out_dir = Path(out_dir)
    ckpt_root = out_dir / "checkpoints"
    labels = list(train_labels)
    bad = sorted(set(labels) - set(LABEL_TO_ANSWER))
    if bad:
        raise ValueError(f"unknown training labels {bad}; expected {sorted(LABEL_TO_ANSWER)}")
    n = len(train_audios)
    if n == 0:
        raise ValueError("the training split is empty: nothing to train on; check the bank's train split (chapter 01) "
                         "and max_train_clips")
    answers = [LABEL_TO_ANSWER[lab] for lab in labels]
    train_ids = list(train_ids) if train_ids is not None else [str(i) for i in range(n)]
    short = M.uses_short_encoder(model)
    fingerprint = run_fingerprint(tc, base or {}, train_ids, labels, {"short_encoder": short})

    n_micro = math.ceil(n / tc.micro_batch_size)
    steps_per_epoch = math.ceil(n_micro / tc.grad_accum_steps)
    total_steps = steps_per_epoch * tc.epochs

    set_gradient_checkpointing(model, tc.gradient_checkpointing)
    # the fused layers: peft's arithmetic with far less Python per call; the model leaves as peft made it
    with FL.fused_training(model, tc.lora_kernel):
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters: wrap it with apply_lora first")
        optimizer = torch.optim.AdamW(params, lr=tc.learning_rate, weight_decay=tc.weight_decay)
        scheduler = get_scheduler(tc.lr_schedule, optimizer, num_warmup_steps=math.ceil(tc.warmup_ratio * total_steps),
                                  num_training_steps=total_steps)

        state = {"step": 0, "epoch": 0, "micro": 0, "history": [], "dev": [], "fingerprint": fingerprint,
                 "total_steps": total_steps}
        resumed_from = None
        if resume and ckpt_root.exists():
            io.clear_leftovers(ckpt_root)  # a checkpoint half-written when the last run was killed
        last = latest_checkpoint(ckpt_root) if resume else None
        if last is not None:
            saved = json.loads((last / "state.json").read_text())
            check_fingerprint(saved["fingerprint"], json.loads(json.dumps(fingerprint)), ckpt_root)
            state = load_checkpoint(last, model, optimizer, scheduler)
            resumed_from = state["step"]
        else:
            torch.manual_seed(tc.seed)
            np.random.seed(tc.seed % 2**32)
            random.seed(tc.seed)

        model.train()
        quiet = not progress or (parallel is not None and not parallel.is_main)
        bar = tqdm(total=total_steps, initial=state["step"], desc="training", unit="step", disable=quiet)
        steps_this_call = 0
        while state["epoch"] < tc.epochs:
            epoch = state["epoch"]
            order = _epoch_order(n, tc.seed, epoch)
            micro_batches = [order[i:i + tc.micro_batch_size] for i in range(0, n, tc.micro_batch_size)]
            while state["micro"] < len(micro_batches):
                group = micro_batches[state["micro"]:state["micro"] + tc.grad_accum_steps]
                optimizer.zero_grad(set_to_none=True)
                total = 0.0
                n_group = sum(len(idx) for idx in group)
                for idx in group:
                    if parallel is not None:  # data parallel: this process takes its share of every micro-batch
                        idx = parallel.shard(idx)
                        if len(idx) == 0:
                            continue
                    loss = batch_loss(model, processor, [train_audios[i] for i in idx], [answers[i] for i in idx], tc,
                                      short_encoder=short)
                    weight = len(idx) / n_group  # the step's loss is the mean over its clips, whatever the micro-batch
                    with M.attention_backends(model):  # gradient checkpointing recomputes attention here: same kernels
                        (loss * weight).backward()
                    total += float(loss.detach()) * weight
                if parallel is not None:  # weights are shares of the whole step: summing gives one process's gradient
                    total = parallel.sum_gradients(params, total)
                if tc.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                state["micro"] += len(group)
                state["step"] += 1
                steps_this_call += 1
                state["history"].append({"step": state["step"], "epoch": epoch + state["micro"] / len(micro_batches),
                                         "loss": total, "lr": lr})
                bar.update(1)
                bar.set_postfix(loss=f"{total:.4f}", lr=f"{lr:.2e}", epoch=epoch + 1)
                epoch_done = state["micro"] >= len(micro_batches)
                if epoch_done:
                    if dev_audios is not None and len(dev_audios):
                        ev = _dev_eval(model, processor, dev_audios, dev_labels, tc)
                        state["dev"].append({"epoch": epoch + 1, "step": state["step"], **ev})
                        bar.write(f"epoch {epoch + 1}: dev accuracy {ev['dev_accuracy']:.3f}, "
                                  f"balanced {ev['dev_balanced_accuracy']:.3f}, loss {ev['dev_loss']:.4f}")
                        if on_epoch_end:
                            on_epoch_end(state["dev"][-1])
                    state["epoch"] += 1
                    state["micro"] = 0
                if epoch_done or state["step"] % tc.checkpoint_every_steps == 0:
                    if parallel is None or parallel.is_main:
                        save_checkpoint(ckpt_root, state, model, optimizer, scheduler)
                    if parallel is not None:
                        parallel.barrier()
                if crash_after_steps is not None and steps_this_call >= crash_after_steps:
                    bar.close()
                    raise SimulatedCrash(f"simulated crash after {steps_this_call} steps (step {state['step']})")
                if epoch_done:
                    break
        bar.close()
    model.eval()
    history = pd.DataFrame(state["history"], columns=["step", "epoch", "loss", "lr"])
    dev = pd.DataFrame(state["dev"], columns=["epoch", "step", "dev_accuracy", "dev_balanced_accuracy", "dev_loss"])
    if parallel is None or parallel.is_main:
        save_curves(out_dir, history, dev)
    return TrainResult(model=model, history=history, dev=dev, out_dir=out_dir, resumed_from=resumed_from,
                       wall_s=time.time() - t0, counts=parameter_counts(model))


def save_curves(out_dir: Path, history: pd.DataFrame, dev: pd.DataFrame, title: str = "") -> list[Path]:
    """loss.csv, dev.csv and the loss curve figure (PNG + PDF) in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    io.write_csv(out_dir / "loss.csv", history)
    io.write_csv(out_dir / "dev.csv", dev)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if len(history):
        ax.plot(history["step"], history["loss"], lw=1, label="train loss (per step)")
        if len(history) >= 10:
            ax.plot(history["step"], history["loss"].rolling(10, min_periods=1).mean(), lw=2,
                    label="train loss (10-step mean)")
    if len(dev):
        ax.plot(dev["step"], dev["dev_loss"], "o-", label="dev loss (A/B)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy")
    ax.set_title(title or "training loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = io.save_figure(fig, out_dir / "loss_curve")
    plt.close(fig)
    return paths


# ------------------------------------------------------------------------------------ the whole recipe
def train_system(cfg: dict[str, Any], run_dir: str | os.PathLike, name: str, train_audios: Sequence[np.ndarray],
                 train_labels: Sequence[str], *, train_ids: Sequence[str] | None = None,
                 dev_audios: Sequence[np.ndarray] | None = None, dev_labels: Sequence[str] | None = None,
                 progress: bool = True, device: str = "auto", crash_after_steps: int | None = None,
                 parallel: DataParallel | None = None, **overrides: Any) -> dict[str, Any]:
    """Load the base model, add LoRA, train (resuming if checkpoints exist) and save the system.

    Writes ``<run_dir>/training/<name>/`` (checkpoints, loss.csv, dev.csv, loss_curve.*) and
    ``<run_dir>/systems/<name>/`` (``adapter/`` + ``system.yaml``); returns a summary dict.
    """
    from . import systems

    tc = TrainConfig.from_cfg(cfg, **overrides)
    run_dir = Path(run_dir)
    base_name = cfg.get("model_name_or_path", M.TINY)
    model, processor = M.load_model(base_name, quantization=cfg.get("quantization", "none"),
                                    torch_dtype=cfg.get("torch_dtype", "float32"), device=device,
                                    short_encoder=bool(cfg.get("short_encoder", True)))
    base = M.base_fingerprint(base_name)
    peft_model = apply_lora(model, tc)
    result = train(peft_model, processor, train_audios, train_labels, tc, run_dir / "training" / name,
                   dev_audios=dev_audios, dev_labels=dev_labels, train_ids=train_ids, base=base, progress=progress,
                   crash_after_steps=crash_after_steps, parallel=parallel)
    system_dir = run_dir / "systems" / name
    if parallel is not None and not parallel.is_main:  # the main process saves the (identical) adapter
        parallel.barrier()
        return {"name": name, "model": peft_model, "processor": processor, "system_dir": system_dir}
    with io.atomic_dir(system_dir / "adapter") as tmp:
        peft_model.save_pretrained(tmp)
    report = adapter_report(system_dir / "adapter")
    last_dev = result.dev.iloc[-1].to_dict() if len(result.dev) else {}
    summary = {
        "name": name, "base_model": base_name, "smoke": bool(cfg.get("smoke")) or base_name == M.TINY,
        "model": M.model_label(base_name),
        "lora_variant": tc.lora_variant, "loss_masking": tc.loss_masking, "seed": tc.seed,
        "extra_trainable": tc.extra_trainable, "trainable_params": result.counts["trainable_params"],
        "total_params": result.counts["total_params"], **report, "train_clips": len(train_audios),
        "epochs": tc.epochs, "steps": int(result.history["step"].max()) if len(result.history) else 0,
        "train_wall_s": round(result.wall_s, 2), "resumed_from_step": result.resumed_from,
        "data_parallel_processes": parallel.world if parallel is not None else 1,
        **{k: float(v) for k, v in last_dev.items() if k.startswith("dev_")},
    }
    systems.save_system(run_dir, name, "lora", base_model=base_name, adapter="adapter", prompt=tc.prompt,
                        quantization=cfg.get("quantization", "none"), torch_dtype=cfg.get("torch_dtype", "float32"),
                        normalization=cfg.get("normalization", "none"),  # clips must be scored as they were trained
                        eval_batch_size=tc.eval_batch_size, base_fingerprint=base, train_config=asdict(tc),
                        summary=summary)
    io.write_json(run_dir / "training" / name / "summary.json", summary)
    if parallel is not None:
        parallel.barrier()
    return {**summary, "model": peft_model, "processor": processor, "history": result.history, "dev": result.dev,
            "system_dir": system_dir}
