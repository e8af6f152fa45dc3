"""Scoring the evaluation protocols (§IV.A) of :mod:`agnet.protocols` on a run's features: VeRi-776 (with
optional spatio-temporal re-ranking, and its spatio-temporal-only control) and VehicleID (``trials`` seeded gallery
draws, mean and std reported).

Spatio-temporal re-ranking (after PROVID/FACT; the published formula is only partly recoverable,
see ``docs/paper-mapping.md``): ``d = minmax_q(d_vis) + λ · (|t_q − t_g| / T_max) · (δ(c_q, c_g) / D_max)``,
where minmax_q rescales each query's visual distances to [0, 1] (per query), δ is the symmetric camera
distance, and T_max and D_max the largest time gap and camera distance over *all* query × gallery pairs of the test
set — computed once, without labels, and shared by λ's tuning and the scoring (:func:`st_scale`).
δ(c, c) of the query's own camera is, by default, c's distance to its nearest other camera
(``same_camera="nearest"``): with camera_Dist.txt's zero diagonal (``"zero"``) a same-camera gallery image —
under VeRi's junk rule always a *different* vehicle — is never penalised while every true match is.

λ is **cross-fitted on the test vehicles** (:func:`cross_fit_lambda`), so every network trains on all its training
vehicles and no query is scored with a λ chosen on its own label: the query vehicles are split into
``evaluation.str.folds`` groups (:func:`str_folds`: the ascending ids permuted by ``fold_seed``, dealt round-robin);
for fold k, λ_k maximises the mAP of the queries of the *other* folds' vehicles against the full gallery (VeRi's
junk rule as usual; fold k's images stay in the gallery as unlabelled distractors), and fold k's queries are ranked
with λ_k. The reported metrics are over all queries, each scored with its own fold's λ, from one ranking of the
per-query fused matrix. The grid is doubled upwards while its best value is its largest, and each fold records when
its choice still sits at an edge of what was searched. A single configured λ is used as given (no tuning).

``veri-st`` ranks by the spatio-temporal term alone (no appearance; the same T_max, D_max and camera rule): the
control that shows what time and camera topology achieve without the network. It reads no features, so each run
scores it once, under the descriptor label ``none``. Ties, common among pure spatio-temporal distances, follow
:mod:`agnet.metrics`' rule — a negative at exactly a true match's distance ranks before it (pessimistic) — which
depends on the distances only, never on the gallery order: the control is deterministic and never flattered by ties.
"""


from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from agnet.errors import AgnetError
from agnet.metrics import evaluate, pairwise_distance
from agnet.protocols import NO_DESCRIPTOR, parse, query_gallery, vehicleid_test, vehicleid_trial, veri_split

TOP_RANKS = (1, 5, 10)
PER_QUERY = "_per_query"  # a record's per-query arrays while it is built (not written to metrics.json)


@dataclass(frozen=True)
class EvalSettings:
    """The ``evaluation`` section of the config (see the schema)."""

    distance: str = "euclidean"
    max_rank: int = 50
    trials: int = 10
    trial_seed: int = 0
    str_lambdas: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
    str_same_camera: str = "nearest"
    str_max_doublings: int = 8  # the grid grows to at most 2^8 times its largest value
    str_folds: int = 2  # cross-fitting folds of the query vehicles (λ tuned on the others, used on one)
    str_fold_seed: int = 0

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> EvalSettings:
        """From the ``settings`` of an ``evaluate`` document (:func:`agnet.settings.evaluation_settings`); what a
        document leaves out (trials for VeRi, STR for VehicleID) is not read by its protocols."""
        vehicleid, rerank = settings.get("vehicleid") or {}, settings.get("str") or {}
        defaults = cls()
        return cls(distance=settings["distance"], max_rank=int(settings["max_rank"]),
                   trials=int(vehicleid.get("trials", defaults.trials)),
                   trial_seed=int(vehicleid.get("trial_seed", defaults.trial_seed)),
                   str_lambdas=tuple(rerank.get("lambdas", defaults.str_lambdas)),
                   str_same_camera=rerank.get("same_camera", defaults.str_same_camera),
                   str_folds=int(rerank.get("folds", defaults.str_folds)),
                   str_fold_seed=int(rerank.get("fold_seed", defaults.str_fold_seed)))


