"""Retrieval metrics (agnet.metrics) against a plain loop reference, hand-computed cases and properties.

The reference below is written independently of the fast code: per query it sorts the whole gallery, drops the
junk, and walks the list (CMC = first hit, AP = mean precision at the hits, the MATLAB trapezoid loop for the
official AP). Ties follow the module's documented convention: a negative at the same distance as a true match
comes first (pessimistic).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agnet import metrics
from agnet.metrics import RankResult, cmc_map, evaluate, evaluate_features, pairwise_distance
from tests.conftest import REPO

# ------------------------------------------------------------------------------------------------------------
# Reference


def reference(dist, q_ids, g_ids, q_cams=None, g_cams=None, max_rank=50) -> dict:
    dist = np.asarray(dist, dtype=np.float64)
    nq, ng = dist.shape
    ap = np.full(nq, np.nan)
    oap = np.full(nq, np.nan)
    inp = np.full(nq, np.nan)
    first = np.full(nq, -1)
    cmc_rows = []
    for q in range(nq):
        same = [bool(g_ids[i] == q_ids[q]) for i in range(ng)]
        junk = [same[i] and q_cams is not None and g_cams[i] == q_cams[q] for i in range(ng)]
        # sort by distance; at equal distance a negative (same=False) first: pessimistic ties. A NaN true match
        # counts as +inf, a NaN negative comes after everything (Python's sort needs keys without NaN).
        def key(i, row=dist[q], same=same):
            if math.isnan(row[i]):
                return (0, math.inf, True) if same[i] else (1, 0.0, False)
            return (0, row[i], same[i])

        order = sorted(range(ng), key=key)
        hits = [same[i] for i in order if not junk[i]]
        n_match = sum(hits)
        if n_match == 0:
            continue
        found, precisions = 0, []
        official, old_recall, old_precision = 0.0, 0.0, 1.0  # compute_AP.m
        for position, hit in enumerate(hits, start=1):
            if hit:
                found += 1
                precisions.append(found / position)
                if first[q] < 0:
                    first[q] = position
                last = position
            recall, precision = found / n_match, found / position
            official += (recall - old_recall) * (old_precision + precision) / 2
            old_recall, old_precision = recall, precision
            if found == n_match:
                break
        ap[q], oap[q], inp[q] = np.mean(precisions), official, n_match / last
        row = list(np.cumsum(hits) > 0)[:max_rank]
        row += [row[-1]] * (max_rank - len(row))  # a short gallery keeps its last value
        cmc_rows.append(row)
    valid = first > 0
    return {
        "num_valid": int(valid.sum()),
        "cmc": np.mean(cmc_rows, axis=0) if cmc_rows else None,
        "mAP": np.mean(ap[valid]) if valid.any() else None,
        "official_mAP": np.mean(oap[valid]) if valid.any() else None,
        "mINP": np.mean(inp[valid]) if valid.any() else None,
        "ap": ap,
        "official_ap": oap,
        "first": first,
    }


def assert_matches_reference(result: RankResult, ref: dict, max_rank: int) -> None:
    assert result.num_valid == ref["num_valid"]
    assert result.cmc.shape == (max_rank,) and result.cmc.dtype == np.float64
    np.testing.assert_allclose(result.cmc, ref["cmc"], rtol=0, atol=1e-12)
    assert result.mAP == pytest.approx(ref["mAP"], rel=1e-10, abs=1e-12)
    assert result.mINP == pytest.approx(ref["mINP"], rel=1e-10, abs=1e-12)
    assert result.official_mAP == pytest.approx(ref["official_mAP"], rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(result.ap, ref["ap"], rtol=1e-10, atol=1e-12)  # NaN where skipped, both
    np.testing.assert_allclose(result.official_ap, ref["official_ap"], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(result.first_match_rank, ref["first"])


# The CPU has two implementations — the compiled kernel (numba, the default when it imports) and the NumPy fallback
# — and each has routes that must agree; each test path forces one of them. "torch" is the code path CUDA takes.
HAVE_NUMBA = metrics._CPU_PATH == "numba"  # numba is installed (the default CPU path then)
ROUTES = {
    "numba": {"_CPU_PATH": "numba"},
    # one bucket per row, every row through the three passes: candidates placed by comparisons alone (bisection)
    "numba1": {"_CPU_PATH": "numba", "_NB_MAX_BUCKETS": 1, "_NB_SCAN": 0, "_NB_FEW": 0.0},
    # two buckets, every row through the candidates-only loop: matches share buckets, placed by the linear scan
    "numba2": {"_CPU_PATH": "numba", "_NB_MAX_BUCKETS": 2, "_NB_SCAN": 1 << 30, "_NB_FEW": 2.0},
    # one bucket per match, three passes, and several threads even on tiny chunks (rows dealt round-robin)
    "numbamt": {"_CPU_PATH": "numba", "_NB_THREAD_MIN": 0, "_NB_BUCKETS_PER_MATCH": 1, "_NB_FEW": 0.0},
    # one bucket per match on the candidates-only loop
    "numbafew": {"_CPU_PATH": "numba", "_NB_BUCKETS_PER_MATCH_FEW": 1, "_NB_FEW": 2.0},
    "numpy": {"_CPU_PATH": "numpy"},  # the fallback without numba
    "sparse": {"_CPU_PATH": "numpy", "_SPARSE_BELOW": 2.0},  # sort the candidates (float32 only)
    "hist": {"_CPU_PATH": "numpy", "_SPARSE_BELOW": 0.0, "_COMPACT_BELOW": 0.0},  # bucket histogram, every entry
    "compact": {"_CPU_PATH": "numpy", "_SPARSE_BELOW": 0.0, "_COMPACT_BELOW": 2.0},  # histogram of close entries
    # 4 buckets a row: matches share buckets all the time → further rounds, then the direct count
    "tiny": {"_CPU_PATH": "numpy", "_SPARSE_BELOW": 0.0, "_HIST_BUCKETS": 4, "_HIST_ROUNDS": 2},
    "direct": {"_CPU_PATH": "numpy", "_SPARSE_BELOW": 0.0, "_HIST_ROUNDS": 0},  # every match counted directly
    "torch": {"_CPU_PATH": "torch"},
}


@contextlib.contextmanager
def backend(name: str):
    """A forced CPU route (see ROUTES)."""
    settings_ = ROUTES[name]
    saved = {key: getattr(metrics, key) for key in settings_}
    for key, value in settings_.items():
        setattr(metrics, key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(metrics, key, value)


# ------------------------------------------------------------------------------------------------------------
# Property tests: random problems against the reference

NUMBA_PATHS = ["float32-numba", "float32-numba1", "float32-numba2", "float32-numbamt", "float32-numbafew", "float64-numba",
               "float64-numba1", "float64-numba2"]
PATHS = [*(NUMBA_PATHS if HAVE_NUMBA else []), "float32-numpy", "float32-sparse", "float32-hist", "float32-compact",
         "float32-tiny", "float32-direct", "float32-torch", "float64-numpy", "float64-tiny", "float64-torch"]


def path_dtype(path: str):
    return np.float64 if path.startswith("float64") else np.float32


def path_backend(path: str):
    return backend(path.split("-", 1)[1])


@st.composite
def problems(draw, ties: bool = False):
    nq = draw(st.integers(1, 12))
    ng = draw(st.integers(0, 40))
    n_ids = draw(st.integers(1, 6))
    n_cams = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if ties:
        dist = rng.integers(0, 4, size=(nq, ng)).astype(np.float64)  # many exact ties
    elif draw(st.booleans()):
        dist = rng.random((nq, ng))
    else:
        dist = rng.normal(size=(nq, ng)) * 10.0 ** draw(st.integers(-3, 3))  # negative distances too
    q_ids = rng.integers(0, n_ids + 1, nq) * 7 - 3  # arbitrary (negative, sparse) ids; some not in the gallery
    g_ids = rng.integers(0, n_ids, ng) * 7 - 3
    cams = draw(st.booleans())
    q_cams = rng.integers(0, n_cams, nq) if cams else None
    g_cams = rng.integers(0, n_cams, ng) if cams else None
    max_rank = draw(st.integers(1, 50))  # often longer than the gallery left after junk removal
    chunk = draw(st.one_of(st.none(), st.integers(1, 5)))
    path = draw(st.sampled_from(PATHS))
    return dist, q_ids, g_ids, q_cams, g_cams, max_rank, chunk, path


def run_path(path, dist, q_ids, g_ids, q_cams, g_cams, max_rank, chunk):
    with path_backend(path):
        return evaluate(dist.astype(path_dtype(path)), q_ids, g_ids, q_cams, g_cams, max_rank, official_ap=True, chunk=chunk)


def check_problem(problem) -> None:
    dist, q_ids, g_ids, q_cams, g_cams, max_rank, chunk, path = problem
    ref = reference(dist.astype(path_dtype(path)), q_ids, g_ids, q_cams, g_cams, max_rank)
    if ref["num_valid"] == 0:
        with pytest.raises(ValueError, match="no query has a true match"):
            run_path(path, dist, q_ids, g_ids, q_cams, g_cams, max_rank, chunk)
        return
    result = run_path(path, dist, q_ids, g_ids, q_cams, g_cams, max_rank, chunk)
    assert_matches_reference(result, ref, max_rank)
    assert np.all(np.diff(result.cmc) >= 0)
    assert result.num_queries == len(q_ids)


PROPERTY = settings(max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(problems())
def test_random_problems_match_the_reference(problem):
    check_problem(problem)


@PROPERTY
@given(problems(ties=True))
def test_random_problems_with_many_ties_match_the_pessimistic_reference(problem):
    check_problem(problem)


@pytest.mark.parametrize("path", PATHS)
def test_realistic_problem_matches_the_reference(path):
    """A clustered, VeRi-like problem (true matches mostly near the top, candidates a small share of the
    gallery), several chunks."""
    rng = np.random.default_rng(7)
    n_ids, n_cams = 25, 6
    g_ids, g_cams = rng.integers(0, n_ids, 900), rng.integers(0, n_cams, 900)
    q_ids, q_cams = rng.integers(0, n_ids, 60), rng.integers(0, n_cams, 60)
    centres = rng.normal(size=(n_ids, 8))
    gf = centres[g_ids] + 0.6 * rng.normal(size=(900, 8))
    qf = centres[q_ids] + 0.6 * rng.normal(size=(60, 8))
    dist = ((qf[:, None, :] - gf[None, :, :]) ** 2).sum(-1)
    ref = reference(dist.astype(np.float32), q_ids, g_ids, q_cams, g_cams, 20)
    assert 0.3 < ref["mAP"] < 0.95
    assert_matches_reference(run_path(path, dist, q_ids, g_ids, q_cams, g_cams, 20, 16), ref, 20)


@pytest.mark.parametrize("noise", [0.2, 1.0, 2.5, 50.0])
def test_every_route_matches_the_reference_from_easy_to_random(noise):
    """Identity centres plus growing noise, as in the benchmark's difficulty sweep: from every match ranked first
    to a random ranking (candidates = nearly the whole gallery)."""
    rng = np.random.default_rng(int(noise * 10))
    n_ids, dim = 15, 16
    g_ids, g_cams = rng.integers(0, n_ids, 700), rng.integers(0, 5, 700)
    q_ids, q_cams = rng.integers(0, n_ids, 30), rng.integers(0, 5, 30)
    centres = rng.normal(size=(n_ids, dim))
    gf = centres[g_ids] + noise * rng.normal(size=(700, dim))
    qf = centres[q_ids] + noise * rng.normal(size=(30, dim))
    dist = ((qf[:, None, :] - gf[None, :, :]) ** 2).sum(-1)
    refs = {dtype: reference(dist.astype(dtype), q_ids, g_ids, q_cams, g_cams, 50) for dtype in (np.float32,
                                                                                                  np.float64)}
    for path in PATHS:
        result = run_path(path, dist, q_ids, g_ids, q_cams, g_cams, 50, 7)
        assert_matches_reference(result, refs[path_dtype(path)], 50)


def special_values_problem(dtype):
    """Matches packed into one bucket next to a far outlier (several rounds), huge and subnormal values, ±inf,
    and NaNs of both signs (a NaN with its sign bit set is what x86 makes of 0·inf)."""
    rng = np.random.default_rng(5)
    ng = 300
    g_ids = rng.integers(0, 3, ng)
    g_ids[:40] = 0
    dist = rng.normal(size=(4, ng)).astype(dtype)
    one = dtype(1.0)
    dist[0, :40] = one + np.arange(40) * np.finfo(dtype).eps  # 40 matches a few ulps apart
    dist[0, 40:60] = one + np.arange(20) * np.finfo(dtype).eps  # negatives tied with them
    dist[0, 0] = dtype(1e30)  # one far match stretches the first grid
    neg_nan = np.array([0xFFC00000], np.uint32).view(np.float32)[0] if dtype == np.float32 else \
        np.array([0xFFF8000000000000], np.uint64).view(np.float64)[0]
    assert np.isnan(neg_nan) and np.signbit(neg_nan)
    dist[1, ::7] = neg_nan
    dist[1, 3::11] = np.nan
    dist[1, 5::13] = np.inf
    dist[1, 6::17] = -np.inf
    dist[2, ::3] = np.finfo(dtype).max
    dist[2, 1::3] = -np.finfo(dtype).max
    dist[2, 2::5] = np.finfo(dtype).tiny / 4  # subnormal
    dist[3] = np.where(rng.random(ng) < 0.5, -0.0, 0.0)  # only (signed) zeros: every entry ties
    return dist, np.array([0, 1, 2, 0]), g_ids


@pytest.mark.parametrize("path", PATHS)
def test_special_values_on_every_route(path):
    dtype = path_dtype(path)
    dist, q_ids, g_ids = special_values_problem(dtype)
    ref = reference(dist, q_ids, g_ids, None, None, 50)
    with path_backend(path):
        result = evaluate(dist, q_ids, g_ids, max_rank=50, official_ap=True)
    assert_matches_reference(result, ref, 50)


# ------------------------------------------------------------------------------------------------------------
# Hand-computed case
#
# Gallery: g0 id1/cam0, g1 id2/cam1, g2 id1/cam1, g3 id3/cam0, g4 id2/cam2, g5 id3/cam1.
#
# q0 id1/cam0: g0 is junk. Ranked non-junk list g1 (0.1, −), g2 (0.3, +), g3, g4, g5 → one match at rank 2:
#    AP = 1/2, official = (p(1) + p(2)) / 2 = (0/1 + 1/2) / 2 = 1/4 (the notes' example), INP = 1/2.
# q1 id2/cam0 (no junk): g1 (0.1, +), g3 (0.2, −), g4 (0.3, +), g0, g2, g5 → matches at ranks 1 and 3:
#    AP = (1/1 + 2/3) / 2 = 5/6, official = ((1 + 1)/2 + (1/2 + 2/3)/2) / 2 = (1 + 7/12) / 2 = 19/24,
#    INP = 2/3.
# q2 id4/cam0: no id 4 in the gallery → skipped.
# q3 id3/cam0: g3 is junk. g0, g1, g2, g4 (all −), g5 (0.45, +) → rank 5: AP = 1/5,
#    official = (0/4 + 1/5) / 2 = 1/10, INP = 1/5.
# Over the 3 valid queries: mAP = (1/2 + 5/6 + 1/5)/3 = 23/45, official = (1/4 + 19/24 + 1/10)/3 = 137/360,
# mINP = (1/2 + 2/3 + 1/5)/3 = 41/90; first-match ranks 2, 1, 5 → CMC@1..10 = 1/3, 2/3, 2/3, 2/3, 1, 1, …
# (each query's non-junk gallery has 5 or 6 entries, so ranks 6..10 are padding: they keep the last value).

HAND_G_IDS = np.array([1, 2, 1, 3, 2, 3])
HAND_G_CAMS = np.array([0, 1, 1, 0, 2, 1])
HAND_Q_IDS = np.array([1, 2, 4, 3])
HAND_Q_CAMS = np.array([0, 0, 0, 0])
HAND_DIST = np.array([
    [0.0, 0.1, 0.3, 0.35, 0.4, 0.5],
    [0.5, 0.1, 0.6, 0.2, 0.3, 0.9],
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
    [0.1, 0.2, 0.3, 0.0, 0.4, 0.45],
])


@pytest.mark.parametrize("path", PATHS)
def test_hand_computed_case(path):
    with path_backend(path):
        r = evaluate(HAND_DIST.astype(path_dtype(path)), HAND_Q_IDS,
                     HAND_G_IDS, HAND_Q_CAMS, HAND_G_CAMS, max_rank=10, official_ap=True)
    assert r.num_queries == 4 and r.num_valid == 3
    np.testing.assert_allclose(r.ap, [1 / 2, 5 / 6, np.nan, 1 / 5], rtol=1e-12)
    np.testing.assert_allclose(r.official_ap, [1 / 4, 19 / 24, np.nan, 1 / 10], rtol=1e-12)
    np.testing.assert_array_equal(r.first_match_rank, [2, 1, -1, 5])
    np.testing.assert_array_equal(r.num_matches, [1, 2, 0, 1])
    assert r.mAP == pytest.approx(23 / 45, rel=1e-12)
    assert r.official_mAP == pytest.approx(137 / 360, rel=1e-12)
    assert r.mINP == pytest.approx(41 / 90, rel=1e-12)
    np.testing.assert_allclose(r.cmc, [1 / 3, 2 / 3, 2 / 3, 2 / 3, 1, 1, 1, 1, 1, 1], rtol=1e-12)
    assert r.rank1 == pytest.approx(1 / 3)


def test_official_ap_single_match_at_rank_two_is_a_quarter():
    r = evaluate(np.array([[0.1, 0.2]]), [5], [6, 5], official_ap=True)
    assert r.mAP == pytest.approx(0.5) and r.official_mAP == pytest.approx(0.25)


def test_official_ap_is_only_computed_on_request():
    r = evaluate(HAND_DIST, HAND_Q_IDS, HAND_G_IDS, HAND_Q_CAMS, HAND_G_CAMS)
    assert r.official_mAP is None and r.official_ap is None


def test_cmc_map_is_the_thin_wrapper():
    cmc, m = cmc_map(HAND_DIST, HAND_Q_IDS, HAND_G_IDS, HAND_Q_CAMS, HAND_G_CAMS, max_rank=4)
    r = evaluate(HAND_DIST, HAND_Q_IDS, HAND_G_IDS, HAND_Q_CAMS, HAND_G_CAMS, max_rank=4)
    assert isinstance(cmc, np.ndarray) and cmc.shape == (4,) and isinstance(m, float)
    np.testing.assert_array_equal(cmc, r.cmc)
    assert m == r.mAP


def test_result_is_frozen():
    r = evaluate(HAND_DIST, HAND_Q_IDS, HAND_G_IDS, HAND_Q_CAMS, HAND_G_CAMS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.mAP = 1.0


# ------------------------------------------------------------------------------------------------------------
# CMC padding, skipped queries, mINP, VehicleID mode


@pytest.mark.parametrize("path", PATHS)
def test_cmc_is_padded_when_the_gallery_is_shorter_than_max_rank(path):
    # Gallery g0 id1/cam0, g1 id7/cam0, g2 id8/cam0, g3 id1/cam1; max_rank 50 (fast-reid's Cython reads stale
    # buffer values past the filtered gallery here, its NumPy version truncates the curve).
    # q0 id1/cam0: g0 is junk → 3 ranked entries g1, g2, g3 (+) → first match at rank 3 (the last one).
    # q1 id8/cam1: no junk; order g3 (0.1, −), g2 (0.2, +) → rank 2.  CMC = 0, 1/2, 1, 1, … (48 × 1).
    dist = np.array([[0.0, 0.1, 0.2, 0.3], [0.4, 0.3, 0.2, 0.1]])
    with path_backend(path):
        r = evaluate(dist.astype(path_dtype(path)), [1, 8], [1, 7, 8, 1],
                     [0, 1], [0, 0, 0, 1], max_rank=50)
    assert r.cmc.shape == (50,)
    np.testing.assert_allclose(r.cmc, [0.0, 0.5] + [1.0] * 48)
    np.testing.assert_array_equal(r.first_match_rank, [3, 2])


def test_cmc_padding_with_two_valid_queries_and_a_tiny_gallery():
    # q0 matches at rank 2 of 2, q1 at rank 1 of 2 → CMC = 1/2, 1, 1, 1, 1.
    r = evaluate(np.array([[0.1, 0.2], [0.1, 0.2]]), [1, 2], [2, 1], max_rank=5)
    np.testing.assert_allclose(r.cmc, [0.5, 1, 1, 1, 1])


def test_queries_without_a_valid_match_are_skipped_everywhere():
    # q0's only same-id entry is junk (same camera); q1 is valid (rank 1); q2's id is absent.
    r = evaluate(np.array([[0.1, 0.2], [0.2, 0.1], [0.3, 0.4]]), [1, 2, 3], [1, 2], [0, 0, 0], [0, 5],
                 max_rank=2, official_ap=True)
    assert (r.num_queries, r.num_valid) == (3, 1)
    assert r.mAP == 1.0 and r.mINP == 1.0 and r.official_mAP == 1.0
    np.testing.assert_array_equal(r.first_match_rank, [-1, 1, -1])
    np.testing.assert_array_equal(r.num_matches, [0, 1, 0])
    assert np.isnan(r.ap[0]) and np.isnan(r.ap[2])
    np.testing.assert_array_equal(r.cmc, [1.0, 1.0])


def test_no_valid_query_raises():
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate(np.array([[0.1, 0.2]]), [1], [1, 2], [0], [0, 0])  # VehicleID with constant cameras
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate(np.zeros((2, 0)), [1, 2], [])


def test_minp_is_matches_over_rank_of_the_last_match():
    # one query, matches at ranks 1, 2 and 5 of 6 → INP = 3/5, AP = (1 + 1 + 3/5) / 3
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    r = evaluate(dist, [1], [1, 1, 2, 2, 1, 2])
    assert r.mINP == pytest.approx(3 / 5)
    assert r.mAP == pytest.approx((1 + 1 + 3 / 5) / 3)


def test_vehicleid_mode_one_match_per_query_gives_reciprocal_rank():
    # cams None: no junk. Each query has exactly one gallery image of its id → AP = INP = 1/rank.
    rng = np.random.default_rng(3)
    dist = rng.random((30, 10)).astype(np.float32)
    q_ids = rng.integers(0, 10, 30)
    r = evaluate(dist, q_ids, np.arange(10))
    ranks = 1 + (dist < dist[np.arange(30), q_ids][:, None]).sum(1)
    np.testing.assert_array_equal(r.first_match_rank, ranks)
    np.testing.assert_allclose(r.ap, 1 / ranks)
    assert r.mAP == pytest.approx(r.mINP)


# ------------------------------------------------------------------------------------------------------------
# Ties, signed zeros, infinities, NaN


@pytest.mark.parametrize("path", PATHS)
def test_ties_are_pessimistic(path):
    # one query id1/cam0: g0 − 0.5, g1 + 0.5 (cam1), g2 − 0.2, g3 + 0.5 (cam2), g4 junk 0.5 (cam0)
    # non-junk order: g2 (0.2), then at 0.5 the negative g0 first, then both matches → ranks 3 and 4.
    dist = np.array([[0.5, 0.5, 0.2, 0.5, 0.5]])
    with path_backend(path):
        r = evaluate(dist.astype(path_dtype(path)), [1], [2, 1, 3, 1, 1], [0],
                     [0, 1, 0, 2, 0])
    assert r.first_match_rank[0] == 3
    assert r.mAP == pytest.approx((1 / 3 + 2 / 4) / 2)


@pytest.mark.parametrize("path", PATHS)
def test_signed_zero_ties_and_negative_distances(path):
    # −0.0 == +0.0: the negative at either zero ties the match at the other one and comes first; −1.0 comes
    # before both → the match is at rank 3 either way.
    dtype = path_dtype(path)
    with path_backend(path):
        for neg_zero, match_zero in ((-0.0, 0.0), (0.0, -0.0)):
            r = evaluate(np.array([[neg_zero, match_zero, -1.0]], dtype=dtype), [1], [2, 1, 3])
            assert r.first_match_rank[0] == 3


@pytest.mark.parametrize("path", PATHS)
def test_infinite_and_nan_distances(path):
    # match 0.5 → rank 1; negative 1.0 → 2; negative +inf → 3 (before the NaN match, which counts as +inf);
    # NaN match → rank 4; the NaN negative ranks last and is never counted.
    dist = np.array([[np.nan, 1.0, np.nan, 0.5, np.inf]])
    with path_backend(path):
        r = evaluate(dist.astype(path_dtype(path)), [1], [1, 2, 3, 1, 4])
    assert r.mAP == pytest.approx((1 / 1 + 2 / 4) / 2)
    assert r.mINP == pytest.approx(2 / 4)


# ------------------------------------------------------------------------------------------------------------
# The compiled kernel: edge cases of its bucket table, and the fallback without numba

KERNEL_SETTINGS = {  # every way through agnet._rank_kernel.match_ranks
    "default": {},
    "one bucket, bisection": {"_NB_MAX_BUCKETS": 1, "_NB_SCAN": 0, "_NB_FEW": 0.0},
    "two buckets, scan, candidates only": {"_NB_MAX_BUCKETS": 2, "_NB_SCAN": 1 << 30, "_NB_FEW": 2.0},
    "fine buckets, two passes": {"_NB_BUCKETS_PER_MATCH": 1024, "_NB_FEW": 0.0},
    "fine buckets, candidates only": {"_NB_BUCKETS_PER_MATCH_FEW": 1024, "_NB_FEW": 2.0},
    "threads": {"_NB_THREAD_MIN": 0, "_NB_FEW": 0.0},
}


def brute_force_ranks(dist, q_ids, g_ids, q_cams, g_cams) -> list[np.ndarray]:
    """Per query, the 1-based ranks of its true matches: j + #{non-junk negatives <= p_j} (NaN match = +inf,
    a NaN negative never counts) — the definition the kernel implements, evaluated directly."""
    out = []
    for q in range(dist.shape[0]):
        same = g_ids == q_ids[q]
        junk = same & (g_cams == q_cams[q])
        pos = np.sort(np.where(np.isnan(dist[q, same & ~junk]), np.inf, dist[q, same & ~junk]))
        neg = dist[q, ~same]
        out.append(np.array([j + 1 + np.count_nonzero(neg <= p) for j, p in enumerate(pos)], dtype=np.float64))
    return out


def kernel_ranks(dist, q_ids, g_ids, q_cams, g_cams) -> list[np.ndarray]:
    q_ids, g_ids, q_cams, g_cams = (np.asarray(a, np.int64) for a in (q_ids, g_ids, q_cams, g_cams))
    qi, qc, gal = metrics._prepare_labels(q_ids, g_ids, q_cams, g_cams, *dist.shape, torch.device("cpu"))
    ranks, _, npos = metrics._match_ranks_nb(dist, qi.numpy(), qc.numpy(), gal)
    return np.split(ranks, np.cumsum(npos)[:-1]) if npos.size else []


def adversarial_rows(dtype, rng, n_rows=24, ng=300):
    """Distances drawn from a few levels (many exact ties), with ±inf, NaN of both signs, signed zeros, huge and
    subnormal values, and rows whose matches sit in one tight cluster next to a far outlier (crowded buckets)."""
    fi = np.finfo(dtype)
    levels = np.array([-np.inf, -fi.max, -1.0, -0.0, 0.0, fi.smallest_subnormal, fi.tiny, 0.5, 0.5, 1.0,
                       1.0 + fi.eps, 2.0, fi.max, np.inf, np.nan, -np.nan], dtype=dtype)
    dist = levels[rng.integers(0, levels.size, size=(n_rows, ng))]
    cluster = (1.0 + np.arange(ng) * fi.eps).astype(dtype)
    dist[::3] = rng.permutation(cluster)  # every third row: a tight run of values …
    dist[::3, ::50] = dtype(1e30) if dtype == np.float32 else dtype(1e300)  # … and far outliers among them
    dist[1::5] = rng.normal(size=(dist[1::5].shape)).astype(dtype)  # ordinary rows too
    q_ids = rng.integers(0, 4, n_rows)
    g_ids = rng.integers(0, 4, ng)
    q_cams = rng.integers(0, 3, n_rows)
    g_cams = rng.integers(0, 3, ng)
    return dist, q_ids, g_ids, q_cams, g_cams


needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed (the NumPy path is tested alone)")


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(KERNEL_SETTINGS))
def test_kernel_ranks_equal_the_definition_on_adversarial_rows(name, dtype):
    rng = np.random.default_rng(21)
    for _ in range(3):
        problem = adversarial_rows(dtype, rng)
        expected = brute_force_ranks(*problem)
        with contextlib.ExitStack() as stack:
            stack.enter_context(backend("numba"))
            for key, value in KERNEL_SETTINGS[name].items():
                stack.enter_context(pytest.MonkeyPatch.context()).setattr(metrics, key, value)
            got = kernel_ranks(*problem)
        assert len(got) == len(expected)
        for q, (g, e) in enumerate(zip(got, expected, strict=True)):
            np.testing.assert_array_equal(g, e, err_msg=f"query {q}")


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("matches, entries", [
    ([0.5], [0.1, 0.5, 0.5, 0.9, np.inf, -np.inf, np.nan]),  # one match, ties and infinities around it
    ([0.5] * 6, [0.5, 0.4, 0.6, 0.5, -0.0]),  # all matches equal: no span, one bucket
    ([-np.inf, 0.5, np.inf, np.nan], [-np.inf, 0.5, 0.7, np.inf, np.nan, -1e30]),  # infinite and NaN matches
    ([np.inf, np.inf], [np.inf, 1.0, np.nan]),  # only infinite matches: no finite range
    ([-np.inf, -np.inf], [-np.inf, -1.0, np.nan]),
    ([-1e38, 1e38], [-3e38, 0.0, 3e38, 1e38, -1e38]),  # a span that overflows float32 arithmetic
    ([0.0, 1e-45], [0.0, 1e-45, 7e-46, -0.0, 1.0]),  # a subnormal span: the scale overflows
])
def test_kernel_edge_cases_of_the_bucket_table(matches, entries, dtype):
    """One query: its matches first in the gallery, then negatives, then one junk entry equal to each match."""
    with np.errstate(over="ignore"):
        m = np.array(matches, dtype=dtype)
        e = np.array(entries, dtype=dtype)
        if dtype == np.float64 and np.all(np.abs(m[np.isfinite(m)]) == 1e38):
            m, e = m * 1e270, e * 1e270  # float64 overflows only with larger values (±3e308 → ±inf)
    dist = np.concatenate([m, e, m])[None, :]
    g_ids = np.array([1] * m.size + [2] * e.size + [1] * m.size)
    g_cams = np.array([1] * m.size + [0] * e.size + [0] * m.size)  # the copies are junk (query camera 0)
    problem = (dist, np.array([1]), g_ids, np.array([0]), g_cams)
    expected = brute_force_ranks(*problem)
    for name, settings_ in KERNEL_SETTINGS.items():
        with backend("numba"), pytest.MonkeyPatch.context() as mp:
            for key, value in settings_.items():
                mp.setattr(metrics, key, value)
            got = kernel_ranks(*problem)
        np.testing.assert_array_equal(got[0], expected[0], err_msg=name)


@needs_numba
def test_kernel_on_short_galleries_and_queries_without_matches():
    for ng in range(5):
        dist = np.linspace(0.0, 1.0, 3 * ng, dtype=np.float32).reshape(3, ng)
        q_ids, g_ids = np.array([1, 2, 3]), np.arange(ng) % 2 + 1  # query id 3 has no gallery image
        q_cams, g_cams = np.array([0, 0, 1]), np.zeros(ng, np.int64)  # query 1's (id 1) images are all junk
        problem = (dist, q_ids, g_ids, q_cams, g_cams)
        got, expected = kernel_ranks(*problem), brute_force_ranks(*problem)
        assert [g.tolist() for g in got] == [e.tolist() for e in expected] == [[]] * 3


def _rank_in_child(dist):
    return evaluate(dist, np.arange(dist.shape[0]) % 5, np.arange(dist.shape[1]) % 5).ap


@needs_numba
def test_a_forked_child_ranks_after_its_parent():
    """The kernel's threads are plain Python threads, gone after each call: a child forked after the parent ranked
    (a DataLoader worker, a multiprocessing pool) can rank too — numba's OpenMP layer would kill it."""
    import multiprocessing

    dist = np.random.default_rng(4).random((64, 2048)).astype(np.float32)  # large enough for several threads
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metrics, "_NB_THREAD_MIN", 0)
        parent = _rank_in_child(dist)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a process with threads (Python 3.12+)
            with multiprocessing.get_context("fork").Pool(1) as pool:
                child = pool.apply(_rank_in_child, (dist,))
    np.testing.assert_array_equal(child, parent)


