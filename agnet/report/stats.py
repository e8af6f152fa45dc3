"""The verdict rule of the claims check: calibrated, with its power stated.

The unit of replication is the training seed: a claim "A beats B" gives one paired difference per seed, d_s = A_s − B_s
(percentage points). With n seeds, mean ḡ and standard deviation s:

* **Direction** — a one-sided t-test of "gap > 0" at level α = 0.05, its p-value adjusted by Holm's method within
  the claim's family (the claims one statement of the paper makes; the primary families of
  ``paper_text.yaml``), so a family is wrongly called reproduced with probability at most α when no gap exists.
* **Size** — the paper's printed gap g_p is itself *one* run, with its own seed noise. If our runs and the paper's
  share the true gap, g_p − ḡ ~ N(0, σ²(1 + 1/n)), so the paper's gap is consistent with ours when it lies in the 95 %
  prediction interval ḡ ± t_{0.975, n−1}·s·√(1 + 1/n). That holds with probability 0.95 whatever n is, so more seeds
  never make a true reproduction harder to see (requiring a confidence interval of ḡ to contain g_p, as if g_p were
  exact, does: its width shrinks as 1/√n while g_p's own noise does not). Assumption, stated in the report: the
  paper's run scatters like one of ours.

* **The test set** — every seed is scored on the same test vehicles, so the seed spread s does not show how much the
  gap would move on other vehicles. :func:`vehicle_bootstrap` resamples whole test vehicles (the same draw for both
  arms and every seed, so the contrast stays paired) and gives the standard error se of the seed-mean gap from the
  test set; the direction test and the confidence interval use √(s²/n + se²) (df n − 1). The prediction interval
  does not: the paper's run was scored on the same test set, so it shares that component.

Verdicts (:func:`decide`): **reproduced** = direction established and size consistent; **direction only** = direction
established, the paper's gap outside the prediction interval (ours smaller or larger); **not reproduced** = the 95 %
confidence interval lies below 0 (reversed), or the paper's gap lies above the prediction interval without an
established direction; **inconclusive** otherwise (and with fewer than 2 seeds).

Power (:class:`Evidence`): df = n − 1, the one-sided critical value, the measured spread s, the smallest gap this n
detects with 80 % power, (t_{1−α/m, df} + t_{0.8, df})·s/√n for a family of m claims (Holm's first step), and the
seeds needed to detect the paper's gap so. :func:`operating_characteristics` simulates the rule; tests/report/
test_stats.py checks its calibration and docs/paper-mapping.md prints its table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import stdtr, stdtrit  # Student-t CDF and quantile (scipy.stats costs a second to import)

ALPHA = 0.05  # one-sided level of the direction test, per family (Holm)
POWER = 0.80  # the power the detectable gap and the recommended seeds are stated for
LEVEL = 0.95  # confidence and prediction intervals
MAX_SEEDS = 1000  # seeds_needed beyond this is reported as "more than 1000"


@dataclass(frozen=True)
class Evidence:
    """What n paired per-seed differences say about a claimed positive gap (percentage points)."""

    n: int
    mean: float | None
    sd: float | None  # the measured seed spread of the difference (ddof 1)
    df: int | None
    t_crit: float | None  # one-sided critical value of the direction test, before Holm (t_{1−α, df})
    p_one: float | None  # one-sided p-value of "gap > 0" (before Holm)
    low: float | None  # 95 % confidence interval of the mean gap
    high: float | None
    pi_low: float | None  # 95 % prediction interval of one more run's gap (the paper's run)
    pi_high: float | None
    detectable: float | None  # smallest gap detected with 80 % power at this n (family size included)
    seeds_needed: int | None  # seeds to detect the paper's gap with 80 % power (None: not estimable)
    test_se: float = 0.0  # standard error of the seed-mean gap from the test set (vehicle bootstrap; 0: not measured)


def _t(q: float, df: int) -> float:
    return float(stdtrit(df, q))


def standard_error(sd: float, n: int, test_se: float = 0.0) -> float:
    """The standard error of the seed-mean gap: seed noise sd/√n combined with the test set's (test_se)."""
    return math.sqrt(sd * sd / n + test_se * test_se)


def detectable_gap(sd: float, n: int, family: int = 1, test_se: float = 0.0) -> float:
    """The gap a one-sided test at α/family detects with 80 % power with n seeds, seed spread sd and the test set's
    standard error test_se (t approximation, df = n − 1)."""
    df = n - 1
    return (_t(1 - ALPHA / family, df) + _t(POWER, df)) * standard_error(sd, n, test_se)


