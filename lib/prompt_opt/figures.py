"""Chapter 07's figures: the OPRO trajectories, the template search's dev scores, and the test intervals."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..plots import finish
from .opro import status_counts
from .scoring import SearchResult


def opro_trajectories(results: Mapping[str, SearchResult], source: str, path: str | Path) -> plt.Figure:
    """One panel per scorer: every candidate's dev balanced accuracy by step (jittered), the best so far, and
    the hand-written prompt's score."""
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 3.8), squeeze=False, sharey=True)
    rng = np.random.default_rng(0)
    for ax, (name, res) in zip(axes[0], results.items()):
        t = res.trajectory
        scored = t[t["dev_balanced_accuracy"].notna()]
        ax.scatter(scored["step"] + rng.uniform(-0.15, 0.15, len(scored)), 100 * scored["dev_balanced_accuracy"],
                   s=22, alpha=0.7, label="candidate (dev)")
        best = t.groupby("step")["best_so_far"].last()
        ax.step(best.index, 100 * best.values, where="post", color="C3", lw=2, label="best so far")
        ax.axhline(100 * res.reference_dev, color="0.4", ls="--", lw=1, label="hand-written prompt")
        c = status_counts(t)
        ax.set_title(f"{name}\n{c['scored']} scored, {c['rejected']} rejected, {c['duplicate']} duplicates", fontsize=9)
        ax.set_xlabel("OPRO step")
        ax.set_xticks(range(0, int(t["step"].max()) + 1))
    axes[0][0].set_ylabel("dev balanced accuracy (%)")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    finish(fig, "OPRO: dev balanced accuracy of each candidate prompt", source, path)
    return fig


def instruction_ids(results: Mapping[str, SearchResult]) -> dict[str, str]:
    """Short ids (``I1``, ``I2`` ...) of the instructions the template searches scored, in order of appearance."""
    return {ins: f"I{k + 1}" for k, ins in enumerate(dict.fromkeys(
        ins for res in results.values() for ins in res.trajectory["instruction"]))}


def template_heatmaps(results: Mapping[str, SearchResult], source: str, path: str | Path) -> plt.Figure:
    """One heatmap per scorer: rows the instruction (by :func:`instruction_ids`), columns the speech letter and
    the label wording (A = speech first), cells the dev balanced accuracy (%)."""
    import seaborn as sns

    ids = instruction_ids(results)
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 0.6 * len(ids) + 2.2), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        t = res.trajectory.assign(row=lambda d: d["instruction"].map(ids), col=lambda d: d["order"] + "\n" + d["labels"])
        grid = t.pivot_table(index="row", columns="col", values="dev_balanced_accuracy", aggfunc="first") * 100
        grid = grid[list(dict.fromkeys(t.sort_values("order", key=lambda o: o != "A=speech", kind="stable")["col"]))]
        sns.heatmap(grid, annot=True, fmt=".0f", cmap="viridis", vmin=0, vmax=100, ax=ax, cbar=False)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("")
        ax.set_ylabel("instruction")
        ax.tick_params(axis="x", labelsize=7)
    finish(fig, "Template search: dev balanced accuracy (%) of each template", source, path)
    return fig


def prompts_on_test_figure(table: pd.DataFrame, source: str, path: str | Path) -> plt.Figure:
    """Test balanced accuracy of every system with its cluster-bootstrap interval, in the table's order."""
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(table) + 1.5))
    order = table.reset_index(drop=True)
    y = np.arange(len(order))[::-1]
    ax.errorbar(100 * order["balanced_accuracy"], y,
                xerr=[100 * (order["balanced_accuracy"] - order["balanced_accuracy_boot_lo"]),
                      100 * (order["balanced_accuracy_boot_hi"] - order["balanced_accuracy"])], fmt="o", capsize=3)
    ax.set_yticks(y, order["system"])
    ax.axvline(50, color="0.6", ls=":", lw=1)
    ax.set_xlabel("test balanced accuracy (%), 95% cluster-bootstrap interval")
    finish(fig, "Hand-written vs optimised prompts on the test split", source, path)
    return fig

