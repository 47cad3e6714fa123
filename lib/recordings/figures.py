"""Chapter 09's figures: detection error and frame ROC on the test scenes, missed speech by utterance duration and
SNR, and a scene's timeline (reference above each system's frame probability and segments). Each returns the figure;
the chapter saves it (``lib.io.save_figure``)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .study import DevChoice, SceneSplit, TestResults
from .analysis import ERROR_AXES



def wrapped(title: str, fig: Any) -> str:
    """A title broken into lines that fit the figure's width (about 12 characters an inch at 10 pt), so a long title
    (smoke mark, model, run) never widens the saved figure past its axes."""
    import textwrap

    return "\n".join(textwrap.wrap(title, width=max(40, int(fig.get_figwidth() * 12))))

def detection_figure(metrics: pd.DataFrame, frames: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
                     title: str) -> Any:
    """Left: each system's detection error rate (false alarm + missed speech, with its bootstrap interval), best
    first; right: the frame ROC curves of the systems with frame probabilities, with their frame AUC."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    order = metrics.sort_values("detection_error_rate")["system"].tolist()
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.5 + 0.45 * len(order)), gridspec_kw={"width_ratios": [1.2, 1]})
    m = metrics.set_index("system").loc[order]
    y = np.arange(len(order))
    axes[0].barh(y, m["false_alarm_rate"], color="tab:orange", label="false alarm")
    axes[0].barh(y, m["miss_rate"], left=m["false_alarm_rate"], color="tab:blue", label="missed speech")
    axes[0].errorbar(m["detection_error_rate"], y, xerr=[m["detection_error_rate"] - m["detection_error_rate_lo"],
                     m["detection_error_rate_hi"] - m["detection_error_rate"]], fmt="none", ecolor="black", capsize=3)
    axes[0].set_yticks(y, order)
    axes[0].invert_yaxis()
    axes[0].set_xlabel("detection error rate on test scenes (share of reference speech)")
    axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.18 - 0.6 / len(order)), ncol=2, frameon=False)
    for name in [n for n in order if n in frames]:
        lab = np.concatenate([frames[name][r][0] for r in frames[name]])
        prob = np.concatenate([frames[name][r][1] for r in frames[name]])
        fpr, tpr, _ = roc_curve(lab, prob)
        axes[1].plot(fpr, tpr, lw=1.2, label=f"{name} ({m.loc[name, 'frame_auc']:.2f})")
    axes[1].plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    axes[1].set_xlabel("false positive rate (non-speech frames)")
    axes[1].set_ylabel("true positive rate (speech frames)")
    axes[1].legend(title="frame AUC", loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.suptitle(wrapped(title, fig), fontsize=10)
    return fig


def missed_speech_figure(err: pd.DataFrame, order: Sequence[str], title: str) -> Any:
    """The share of reference speech missed per utterance, by utterance speech duration and by SNR, one line per
    system (95% intervals over utterances)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    speech = err[err["kind"] == "speech"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), sharey=True)
    for ax, axis in zip(axes, ERROR_AXES):
        sns.pointplot(data=speech, x=axis, y="missed_share", hue="system", hue_order=list(order), errorbar=("ci", 95),
                      dodge=0.4 if len(order) > 1 else False, ax=ax, markersize=4, linewidth=1)  # seaborn divides by hues - 1
        ax.set_ylabel("share of reference speech missed")
        ax.get_legend().remove()
    axes[1].legend(*axes[0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.suptitle(wrapped(title, fig), fontsize=10)
    return fig


def scene_timeline(recording_id: str, test: SceneSplit, results: TestResults, choice: DevChoice, order: Sequence[str],
                   title: str) -> Any:
    """:func:`timeline_figure` of one test scene, for the systems (in ``order``) that have frame probabilities."""
    rec = test.recs.set_index("recording_id").loc[recording_id]
    tracks = {}
    for n in order:
        if n in results.frames:
            tracks[n] = (results.frames[n][recording_id][1], choice.chosen[n].frame_ms / 1000,
                         results.hyps[n].get(recording_id, []), choice.chosen[n].onset)
    return timeline_figure(recording_id, float(rec["duration_s"]), test.refs[recording_id], test.events, tracks, title)


def timeline_figure(recording_id: str, duration_s: float, reference: Sequence[tuple[float, float]],
                    events: pd.DataFrame, systems: Mapping[str, tuple[np.ndarray, float, Sequence[tuple[float, float]], float]],
                    title: str) -> Any:
    """Reference (speech regions; non-speech events as hatched spans) above one row per system: its frame
    probability, its onset threshold and its segments. ``systems``: name -> (probs, frame_s, segments, onset)."""
    import matplotlib.pyplot as plt

    n = len(systems) + 1
    fig, axes = plt.subplots(n, 1, figsize=(12, 1.0 + 0.9 * n), sharex=True, gridspec_kw={"hspace": 0.15})
    ax = axes[0]
    for a, b in reference:
        ax.axvspan(a, b, ymin=0.5, ymax=0.95, color="tab:green", alpha=0.8, lw=0)
    ev = events[events["scene_id"] == recording_id]
    for e in ev[ev["kind"] == "nonspeech"].itertuples(index=False):
        ax.axvspan(e.onset_s, e.end_s, ymin=0.05, ymax=0.45, color="tab:orange", alpha=0.6, lw=0)
    ax.set_yticks([0.72, 0.25], ["speech", "non-speech\nevents"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("reference", rotation=0, ha="right", va="center")
    for ax, (name, (probs, frame_s, segs, onset)) in zip(axes[1:], systems.items()):
        t = (np.arange(len(probs)) + 0.5) * frame_s
        for a, b in segs:
            ax.axvspan(a, b, color="tab:blue", alpha=0.18, lw=0)
        ax.plot(t, probs, color="tab:blue", lw=0.8)
        ax.axhline(onset, color="grey", lw=0.8, ls="--")
        ax.set_ylim(-0.05, 1.05)
        ax.set_yticks([0, 1])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    axes[-1].set_xlabel("time in the recording (s)")
    axes[-1].set_xlim(0, duration_s)
    fig.suptitle(wrapped(title, fig), y=1.0, fontsize=10)
    return fig
