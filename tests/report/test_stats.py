"""The verdict rule's calibration, shown by simulation (issue 23): with our true gap equal to the paper's true gap,
"reproduced" does not get rarer as seeds grow; with no gap, it stays at or below 5 % (per family, Holm); and the
vectorised rule used for simulation is the rule the claims check applies."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from agnet.report.stats import (
    VERDICT_WORDS,
    decide,
    decide_arrays,
    detectable_gap,
    evidence,
    holm,
    operating_characteristics,
    seeds_needed,
)

SEEDS = (3, 5, 10, 30)
SD = 0.5  # seed spread of a difference, percentage points (the setting)
REPS = 20_000  # Monte Carlo error of a rate near 0.05: about 0.0015


@pytest.mark.parametrize("true_gap", [1.0, 2.7])
def test_a_true_reproduction_does_not_get_harder_with_more_seeds(true_gap):
    rates = [operating_characteristics(true_gap, SD, n, reps=REPS)["reproduced"] for n in SEEDS]
    assert all(later >= earlier - 0.01 for earlier, later in itertools.pairwise(rates)), rates
    assert rates[-1] > 0.93  # at many seeds only the paper run's own noise (5 %) stands in the way
    # the old rule (our confidence interval must hold the printed gap) fell from 31 % to 12 % over the same range


@pytest.mark.parametrize("n", SEEDS)
def test_no_gap_is_called_reproduced_at_most_5_percent_of_the_time(n):
    assert operating_characteristics(0.0, SD, n, reps=REPS)["reproduced"] <= 0.05 + 0.004


def test_a_family_under_the_null_is_reproduced_anywhere_at_most_5_percent_of_the_time():
    for family in (2, 10):
        rate = operating_characteristics(0.0, SD, 5, reps=REPS // 2, family=family)["family_any_reproduced"]
        assert rate <= 0.05 + 0.006, (family, rate)


def test_a_printed_gap_the_truth_does_not_support_is_refuted_with_enough_seeds():
    """The paper printed +2.0 (4 seed spreads) where the truth is 0: with more seeds that claim is called 'not
    reproduced' more often. (A printed gap within about 2 spreads of 0 cannot be refuted by any number of seeds: one
    run of the paper's could have shown it by chance — the rule says so instead of pretending otherwise.)"""
    refuted = [operating_characteristics(0.0, SD, n, reps=4000, paper_gap=2.0)["not"] for n in SEEDS]
    assert all(later >= earlier - 0.02 for earlier, later in itertools.pairwise(refuted)) and refuted[-1] > 0.9


def test_the_simulated_rule_is_the_rule_the_claims_check_applies():
    rng = np.random.default_rng(7)
    d = rng.normal(0.4, 0.6, size=(300, 4, 3))
    paper = rng.normal(0.8, 0.6, size=(300, 4))
    codes = decide_arrays(d, paper)
    for r in range(300):
        evs = [evidence(d[r, k], paper[r, k], family=4) for k in range(4)]
        adjusted = holm([e.p_one for e in evs])
        words = [decide(e, paper[r, k], adjusted[k]).split(" ")[0] for k, e in enumerate(evs)]
        assert words == [VERDICT_WORDS[c] for c in codes[r]], r


def test_evidence_power_and_holm():
    d = [1.2, 0.9, 1.5, 1.1]
    ev = evidence(d, paper_gap=1.0)
    sd = np.std(d, ddof=1)
    assert ev.df == 3 and ev.t_crit == pytest.approx(stats.t.ppf(0.95, 3)) and ev.sd == pytest.approx(sd)
    assert ev.p_one == pytest.approx(stats.t.sf(np.mean(d) / (sd / 2), 3))
    assert ev.detectable == pytest.approx((stats.t.ppf(0.95, 3) + stats.t.ppf(0.8, 3)) * sd / 2)
    needed = seeds_needed(1.0, sd)
    assert detectable_gap(sd, needed) <= 1.0 < detectable_gap(sd, needed - 1)
    assert seeds_needed(1.0, sd, family=10) > needed  # a larger family needs more seeds
    assert seeds_needed(-1.0, sd) is None and seeds_needed(1.0, 50.0) == 1001  # "more than 1000"
    assert holm([0.01, 0.04, None, 0.03]) == [pytest.approx(0.03), pytest.approx(0.06), None, pytest.approx(0.06)]
    assert evidence([1.0], 1.0).df is None and decide(evidence([1.0], 1.0), 1.0, None).startswith("inconclusive")


