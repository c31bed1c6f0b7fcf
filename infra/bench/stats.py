"""The benchmark's numbers, pure: summaries, ratios, the targets, and the paired boot verdict.

The boot target (baked <= 1.15x bare) is judged on pairs, not on two pooled medians. Bare and baked boots take
turns (bare 1, baked 1, bare 2, ...: ``boots.measure_alternating``), so the bare boot of turn n ran right before
the baked boot of turn n, on the host as it was then. Each pair's ratio cancels most of what a noisy shared host
does to both; the median of those ratios, with a bootstrap 95 % interval, says how sure the run is:

* ``met``: the whole interval is at or below 1.15;
* ``missed``: the whole interval is above 1.15;
* ``undecided``: the interval straddles 1.15, or there are fewer than ``MIN_PAIRS`` pairs (more boots decide).

Only joining boots pair: the first baked boot of a run installs the cluster into the empty database, which a
scale-out instance never does (each sample records ``installed_cluster_on_this_boot``).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from typing import Any

GB = 10**9
BOOT_TARGET = 1.15
# The targets. "<= 3 GB" is read as decimal gigabytes. baked_vs_bare is judged by ``paired_verdict``.
TARGETS = (
    ("baked_vs_bare", "median of paired joining-boot ratios (baked / bare of its turn), bootstrap 95 % interval",
     "<=", BOOT_TARGET),
    ("seed_vs_baked", "boot_seed_ready_s / boot_baked_ready_s", ">=", 5.0),
    ("noop_rebuild", "noop_rebuild_s", "<=", 5.0),
    ("footprint", "image_used_bytes / 1e9", "<=", 3.0),
)
BOOT_KEYS = ("boot_bare_s", "boot_baked_ready_s", "boot_seed_ready_s")
# The bootstrap: fixed seed (the same samples always give the same interval), resamples, level, and the fewest
# pairs a verdict is given on: one pair's interval is a point and two pairs' a range of two boots. With 3 to 5
# pairs the 95 % interval of the median is exactly the pairs' range (a resample's median is the smallest ratio
# with probability 7/27 for 3 pairs, 5.1 % for 4, 5.8 % for 5: all above 2.5 %), so met needs every pair at or
# below the target; from 6 pairs on the extremes drop out.
BOOTSTRAP_SEED = 20261205
RESAMPLES = 10_000
LEVEL = 0.95
MIN_PAIRS = 3


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """n, median, min, max and spread (max - min) of ``samples``; all None for no samples."""
    values = [float(s) for s in samples]
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None, "spread": None}
    lo, hi = min(values), max(values)
    return {
        "n": len(values),
        "median": round(statistics.median(values), 2),
        "min": round(lo, 2),
        "max": round(hi, 2),
        "spread": round(hi - lo, 2),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator rounded to 2 places; None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 2)


def median_of(measurements: dict[str, Any], key: str) -> float | None:
    entry = measurements.get(key) or {}
    return (entry.get("stats") or {}).get("median")


def compute_ratios(measurements: dict[str, Any]) -> dict[str, float | None]:
    """Ratios of the medians: each boot against the bare floor, and seed-style against baked (for reading; the
    boot verdict is ``paired_verdict``'s)."""
    bare = median_of(measurements, "boot_bare_s")
    baked = median_of(measurements, "boot_baked_ready_s")
    seed = median_of(measurements, "boot_seed_ready_s")
    return {
        "baked_vs_bare": ratio(baked, bare),
        "seed_vs_bare": ratio(seed, bare),
        "seed_vs_baked": ratio(seed, baked),
    }


# ---- the paired boot verdict ----------------------------------------------------------------------------------
def quantile(ordered: Sequence[float], p: float) -> float:
    """The ``p`` quantile of ascending ``ordered`` by linear interpolation between closest ranks (position
    (n - 1) x p, as ``statistics.quantiles(method="inclusive")`` and numpy's default)."""
    if not ordered:
        raise ValueError("quantile of no values")
    position = (len(ordered) - 1) * p
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def bootstrap_median_interval(
    values: Sequence[float], *, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED, level: float = LEVEL
) -> tuple[float, float]:
    """Percentile bootstrap interval of the median: ``resamples`` draws of len(values) with replacement (seeded,
    so deterministic), the median of each, and the (1 - level) / 2 and (1 + level) / 2 quantiles of those."""
    if not values:
        raise ValueError("bootstrap of no values")
    rng = random.Random(seed)
    data = list(values)
    medians = sorted(statistics.median(rng.choices(data, k=len(data))) for _ in range(resamples))
    return quantile(medians, (1 - level) / 2), quantile(medians, (1 + level) / 2)


def boot_pairs(measurements: dict[str, Any]) -> dict[str, Any] | None:
    """Each joining baked boot with the bare boot of its turn: {"pairs": [...], "left_out": {...}, "reason"}.

    None when bare or baked boots were not measured at all. Pairs need both kinds from one alternating series
    (the same ``series`` id); a merged document whose bare and baked boots come from different runs has none.
    """
    bare, baked = measurements.get("boot_bare_s"), measurements.get("boot_baked_ready_s")
    if not bare or not baked:
        return None
    left_out = {"installing": 0, "role_unknown": 0, "no_bare_in_turn": 0}
    if not bare.get("series") or bare.get("series") != baked.get("series"):
        return {"pairs": [], "left_out": left_out,
                "reason": "bare and baked boots were not measured in one run, so none pair up: run both "
                          "(inv bench --only bare --only baked)"}
    bare_by_turn = {d["turn"]: d["value_s"] for d in bare.get("details") or [] if d.get("value_s")}
    pairs = []
    for d in baked.get("details") or []:
        installed = d.get("installed_cluster_on_this_boot")
        if installed is True:
            left_out["installing"] += 1
        elif installed is not False:  # the probe after the boot failed: it may have installed
            left_out["role_unknown"] += 1
        elif d.get("turn") not in bare_by_turn:
            left_out["no_bare_in_turn"] += 1
        else:
            floor = bare_by_turn[d["turn"]]
            pairs.append({"turn": d["turn"], "bare_s": floor, "baked_s": d["value_s"],
                          "ratio": round(d["value_s"] / floor, 4)})
    return {"pairs": pairs, "left_out": left_out, "reason": None}


def paired_verdict(measurements: dict[str, Any], target: float = BOOT_TARGET) -> dict[str, Any] | None:
    """The boot verdict: median of the paired ratios, its bootstrap 95 % interval, met / missed / undecided
    against ``target`` (compared as recorded, to 3 places). None when bare or baked boots were not measured."""
    found = boot_pairs(measurements)
    if found is None:
        return None
    pairs = found["pairs"]
    ratios = [p["ratio"] for p in pairs]
    out: dict[str, Any] = {
        "target": target, "n": len(pairs), "median": None, "ci95": None, "verdict": "undecided",
        "reason": found["reason"], "ratios": ratios, "pairs": pairs, "left_out": found["left_out"],
        "method": f"percentile bootstrap of the median, {RESAMPLES} resamples, seed {BOOTSTRAP_SEED}",
    }
    if ratios:
        out["median"] = round(statistics.median(ratios), 3)
    if len(ratios) < MIN_PAIRS:
        out["reason"] = out["reason"] or (
            f"{len(ratios)} joining pair(s); a verdict needs at least {MIN_PAIRS} (the first baked boot installs the "
            f"cluster and does not pair): run more boots, e.g. --runs {MIN_PAIRS + 3}")
        return out
    low, high = (round(x, 3) for x in bootstrap_median_interval(ratios))
    out["ci95"] = [low, high]
    if high <= target:
        out["verdict"], out["reason"] = "met", f"the whole 95 % interval is at or below {target}x"
    elif low > target:
        out["verdict"], out["reason"] = "missed", f"the whole 95 % interval is above {target}x"
    else:
        out["reason"] = f"the 95 % interval {low}-{high} straddles {target}x: more boots, or a quieter host, decide"
    return out


# ---- targets ---------------------------------------------------------------------------------------------------
def evaluate_targets(measurements: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its value and verdict: ``met`` True / False, None when undecided or not measured;
    ``verdict`` says which in words (met, missed, undecided, not measured)."""
    ratios = compute_ratios(measurements)
    used = (measurements.get("footprint") or {}).get("image_used_bytes")
    paired = paired_verdict(measurements)
    values = {
        "baked_vs_bare": paired["median"] if paired else None,
        "seed_vs_baked": ratios["seed_vs_baked"],
        "noop_rebuild": median_of(measurements, "noop_rebuild_s"),
        "footprint": round(used / GB, 3) if isinstance(used, int | float) else None,
    }
    out = []
    for name, expression, op, target in TARGETS:
        value = values[name]
        entry: dict[str, Any] = {"name": name, "expression": expression, "op": op, "target": target, "value": value}
        if name == "baked_vs_bare":
            verdict = paired["verdict"] if paired else "not measured"
            entry["ci95"] = paired["ci95"] if paired else None
            entry["n_pairs"] = paired["n"] if paired else 0
        elif value is None:
            verdict = "not measured"
        else:
            verdict = "met" if (value <= target if op == "<=" else value >= target) else "missed"
        entry["verdict"] = verdict
        entry["met"] = {"met": True, "missed": False}.get(verdict)
        out.append(entry)
    return out


def uncontended_view(measurements: dict[str, Any]) -> dict[str, Any]:
    """Stats and ratios over only the boots during which no other QEMU ran (at their start and their end).

    On a machine shared with other VMs the all-samples medians mix in CPU contention; this view does not.
    """
    view: dict[str, Any] = {}
    for key in BOOT_KEYS:
        details = (measurements.get(key) or {}).get("details") or []
        clean = [d["value_s"] for d in details if not d.get("other_qemu_at_start") and not d.get("other_qemu_at_end")]
        if details:
            view[key] = {"samples": clean, "stats": summarize(clean)}
    view["ratios"] = compute_ratios(view)
    return view
