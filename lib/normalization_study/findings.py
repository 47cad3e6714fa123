"""Chapter 02's findings in words, built from its tables: the baselines under each normalization, and the
fine-tuned model trained and scored under each (``lib.seed_claims.run_study``)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from .comparison import TRAINED
from .levels import NORMS, cue

BASELINE_WORDS = {"energy": "energy detector", "logmel": "log-mel classifier"}


def _row(base_table: pd.DataFrame, system: str, normalization: str, settings: str = "") -> Any:
    t = base_table
    return t[(t.system == system) & (t.normalization == normalization) & (t.settings == settings)].iloc[0]


def _by_normalization(base_table: pd.DataFrame, system: str, settings: str = "") -> tuple[dict[str, float], list[str]]:
    """Balanced accuracy per normalization, and the normalizations that reach the highest."""
    vals = {n: _row(base_table, system, n, settings).balanced_accuracy for n in NORMS}
    top = max(vals.values())
    return vals, [n for n in NORMS if np.isclose(vals[n], top)]


def _vs_chance(r: Any) -> str:
    return "above chance" if r.balanced_accuracy_boot_lo > 0.5 else "not distinguishable from chance"


def baseline_findings(base_table: pd.DataFrame, mcn: pd.DataFrame, level_cue: pd.DataFrame, profile_normalization: str,
                      smoke_note: str | None = None) -> str:
    """The baselines' findings as Markdown: each trained baseline's balanced accuracy under each normalization
    with McNemar against ``none`` (Holm-adjusted, on clips and sources), the VADs' spread over normalizations,
    WebRTC's best setting, the verdict (is any change beyond chance?), the strongest baseline, and what the
    profile's normalization does to the level cue and to the log-mel classifier. ``smoke_note`` is appended."""
    def p_of(name: str, n: str, unit: str) -> float:
        return float(mcn[(mcn.baseline == name) & (mcn.versus == f"none vs {n}") & (mcn.unit == unit)]["p_holm"].iloc[0])

    out = []
    for name in TRAINED:
        vals, best = _by_normalization(base_table, name)
        r = _row(base_table, name, best[0])
        out.append(
            f"* The **{BASELINE_WORDS[name]}** reaches balanced accuracy {vals['none']:.3f} at the stored level, {vals['peak']:.3f} under peak and "
            f"{vals['rms']:.3f} under RMS normalization (best: {' = '.join(best)}, {r.balanced_accuracy_boot_lo:.3f} to {r.balanced_accuracy_boot_hi:.3f}, "
            f"{_vs_chance(r)}); McNemar against `none` (Holm-adjusted): p = {p_of(name, 'peak', 'clip_id'):.3g} (peak) and "
            f"{p_of(name, 'rms', 'clip_id'):.3g} (RMS) on clips, {p_of(name, 'peak', 'group_id'):.3g} and {p_of(name, 'rms', 'group_id'):.3g} on sources."
        )
    for system, settings, words in (("silero_vad", "max-frame-prob-512", "Silero VAD"), ("firered_vad", "max-frame-prob-10ms", "FireRedVAD")):
        vals, _ = _by_normalization(base_table, system, settings)
        out.append(f"* **{words}** scores {vals['none']:.3f} / {vals['peak']:.3f} / {vals['rms']:.3f} (none / peak / RMS): "
                   f"a spread of {max(vals.values()) - min(vals.values()):.3f}.")
    web = base_table[base_table.system == "webrtc_vad"]
    wb = web.loc[web["balanced_accuracy"].idxmax()]
    out.append(f"* **WebRTC VAD** is best in {wb.settings} under {wb.normalization} ({wb.balanced_accuracy:.3f}, "
               f"{wb.balanced_accuracy_boot_lo:.3f} to {wb.balanced_accuracy_boot_hi:.3f}); over its {len(web)} settings (mode x normalization) its speech recall "
               f"ranges {web['recall_speech'].min():.2f}-{web['recall_speech'].max():.2f} and its non-speech recall "
               f"{web['recall_nonspeech'].min():.2f}-{web['recall_nonspeech'].max():.2f}"
               + (": it calls most noisy non-speech clips voiced." if web['recall_nonspeech'].max() < 0.5 else "."))
    strongest = base_table.loc[base_table["balanced_accuracy"].idxmax()]
    significant = [f"{b} ({v}, on {'clips' if u == 'clip_id' else 'sources'})"
                   for b, v, u, p in zip(mcn.baseline, mcn.versus, mcn.unit, mcn.p_holm) if p < 0.05]
    verdict = ("no normalization changes a trained baseline's accuracy by more than chance on these test clips "
               "(every Holm-adjusted McNemar p ≥ 0.05)" if not significant else
               "normalization changes accuracy beyond chance (Holm-adjusted McNemar p < 0.05) for " + ", ".join(significant))
    def c(n: str, col: str) -> float:  # the RMS level's cue under normalization n
        return cue(level_cue, n, "rms_dbfs", col)

    norm = profile_normalization
    level_words = (
        f"The profile's normalization ({norm}) leaves the RMS level's separability where it was "
        f"({c('none', 'separability'):.2f}; extremes {c('none', 'separability_extremes'):.2f} before, "
        f"{c(norm, 'separability_extremes'):.2f} after): on this bank the stored level carried little "
        "class information to begin with, so normalization had little to remove, "
        if abs(c(norm, 'separability') - c('none', 'separability')) < 0.02 else
        f"The profile's normalization ({norm}) takes the RMS level "
        f"from separability {c('none', 'separability'):.2f} (extremes {c('none', 'separability_extremes'):.2f}) "
        f"to {c(norm, 'separability'):.2f} (extremes {c(norm, 'separability_extremes'):.2f}) ")
    out.append(f"\n**In short**: on this bank {verdict}. The strongest baseline is {strongest.baseline} under "
               f"{strongest.normalization} ({strongest.balanced_accuracy:.3f}, {strongest.balanced_accuracy_boot_lo:.3f} to "
               f"{strongest.balanced_accuracy_boot_hi:.3f}). " + level_words + "and changes the log-mel classifier's balanced accuracy by "
               f"{_row(base_table, 'logmel', norm).balanced_accuracy - _row(base_table, 'logmel', 'none').balanced_accuracy:+.3f} "
               f"({norm} minus none).")
    if smoke_note:
        out.append(f"\n{smoke_note}")
    return "\n".join(out)


