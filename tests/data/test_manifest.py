"""Manifests: columns, 0-based classes, nullable attributes, VehicleID filter and list membership."""

from __future__ import annotations

import pandas as pd
import pytest

from agnet.data.manifest import make_manifest, read_manifest

COLUMNS = ["path", "split", "list_index", "vehicle_id", "class_id", "camera_id", "color_id", "type_id", "timestamp"]


def test_veri_manifest_roundtrip(veri_root, tmp_path):
    out = tmp_path / "m.parquet"
    make_manifest("veri", veri_root, out)
    frame, meta = read_manifest(out)
    assert list(frame.columns) == COLUMNS
    assert frame["split"].value_counts().to_dict() == {"gallery": 6, "train": 4, "query": 2}
    train = frame[frame["split"] == "train"]
    assert train.set_index("vehicle_id")["class_id"].to_dict() == {3: 0, 5: 1}  # by ascending vehicle id
    assert frame.loc[frame["split"] != "train", "class_id"].isna().all()
    assert frame["camera_id"].min() == 0 and frame["timestamp"].notna().all()
    assert meta["format"] == "veri" and meta["num_classes"] == 2
    assert meta["camera_dist"][0] == [0, 120, 300]
    assert meta["type_names"][1] == "suv"
    assert any("typeID 0" in n for n in meta["notes"])
    assert all((veri_root / p).is_file() for p in frame["path"])


def test_vehicleid_default_keeps_only_attribute_labelled_training_vehicles(vehicleid_root, tmp_path):
    out = tmp_path / "m.parquet"
    frame = make_manifest("vehicleid", vehicleid_root, out)
    train = frame[frame["split"] == "train"]
    assert set(train["vehicle_id"]) == {10}  # 11 lacks colour, 13 lacks both
    assert train["class_id"].tolist() == [0, 0]
    _, meta = read_manifest(out)
    assert meta["train_vehicles"] == "attribute-labelled" and meta["train_vehicles_dropped"] == 2


def test_vehicleid_all_keeps_missing_labels_as_na(vehicleid_root, tmp_path):
    frame = make_manifest("vehicleid", vehicleid_root, tmp_path / "m.parquet", train_vehicles="all")
    train = frame[frame["split"] == "train"].set_index("vehicle_id")
    assert train.loc[13, "color_id"].isna().all() and train.loc[13, "type_id"].isna().all()
    assert pd.isna(train.loc[11, "color_id"]) and train.loc[11, "type_id"] == 0  # one image
    assert sorted(train["class_id"].unique()) == [0, 1, 2]
    assert frame["camera_id"].isna().all() and frame["timestamp"].isna().all()


def test_vehicleid_test_list_membership_columns(vehicleid_root, tmp_path):
    frame = make_manifest("vehicleid", vehicleid_root, tmp_path / "m.parquet")
    test = frame[frame["split"] == "test"]
    assert test["in_test_2"].sum() == 4 and test["in_test_4"].sum() == 8
    assert not frame.loc[frame["split"] == "train", ["in_test_2", "in_test_4"]].any().any()
    assert str(frame["in_test_2"].dtype) == "bool"


def test_reading_a_non_manifest_names_the_file(tmp_path):
    bogus = tmp_path / "x.parquet"
    bogus.write_text("not parquet")
    with pytest.raises(Exception, match="x.parquet: not a readable Parquet manifest"):
        read_manifest(bogus)


def test_held_out_vehicles_leave_training_and_are_seeded(tmp_path):
    from agnet.data.synth.veri import synth_veri

    root = synth_veri(tmp_path / "VeRi", vehicles=24, cameras=3, seed=0, workers=1)
    full = make_manifest("veri", root, tmp_path / "full.parquet")
    frame = make_manifest("veri", root, tmp_path / "m.parquet", holdout_vehicles=4, holdout_seed=7)
    _, meta = read_manifest(tmp_path / "m.parquet")
    val, train = frame[frame["split"] == "val"], frame[frame["split"] == "train"]
    held = sorted(val["vehicle_id"].unique())
    assert len(held) == 4 and meta["holdout"] == {"vehicles": 4, "seed": 7, "vehicle_ids": held}
    assert not set(held) & set(train["vehicle_id"])  # never a training image
    assert val["class_id"].isna().all()
    assert sorted(train["class_id"].unique()) == list(range(train["vehicle_id"].nunique()))  # contiguous classes
    assert len(val) + len(train) == int((full["split"] == "train").sum())
    assert (frame[~frame["split"].isin(["train", "val"])]["path"].tolist()
            == full[full["split"] != "train"]["path"].tolist())  # test side untouched
    again = make_manifest("veri", root, tmp_path / "again.parquet", holdout_vehicles=4, holdout_seed=7)
    assert sorted(again.loc[again["split"] == "val", "vehicle_id"].unique()) == held
    other = make_manifest("veri", root, tmp_path / "other.parquet", holdout_vehicles=4, holdout_seed=8)
    assert sorted(other.loc[other["split"] == "val", "vehicle_id"].unique()) != held
    with pytest.raises(Exception, match="would leave no training vehicle"):
        make_manifest("veri", root, tmp_path / "x.parquet", holdout_vehicles=10_000)
