"""Planning: the bank's parameters, validated, and its rows (everything needed to render each clip).

* ``bank_params(cfg)``: the parameters that define a bank (``BANK_PARAM_KEYS``), checked;
* ``plan_bank(params, sources, noise)``: which sources (``select_sources``), which splits, which window
  of each source, which condition and noise recording each clip gets, and the band-limit treatment.

Designs: ``factorial`` fills every (duration, SNR, class) cell with ``clips_per_cell`` clips (split by
``split_fractions``) and cycles the other axes within each cell; ``ofat`` (one factor at a time) renders
every source under each value of each axis, the others at a reference value, with the same window, noise
and seed (paired comparisons).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import audio
from .render import BANDLIMITS, SourceAudio
from .schema import BANK_COLUMNS, LABELS, SPLITS
from .splits import assign_splits, check_splits

DESIGNS = ("factorial", "ofat")
BANK_PARAM_KEYS = [
    "data_source", "include_music", "max_sources_per_class", "min_source_ms", "design", "durations_ms",
    "snrs_db", "noise_types", "rt60s_s", "filters", "clips_per_cell", "split_fractions", "bandlimit_augment", "seed",
]
BANDLIMIT_SHARE = 0.5  # the treatment band-limits this share of each class's (unfiltered) clips
ACTIVE_WINDOW_DB = 20.0  # windows are drawn among those within this many dB of the loudest one
CONTEXT_PRE_S = 0.25  # context rendered before the clip (plus the RT60), so filters and reverb settle
CONTEXT_POST_S = 0.1


def bank_params(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters that define a bank, validated (errors name the parameter and the valid range)."""
    p = {k: cfg.get(k) for k in BANK_PARAM_KEYS}
    if cfg.get("bank_seed") is not None:  # the bank's own seed, fixed across training seeds
        p["seed"] = cfg["bank_seed"]
    p["data_source"] = p["data_source"] or "local"
    if p["design"] not in DESIGNS:
        raise ValueError(f"design={p['design']!r} is not valid; valid: {', '.join(DESIGNS)}")
    p["durations_ms"] = [audio.check_duration(d, "durations_ms") for d in _as_list(p["durations_ms"], "durations_ms")]
    p["snrs_db"] = [audio.check_snr(float(s), "snrs_db") for s in _as_list(p["snrs_db"], "snrs_db")]
    p["rt60s_s"] = [audio.check_rt60(float(r), "rt60s_s") for r in _as_list(p["rt60s_s"] if p["rt60s_s"] is not None else [0.0], "rt60s_s")]
    p["noise_types"] = _as_list(p["noise_types"] or ["white"], "noise_types")
    for n in p["noise_types"]:
        if n not in audio.NOISE_TYPES:
            raise ValueError(f"noise_types: {n!r} is not valid; valid: {', '.join(audio.NOISE_TYPES)}")
    p["filters"] = _as_list(p["filters"] or ["none"], "filters")
    for f in p["filters"]:
        if f not in audio.FILTERS:
            raise ValueError(f"filters: {f!r} is not valid; valid: {', '.join(audio.FILTERS)}")
    fr = [float(f) for f in _as_list(p["split_fractions"] or [0.6, 0.2, 0.2], "split_fractions")]
    if len(fr) != len(SPLITS) or min(fr) <= 0 or abs(sum(fr) - 1) > 1e-6:
        raise ValueError(f"split_fractions={fr} must be {len(SPLITS)} positive numbers ({'/'.join(SPLITS)}) summing to 1")
    p["split_fractions"] = fr
    cpc = p["clips_per_cell"]
    if p["design"] == "factorial" and (cpc is None or int(cpc) != cpc or int(cpc) < len(SPLITS)):
        raise ValueError(f"clips_per_cell={cpc!r} must be an integer of at least {len(SPLITS)} (one clip per split)")
    p["clips_per_cell"] = int(cpc) if cpc is not None else None
    p["seed"] = int(p["seed"] or 0)
    p["include_music"] = bool(p["include_music"])
    p["bandlimit_augment"] = bool(p["bandlimit_augment"])
    p["min_source_ms"] = max(int(p["min_source_ms"] or 0), max(p["durations_ms"]))
    if p["max_sources_per_class"] is not None:
        p["max_sources_per_class"] = int(p["max_sources_per_class"])
    if p["design"] == "ofat":
        p["clips_per_cell"] = None
    return p


def _as_list(v: Any, name: str) -> list:
    if v is None:
        raise ValueError(f"{name} must be a non-empty list")
    if isinstance(v, (str, bytes)) or not isinstance(v, Iterable):
        v = [v]
    v = list(v)
    if not v:
        raise ValueError(f"{name} must be a non-empty list")
    return v


def ofat_reference(params: Mapping[str, Any]) -> dict[str, Any]:
    """The reference condition of the one-factor-at-a-time design: the longest duration, the highest
    SNR, the first noise type, the shortest RT60, and no filter (else the first one listed)."""
    return {
        "duration_ms": max(params["durations_ms"]),
        "snr_db": max(params["snrs_db"]),
        "noise_type": params["noise_types"][0],
        "rt60_s": min(params["rt60s_s"]),
        "filter": "none" if "none" in params["filters"] else params["filters"][0],
    }



