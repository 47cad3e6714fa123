"""The listening tool on a run folder: its ``predictions.csv``, the bank recorded in ``bank.yaml``, the run's
normalization and smoke flag from ``params.yaml``; tags and exports go to the folder."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import yaml

from .. import results
from ..config import flatten_sections
from ..stats import read_bank  # the one bank reader (lib.data.load_bank); a missing clip file shows on its card
from .listing import label_of
from .tool import ListeningTool


def run_params(run_dir: Path) -> dict[str, Any]:
    """The run's parameters, flat: ``params.yaml``'s ``resolved`` block as ``lib.book`` writes it (or the file
    itself), its sections flattened as profiles' are (``lib.config.flatten_sections``); {} without the file."""
    path = run_dir / "params.yaml"
    if not path.exists():
        return {}
    params = yaml.safe_load(path.read_text()) or {}
    resolved = params.get("resolved", params) if isinstance(params, dict) else {}
    return flatten_sections(resolved, str(path))


def listening_tool(
    run_dir: str | Path,
    system: str | None = None,
    *,
    compare: str | None = None,
    bank_manifest: str | Path | None = None,
    normalization: str | None = None,
    smoke: bool | None = None,
    **kwargs: Any,
) -> ListeningTool:
    """The listening tool on a run folder: its ``predictions.csv``, the bank recorded in ``bank.yaml``,
    tags and exports in the folder. One call opens it on any run.

    ``system`` picks system A (a name such as ``silero_vad`` or a full menu label such as
    ``lora/attn#0``); by default the run's own fine-tuned system (``qwen2audio-<lora_variant>`` of its seed) when
    it has one. ``compare`` opens the comparison with system B. ``normalization`` and ``smoke`` default
    to the run's ``params.yaml`` (``normalization``, ``smoke``), else ``none`` and False.
    """
    run_dir = Path(run_dir)
    preds = results.read_predictions(run_dir)
    if preds.empty:
        raise FileNotFoundError(f"{run_dir / 'predictions.csv'} is missing or empty: score a system in this run first")
    manifest = Path(bank_manifest) if bank_manifest is not None else results.read_bank_pointer(run_dir)
    params = run_params(run_dir)
    if normalization is None:
        normalization = str(params.get("normalization", "none"))
    if smoke is None:
        smoke = bool(params.get("smoke", False))
    if system is None:
        system = _run_system(preds, params)
    if "model" not in kwargs and params.get("model_name_or_path"):
        from ..book import model_label

        kwargs["model"] = model_label(params)
    return ListeningTool(preds, read_bank(manifest), manifest, normalization=normalization, smoke=smoke,
                         system=system, compare=compare, run_dir=run_dir, **kwargs)


def _run_system(preds: pd.DataFrame, params: Mapping[str, Any]) -> str | None:
    """The run's own fine-tuned system (``qwen2audio-<lora_variant>``, its seed) as a menu label, if scored."""
    variant, seed = params.get("lora_variant"), params.get("seed")
    if not variant:
        return None
    name = f"qwen2audio-{variant}"
    part = preds[preds["system"] == name]
    if part.empty:
        return None
    if seed is not None and (part["seed"].astype(int) == int(seed)).any():
        part = part[part["seed"].astype(int) == int(seed)]
    r = part.iloc[0]
    return label_of(r["system"], r.get("variant", ""), r.get("seed", -1))
