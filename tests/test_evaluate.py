"""Evaluation protocols: VehicleID trials, spatio-temporal fusion, VeRi junk rule, records."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from agnet.evaluate import (
    EvalSettings,
    camera_distance,
    evaluate_vehicleid,
    fuse,
    run_protocol,
    spatio_temporal,
    tune_lambda,
)
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


def str_frame(seed=0):
    """A VeRi-like manifest: 12 training vehicles (4 held out as ``val``) and 6 test vehicles on 3 cameras.

    Same-vehicle sightings are close in time, so the spatio-temporal term carries signal.
    """
    rng = np.random.default_rng(seed)
    rows, index = [], 0
    for v in range(18):
        split = "train" if v < 8 else ("val" if v < 12 else "test")
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


def test_lambda_is_tuned_on_held_out_vehicles_only_never_on_training_images_or_test_labels():
    frame = str_frame()
    features = features_for(frame.drop_duplicates("path"), noise=1.2, seed=3)
    settings = EvalSettings(str_lambdas=(0.0, 0.5, 1.0, 2.0))
    dist = camera_distance(CAMERAS)
    chosen = tune_lambda(features, frame, "ID", dist, settings)
    assert chosen["tune_vehicles"] == 4 and chosen["tuned_on"].startswith("held-out training vehicles")
    assert chosen["tune_queries"] == 12 and chosen["tune_gallery"] == 24

    # Test labels and training images do not matter: shuffle the test ids, scramble the training features.
    scrambled = {**features, "ID": features["ID"].clone()}
    order = list(features["paths"])
    train_rows = [order.index(p) for p in frame.loc[frame["split"] == "train", "path"]]
    scrambled["ID"][train_rows] = torch.randn(len(train_rows), scrambled["ID"].shape[1]).half()
    relabelled = frame.copy()
    test = relabelled["split"].isin(["query", "gallery"])
    relabelled.loc[test, "vehicle_id"] = np.random.default_rng(1).permutation(relabelled.loc[test, "vehicle_id"])
    assert tune_lambda(scrambled, relabelled, "ID", dist, settings) == chosen
    # The held-out vehicles' own features do.
    moved = {**features, "ID": features["ID"].clone()}
    val_rows = [order.index(p) for p in frame.loc[frame["split"] == "val", "path"]]
    moved["ID"][val_rows] = torch.randn(len(val_rows), moved["ID"].shape[1]).half()
    assert tune_lambda(moved, frame, "ID", dist, settings)["grid_mAP"] != chosen["grid_mAP"]


def test_lambda_grid_grows_while_its_largest_value_wins_and_reports_an_edge():
    frame = str_frame()
    features = features_for(frame.drop_duplicates("path"), noise=3.0, seed=4)  # weak visual features
    dist = camera_distance(CAMERAS)
    grown = tune_lambda(features, frame, "ID", dist, EvalSettings(str_lambdas=(0.0, 0.01), str_max_doublings=12))
    assert grown["grid_extensions"] > 0 and grown["lambda"] > 0.01  # the search left the configured grid
    lambdas = sorted(float(k) for k in grown["grid_mAP"])
    assert lambdas[2:] == [0.01 * 2 ** k for k in range(1, len(lambdas) - 1)]
    assert grown["grid_extensions"] >= 2  # so one doubling cannot reach the optimum: the cap shows at the edge
    capped = tune_lambda(features, frame, "ID", dist, EvalSettings(str_lambdas=(0.0, 0.01), str_max_doublings=1))
    assert capped["lambda"] == 0.02 and capped["at_edge"] == "upper" and capped["grid_extensions"] == 1
    strong = features_for(frame.drop_duplicates("path"), noise=0.01, seed=4)  # perfect visual features
    none = tune_lambda(strong, frame, "ID", dist, EvalSettings(str_lambdas=(0.0, 0.5)))
    assert none["lambda"] == 0.0 and none["at_edge"] == "lower"


def test_lambda_needs_held_out_vehicles_or_one_fixed_value():
    frame = str_frame()
    no_val = frame[frame["split"] != "val"]
    features = features_for(frame.drop_duplicates("path"))
    with pytest.raises(Exception, match=r"holdout_vehicles.*or give one fixed value"):
        tune_lambda(features, no_val, "ID", CAMERAS, EvalSettings(str_lambdas=(0.0, 1.0)))
    fixed = tune_lambda(features, no_val, "ID", CAMERAS, EvalSettings(str_lambdas=(0.3,)))
    assert fixed["lambda"] == 0.3 and fixed["tuned_on"].startswith("fixed")


def test_veri_str_record_states_lambda_and_where_it_was_chosen():
    frame = str_frame()
    features = features_for(frame.drop_duplicates("path"), noise=1.2, seed=3)
    record = run_protocol(features, frame, {"camera_dist": CAMERAS.tolist()}, "ID", "veri-str",
                          EvalSettings(str_lambdas=(0.0, 0.5, 1.0)))
    assert {"lambda", "grid_mAP", "tuned_on", "tune_vehicles", "at_edge", "same_camera"} <= set(record["str"])
    assert record["str"]["same_camera"] == "nearest" and record["num_queries"] == 18


def test_same_camera_images_are_penalised_like_the_nearest_camera():
    nearest = camera_distance(CAMERAS)
    assert np.diag(nearest).tolist() == [10, 10, 15] and nearest[0, 2] == 20
    assert np.diag(camera_distance(CAMERAS, "zero")).tolist() == [0, 0, 0]
    st = spatio_temporal([0], [100, 100], [0], [0, 1], nearest)
    assert st[0, 0] == st[0, 1] > 0  # a same-camera negative 100 s away is no longer free
    with pytest.raises(Exception, match="same_camera must be 'nearest' or 'zero'"):
        camera_distance(CAMERAS, "diag")
