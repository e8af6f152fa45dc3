"""Evaluation protocols: VehicleID trials, spatio-temporal fusion, VeRi junk rule, records."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from agnet.evaluate import (
    EvalSettings,
    evaluate_vehicleid,
    fuse,
    run_protocol,
    spatio_temporal,
    vehicleid_trial,
)


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