# ------------------------------------------------------------------ the test set's uncertainty (vehicle bootstrap)


@pytest.mark.parametrize("n", (3, 10, 30))
def test_with_the_test_set_uncertainty_no_gap_is_still_called_reproduced_at_most_5_percent(n):
    """A common test-set shift of 1 seed spread: without it in the rule, a null gap is called 'reproduced' far too
    often at many seeds; with the bootstrap's standard error joined to the seeds', at most 5 %."""
    assert operating_characteristics(0.0, SD, n, reps=REPS, test_sd=SD)["reproduced"] <= 0.05 + 0.004
    ignored = decide_arrays(np.random.default_rng(n).normal(0, SD, (REPS, 1, n))
                            + np.random.default_rng(n + 1).normal(0, SD, (REPS, 1, 1)), np.zeros((REPS, 1)))
    if n >= 10:  # the seeds' spread alone, blind to the shared shift, finds a direction in over 10 % of null cases
        assert (ignored <= 1).mean() > 0.1


@pytest.mark.parametrize("true_gap", [1.0, 2.7])
def test_with_the_test_set_uncertainty_a_true_reproduction_does_not_get_harder_with_more_seeds(true_gap):
    rates = [operating_characteristics(true_gap, SD, n, reps=REPS, test_sd=0.3)["reproduced"] for n in SEEDS]
    assert all(later >= earlier - 0.01 for earlier, later in itertools.pairwise(rates)), rates


def per_query(vehicles: np.ndarray, values: np.ndarray, trial: int = 0):
    import pandas as pd

    return pd.DataFrame({"trial": trial, "vehicle_id": vehicles, "ap": values,
                         "first_match_rank": np.where(values > 0.5, 1, 2)})


def test_the_vehicle_bootstrap_is_paired_and_measures_the_test_sets_spread():
    from agnet.report.stats import vehicle_bootstrap

    rng = np.random.default_rng(0)
    vehicles = np.repeat(np.arange(400), 2)  # 400 test vehicles, 2 queries each
    base = rng.uniform(0.2, 0.8, size=len(vehicles))
    a = {0: per_query(vehicles, base), 1: per_query(vehicles, base)}
    # B is A shifted by 0.05 on every query: paired resampling sees no test-set uncertainty in the gap
    shifted = {s: per_query(vehicles, base - 0.05) for s in (0, 1)}
    assert vehicle_bootstrap(a, shifted, "mAP", reps=300) == pytest.approx(0.0, abs=1e-9)
    # a gap that varies from vehicle to vehicle (sd 0.1 per vehicle, shared by its 2 queries): se ≈ 0.1/√400 = 0.5 pp
    per_vehicle = np.repeat(rng.normal(0.0, 0.1, 400), 2)
    noisy = {s: per_query(vehicles, np.clip(base - per_vehicle, 0, 1)) for s in (0, 1)}
    vehicle_gaps = (base - np.clip(base - per_vehicle, 0, 1)).reshape(400, 2).mean(axis=1)
    expected = 100 * vehicle_gaps.std(ddof=1) / np.sqrt(400)  # the standard error of a mean over 400 vehicles
    assert vehicle_bootstrap(a, noisy, "mAP", reps=2000) == pytest.approx(expected, rel=0.1)
    # against a published number only A is resampled; Rank-1 reads the first-match ranks
    assert vehicle_bootstrap(a, None, "mAP", reps=500) > 0
    hits = vehicle_bootstrap(a, None, "Rank1", reps=500)
    vehicle_hits = (base > 0.5).reshape(400, 2).mean(axis=1)
    assert hits == pytest.approx(100 * vehicle_hits.std(ddof=1) / np.sqrt(400), rel=0.1)