def seeds_needed(gap: float, sd: float, family: int = 1, test_se: float = 0.0) -> int | None:
    """The fewest seeds (≥ 2) whose detectable gap is at most ``gap``; None if ``gap`` is not positive or sd unknown,
    ``MAX_SEEDS + 1`` when more than :data:`MAX_SEEDS` would be needed (or when the test set's own uncertainty alone
    hides the gap: more seeds cannot help, a larger test set would)."""
    if not gap > 0 or sd is None or not math.isfinite(sd):
        return None
    if sd == 0 and test_se == 0:
        return 2
    for n in range(2, MAX_SEEDS + 1):
        if detectable_gap(sd, n, family, test_se) <= gap:
            return n
    return MAX_SEEDS + 1


def evidence(diffs: Sequence[float], paper_gap: float, family: int = 1, test_se: float = 0.0) -> Evidence:
    """The :class:`Evidence` of per-seed differences ``diffs`` for a claim of the paper's gap ``paper_gap``;
    ``test_se`` the test set's standard error of their mean (:func:`vehicle_bootstrap`), added to the seed level for
    the direction test and the confidence interval (not the prediction interval: the paper's run was scored on the
    same test set)."""
    d = np.asarray([x for x in diffs if x is not None and math.isfinite(x)], dtype=float)
    n = len(d)
    if n < 2:
        return Evidence(n, float(d.mean()) if n else None, None, None, None, None, None, None, None, None, None, None,
                        test_se)
    mean, sd, df = float(d.mean()), float(d.std(ddof=1)), n - 1
    se = standard_error(sd, n, test_se)
    if se > 0:
        p_one = float(1.0 - stdtr(df, mean / se))
    else:
        p_one = 0.0 if mean > 0 else 1.0
    half = _t(0.5 + LEVEL / 2, df) * se
    pi_half = _t(0.5 + LEVEL / 2, df) * sd * math.sqrt(1 + 1 / n)
    return Evidence(n, mean, sd, df, _t(1 - ALPHA, df), p_one, mean - half, mean + half, mean - pi_half,
                    mean + pi_half, detectable_gap(sd, n, family, test_se), seeds_needed(paper_gap, sd, family, test_se),
                    test_se)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None stays None and does not count towards the family)."""
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m, adjusted, running = len(present), [None] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def decide(ev: Evidence, paper_gap: float, p_adjusted: float | None) -> str:
    """The verdict (module docstring) of evidence ``ev`` with its family-adjusted p-value."""
    if ev.n < 2 or p_adjusted is None:
        return "inconclusive (fewer than 2 seeds: no interval)"
    consistent = ev.pi_low <= paper_gap <= ev.pi_high
    if p_adjusted < ALPHA:
        if consistent:
            return "reproduced"
        return "direction only (" + ("smaller" if paper_gap > ev.pi_high else "larger") + " than the paper's gap)"
    if ev.high < 0:
        return "not reproduced (reversed)"
    if paper_gap > ev.pi_high:
        return "not reproduced (no gap established; the paper's gap lies above the prediction interval)"
    return "inconclusive (neither the gap nor its absence is established with these seeds)"


VERDICT_WORDS = ("reproduced", "direction", "not", "inconclusive")


def decide_arrays(d: np.ndarray, paper: np.ndarray, test_se: float | np.ndarray = 0.0) -> np.ndarray:
    """:func:`decide` for many families at once: ``d`` (R, m, n) per-seed differences of R families of m claims,
    ``paper`` (R, m) the paper's gaps, ``test_se`` the test set's standard error (scalar or (R, m)); returns (R, m)
    indices into :data:`VERDICT_WORDS` (Holm within each family). The same rule as :func:`evidence` + :func:`holm` +
    :func:`decide` (tested against them), vectorised for simulation."""
    n = d.shape[-1]
    df = n - 1
    mean, sd = d.mean(-1), d.std(-1, ddof=1)
    se = np.sqrt(sd * sd / n + np.square(test_se))
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(se > 0, 1.0 - stdtr(df, mean / se), np.where(mean > 0, 0.0, 1.0))
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1) * (m - np.arange(m))
    ranked = np.minimum(1.0, np.maximum.accumulate(ranked, axis=-1))
    adjusted = np.empty_like(p)
    np.put_along_axis(adjusted, order, ranked, axis=-1)
    t975 = _t(0.5 + LEVEL / 2, df)
    high = mean + t975 * se
    pi_low, pi_high = mean - t975 * sd * math.sqrt(1 + 1 / n), mean + t975 * sd * math.sqrt(1 + 1 / n)
    consistent = (pi_low <= paper) & (paper <= pi_high)
    significant = adjusted < ALPHA
    return np.select([significant & consistent, significant, high < 0, paper > pi_high], [0, 1, 2, 2], default=3)


def operating_characteristics(true_gap: float, sd: float, n: int, reps: int = 20_000, family: int = 1,
                              seed: int = 0, paper_gap: float | None = None, test_sd: float = 0.0) -> dict[str, float]:
    """Simulated verdict frequencies: each of ``reps`` replications draws n per-seed differences N(true_gap, sd²)
    for each of ``family`` claims and one paper run per claim from the same distribution (or the fixed printed
    ``paper_gap``); the share of claims per verdict word (:data:`VERDICT_WORDS`) and the family-wise rate of at
    least one "reproduced". ``test_sd`` > 0 adds the test set: each replication draws one test set, which shifts
    every seed's difference by a common N(0, test_sd²) and is known to the rule as its standard error (what the
    vehicle bootstrap estimates); the paper's run, scored on the same test set, shares that shift."""
    rng = np.random.default_rng([seed, n, family])
    d = rng.normal(true_gap, sd, size=(reps, family, n))
    paper = rng.normal(true_gap, sd, size=(reps, family)) if paper_gap is None else np.full((reps, family), paper_gap)
    if test_sd > 0:
        shift = rng.normal(0.0, test_sd, size=(reps, family, 1))
        d = d + shift
        paper = paper + shift[..., 0] if paper_gap is None else paper
    codes = decide_arrays(d, paper, test_sd)
    shares = {word: float((codes == k).mean()) for k, word in enumerate(VERDICT_WORDS)}
    return {**shares, "family_any_reproduced": float((codes == 0).any(axis=-1).mean())}


