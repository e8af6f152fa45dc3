"""Evaluation protocols: VehicleID trials, spatio-temporal fusion, VeRi junk rule, records."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from agnet.errors import AgnetError
from agnet.evaluate import (
    EvalSettings,
    camera_distance,
    evaluate_run,
    evaluate_vehicleid,
    features_of,
    fuse,
    run_protocol,
    spatio_temporal,
    str_folds,
)
from agnet.metrics import evaluate, pairwise_distance
from agnet.protocols import vehicleid_trial


def vehicleid_frame(vehicles=20, per_vehicle=5):
    rows = []
    for v in range(vehicles):
        for i in range(per_vehicle):
            rows.append({"path": f"image/{v:03d}{i}.jpg", "split": "test", "vehicle_id": 100 + v,
                         "in_test_10": v < 10, "in_test_20": True})
    return pd.DataFrame(rows)


def features_for(frame, dim=16, noise=0.3, seed=0):
    """Descriptors clustered by vehicle: identity signal plus noise."""
    rng = np.random.default_rng(seed)
    centres = {v: rng.normal(size=dim) for v in frame["vehicle_id"].unique()}
    feats = np.stack([centres[v] + noise * rng.normal(size=dim) for v in frame["vehicle_id"]]).astype(np.float32)
    tensor = torch.from_numpy(feats).half()
    return {"paths": list(frame["path"]), "Attr": tensor, "ID": tensor, "All": tensor,
            "provenance": {"variant": "test", "seed": 0}}


def test_vehicleid_trials_are_reproducible_with_one_gallery_image_per_vehicle():
    test = vehicleid_frame()
    for trial in range(3):
        q, g = vehicleid_trial(test, 20, trial, seed=0)
        assert sorted(test.loc[g, "vehicle_id"]) == sorted(test["vehicle_id"].unique())
        assert len(q) + len(g) == len(test) and not set(q) & set(g)
        q2, g2 = vehicleid_trial(test, 20, trial, seed=0)
        assert np.array_equal(q, q2) and np.array_equal(g, g2)
    assert not np.array_equal(vehicleid_trial(test, 20, 0, 0)[1], vehicleid_trial(test, 20, 1, 0)[1])


def test_vehicleid_protocol_averages_trials_and_uses_the_list():
    frame = vehicleid_frame()
    record = evaluate_vehicleid(features_for(frame), frame, "All", 10, EvalSettings(trials=4, max_rank=5))
    assert len(record["trials"]) == 4
    assert record["num_gallery"] == 10 and record["num_queries"] == 40
    assert record["mAP"] == pytest.approx(np.mean([t["mAP"] for t in record["trials"]]))
    assert record["mAP_std"] >= 0 and record["rank1"] > 0.5  # clustered features: far above chance (0.1)
    with pytest.raises(Exception, match=r"no test_list_30.txt in this dataset \(lists: \[10, 20\]\)"):
        evaluate_vehicleid(features_for(frame), frame, "All", 30, EvalSettings())


def test_spatio_temporal_term():
    dist = np.array([[0, 100, 300], [100, 0, 200], [300, 200, 0]])
    st = spatio_temporal([0, 50], [0, 100, 50], [0, 1], [0, 2, 1], dist)
    assert st.shape == (2, 3) and st.min() >= 0 and st.max() == pytest.approx(1.0)
    assert st[0, 0] == 0 and st[1, 2] == 0  # same time or same camera: no penalty


def test_str_with_zero_weight_keeps_every_ranking():
    rng = np.random.default_rng(1)
    visual = torch.from_numpy(rng.random((6, 40)).astype(np.float32))
    st = rng.random((6, 40)).astype(np.float32)
    assert torch.equal(torch.argsort(fuse(visual, st, 0.0), dim=1), torch.argsort(visual, dim=1))
    assert not torch.equal(torch.argsort(fuse(visual, st, 5.0), dim=1), torch.argsort(visual, dim=1))


def test_veri_protocol_applies_the_junk_rule_and_states_its_settings():
    rows = []
    for v in range(8):
        for cam in range(3):
            rows.append({"path": f"image_test/{v}_{cam}.jpg", "split": "gallery", "vehicle_id": v, "camera_id": cam,
                         "timestamp": 100 * cam})
        rows.append({"path": f"image_query/{v}_0.jpg", "split": "query", "vehicle_id": v, "camera_id": 0,
                     "timestamp": 0})
    frame = pd.DataFrame(rows)
    features = features_for(frame, noise=0.01)
    # The query's own copy (same vehicle, same camera) sits in the gallery; the junk rule must drop it.
    record = run_protocol(features, frame, {"camera_dist": None}, "ID", "veri", EvalSettings(max_rank=10))
    assert record["rank1"] == 1.0 and record["num_queries"] == 8 and record["num_gallery"] == 24
    assert record["distance"] == "Euclidean on L2-normalised features" and record["ap"] == "non-interpolated"
    assert "official_mAP" in record
    with pytest.raises(Exception, match="needs camera_Dist.txt"):
        run_protocol(features, frame, {"camera_dist": None}, "ID", "veri-str", EvalSettings())


# ------------------------------------------------------------------------------ spatio-temporal λ


def str_frame(seed=0, test_vehicles=12):
    """A VeRi-like manifest: 4 training vehicles and ``test_vehicles`` test vehicles on 3 cameras, no held-out split.

    Same-vehicle sightings are close in time, so the spatio-temporal term carries signal.
    """
    rng = np.random.default_rng(seed)
    rows, index = [], 0
    for v in range(4 + test_vehicles):
        split = "train" if v < 4 else "test"
        start = rng.integers(0, 10_000)
        for cam in range(3):
            for k in range(2):
                path = f"img/{v}_{cam}_{k}.jpg"
                t = int(start + 40 * cam + k)
                base = {"path": path, "vehicle_id": v, "camera_id": cam, "timestamp": t, "list_index": index}
                index += 1
                if split == "test":
                    rows.append({**base, "split": "gallery"})
                    if k == 0:
                        rows.append({**base, "split": "query"})
                else:
                    rows.append({**base, "split": split})
    return pd.DataFrame(rows)


CAMERAS = np.array([[0, 10, 20], [10, 0, 15], [20, 15, 0]])
META = {"camera_dist": CAMERAS.tolist()}


def str_record(frame, features, **settings):
    return run_protocol(features, frame, META, "ID", "veri-str", EvalSettings(**settings))


def query_folds(frame, folds=2, seed=0):
    """Fold of each query row of ``frame`` (VeRi order) and the fold map."""
    query = frame[frame["split"] == "query"]
    fold_of = str_folds(query["vehicle_id"], folds, seed)
    return np.array([fold_of[v] for v in query["vehicle_id"]]), fold_of


def test_folds_are_disjoint_cover_every_test_vehicle_and_follow_the_seed():
    ids = np.repeat(np.arange(100, 131), 3)  # 31 vehicles, several images each, in any order
    fold_of = str_folds(np.random.default_rng(0).permutation(ids), 3, seed=7)
    assert set(fold_of) == set(ids.tolist()) and set(fold_of.values()) == {0, 1, 2}  # every vehicle, one fold
    sizes = np.bincount(list(fold_of.values()))
    assert sizes.max() - sizes.min() <= 1
    assert str_folds(ids, 3, seed=7) == fold_of  # the set of ids, folds and seed fix it (not the order)
    assert str_folds(ids, 3, seed=8) != fold_of
    with pytest.raises(AgnetError, match="3 folds, but only 2 query vehicle"):
        str_folds([1, 2, 2], 3, seed=0)
    with pytest.raises(AgnetError, match="at least 2"):
        str_folds(ids, 1, seed=0)


def test_veri_str_record_states_each_folds_lambda_and_how_it_was_chosen():
    frame = str_frame()
    features = features_for(frame.drop_duplicates("path"), noise=1.2, seed=3)
    record = str_record(frame, features, str_lambdas=(0.0, 0.5, 1.0))
    rerank = record["str"]
    assert {"lambda", "lambdas", "folds", "fold_assignment", "normalisation", "tuned_on", "at_edge",
            "same_camera"} <= set(rerank)
    assert rerank["same_camera"] == "nearest" and record["num_queries"] == 36
    assert rerank["fold_assignment"]["folds"] == 2 and "permuted" in rerank["fold_assignment"]["method"]
    assert len(rerank["folds"]) == 2 and rerank["lambdas"] == [f["lambda"] for f in rerank["folds"]]
    assert rerank["lambda"] == pytest.approx(np.mean(rerank["lambdas"]))
    q_fold, _ = query_folds(frame)
    for fold in rerank["folds"]:
        k = fold["fold"]
        assert fold["tune_queries"] == (q_fold != k).sum() and fold["scored_queries"] == (q_fold == k).sum()
        assert fold["tune_vehicles"] + fold["scored_vehicles"] == 12
        assert {"0.0", "0.5", "1.0"} <= set(fold["grid_mAP"])


def test_lambda_of_a_fold_never_reads_the_folds_own_labels():
    """Scrambling the labels of fold k's images (queries among queries, gallery among gallery) leaves λ_k and its
    grid unchanged; the other fold, tuned on fold k's queries, sees the scramble."""
    frame = str_frame()
    features = features_for(frame.drop_duplicates("path"), noise=1.2, seed=3)
    settings = {"str_lambdas": (0.0, 0.25, 0.5, 1.0, 2.0)}
    folds = str_record(frame, features, **settings)["str"]["folds"]
    _, fold_of = query_folds(frame)
    rng = np.random.default_rng(5)
    for k in (0, 1):
        scrambled = frame.copy()
        for split in ("query", "gallery"):
            rows = (scrambled["split"] == split) & scrambled["vehicle_id"].map(fold_of).eq(k)
            scrambled.loc[rows, "vehicle_id"] = rng.permutation(scrambled.loc[rows, "vehicle_id"].to_numpy())
        again = str_record(scrambled, features, **settings)["str"]["folds"]
        assert again[k] == folds[k]
        assert again[1 - k]["grid_mAP"] != folds[1 - k]["grid_mAP"]  # the scramble is seen where it may be


