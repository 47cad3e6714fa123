"""Trained systems: a LoRA adapter on its base model, checked before use, scoring clips of any length.

An adapter is refused when it was made for another base model (:class:`AdapterMismatchError`) or its files are
damaged (:class:`DamagedFilesError`), each with what to do. Clips longer than the audio encoder's 30 s are scored
window by window.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .build.folder import BUILD_INFO
from .errors import AdapterMismatchError, DamagedFilesError
from .load import load_model, model_label, resolve_model_path
from .prompt import DEFAULT_PROMPT
from .scoring import score


def split_long_clips(audios: Sequence[np.ndarray], window: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Clips longer than ``window`` samples cut into windows of ``window`` samples (stride ``window``; the last
    window ends at the clip's end, so every window is full length); shorter clips stay whole. Returns the
    pieces and, for each, the index of its clip."""
    pieces: list[np.ndarray] = []
    owner: list[int] = []
    for i, a in enumerate(audios):
        a = np.asarray(a)
        if len(a) <= window:
            pieces.append(a)
            owner.append(i)
            continue
        starts = list(range(0, len(a) - window, window)) + [len(a) - window]
        pieces.extend(a[s : s + window] for s in starts)
        owner.extend([i] * len(starts))
    return pieces, np.asarray(owner, dtype=int)


def score_long_clips(score_pieces: Callable[[list[np.ndarray]], np.ndarray], audios: Sequence[np.ndarray],
                     window: int) -> np.ndarray:
    """p_speech per clip, a clip longer than the model's window being the maximum over its windows (is there
    speech anywhere in it?). The audio encoder hears at most 30 s: without this, the rest would be dropped
    silently by the feature extractor."""
    if all(len(a) <= window for a in audios):  # the usual case: the clips as given (they may be a lazy sequence)
        return np.asarray(score_pieces(audios), dtype=float)
    pieces, owner = split_long_clips(audios, window)
    p = np.asarray(score_pieces(pieces), dtype=float)
    out = np.full(len(audios), -np.inf)
    np.maximum.at(out, owner, p)
    return out