def _per_vehicle(rows, vehicles: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(T, V) sums of a per-query metric over each vehicle's scored queries, and their counts, per trial."""
    ap = rows["ap"].to_numpy(np.float64)
    scored = ~np.isnan(ap)
    if metric == "mAP":
        value = np.where(scored, ap, 0.0)
    elif metric.lower().startswith("rank"):
        k = int(metric[4:])
        rank = rows["first_match_rank"].to_numpy()
        value = (scored & (rank >= 1) & (rank <= k)).astype(np.float64)
    else:
        raise ValueError(f"no per-query form of metric {metric!r} (mAP, Rank1, Rank5, ...)")
    column = np.searchsorted(vehicles, rows["vehicle_id"].to_numpy())
    trials = rows["trial"].to_numpy()
    n_trials = int(trials.max()) + 1 if len(trials) else 0
    flat = trials * len(vehicles) + column
    size = n_trials * len(vehicles)
    sums = np.bincount(flat, weights=value, minlength=size).reshape(n_trials, len(vehicles))
    counts = np.bincount(flat, weights=scored.astype(np.float64), minlength=size).reshape(n_trials, len(vehicles))
    return sums, counts


def vehicle_bootstrap(a: dict, b: dict | None, metric: str, reps: int = 1000, seed: int = 0) -> float:
    """The test set's standard error (percentage points) of the seed-mean gap A − B, by a paired bootstrap over test
    vehicles: each replicate draws the test vehicles with replacement (a vehicle's queries go together, in every
    trial) and recomputes, with the SAME draw for both arms and every seed, each run's metric as the mean over the
    drawn queries (averaged over VehicleID's trials); the sd over replicates of the mean over seeds of A_s − B_s.

    ``a`` / ``b``: seed -> that run's per-query rows of one descriptor and protocol (:mod:`agnet.queries` columns);
    ``b`` None when B is a published number (a constant). Only seeds both arms ran count."""
    seeds = sorted(set(a) & set(b)) if b is not None else sorted(a)
    if not seeds:
        return 0.0
    frames = [a[s] for s in seeds] + ([b[s] for s in seeds] if b is not None else [])
    vehicles = np.unique(np.concatenate([f["vehicle_id"].to_numpy() for f in frames]))
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(vehicles), np.full(len(vehicles), 1.0 / len(vehicles)), size=reps).astype(np.float64)

    def metric_of(rows) -> np.ndarray:  # (reps,) the run's metric under each replicate
        sums, counts = _per_vehicle(rows, vehicles, metric)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (weights @ sums.T / (weights @ counts.T)).mean(axis=1)

    gap = np.mean([metric_of(a[s]) - (metric_of(b[s]) if b is not None else 0.0) for s in seeds], axis=0)
    gap = gap[np.isfinite(gap)]
    return float(100 * gap.std(ddof=1)) if len(gap) > 1 else 0.0