def test_time_and_camera_scales_are_computed_once_over_the_whole_test_set():
    """A query seen long after everything else: T_max is its gap (over all query x gallery pairs), and the fold
    tuned without it still uses that scale — its grid is the by-hand mAP with the full-set term, not with a term
    rescaled over its own queries."""
    frame = str_frame()
    late = frame[frame["split"] == "query"].iloc[0].copy()
    late["path"], late["timestamp"], late["list_index"] = "img/late.jpg", 5_000_000, 10_000
    frame = pd.concat([frame, late.to_frame().T], ignore_index=True).astype(frame.dtypes.to_dict())
    features = features_for(frame.drop_duplicates("path"), noise=1.2, seed=3)
    record = str_record(frame, features, str_lambdas=(0.0, 0.5, 1.0, 2.0), str_max_doublings=0)
    query, gallery = frame[frame["split"] == "query"], frame[frame["split"] == "gallery"]
    gaps = np.abs(query["timestamp"].to_numpy()[:, None] - gallery["timestamp"].to_numpy()[None, :])
    dist = camera_distance(CAMERAS)
    assert record["str"]["normalisation"]["t_max"] == gaps.max() == 5_000_000 - gallery["timestamp"].min()
    assert record["str"]["normalisation"]["d_max"] == 20

    q_fold, fold_of = query_folds(frame)
    k = fold_of[int(late["vehicle_id"])]  # the fold whose λ is tuned on the others' queries, without the late one
    tune = q_fold != k
    visual = pairwise_distance(features_of(features, "ID", query["path"]), features_of(features, "ID", gallery["path"]))
    cams = (query["camera_id"].to_numpy(), gallery["camera_id"].to_numpy())
    full = spatio_temporal(query["timestamp"], gallery["timestamp"], *cams, dist)
    own = spatio_temporal(query["timestamp"][tune], gallery["timestamp"], cams[0][tune], cams[1], dist)

    def grid(st):
        return {str(lam): float(evaluate(fuse(visual[tune], st, lam).numpy(), query["vehicle_id"].to_numpy()[tune],
                                         gallery["vehicle_id"].to_numpy(), cams[0][tune], cams[1]).mAP)
                for lam in (0.0, 0.5, 1.0, 2.0)}

    assert record["str"]["folds"][k]["grid_mAP"] == pytest.approx(grid(full[tune]), abs=1e-12)
    assert grid(own) != pytest.approx(grid(full[tune]), abs=1e-6)  # per-set scaling would tune another λ curve