def select_sources(sources: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """Sources long enough for the longest duration, at most ``max_sources_per_class`` per class,
    taken round-robin over groups (seeded) so that many speakers and recordings are represented."""
    min_s = params["min_source_ms"] / 1000.0
    long_enough = (sources["end_s"] - sources["start_s"]) >= min_s - 1e-9
    df = sources[long_enough].reset_index(drop=True)
    cap = params["max_sources_per_class"]
    rng = np.random.default_rng([params["seed"], 11])
    picked = []
    for lab in LABELS:
        part = df[df["label"] == lab]
        if cap is None or len(part) <= cap:
            picked.append(part)
            continue
        part = part.iloc[rng.permutation(len(part))]
        part = part.assign(_rank=part.groupby("group_id").cumcount())
        gorder = {g: i for i, g in enumerate(rng.permutation(part["group_id"].unique()))}
        part = part.assign(_g=part["group_id"].map(gorder)).sort_values(["_rank", "_g"], kind="stable")
        picked.append(part.head(cap).drop(columns=["_rank", "_g"]))
    out = pd.concat(picked).sort_values("source_id", kind="stable").reset_index(drop=True)
    for lab in LABELS:
        if not (out["label"] == lab).any():
            raise ValueError(
                f"no {lab} sources of at least {params['min_source_ms']} ms: lower durations_ms/min_source_ms or add material"
            )
    return out


def plan_bank(params: Mapping[str, Any], sources: pd.DataFrame, noise: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The bank's rows (everything needed to render each clip), before rendering."""
    seed = params["seed"]
    src = select_sources(sources, params)
    src["split"] = assign_splits(src["group_id"], src["label"], params["split_fractions"], seed).values
    check_splits(src, "sources")
    if "real" in params["noise_types"]:
        if len(noise) == 0:
            raise ValueError("noise_types includes 'real' but the data source has no noise recordings (noise/); drop 'real'")
        noise = noise.reset_index(drop=True).copy()
        noise["split"] = assign_splits(noise["group_id"], pd.Series(["noise"] * len(noise)), params["split_fractions"], seed + 1).values
        for s in SPLITS:
            if not (noise["split"] == s).any():
                raise ValueError(f"noise recordings: split {s!r} got none (only {noise['group_id'].nunique()} recordings); drop 'real' from noise_types")
    else:
        noise = noise.iloc[:0].assign(split=pd.Series(dtype=str))
    cache = SourceAudio(pd.concat([src, noise], ignore_index=True))
    rng = np.random.default_rng([seed, 23])
    rows: list[dict[str, Any]] = []
    if params["design"] == "factorial":
        _plan_factorial(params, src, noise, cache, rng, rows)
    else:
        _plan_ofat(params, src, noise, cache, rng, rows)
    plan = pd.DataFrame(rows)
    _assign_bandlimits(plan, src, params, rng)
    plan.insert(0, "clip_id", [f"c{i:06d}" for i in range(len(plan))])
    plan["seed"] = [int(np.random.SeedSequence([seed, i]).generate_state(1)[0] >> 1) for i in range(len(plan))]
    plan["path"] = [f"audio/{c}.wav" for c in plan["clip_id"]]
    plan["design"] = params["design"]
    cols = BANK_COLUMNS + [c for c in plan.columns if c not in BANK_COLUMNS]
    plan = plan[cols]
    check_splits(plan, "bank")
    return plan, src, noise


def split_counts(total: int, fractions: Sequence[float]) -> list[int]:
    raw = np.asarray(fractions) * total
    n = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - n), kind="stable")[: total - n.sum()]:
        n[i] += 1
    while (n == 0).any() and total >= len(n):  # every split gets at least one clip per cell
        n[int(np.argmax(n))] -= 1
        n[int(np.argmin(n))] += 1
    return n.tolist()


class _Cycler:
    """Cycle through a seeded shuffle of items, reshuffling each pass: balanced reuse."""

    def __init__(self, items: Sequence, rng: np.random.Generator):
        self.items, self.rng, self.queue = list(items), rng, []

    def next(self):
        if not self.queue:
            self.queue = [self.items[i] for i in self.rng.permutation(len(self.items))]
        return self.queue.pop()


def _plan_factorial(params, src, noise, cache, rng, rows) -> None:
    counts = split_counts(params["clips_per_cell"], params["split_fractions"])
    other = {
        "noise_type": params["noise_types"], "rt60_s": params["rt60s_s"], "filter": params["filters"],
    }
    for si, split in enumerate(SPLITS):
        srcs = {lab: _Cycler(src.index[(src["split"] == split) & (src["label"] == lab)], rng) for lab in LABELS}
        noises = _Cycler(noise.index[noise["split"] == split], rng) if len(noise) else None
        for dur in params["durations_ms"]:
            for snr in params["snrs_db"]:
                for lab in LABELS:
                    cyc = {k: _Cycler(v, rng) for k, v in other.items()}
                    for _ in range(counts[si]):
                        r = src.loc[srcs[lab].next()]
                        cond = {"duration_ms": dur, "snr_db": snr, **{k: c.next() for k, c in cyc.items()}}
                        start = _pick_start(cache.get(r), audio.n_samples(dur), rng)
                        rows.append(_row(r, split, cond, start, noise, noises, cache, rng, axis=""))


