"""LoRA / QLoRA fine-tuning of Qwen2-Audio to answer ``A`` (SPEECH) or ``B`` (NONSPEECH).

Read in this order, each module one idea:

* :mod:`.recipe`: the recipe (:class:`TrainConfig`, read from the profile with ``lib.config.section``), the named
  LoRA variants it picks from, and the learning-rate rule when batch sizes change;
* :mod:`.lora`: wrapping the language model with a LoRA variant, and what a saved adapter holds;
* :mod:`.batches`: which clips each optimizer step trains on (seeded per epoch);
* :mod:`.loss`: the loss on the answer token (or every text token, the ablation) and one step's gradient;
* :mod:`.gradient_checkpointing`: trading compute for memory;
* :mod:`.checkpoints`: everything a killed run needs to resume bit for bit, refused for another run;
* :mod:`.data_parallel`: data parallelism over several processes (one run's batches shared out);
* :mod:`.loop`: :func:`train`, the loop itself, with a per-step callback;
* :mod:`.system`: the whole recipe as the chapters run it: :func:`train_on_bank` and :func:`train_system`
  train and save a system that ``python -m lib predict`` loads.
"""
from __future__ import annotations

from .batches import epoch_order, micro_batches, optimizer_steps, steps_per_epoch
from .checkpoints import (CHECKPOINTS_KEPT, CheckpointMismatchError, check_fingerprint, latest_checkpoint,
                          load_checkpoint, run_fingerprint, save_checkpoint)
from .gradient_checkpointing import CHECKPOINTING_MODES, checkpointing_mode, set_gradient_checkpointing
from .lora import (adapted_modules, adapter_report, apply_lora, lora_config, parameter_counts,
                   target_modules_regex, trainable_modules)
from .loop import Step, TrainResult, dev_metrics, train, write_history
from .loss import LABEL_TO_ANSWER, accumulate_gradients, answers_for, batch_loss
from .data_parallel import DataParallel
from .recipe import LORA_VARIANTS, TrainConfig, profile_recipe, scaled_learning_rate, split_batch
from .system import BaseModelConfig, train_on_bank, train_system

__all__ = [
    "BaseModelConfig", "CHECKPOINTING_MODES", "CHECKPOINTS_KEPT", "CheckpointMismatchError", "DataParallel",
    "LABEL_TO_ANSWER", "LORA_VARIANTS", "Step", "TrainConfig", "TrainResult", "accumulate_gradients",
    "adapted_modules", "adapter_report", "answers_for", "apply_lora", "batch_loss", "check_fingerprint",
    "checkpointing_mode", "dev_metrics", "epoch_order", "latest_checkpoint", "load_checkpoint", "lora_config",
    "micro_batches", "optimizer_steps", "parameter_counts", "profile_recipe", "run_fingerprint", "save_checkpoint",
    "scaled_learning_rate", "set_gradient_checkpointing", "split_batch", "steps_per_epoch",
    "target_modules_regex", "train", "train_on_bank", "train_system", "trainable_modules",
    "write_history",
]