def test_default_cpu_path_is_the_kernel_when_numba_imports():
    assert metrics._CPU_PATH == ("numba" if importlib.util.find_spec("numba") else "numpy")


def test_without_numba_the_numpy_path_ranks(tmp_path):
    """A process where numba cannot be imported (e.g. the package installed without its dependencies) takes the
    NumPy path and gives the same results."""
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import numpy as np\n"
        "from agnet import metrics\n"
        "assert metrics._CPU_PATH == 'numpy', metrics._CPU_PATH\n"
        "r = metrics.evaluate(np.array([[0.1, 0.2, 0.3]], np.float32), [1], [1, 2, 1])\n"
        "print(repr(r.ap.tolist()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path)
    assert out.stdout.strip() == repr([(1 / 1 + 2 / 3) / 2])
    assert "numba" not in out.stderr


def test_a_numba_that_does_not_import_falls_back_with_a_warning(monkeypatch):
    import agnet

    monkeypatch.setattr(metrics, "_CPU_PATH", "numba")
    monkeypatch.delattr(agnet, "_rank_kernel", raising=False)
    monkeypatch.setitem(sys.modules, "agnet._rank_kernel", None)  # the import raises ImportError
    with pytest.warns(UserWarning, match="numba does not import"):
        r = evaluate(np.array([[0.1, 0.2, 0.3]], np.float32), [1], [1, 2, 1])
    assert r.ap.tolist() == [(1 / 1 + 2 / 3) / 2]
    assert metrics._CPU_PATH == "numpy"


