"""The one place for the statistics of a study: intervals, paired differences, verdicts.

The unit is the pretraining seed. Fine-tuning replicates of a seed are paired across arms by
(seed, replicate), and the paired differences are averaged within the seed, so each seed gives one
difference d_s. The interval of the mean difference is Student t over seeds:

    mean(d) -+ t_{1 - a/2, n-1} * sd(d) / sqrt(n)

Sequential looks: a study adds seeds in batches and looks after each batch. With L planned looks,
each look's interval uses a = alpha / L (Bonferroni over the looks), so the chance that any look
shows a false "holds" is at most alpha (tests/test_study.py simulates it).

Verdicts, one wording (VERDICTS), for a prediction "arm is `expect` than the baseline" with a smallest
effect of interest delta (both in the scale of the differences, sign: positive = arm better):

    holds                        the interval excludes 0 on the predicted side
    contradicted                 the interval excludes 0 on the other side
    no effect larger than delta  the interval lies inside (-delta, delta)
    not resolved                 none of these (the budget ran out): see the interval and `detectable`
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

HOLDS, CONTRADICTED, NO_EFFECT, UNRESOLVED = "holds", "contradicted", "no effect larger than delta", "not resolved"
VERDICTS = (HOLDS, CONTRADICTED, NO_EFFECT, UNRESOLVED)
DECIDED = (HOLDS, CONTRADICTED, NO_EFFECT)


def t_quantile(p: float, dof: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(p, dof))


def interval(x: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the Student-t interval of the mean at `level`; lo = hi = NaN below 2 values."""
    a = np.asarray(x, dtype=float)
    if a.size == 0:
        return math.nan, math.nan, math.nan
    m = float(a.mean())
    if a.size < 2:
        return m, math.nan, math.nan
    h = t_quantile(0.5 + level / 2, a.size - 1) * float(a.std(ddof=1)) / math.sqrt(a.size)
    return m, m - h, m + h


def ci95_half(x: Sequence[float]) -> float:
    """Half-width of the 95% Student-t interval of the mean (NaN below 2 values)."""
    m, lo, _ = interval(x, 0.95)
    return m - lo if not math.isnan(lo) else math.nan


def detectable(sd: float, n: int, level: float, power: float = 0.8) -> float:
    """The smallest true effect that a two-sided t interval at `level` with n seeds would exclude 0 for with
    probability `power` (normal-theory approximation with t quantiles): (t_{1-a/2} + t_power) sd / sqrt(n)."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return (t_quantile(0.5 + level / 2, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


def verdict(lo: float, hi: float, delta: float, expect: str = "better") -> str:
    """The verdict of an interval [lo, hi] of (arm - baseline) measured so that positive = arm better."""
    if math.isnan(lo) or math.isnan(hi):
        return UNRESOLVED
    sign = 1.0 if expect == "better" else -1.0
    lo, hi = sorted((sign * lo, sign * hi))
    if lo > 0:
        return HOLDS
    if hi < 0:
        return CONTRADICTED
    if -delta < lo and hi < delta:
        return NO_EFFECT
    return UNRESOLVED


def look_level(alpha: float, n_looks: int) -> float:
    """Confidence level of each look's interval: 1 - alpha / L (Bonferroni over the planned looks)."""
    return 1.0 - alpha / max(int(n_looks), 1)


def variance_split(values, seeds, replicates=None) -> tuple[float, float]:
    """(between-seed, between-replicate) variance components of one arm at one x (one-way random effects,
    method of moments): within = mean of the per-seed replicate variances; between = var(seed means) -
    within / K (clipped at 0). Without replicates (K = 1) within is NaN and between is var(seed means)."""
    import pandas as pd

    df = pd.DataFrame({"v": np.asarray(values, float), "s": list(seeds)})
    g = df.groupby("s")["v"]
    means, k = g.mean(), g.size()
    if len(means) < 2:
        return math.nan, math.nan
    if k.max() < 2:
        return float(means.var(ddof=1)), math.nan
    within = float(g.var(ddof=1).dropna().mean())
    return max(float(means.var(ddof=1)) - within / float(k.mean()), 0.0), within


def paired_per_seed(arm, base) -> "object":
    """Per-seed mean of the paired differences arm - baseline: two Series indexed by (seed, replicate)
    (or by seed); pairs present in both only. Returns a Series indexed by seed."""
    d = (arm - base).dropna()
    if d.empty:
        return d
    return d.groupby(level=0).mean()


def effect(values, scale: str, better: str):
    """Metric values -> the scale of differences (log for scale=log) with the sign that makes positive
    differences mean 'better' (lower-is-better metrics are negated)."""
    v = np.log(np.asarray(values, float)) if scale == "log" else np.asarray(values, float)
    return -v if better == "lower" else v


def judge(d: Sequence[float], delta: float, expect: str, level: float) -> dict:
    """Everything a verdict row needs from per-seed differences d (positive = arm better)."""
    d = np.asarray(d, float)
    m, lo, hi = interval(d, level)
    sd = float(d.std(ddof=1)) if d.size > 1 else math.nan
    return {"diff": m, "lo": lo, "hi": hi, "seeds": int(d.size), "sd": sd,
            "detectable": detectable(sd, int(d.size), level), "verdict": verdict(lo, hi, delta, expect)}


def simulate_false_holds(n_studies: int, looks: Sequence[int], alpha: float = 0.05, sd: float = 1.0,
                         rng: Optional[np.random.Generator] = None, delta: float = 0.1) -> float:
    """Fraction of simulated null studies (true difference 0, normal per-seed differences) in which some
    look declares 'holds' (or 'contradicted': either is a false decision of direction) for one prediction,
    with the engine's rule: stop at the first decided look."""
    rng = rng or np.random.default_rng(0)
    level = look_level(alpha, len(looks))
    wrong = 0
    for _ in range(n_studies):
        d = rng.normal(0.0, sd, size=looks[-1])
        for n in looks:
            v = judge(d[:n], delta, "better", level)["verdict"]
            if v in (HOLDS, CONTRADICTED):
                wrong += v == HOLDS
                break
            if v == NO_EFFECT:
                break
    return wrong / n_studies