def _features_for(features: dict[str, Any], descriptor: str, paths: pd.Series) -> torch.Tensor:
    index = {path: i for i, path in enumerate(features["paths"])}
    missing = [p for p in paths if p not in index]
    if missing:
        covered = (features.get("provenance") or {}).get("protocols", "all")
        hint = "" if covered == "all" else f" (extracted for {', '.join(covered)} only; rerun `agnet extract` with it)"
        raise AgnetError(f"features lack {len(missing)} image(s) of the protocol, e.g. {missing[0]}{hint}")
    if descriptor not in features:
        held = ", ".join(name for name in ("Attr", "ID", "All") if name in features)
        hint = " (All is built from Attr and ID with the evaluation's alpha)" if descriptor == "All" else ""
        raise AgnetError(f"descriptor {descriptor!r} not available (features give {held}){hint}")
    return features[descriptor][torch.as_tensor([index[p] for p in paths])].float()


def _summary(result, max_rank: int) -> dict[str, Any]:
    cmc = np.asarray(result.cmc, dtype=float)
    record = {"mAP": float(result.mAP), "cmc": cmc.tolist(), "mINP": float(result.mINP),
              "num_queries": int(result.num_queries), "num_valid_queries": int(result.num_valid)}
    for k in TOP_RANKS:
        if k <= max_rank:
            record[f"rank{k}"] = float(cmc[k - 1])
    if result.official_mAP is not None:
        record["official_mAP"] = float(result.official_mAP)
    record[PER_QUERY] = {"ap": result.ap, "first_match_rank": result.first_match_rank}  # taken off by run_protocol
    return record


def camera_distance(camera_dist, same_camera: str = "nearest") -> np.ndarray:
    """The symmetric camera-distance matrix used by STR; its diagonal per ``same_camera`` (module docstring)."""
    dist = np.asarray(camera_dist, dtype=np.float64).copy()
    if same_camera == "nearest":
        off = np.where(np.eye(len(dist), dtype=bool), np.inf, dist)
        off[off <= 0] = np.inf
        nearest = off.min(axis=1)
        np.fill_diagonal(dist, np.where(np.isfinite(nearest), nearest, 0.0))
    elif same_camera != "zero":
        raise AgnetError(f"evaluation.str.same_camera must be 'nearest' or 'zero', got {same_camera!r}")
    return dist


def st_scale(q_times, g_times, q_cams, g_cams, camera_dist: np.ndarray) -> tuple[float, float]:
    """(T_max, D_max): the largest time gap and camera distance over all query × gallery pairs given (label-free).
    STR computes it once, over the whole test set, for λ's tuning and the scoring alike."""
    q_times, g_times = np.asarray(q_times, dtype=np.float64), np.asarray(g_times, dtype=np.float64)
    t_max = max(q_times.max() - g_times.min(), g_times.max() - q_times.min(), 0.0)  # = max |t_q − t_g|
    cams = np.asarray(camera_dist, dtype=np.float64)[np.ix_(np.unique(q_cams), np.unique(g_cams))]
    return float(t_max), float(cams.max())


def spatio_temporal(q_times, g_times, q_cams, g_cams, camera_dist: np.ndarray,
                    scale: tuple[float, float] | None = None) -> np.ndarray:
    """ST(q, g) = (|t_q − t_g| / T_max) · (δ(c_q, c_g) / D_max) in [0, 1]; (Q, G) float32. ``scale``: (T_max, D_max)
    (:func:`st_scale`); by default those of the pairs given."""
    t_max, d_max = scale if scale is not None else st_scale(q_times, g_times, q_cams, g_cams, camera_dist)
    gap = np.abs(np.asarray(q_times, dtype=np.float64)[:, None] - np.asarray(g_times, dtype=np.float64)[None, :])
    dist = np.asarray(camera_dist, dtype=np.float64)[np.asarray(q_cams)[:, None], np.asarray(g_cams)[None, :]]
    return ((gap / t_max if t_max else gap) * (dist / d_max if d_max else dist)).astype(np.float32)


