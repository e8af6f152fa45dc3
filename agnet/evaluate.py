"""Scoring the evaluation protocols (§IV.A) of :mod:`agnet.protocols` on a run's features: VeRi-776 (with
optional spatio-temporal re-ranking) and VehicleID (``trials`` seeded gallery draws, mean and std reported).

Spatio-temporal re-ranking (after PROVID/FACT; the published formula is only partly recoverable,
see ``docs/paper-mapping.md``): ``d = minmax_q(d_vis) + λ · (|t_q − t_g| / T_max) · (δ(c_q, c_g) / D_max)``,
where minmax_q rescales each query's visual distances to [0, 1], δ is the symmetric camera
distance, T_max and D_max the largest time gap and camera distance between query and gallery.
δ(c, c) of the query's own camera is, by default, c's distance to its nearest other camera
(``same_camera="nearest"``): with camera_Dist.txt's zero diagonal (``"zero"``) a same-camera gallery image —
under VeRi's junk rule always a *different* vehicle — is never penalised while every true match is.
λ is tuned by mAP on the manifest's ``val`` split — training vehicles held out of training — with a
VeRi-like pseudo query/gallery split of them: never on an image the network trained on, never on a test
label. The grid is doubled upwards while its best value is its largest, and the record says when the
choice still sits at an edge of what was searched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from agnet.errors import AgnetError
from agnet.metrics import evaluate, pairwise_distance
from agnet.protocols import parse, pseudo_split, query_gallery, vehicleid_test, vehicleid_trial, veri_split

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
                   str_same_camera=rerank.get("same_camera", defaults.str_same_camera))


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


def spatio_temporal(q_times, g_times, q_cams, g_cams, camera_dist: np.ndarray) -> np.ndarray:
    """ST(q, g) = (|t_q − t_g| / T_max) · (δ(c_q, c_g) / D_max) in [0, 1]; (Q, G) float32."""
    gap = np.abs(np.asarray(q_times, dtype=np.float64)[:, None] - np.asarray(g_times, dtype=np.float64)[None, :])
    dist = np.asarray(camera_dist, dtype=np.float64)[np.asarray(q_cams)[:, None], np.asarray(g_cams)[None, :]]
    t_max, d_max = gap.max(), dist.max()
    return ((gap / t_max if t_max else gap) * (dist / d_max if d_max else dist)).astype(np.float32)


def fuse(visual: torch.Tensor, st: np.ndarray, lam: float) -> torch.Tensor:
    """Per-query min-max normalised visual distance plus λ·ST (λ = 0 keeps every ranking)."""
    low = visual.min(dim=1, keepdim=True).values
    span = (visual.max(dim=1, keepdim=True).values - low).clamp_min(1e-12)
    return (visual - low) / span + lam * torch.from_numpy(st)


def tune_lambda(features, frame: pd.DataFrame, descriptor: str, camera_dist, settings: EvalSettings) -> dict:
    """Choose λ by mAP on the held-out vehicles (``split == "val"``) only; returns the choice and its evidence.

    A single configured value is used as given. The grid is extended by doubling its largest value while that
    value is the best (at most ``settings.str_max_doublings`` times); ``at_edge`` reports a choice that is still
    the largest searched (``"upper"``) or λ = 0 (``"lower"``: re-ranking does not help on the held-out vehicles).
    """
    lambdas = sorted({float(v) for v in settings.str_lambdas})
    if len(lambdas) == 1:
        return {"lambda": lambdas[0], "tuned_on": "fixed (evaluation.str.lambdas holds one value)", "at_edge": None,
                "same_camera": settings.str_same_camera}
    held_out = frame[frame["split"] == "val"]
    if held_out.empty:
        raise AgnetError("veri-str tunes λ on training vehicles held out of training, and this manifest has none: "
                         "set datasets.<name>.holdout_vehicles (agnet data manifest --holdout-vehicles N), or give "
                         "one fixed value in evaluation.str.lambdas")
    query, gallery = pseudo_split(held_out)
    visual = pairwise_distance(_features_for(features, descriptor, query["path"]),
                               _features_for(features, descriptor, gallery["path"]), metric=settings.distance)
    st = spatio_temporal(query["timestamp"], gallery["timestamp"], query["camera_id"], gallery["camera_id"],
                         camera_dist)
    q_ids, g_ids = query["vehicle_id"].to_numpy(), gallery["vehicle_id"].to_numpy()
    q_cams, g_cams = query["camera_id"].to_numpy(), gallery["camera_id"].to_numpy()

    def score(lam: float) -> float:
        return float(evaluate(fuse(visual, st, lam).numpy(), q_ids, g_ids, q_cams, g_cams,
                              max_rank=settings.max_rank).mAP)

    grid = {lam: score(lam) for lam in lambdas}
    doublings = 0
    while max(grid, key=lambda lam: (grid[lam], -lam)) == max(grid) and max(grid) > 0 \
            and doublings < settings.str_max_doublings:
        grid[2 * max(grid)] = score(2 * max(grid))
        doublings += 1
    best = max(grid, key=lambda lam: (grid[lam], -lam))  # ties: the smaller λ
    edge = "upper" if best == max(grid) else ("lower" if best == min(grid) else None)
    return {"lambda": best, "grid_mAP": {str(k): v for k, v in sorted(grid.items())}, "at_edge": edge,
            "tuned_on": "held-out training vehicles (manifest split 'val'; never trained on, no test labels)",
            "tune_vehicles": int(held_out["vehicle_id"].nunique()), "tune_queries": len(query),
            "tune_gallery": len(gallery), "grid_extensions": doublings, "same_camera": settings.str_same_camera}


def evaluate_veri(features, frame: pd.DataFrame, meta: dict, descriptor: str, settings: EvalSettings,
                  use_str: bool = False) -> dict[str, Any]:
    """VeRi-776 image protocol (junk = same vehicle and camera); with ``use_str`` the fused distance."""
    query, gallery = veri_split(frame)
    visual = pairwise_distance(_features_for(features, descriptor, query["path"]),
                               _features_for(features, descriptor, gallery["path"]), metric=settings.distance)
    record: dict[str, Any] = {"num_gallery": len(gallery)}
    distmat = visual
    if use_str:
        if meta.get("camera_dist") is None:
            raise AgnetError("spatio-temporal re-ranking needs camera_Dist.txt, which this dataset lacks")
        camera_dist = camera_distance(meta["camera_dist"], settings.str_same_camera)
        record["str"] = tune_lambda(features, frame, descriptor, camera_dist, settings)
        st = spatio_temporal(query["timestamp"], gallery["timestamp"], query["camera_id"], gallery["camera_id"],
                             camera_dist)
        distmat = fuse(visual, st, record["str"]["lambda"])
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
        record = evaluate_veri(features, frame, meta, descriptor, settings, use_str=parsed.reranked)
    else:
        record = evaluate_vehicleid(features, frame, descriptor, parsed.test_size, settings)
    arrays = _take_per_query(record)
    if per_query is not None:
        per_query.extend(arrays)
    distance = {"euclidean": "Euclidean on L2-normalised features", "cosine": "cosine"}[settings.distance]
    return {"protocol": protocol, "descriptor": descriptor, "distance": distance, "ap": "non-interpolated",
            **record, "provenance": features["provenance"]}


# ------------------------------------------------------------------------------------------- per run


def evaluate_run(features, frame: pd.DataFrame, meta: dict, descriptors, protocols,
                 settings: EvalSettings, queries: list | None = None) -> list[dict[str, Any]]:
    """Every descriptor × protocol of one trained run from one loaded features file and manifest.

    Each record is exactly what :func:`run_protocol` returns for that pair (spatio-temporal λ is tuned
    once per descriptor, inside its ``veri-str`` record), without the shared ``provenance``. ``queries``, when
    given, receives one :func:`per_query_frame` per record."""
    records = []
    for descriptor in descriptors:
        for protocol in protocols:
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