def small_bank_note(profile: str, bank: pd.DataFrame) -> str:
    """The warning a smoke profile's findings carry: how few test clips and sources they rest on."""
    test = bank[bank["split"] == "test"]
    return (f"_The `{profile}` profile's bank is small ({len(test)} test clips from {test['group_id'].nunique()} sources): "
            "read the intervals, not the point estimates._")


def model_study_findings(norm_table: pd.DataFrame, verdicts: pd.DataFrame, systems: Mapping[str, str], model: str,
                         prefix: str) -> str:
    """The fine-tuned model under ``none``, ``peak`` and ``rms`` in words: balanced accuracy with its interval
    per normalization, the pairs that differ after Holm, and the seed's two claims (peak lifts accuracy by
    28 points; RMS destroys what the model needs) set against these numbers. ``systems`` maps each
    normalization to its study system's name; ``prefix`` names the model the numbers come from."""
    ba_of = {r.system: r for r in norm_table.itertuples()}
    norm_of = {name: n for n, name in systems.items()}

    def ba_text(n: str) -> str:
        r = ba_of[systems[n]]
        return f"{r.balanced_accuracy:.3f} [{r.balanced_accuracy_boot_lo:.3f}, {r.balanced_accuracy_boot_hi:.3f}]"

    sig = verdicts[(verdicts["significant_a"] + verdicts["significant_b"]) > 0]
    best = max(NORMS, key=lambda n: ba_of[systems[n]].balanced_accuracy)
    rms_worse = any((norm_of[r.a] == "rms" and r.significant_b) or (norm_of[r.b] == "rms" and r.significant_a) for r in sig.itertuples())
    rms_text = ("the highest of the three by point estimate" if best == "rms" else
                "significantly worse than another normalization on this split (Holm)" if rms_worse else
                "statistically level with the best (no Holm-adjusted McNemar p below 0.05 against it)")
    peak_vs_none = verdicts[(verdicts["a"] == systems["none"]) & (verdicts["b"] == systems["peak"]) & (verdicts["unit"] == "clips")].iloc[0]
    return "\n".join([
        f"{prefix}Balanced accuracy (cluster bootstrap over sources): none {ba_text('none')}, peak {ba_text('peak')}, "
        f"RMS {ba_text('rms')}; highest: {best}.",
        ("No pair differs significantly on clips or on sources after Holm's adjustment." if sig.empty else
         "Significant after Holm: " + "; ".join(f"{norm_of[r.a]} vs {norm_of[r.b]} on {r.unit} ({int(r.significant_a)} seed(s) for "
                                                 f"{norm_of[r.a]}, {int(r.significant_b)} for {norm_of[r.b]})" for r in sig.itertuples()) + "."),
        f"\n**The seed's claim.** Peak against none here: difference {-peak_vs_none['mean_difference']:+.3f} in accuracy (peak minus none), "
        "against the seed's +28.1 points (62.5% to 90.6%). "
        + f"RMS normalization is {rms_text} for {model}, so on this evidence it does not 'destroy' what the model needs. "
        + "This tests the claim on the book's model and bank, not on Qwen2-Audio-7B; the `full` profile runs the same "
          "study on the 7B.",
    ])