def fuse(visual: torch.Tensor, st: np.ndarray, lam) -> torch.Tensor:
    """Per-query min-max normalised visual distance plus λ·ST; ``lam`` one number or one per query (row).

    A row whose λ is 0 is returned as its visual distances unchanged: the min-max rescaling keeps their order, but
    float rounding could merge two distances into a tie, so λ = 0 reproduces the plain ranking exactly (every
    metric ranks each row on its own, so rows need not share a scale)."""
    lam = torch.as_tensor(np.asarray(lam, dtype=np.float32))
    lam = (lam.expand(visual.shape[0]) if lam.dim() == 0 else lam).reshape(-1, 1)
    if len(lam) != visual.shape[0]:
        raise AgnetError(f"fuse: {len(lam)} λ values for {visual.shape[0]} queries")
    low = visual.min(dim=1, keepdim=True).values
    span = (visual.max(dim=1, keepdim=True).values - low).clamp_min(1e-12)
    return torch.where(lam == 0, visual, (visual - low) / span + lam * torch.from_numpy(st))


FOLD_METHOD = ("query vehicle ids in ascending order, permuted by numpy.random.default_rng(fold_seed), dealt "
               "round-robin into the folds (sizes differ by at most one)")


def str_folds(vehicle_ids, folds: int, seed: int) -> dict[int, int]:
    """Vehicle id -> fold (0 … ``folds`` − 1) of λ's cross-fitting (:data:`FOLD_METHOD`): disjoint folds covering
    every distinct id, fixed by the set of ids, ``folds`` and ``seed`` alone (not by the images' order)."""
    ids = np.unique(np.asarray(vehicle_ids, dtype=np.int64))
    if folds < 2:
        raise AgnetError(f"evaluation.str.folds must be at least 2, got {folds}")
    if len(ids) < folds:
        raise AgnetError(f"evaluation.str.folds: {folds} folds, but only {len(ids)} query vehicle(s) to split")
    order = np.random.default_rng(seed).permutation(len(ids))
    return {int(ids[j]): position % folds for position, j in enumerate(order)}


def _grid_search(score, lambdas: list[float], max_doublings: int) -> tuple[float, dict[float, float], str | None, int]:
    """(best λ, grid λ -> mAP, edge, doublings): the grid is extended by doubling its largest value while that value
    is the best (at most ``max_doublings`` times); ties go to the smaller λ. ``edge``: ``"upper"`` when the choice is
    still the largest searched, ``"lower"`` when it is the smallest (re-ranking does not help), else None."""
    grid = {lam: score(lam) for lam in lambdas}
    doublings = 0
    while max(grid, key=lambda lam: (grid[lam], -lam)) == max(grid) and max(grid) > 0 and doublings < max_doublings:
        grid[2 * max(grid)] = score(2 * max(grid))
        doublings += 1
    best = max(grid, key=lambda lam: (grid[lam], -lam))
    edge = "upper" if best == max(grid) else ("lower" if best == min(grid) else None)
    return best, grid, edge, doublings