def test_lambda_zero_everywhere_reproduces_the_plain_veri_result_exactly():
    frame = str_frame()
    features = features_for(frame.drop_duplicates("path"), noise=1.2, seed=3)
    plain, fused = [], []
    veri = run_protocol(features, frame, META, "ID", "veri", EvalSettings(), per_query=plain)
    zero = run_protocol(features, frame, META, "ID", "veri-str", EvalSettings(str_lambdas=(0.0,)), per_query=fused)
    assert zero["str"]["lambda"] == 0.0 and zero["str"]["tuned_on"].startswith("fixed")
    for key in ("mAP", "cmc", "mINP", "official_mAP", "rank1"):
        assert zero[key] == veri[key], key
    assert np.array_equal(plain[0]["ap"], fused[0]["ap"], equal_nan=True)
    visual = torch.rand(5, 7)
    assert torch.equal(fuse(visual, np.ones((5, 7), np.float32), np.zeros(5)), visual)
    mixed = fuse(visual, np.ones((5, 7), np.float32), np.array([0, 1, 0, 2, 0]))  # λ per query (row)
    assert torch.equal(mixed[0], visual[0]) and torch.allclose(mixed[3].min(), torch.tensor(2.0))


def test_lambda_grid_grows_while_its_largest_value_wins_and_each_fold_reports_its_edge():
    frame = str_frame()
    features = features_for(frame.drop_duplicates("path"), noise=3.0, seed=4)  # weak visual features
    grown = str_record(frame, features, str_lambdas=(0.0, 0.01), str_max_doublings=12)["str"]
    for fold in grown["folds"]:
        assert fold["grid_extensions"] > 0 and fold["lambda"] > 0.01  # the search left the configured grid
        lambdas = sorted(float(k) for k in fold["grid_mAP"])
        assert lambdas[2:] == [0.01 * 2 ** k for k in range(1, len(lambdas) - 1)]
    capped = str_record(frame, features, str_lambdas=(0.0, 0.01), str_max_doublings=1)["str"]
    assert all(f["lambda"] == 0.02 and f["at_edge"] == "upper" and f["grid_extensions"] == 1 for f in capped["folds"])
    assert capped["at_edge"] == "upper"
    strong = features_for(frame.drop_duplicates("path"), noise=0.01, seed=4)  # perfect visual features
    none = str_record(frame, strong, str_lambdas=(0.0, 0.5))["str"]
    assert none["lambdas"] == [0.0, 0.0] and none["at_edge"] == "lower"