# ------------------------------------------------------------------------------------------------------------
# Inputs


def test_torch_inputs_half_precision_and_chunks_agree():
    rng = np.random.default_rng(11)
    dist = rng.random((37, 53)).astype(np.float32)
    q_ids, g_ids = rng.integers(0, 5, 37), rng.integers(0, 5, 53)
    q_cams, g_cams = rng.integers(0, 3, 37), rng.integers(0, 3, 53)
    base = evaluate(dist, q_ids, g_ids, q_cams, g_cams, max_rank=10, official_ap=True)
    for kwargs in ({"chunk": 1}, {"chunk": 4}, {"chunk": 1000}, {"device": "cpu"}):
        r = evaluate(dist, q_ids, g_ids, q_cams, g_cams, max_rank=10, official_ap=True, **kwargs)
        np.testing.assert_array_equal(r.ap, base.ap)
        np.testing.assert_array_equal(r.cmc, base.cmc)
    r = evaluate(torch.from_numpy(dist), torch.from_numpy(q_ids), torch.from_numpy(g_ids), torch.from_numpy(q_cams),
                 torch.from_numpy(g_cams), max_rank=10, official_ap=True)
    np.testing.assert_array_equal(r.ap, base.ap)
    transposed = torch.from_numpy(np.ascontiguousarray(dist.T)).T  # a non-contiguous view
    for name in ("numba", "numpy", "torch") if HAVE_NUMBA else ("numpy", "torch"):
        with backend(name):
            r = evaluate(transposed, q_ids, g_ids, q_cams, g_cams, max_rank=10, official_ap=True, chunk=8)
        np.testing.assert_array_equal(r.ap, base.ap)
    half = dist.astype(np.float16)
    r16 = evaluate(half, q_ids, g_ids, q_cams, g_cams, max_rank=10)
    r32 = evaluate(half.astype(np.float32), q_ids, g_ids, q_cams, g_cams, max_rank=10)
    np.testing.assert_array_equal(r16.ap, r32.ap)
    # float labels holding integers and integer distances are accepted
    r = evaluate(dist, q_ids.astype(float), g_ids, q_cams, g_cams, max_rank=10)
    np.testing.assert_array_equal(r.ap, evaluate(dist, q_ids, g_ids, q_cams, g_cams, max_rank=10).ap)
    evaluate((dist * 100).astype(np.int64), q_ids, g_ids, q_cams, g_cams)