def cross_fit_lambda(visual: torch.Tensor, st: np.ndarray, query: pd.DataFrame, gallery: pd.DataFrame,
                     settings: EvalSettings) -> tuple[np.ndarray, dict[str, Any]]:
    """(λ of each query, the record's ``str`` evidence): λ cross-fitted over folds of the query vehicles.

    For fold k, λ_k maximises the mAP of the queries whose vehicle is *not* in fold k, each ranked against the full
    gallery with the VeRi junk rule (a query's AP depends on its own row only, so this is the mean of those queries'
    AP; fold k's labels never enter it); fold k's queries get λ_k. ``visual`` and ``st`` are the (Q, G) matrices of
    the whole test set (one normalisation for tuning and scoring). A single configured λ is used as given."""
    lambdas = sorted({float(v) for v in settings.str_lambdas})
    if len(lambdas) == 1:
        return np.full(len(query), lambdas[0]), {
            "lambda": lambdas[0], "lambdas": [lambdas[0]], "tuned_on": "fixed (evaluation.str.lambdas holds one value)",
            "at_edge": None}
    q_ids, g_ids = query["vehicle_id"].to_numpy(), gallery["vehicle_id"].to_numpy()
    q_cams, g_cams = query["camera_id"].to_numpy(), gallery["camera_id"].to_numpy()
    fold_of = str_folds(q_ids, settings.str_folds, settings.str_fold_seed)
    q_fold = np.array([fold_of[int(v)] for v in q_ids])
    ap_of: dict[float, np.ndarray] = {}  # λ -> per-query AP of every query (NaN: no true match)

    def ap(lam: float) -> np.ndarray:
        if lam not in ap_of:
            ap_of[lam] = evaluate(fuse(visual, st, lam).numpy(), q_ids, g_ids, q_cams, g_cams,
                                  max_rank=settings.max_rank).ap
        return ap_of[lam]

    per_query, folds = np.empty(len(query)), []
    for k in range(settings.str_folds):
        tune = q_fold != k

        def score(lam: float, tune: np.ndarray = tune, k: int = k) -> float:
            scored = ap(lam)[tune]
            scored = scored[~np.isnan(scored)]
            if not len(scored):
                raise AgnetError(f"veri-str: the queries outside fold {k} have no true match to tune λ on")
            return float(scored.mean())

        best, grid, edge, doublings = _grid_search(score, lambdas, settings.str_max_doublings)
        per_query[q_fold == k] = best
        folds.append({"fold": k, "lambda": best, "grid_mAP": {str(lam): v for lam, v in sorted(grid.items())},
                      "at_edge": edge, "grid_extensions": doublings, "tune_queries": int(tune.sum()),
                      "tune_vehicles": len(np.unique(q_ids[tune])), "scored_queries": int((~tune).sum()),
                      "scored_vehicles": len(np.unique(q_ids[~tune]))})
    edges = sorted({f["at_edge"] for f in folds if f["at_edge"]})
    return per_query, {
        "lambda": float(np.mean([f["lambda"] for f in folds])), "lambdas": [f["lambda"] for f in folds],
        "lambda_is": "the mean of the folds' λ; each query is scored with its own fold's λ (lambdas, folds)",
        "tuned_on": f"cross-fitted on the test vehicles: {settings.str_folds} folds, λ of a fold chosen by the mAP of "
                    "the other folds' queries against the full gallery, never on the fold's own labels",
        "folds": folds, "fold_assignment": {"method": FOLD_METHOD, "folds": settings.str_folds,
                                            "seed": settings.str_fold_seed},
        "grid": lambdas, "max_doublings": settings.str_max_doublings, "at_edge": "/".join(edges) or None}