def test_spatio_temporal_only_control_reads_no_features_and_ranks_deterministically():
    frame = str_frame()
    no_features = {"paths": [], "provenance": {"variant": "test", "seed": 0}}  # nothing to read
    record = run_protocol(no_features, frame, META, "ID", "veri-st", EvalSettings())
    assert record["descriptor"] == "none" and record["distance"].startswith("none")
    assert record["st"]["same_camera"] == "nearest" and "pessimistic" in record["st"]["ties"]
    query, gallery = frame[frame["split"] == "query"], frame[frame["split"] == "gallery"]
    st = spatio_temporal(query["timestamp"], gallery["timestamp"], query["camera_id"], gallery["camera_id"],
                         camera_distance(CAMERAS))
    by_hand = evaluate(st, query["vehicle_id"].to_numpy(), gallery["vehicle_id"].to_numpy(),
                       query["camera_id"].to_numpy(), gallery["camera_id"].to_numpy())
    assert record["mAP"] == by_hand.mAP and record["rank1"] > 0.5  # sightings close in time carry identity
    shuffled = frame.sample(frac=1.0, random_state=3)  # another gallery order: ties do not follow it
    again = run_protocol(no_features, shuffled, META, "ID", "veri-st", EvalSettings())
    assert again["mAP"] == pytest.approx(record["mAP"], abs=1e-12) and again["cmc"] == record["cmc"]
    # All sightings at one instant: every distance ties, and a tie ranks the negatives first (pessimistic): each
    # query's 4 true matches come after the 66 negatives (72 gallery images less its vehicle's 6).
    flat = run_protocol(no_features, frame.assign(timestamp=0), META, "ID", "veri-st", EvalSettings(max_rank=5))
    assert flat["rank1"] == 0.0 and flat["mAP"] == pytest.approx(np.mean([j / (66 + j) for j in (1, 2, 3, 4)]))


def test_a_run_scores_the_control_once_beside_every_descriptor():
    frame = str_frame()
    features = features_for(frame.drop_duplicates("path"), noise=1.2, seed=3)
    queries = []
    records = evaluate_run(features, frame, META, ["ID", "All"], ["veri", "veri-st"],
                           EvalSettings(), queries=queries)
    assert [(r["descriptor"], r["protocol"]) for r in records] == [("ID", "veri"), ("All", "veri"),
                                                                   ("none", "veri-st")]
    assert queries[-1]["descriptor"].unique().tolist() == ["none"] and len(queries[-1]) == 36


def test_same_camera_images_are_penalised_like_the_nearest_camera():
    nearest = camera_distance(CAMERAS)
    assert np.diag(nearest).tolist() == [10, 10, 15] and nearest[0, 2] == 20
    assert np.diag(camera_distance(CAMERAS, "zero")).tolist() == [0, 0, 0]
    st = spatio_temporal([0], [100, 100], [0], [0, 1], nearest)
    assert st[0, 0] == st[0, 1] > 0  # a same-camera negative 100 s away is no longer free
    with pytest.raises(Exception, match="same_camera must be 'nearest' or 'zero'"):
        camera_distance(CAMERAS, "diag")
