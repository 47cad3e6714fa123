"""Chapter 09's analysis of the test pass: the scenes in one table, where the errors are (missed speech by
utterance duration and SNR, false alarms by non-speech category), which scenes to show as timelines, and the
findings in words. Pure functions of the tables :mod:`lib.recordings.study` produces."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from . import detection
from .study import SceneSplit, event_errors

DURATION_BINS = ([0, 0.5, 1.0, 2.0, 60], ["< 0.5 s", "0.5-1 s", "1-2 s", "> 2 s"])  # an utterance's speech seconds
SNR_BINS = ([-60, 5, 10, 15, 60], ["< 5 dB", "5-10 dB", "10-15 dB", "> 15 dB"])
ERROR_AXES = ("speech duration", "SNR")
METRIC_COLUMNS = ["system", "detection_error_rate", "detection_error_rate_lo", "detection_error_rate_hi",
                  "false_alarm_rate", "miss_rate", "precision", "recall", "frame_auc", "frame_auc_lo", "frame_auc_hi", "rtf"]


def scene_overview(splits: Mapping[str, SceneSplit]) -> pd.DataFrame:
    """One row per split: scenes, minutes, the share of speech, utterances, non-speech events (and those laid
    over speech), speakers and non-speech categories."""
    rows = []
    for split, s in splits.items():
        ev = s.events
        speech, nonspeech = ev[ev["kind"] == "speech"], ev[ev["kind"] == "nonspeech"]
        rows.append({
            "split": split, "scenes": len(s.recs), "minutes": s.recs["duration_s"].sum() / 60,
            "speech share": sum(b - a for r in s.refs.values() for a, b in r) / s.recs["duration_s"].sum(),
            "utterances": len(speech), "non-speech events": len(nonspeech),
            "events over speech": int(ev["overlaps_speech"].sum()),
            "speakers": speech["group_id"].nunique(), "non-speech categories": nonspeech["category"].nunique(),
        })
    return pd.DataFrame(rows)


def speech_errors(events: pd.DataFrame, hyps: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]],
                  refs: Mapping[str, Sequence[tuple[float, float]]]) -> pd.DataFrame:
    """Every placed event's errors for every system (:func:`lib.recordings.study.event_errors`, column ``system``), the
    utterances binned by their speech duration and SNR (columns ``speech duration`` and ``SNR``)."""
    err = pd.concat([event_errors(events, hyps[n], refs).assign(system=n) for n in hyps], ignore_index=True)
    speech = err["kind"] == "speech"
    err["speech duration"] = pd.cut(err["speech_s"].where(speech), DURATION_BINS[0], labels=DURATION_BINS[1])
    err["SNR"] = pd.cut(err["snr_db"].where(speech), SNR_BINS[0], labels=SNR_BINS[1])
    return err


def missed_by(err: pd.DataFrame, axes: Sequence[str] = ERROR_AXES) -> pd.DataFrame:
    """Per system, the mean share of reference speech missed per utterance, in each bin of each axis."""
    speech = err[err["kind"] == "speech"]
    return pd.concat({axis: speech.groupby(["system", axis], observed=False)["missed_share"].mean().unstack()
                      for axis in axes}, axis=1)


def false_alarms_by_category(err: pd.DataFrame) -> pd.DataFrame:
    """Per non-speech category (rows, most called speech first by the mean over systems) and system (columns): the
    mean share of each event called speech."""
    by_cat = err[err["kind"] == "nonspeech"].groupby(["category", "system"])["false_alarm_share"].mean().unstack()
    return by_cat.loc[by_cat.mean(axis=1).sort_values(ascending=False).index]


def timeline_examples(events: pd.DataFrame) -> list[str]:
    """The scenes worth a timeline: the one with the most events over speech, then the one with the shortest
    utterance (if it is another scene)."""
    busiest = events.groupby("scene_id")["overlaps_speech"].sum().idxmax()
    shortest = events[events["kind"] == "speech"].groupby("scene_id")["speech_s"].min().drop(busiest, errors="ignore")
    return [busiest] + ([shortest.idxmin()] if len(shortest) else [])


def findings(metrics: pd.DataFrame, err: pd.DataFrame, n_scenes: int, collar_s: float, smoke: str = "",
             profile: str = "") -> str:
    """The chapter's findings in Markdown: every system's numbers, the fine-tuned system against the best VAD,
    short against long utterances, the non-speech categories most often called speech."""
    iv = detection.interval_text
    audio_s, speech_s = metrics["audio_s"].iloc[0], metrics["reference_speech_s"].iloc[0]
    lines = [f"{smoke}On {n_scenes} test scenes ({audio_s / 60:.1f} min, speech {speech_s / audio_s:.0%} of the time), "
             f"collar {collar_s:g} s:"]
    for r in metrics.sort_values("detection_error_rate").itertuples(index=False):
        r = r._asdict()
        lines.append(f"* **{r['system']}**: detection error rate {iv(r, 'detection_error_rate')} (false alarm {r['false_alarm_rate']:.3f}, "
                     f"missed {r['miss_rate']:.3f}), precision {r['precision']:.3f}, recall {r['recall']:.3f}"
                     + (f", frame AUC {iv(r, 'frame_auc')}" if np.isfinite(r.get("frame_auc", np.nan)) else "")
                     + f"; {r['rtf'] * 60:.2f} min of compute per hour of audio here.")
    vads = metrics[metrics["system"].str.contains("_vad")]
    qwen = metrics[metrics["system"].str.startswith("qwen2audio")]
    if len(qwen) and len(vads):
        q, v = qwen.iloc[0], vads.loc[vads["detection_error_rate"].idxmin()]
        overlap = not (q["detection_error_rate_hi"] < v["detection_error_rate_lo"] or v["detection_error_rate_hi"] < q["detection_error_rate_lo"])
        lines.append(f"\nThe fine-tuned **{q['system']}** against the best VAD here, **{v['system']}**: detection error rate "
                     f"{q['detection_error_rate']:.3f} against {v['detection_error_rate']:.3f}"
                     + (" (the intervals overlap: these scenes do not tell them apart)" if overlap else
                        (" (better, intervals apart)" if q["detection_error_rate"] < v["detection_error_rate"] else " (worse, intervals apart)"))
                     + f", at {q['rtf'] / max(v['rtf'], 1e-9):.2g} times its compute on this machine.")
    miss = missed_by(err, ("speech duration",))["speech duration"]
    short, long = DURATION_BINS[1][0], DURATION_BINS[1][-1]
    if short in miss and long in miss:
        both = miss[[short, long]].dropna()
        more = both.index[both[short] > both[long]].tolist()
        lines.append(f"\nUtterances with under 0.5 s of speech are missed more than those with over 2 s by {len(more)} of "
                     f"{len(both)} systems (share of their reference speech missed, short vs long: "
                     + "; ".join(f"{s} {both.loc[s, short]:.2f} vs {both.loc[s, long]:.2f}" for s in both.index) + ").")
    top = false_alarms_by_category(err).head(3)
    lines.append("The non-speech categories most often called speech (mean share over systems): "
                 + ", ".join(f"{c} ({v:.2f})" for c, v in top.mean(axis=1).items()) + ".")
    if smoke:
        lines.append(f"\n_The `{profile}` profile's fine-tuned system is a smoke model and these scenes are few: read the intervals, "
                     "not the point estimates; the VAD figures are real results of those VADs on these scenes._")
    return "\n".join(lines)