def test_read_only_arrays_are_accepted_without_warnings():
    dist = np.random.default_rng(0).random((3, 4)).astype(np.float32)
    ids = np.array([1, 2, 3, 1])
    for a in (dist, ids):
        a.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = evaluate(dist, ids[:3], ids, np.array([1, 0, 0]), np.array([0, 1, 1, 1]))
    assert r.num_valid == 3


def test_bad_inputs_raise():
    d = np.zeros((2, 3))
    with pytest.raises(ValueError, match="both"):
        evaluate(d, [1, 2], [1, 2, 3], q_cams=[0, 0])
    with pytest.raises(ValueError, match="shape"):
        evaluate(d, [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="2-D"):
        evaluate(np.zeros(3), [1], [1, 2, 3])
    with pytest.raises(ValueError, match="max_rank"):
        evaluate(d, [1, 2], [1, 2, 3], max_rank=0)
    with pytest.raises(ValueError, match="chunk"):
        evaluate(d, [1, 2], [1, 2, 3], chunk=0)
    with pytest.raises(TypeError, match="integers"):
        evaluate(d, [1.5, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="metric"):
        pairwise_distance(np.ones((2, 3)), np.ones((4, 3)), metric="manhattan")
    with pytest.raises(ValueError, match="dimensions"):
        pairwise_distance(np.ones((2, 3)), np.ones((4, 5)))


# ------------------------------------------------------------------------------------------------------------
# Distances and the end-to-end path


def feature_problem(seed=5, nq=41, ng=173, dim=24):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, dim))
    g_ids, q_ids = rng.integers(0, 12, ng), rng.integers(0, 12, nq)
    scale = rng.uniform(0.5, 3.0, size=(1, 1))  # unnormalised features: the norms matter for plain Euclidean
    gf = (centres[g_ids] + 0.8 * rng.normal(size=(ng, dim))) * scale
    qf = (centres[q_ids] + 0.8 * rng.normal(size=(nq, dim))) * rng.uniform(0.5, 3.0, size=(nq, 1))
    return qf.astype(np.float32), gf.astype(np.float32), q_ids, g_ids, rng.integers(0, 4, nq), rng.integers(0, 4, ng)