def evaluate_veri(features, frame: pd.DataFrame, meta: dict, descriptor: str, settings: EvalSettings,
                  use_str: bool = False, appearance: bool = True) -> dict[str, Any]:
    """VeRi-776 image protocol (junk = same vehicle and camera); with ``use_str`` the fused distance (λ cross-fitted,
    :func:`cross_fit_lambda`); with ``appearance=False`` (``veri-st``) the spatio-temporal term alone (no features
    read, ``descriptor`` ignored)."""
    query, gallery = veri_split(frame)
    record: dict[str, Any] = {"num_gallery": len(gallery)}
    if use_str or not appearance:
        if meta.get("camera_dist") is None:
            raise AgnetError("spatio-temporal re-ranking needs camera_Dist.txt, which this dataset lacks")
        camera_dist = camera_distance(meta["camera_dist"], settings.str_same_camera)
        times, cams = (query["timestamp"], gallery["timestamp"]), (query["camera_id"], gallery["camera_id"])
        scale = st_scale(*times, *cams, camera_dist)
        st = spatio_temporal(*times, *cams, camera_dist, scale=scale)
        shared = {"same_camera": settings.str_same_camera,
                  "normalisation": {"t_max": scale[0], "d_max": scale[1],
                                    "over": "all query x gallery pairs of the test set (label-free), once: shared by "
                                            "λ's tuning and the scoring"}}
    if not appearance:
        distmat = torch.from_numpy(st)
        record["st"] = {"ranking": "spatio-temporal term only (no appearance)", **shared,
                        "ties": "pessimistic (agnet.metrics): a negative at a true match's distance ranks before it"}
    else:
        distmat = pairwise_distance(_features_for(features, descriptor, query["path"]),
                                    _features_for(features, descriptor, gallery["path"]), metric=settings.distance)
        if use_str:
            lam, record["str"] = cross_fit_lambda(distmat, st, query, gallery, settings)
            record["str"].update(shared)
            distmat = fuse(distmat, st, lam)
    result = evaluate(distmat.numpy(), query["vehicle_id"].to_numpy(), gallery["vehicle_id"].to_numpy(),
                      query["camera_id"].to_numpy(), gallery["camera_id"].to_numpy(), max_rank=settings.max_rank,
                      official_ap=True)
    return {**_summary(result, settings.max_rank), **record}


def evaluate_vehicleid(features, frame: pd.DataFrame, descriptor: str, size: int,
                       settings: EvalSettings) -> dict[str, Any]:
    """VehicleID protocol on ``test_list_<size>``: ``settings.trials`` seeded draws, mean and std."""
    test = vehicleid_test(frame, size)
    feats = _features_for(features, descriptor, test["path"])
    ids = test["vehicle_id"].to_numpy()
    trials = []
    for trial in range(settings.trials):
        q, g = vehicleid_trial(test, size, trial, settings.trial_seed)
        distmat = pairwise_distance(feats[q], feats[g], metric=settings.distance)
        result = evaluate(distmat.numpy(), ids[q], ids[g], max_rank=settings.max_rank)
        trials.append({**_summary(result, settings.max_rank), "num_gallery": len(g)})
    record: dict[str, Any] = {"trials": trials, "num_gallery": trials[0]["num_gallery"]}
    for key in ("mAP", "mINP", *(f"rank{k}" for k in TOP_RANKS if k <= settings.max_rank)):
        values = np.array([t[key] for t in trials])
        record[key], record[f"{key}_std"] = float(values.mean()), float(values.std(ddof=1) if len(values) > 1 else 0.0)
    record["cmc"] = np.mean([t["cmc"] for t in trials], axis=0).tolist()
    record["num_queries"] = trials[0]["num_queries"]
    record["num_valid_queries"] = trials[0]["num_valid_queries"]
    return record