def _plan_ofat(params, src, noise, cache, rng, rows) -> None:
    ref = ofat_reference(params)
    axes = [("duration_ms", params["durations_ms"]), ("snr_db", params["snrs_db"]), ("noise_type", params["noise_types"]),
            ("rt60_s", params["rt60s_s"]), ("filter", params["filters"])]
    conditions = [("reference", dict(ref))]
    for name, values in axes:
        for v in values:
            if v != ref[name]:
                conditions.append((name, {**ref, name: v}))
    noises = {s: _Cycler(noise.index[noise["split"] == s], rng) if len(noise) else None for s in SPLITS}
    nref = audio.n_samples(ref["duration_ms"])
    for i, r in src.iterrows():
        # one window per source (for the reference duration); shorter clips are centred in it, and the
        # noise recording, its offset and the clip seed stay the same: conditions are paired
        ref_start = _pick_start(cache.get(r), nref, rng)
        pair_rng_state = rng.integers(2**31)
        noise_choice = noises[r["split"]].next() if noises[r["split"]] is not None else None
        for axis, cond in conditions:
            n = audio.n_samples(cond["duration_ms"])
            start = ref_start + (nref - n) // 2
            rows.append(_row(r, r["split"], cond, start, noise, None, cache, np.random.default_rng(pair_rng_state), axis=axis,
                             noise_choice=noise_choice))


def _row(r, split, cond, start, noise, noises, cache, rng, axis, noise_choice=None) -> dict[str, Any]:
    n = audio.n_samples(cond["duration_ms"])
    x = cache.get(r)
    pre = min(start, int(round((CONTEXT_PRE_S + cond["rt60_s"]) * audio.SR)))
    post = min(len(x) - start - n, int(round(CONTEXT_POST_S * audio.SR)))
    row = {
        "source_id": r["source_id"], "group_id": r["group_id"], "label": r["label"], "category": r["category"],
        "split": split, **cond, "dataset": r["dataset"], "source_repo": r.get("source_repo", ""),
        "bandlimited_origin": bool(r.get("bandlimited_origin", False)), "axis": axis,
        "source_offset": int(start), "context_pre": int(pre), "context_post": int(post),
        "noise_source_id": "", "noise_group_id": "", "noise_offset": 0,
    }
    if cond["noise_type"] == "real":
        idx = noise_choice if noise_choice is not None else noises.next()
        nr = noise.loc[idx]
        y = cache.get(nr)
        ctx = pre + n + post
        row.update(noise_source_id=nr["source_id"], noise_group_id=nr["group_id"],
                   noise_offset=_pick_start(y, min(ctx, len(y)), rng) if len(y) >= ctx else 0)
    return row


def _pick_start(x: np.ndarray, n: int, rng: np.random.Generator, hop: int = 80) -> int:
    """A random start among windows of ``n`` samples whose power is within ``ACTIVE_WINDOW_DB`` of the
    loudest window (so a clip is not cut from a pause or a silent stretch)."""
    if len(x) < n:
        raise ValueError(f"source of {len(x)} samples is shorter than the {n}-sample clip")
    starts = np.arange(0, len(x) - n + 1, hop)
    c = np.concatenate([[0.0], np.cumsum(np.asarray(x, dtype=np.float64) ** 2)])
    e = c[starts + n] - c[starts]
    ok = starts[e >= e.max() * 10 ** (-ACTIVE_WINDOW_DB / 10)]
    return int(rng.choice(ok))


def _assign_bandlimits(plan: pd.DataFrame, src: pd.DataFrame, params, rng) -> None:
    """The band-limit treatment: band-limit the same share (``BANDLIMIT_SHARE``) of the clips of BOTH
    classes, whatever their origin, after mixing (only rows without a channel filter), so that
    "band-limited" no longer tells the classes apart in what the model hears. The count is exact per
    class; which clips, and the kind (telephone band, low-pass 4 kHz or 5.5 kHz, like the 8 and 11 kHz
    origins), are drawn.

    Why not "top up each class to the same share, counting band-limited origins"? Because the origin's
    band limit sits under full-band noise in the mixture and mostly disappears, while the treatment,
    applied after mixing, does not: topping up would band-limit more mixtures of the class with fewer
    band-limited sources and create the cue it should remove."""
    plan["bandlimit"] = "none"
    if not params["bandlimit_augment"]:
        return
    kinds = BANDLIMITS[1:]
    for lab in LABELS:
        eligible = plan.index[(plan["label"] == lab) & (plan["filter"] == "none")]
        n = int(round(BANDLIMIT_SHARE * len(eligible)))
        chosen = eligible[np.sort(rng.permutation(len(eligible))[:n])]
        plan.loc[chosen, "bandlimit"] = [kinds[k] for k in rng.integers(len(kinds), size=len(chosen))]