def test_pairwise_distance_values():
    qf, gf, *_ = feature_problem()
    q, g = torch.from_numpy(qf), torch.from_numpy(gf)
    d = pairwise_distance(qf, gf, metric="euclidean", normalize=False)
    assert d.dtype == torch.float32 and d.shape == (41, 173)
    torch.testing.assert_close(d, torch.cdist(q.double(), g.double()).pow(2).float(), rtol=1e-4, atol=1e-3)
    qn, gn = torch.nn.functional.normalize(q.double(), dim=1), torch.nn.functional.normalize(g.double(), dim=1)
    cos = pairwise_distance(qf, gf, metric="cosine")
    torch.testing.assert_close(cos, (1 - qn @ gn.T).float(), rtol=0, atol=1e-5)
    eucl = pairwise_distance(qf, gf)  # default: Euclidean (squared) on L2-normalised features = 2 − 2 cos
    torch.testing.assert_close(eucl, ((qn[:, None] - gn[None]) ** 2).sum(-1).float(), rtol=0, atol=1e-5)
    assert torch.equal(eucl, 2 * cos)  # exactly: so the two rank identically
    torch.testing.assert_close(pairwise_distance(qf, gf, chunk=5), eucl, rtol=0, atol=1e-6)


@pytest.mark.parametrize("metric, normalize", [("euclidean", True), ("euclidean", False), ("cosine", True)])
def test_evaluate_features_equals_evaluate_of_pairwise_distance(metric, normalize):
    qf, gf, q_ids, g_ids, q_cams, g_cams = feature_problem()
    full = evaluate(pairwise_distance(qf, gf, metric=metric, normalize=normalize), q_ids, g_ids, q_cams, g_cams,
                    max_rank=20, official_ap=True)
    for chunk in (None, 7):
        r = evaluate_features(qf, gf, q_ids, g_ids, q_cams, g_cams, max_rank=20, official_ap=True, metric=metric,
                              normalize=normalize, chunk=chunk)
        np.testing.assert_allclose(r.ap, full.ap, rtol=1e-12)
        np.testing.assert_allclose(r.cmc, full.cmc, rtol=1e-12)
        assert r.mAP == pytest.approx(full.mAP, rel=1e-12)
        assert r.official_mAP == pytest.approx(full.official_mAP, rel=1e-12)
        assert r.mINP == pytest.approx(full.mINP, rel=1e-12)
        np.testing.assert_array_equal(r.first_match_rank, full.first_match_rank)
    assert 0.2 < full.mAP < 1.0  # a meaningful problem, not a degenerate one