class LoraScorer:
    """A fine-tuned system: base model + LoRA adapter, scoring clips through :func:`score`.

    Clips longer than the audio encoder's window (30 s) are scored window by window: :attr:`window_rule`."""

    window_rule = "clips over 30 s: p_speech is the maximum over 30 s windows (stride 30 s, the last ending at the clip's end)"

    def __init__(self, name: str, model, processor, prompt: str, batch_size: int = 16, progress: bool = False,
                 normalization: str | None = None):
        self.name, self.model, self.processor = name, model, processor
        self.prompt, self.batch_size, self.progress = prompt, batch_size, progress
        self.normalization = normalization  # the level normalization its clips were trained under
        self.model_label = model_label(getattr(model, "speechbook_source", {}).get("model_name_or_path", ""))

    @property
    def window_samples(self) -> int:
        """The most samples the feature extractor keeps of a clip (30 s at 16 kHz for Qwen2-Audio)."""
        return int(self.processor.feature_extractor.n_samples)

    def score(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        return score_long_clips(
            lambda pieces: score(self.model, self.processor, pieces, self.prompt, batch_size=self.batch_size,
                                 progress=self.progress, desc=self.name).p_speech,
            audios, self.window_samples)


def load_adapter(model, adapter_dir: str | os.PathLike, base_model: str | None = None,
                 expected_fingerprint: dict | None = None):
    """Attach a saved adapter to ``model`` (frozen, for scoring); refuses one made for another base model."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise FileNotFoundError(f"{adapter_dir} holds no adapter_config.json: not a saved adapter")
    check_adapter_files(adapter_dir)
    if expected_fingerprint is not None:
        source = getattr(model, "speechbook_source", {}).get("model_name_or_path", base_model)
        check_base_model(expected_fingerprint, base_fingerprint(source), what=f"adapter {adapter_dir}")
    try:
        peft_model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
    except RuntimeError as err:  # size mismatch: another architecture
        raise AdapterMismatchError(
            f"adapter {adapter_dir} does not fit base model {base_model or ''}: {err}") from err
    except (ValueError, KeyError, TypeError, OSError) as err:  # what check_adapter_files cannot foresee
        raise DamagedFilesError(f"cannot load adapter {adapter_dir} ({type(err).__name__}: {err}); {ADAPTER_REMEDY}") from None
    peft_model.eval()
    return peft_model


ADAPTER_REMEDY = "the adapter is damaged: train it again (chapter 03_training) or restore the folder from a copy"


def check_adapter_files(adapter_dir: Path) -> None:
    """Name a damaged adapter before peft meets it: adapter_config.json must be a JSON object naming its peft
    type, and the weights a complete safetensors file."""
    from safetensors import safe_open

    config = adapter_dir / "adapter_config.json"
    try:
        spec = json.loads(config.read_text())
    except (ValueError, OSError) as err:
        raise DamagedFilesError(f"{config} is not valid JSON ({err}); {ADAPTER_REMEDY}") from None
    if not isinstance(spec, dict) or "peft_type" not in spec:
        raise DamagedFilesError(f"{config} is {'empty' if not spec else 'not an adapter config'} (no peft_type); {ADAPTER_REMEDY}")
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.exists():
        if (adapter_dir / "adapter_model.bin").exists():
            return
        raise DamagedFilesError(f"{adapter_dir} holds no adapter_model.safetensors; {ADAPTER_REMEDY}")
    try:
        with safe_open(str(weights), framework="pt") as f:  # checks the header against the file's size
            list(f.keys())
    except Exception as err:  # noqa: BLE001 - SafetensorError, a bad header, a truncated body
        raise DamagedFilesError(f"{weights} is not a complete safetensors file ({type(err).__name__}: {str(err)[:160]}); "
                                f"{ADAPTER_REMEDY}") from None


def base_fingerprint(model_name_or_path: str) -> dict[str, Any]:
    """What identifies a base model for adapters: its name, its config's hash, the tiny build's weights."""
    import hashlib

    path = Path(resolve_model_path(model_name_or_path))
    info: dict[str, Any] = {"model_name_or_path": model_name_or_path}
    if not path.exists():
        try:
            from huggingface_hub import snapshot_download
            path = Path(snapshot_download(model_name_or_path, local_files_only=True))
        except Exception:  # noqa: BLE001 - the loader gives the clear error
            return info
    config = json.loads((path / "config.json").read_text())
    for k in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "quantization_config"):
        config.pop(k, None)
    info["config_sha256"] = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    if (path / BUILD_INFO).exists():
        info["weights_sha256"] = json.loads((path / BUILD_INFO).read_text())["weights_sha256"]
    return info


def check_base_model(expected: dict, actual: dict, what: str) -> None:
    diffs = [k for k in ("config_sha256", "weights_sha256") if k in expected and expected.get(k) != actual.get(k)]
    if diffs:
        raise AdapterMismatchError(
            f"{what} was made for base model {expected.get('model_name_or_path')!r} but the base model now "
            f"loaded ({actual.get('model_name_or_path')!r}) differs in {', '.join(diffs)}; load it on the base model it "
            "was trained on (system.yaml: base_model), or train it again on this one")


def load_scorer(system_dir: str | os.PathLike, info: dict, *, model_name_or_path: str | None = None,
                quantization: str | None = None, torch_dtype: str | None = None, device: str = "auto",
                batch_size: int | None = None, short_encoder: bool = True, progress: bool = False, **_: Any) -> LoraScorer:
    """Scorer for a ``kind: lora`` system folder (see lib.systems): base model + adapter + prompt."""
    system_dir = Path(system_dir)
    base = model_name_or_path or info["base_model"]
    model, processor = load_model(base, quantization=quantization or info.get("quantization", "none"),
                                  torch_dtype=torch_dtype or info.get("torch_dtype", "float32"), device=device,
                                  short_encoder=short_encoder)
    peft_model = load_adapter(model, system_dir / info.get("adapter", "adapter"), base_model=base,
                              expected_fingerprint=info.get("base_fingerprint"))
    return LoraScorer(info.get("name", system_dir.name), peft_model, processor, info.get("prompt", DEFAULT_PROMPT),
                      batch_size=batch_size or int(info.get("eval_batch_size", 16)), progress=progress,
                      normalization=info.get("normalization"))


def zero_shot_scorer(model_name_or_path: str, prompt: str = DEFAULT_PROMPT, name: str = "zero_shot",
                     **kwargs: Any) -> LoraScorer:
    """The base model without adapter, same prompt and scoring path."""
    batch_size = kwargs.pop("batch_size", 16)
    model, processor = load_model(model_name_or_path, **kwargs)
    return LoraScorer(name, model, processor, prompt, batch_size=batch_size)