def _take_per_query(record: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    """The per-query arrays of a record (one per VehicleID trial; one for VeRi), removed from it."""
    if "trials" in record:
        return [trial.pop(PER_QUERY) for trial in record["trials"]]
    return [record.pop(PER_QUERY)]


def run_protocol(features, frame: pd.DataFrame, meta: dict, descriptor: str, protocol: str,
                 settings: EvalSettings, per_query: list | None = None) -> dict[str, Any]:
    """Dispatch on the protocol name; the record states the protocol, descriptor and distance. ``per_query``, when
    given, receives the per-query AP and first-match rank of each trial (see :func:`per_query_frame`)."""
    parsed = parse(protocol)
    if parsed.format == "veri":
        record = evaluate_veri(features, frame, meta, descriptor, settings, use_str=parsed.reranked,
                               appearance=parsed.appearance)
    else:
        record = evaluate_vehicleid(features, frame, descriptor, parsed.test_size, settings)
    arrays = _take_per_query(record)
    if per_query is not None:
        per_query.extend(arrays)
    distance = {"euclidean": "Euclidean on L2-normalised features", "cosine": "cosine"}[settings.distance]
    if not parsed.appearance:  # veri-st reads no features: no descriptor, no feature distance
        descriptor, distance = NO_DESCRIPTOR, "none (spatio-temporal term only)"
    return {"protocol": protocol, "descriptor": descriptor, "distance": distance, "ap": "non-interpolated",
            **record, "provenance": features["provenance"]}


# ------------------------------------------------------------------------------------------- per run


def evaluate_run(features, frame: pd.DataFrame, meta: dict, descriptors, protocols,
                 settings: EvalSettings, queries: list | None = None) -> list[dict[str, Any]]:
    """Every descriptor × protocol of one trained run from one loaded features file and manifest.

    Each record is exactly what :func:`run_protocol` returns for that pair (spatio-temporal λ is tuned
    once per descriptor, inside its ``veri-str`` record), without the shared ``provenance``. A protocol that reads
    no features (``veri-st``) is scored once, under the descriptor label ``none``, after the descriptors' records.
    ``queries``, when given, receives one :func:`per_query_frame` per record."""
    records = []
    pairs = [(d, p) for d in descriptors for p in protocols if parse(p).appearance]
    pairs += [(NO_DESCRIPTOR, p) for p in protocols if not parse(p).appearance]
    for descriptor, protocol in pairs:
        arrays: list = []
        record = run_protocol(features, frame, meta, descriptor, protocol, settings, per_query=arrays)
        record.pop("provenance", None)
        records.append(record)
        if queries is not None:
            queries.append(per_query_frame(frame, descriptor, protocol, arrays, settings))
    return records


QUERY_COLUMNS = ("descriptor", "protocol", "trial", "query", "vehicle_id", "ap", "first_match_rank")


def per_query_frame(frame: pd.DataFrame, descriptor: str, protocol: str, arrays: list[dict[str, np.ndarray]],
                    settings: EvalSettings) -> pd.DataFrame:
    """One record's per-query results, a row per query and trial (:data:`QUERY_COLUMNS`): ``query`` is the
    position in the protocol's query order (:func:`agnet.protocols.query_gallery`), ``ap`` the non-interpolated AP
    (NaN: no true match, not scored) and ``first_match_rank`` the 1-based rank of the first true match (-1: not
    scored). The record's mAP is the mean of ``ap`` over scored queries, averaged over trials; Rank-k the share of
    scored queries with ``first_match_rank`` ≤ k. Whole vehicles can be resampled from it (the claims' bootstrap)."""
    parts = []
    for trial, arrays_of_trial in enumerate(arrays):
        query, _, _ = query_gallery(frame, protocol, trial=trial, trial_seed=settings.trial_seed)
        ap = np.asarray(arrays_of_trial["ap"], dtype=np.float64)
        if len(ap) != len(query):
            raise AgnetError(f"{protocol} {descriptor}: {len(ap)} per-query results for {len(query)} queries")
        parts.append(pd.DataFrame({"trial": np.full(len(ap), trial, np.int32),
                                   "query": np.arange(len(ap), dtype=np.int32),
                                   "vehicle_id": query["vehicle_id"].to_numpy(np.int64), "ap": ap,
                                   "first_match_rank": np.asarray(arrays_of_trial["first_match_rank"], np.int64)}))
    table = pd.concat(parts, ignore_index=True)
    table.insert(0, "protocol", protocol)
    table.insert(0, "descriptor", descriptor)
    return table


def features_of(features, descriptor: str, paths) -> torch.Tensor:
    """Rows of one descriptor for ``paths`` (manifest keys), float32; an error names what is missing."""
    return _features_for(features, descriptor, pd.Series(list(paths)))