def test_cosine_and_normalised_euclidean_rank_identically():
    qf, gf, q_ids, g_ids, q_cams, g_cams = feature_problem(seed=9)
    a = evaluate_features(qf, gf, q_ids, g_ids, q_cams, g_cams, metric="cosine", official_ap=True)
    b = evaluate_features(qf, gf, q_ids, g_ids, q_cams, g_cams, metric="euclidean", normalize=True, official_ap=True)
    np.testing.assert_array_equal(a.ap, b.ap)
    np.testing.assert_array_equal(a.first_match_rank, b.first_match_rank)
    assert (a.mAP, a.mINP, a.official_mAP) == (b.mAP, b.mINP, b.official_mAP)
    c = evaluate_features(qf, gf, q_ids, g_ids, q_cams, g_cams, metric="euclidean", normalize=False)
    assert c.mAP != a.mAP  # without normalisation the ranking changes (the norms were made to vary)


def test_evaluate_features_accepts_float64_and_torch_features():
    qf, gf, q_ids, g_ids, q_cams, g_cams = feature_problem(seed=2)
    a = evaluate_features(qf, gf, q_ids, g_ids, q_cams, g_cams)
    b = evaluate_features(torch.from_numpy(qf), torch.from_numpy(gf), q_ids, g_ids, q_cams, g_cams)
    c = evaluate_features(qf.astype(np.float64), gf.astype(np.float64), q_ids, g_ids, q_cams, g_cams)
    np.testing.assert_array_equal(a.ap, b.ap)
    np.testing.assert_array_equal(a.ap, c.ap)
    assert math.isfinite(a.mAP)
