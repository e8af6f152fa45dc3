"""Verification report: counts, coverage, failure modes with their messages, strict published counts."""

from __future__ import annotations

import json

from agnet.data.verify import verify_dataset


def test_valid_veri_fixture_report(veri_root):
    report = verify_dataset("veri", veri_root)
    assert report["valid"], report["errors"]
    assert report["splits"]["train"] == {"images": 4, "identities": 2, "cameras": 3}
    assert report["splits"]["gallery"]["identities"] == 2
    assert report["image_check"] == {"checked": 12, "missing_count": 0, "missing": [],
                                     "undecodable_count": 0, "undecodable": [], "decoded": True}
    assert report["attributes"]["train"]["color_id"]["image_fraction"] == 1.0
    json.dumps(report)  # serialisable


def test_missing_image_is_reported_by_name(veri_root):
    (veri_root / "image_test" / "0004_c001_00001900_0.jpg").unlink()
    report = verify_dataset("veri", veri_root)
    assert not report["valid"]
    assert report["image_check"]["missing"] == ["image_test/0004_c001_00001900_0.jpg"]
    assert any("1 listed image(s) missing" in e and "0004_c001_00001900_0.jpg" in e for e in report["errors"])


def test_truncated_image_is_reported_as_corrupt(veri_root):
    path = veri_root / "image_train" / "0005_c001_00000200_0.jpg"
    path.write_bytes(path.read_bytes()[:-200])
    report = verify_dataset("veri", veri_root)
    assert not report["valid"]
    assert report["image_check"]["undecodable_count"] == 1
    assert "image_train/0005_c001_00000200_0.jpg: undecodable" in report["image_check"]["undecodable"][0]
    assert any("truncated or corrupt" in e for e in report["errors"])


def test_garbage_image_is_reported_as_corrupt(vehicleid_root):
    (vehicleid_root / "image" / "0000012.jpg").write_bytes(b"this is not a jpeg")
    report = verify_dataset("vehicleid", vehicleid_root)
    assert report["image_check"]["undecodable"][0].startswith("image/0000012.jpg: undecodable")


def test_format_error_makes_report_invalid_with_message(veri_root):
    (veri_root / "train_label.xml").unlink()
    report = verify_dataset("veri", veri_root)
    assert not report["valid"]
    assert "train_label.xml: required file is missing" in report["errors"][0]


def test_absent_dataset_says_how_to_obtain(tmp_path):
    report = verify_dataset("veri", tmp_path / "nowhere")
    assert "veri dataset not found" in report["errors"][0]
    assert "released by its authors on request" in report["errors"][0]


def test_gt_file_disagreeing_with_rule_is_an_error(veri_root):
    (veri_root / "gt_index.txt").write_bytes(b"3 \n5 \n")
    report = verify_dataset("veri", veri_root)
    assert any("gt_index.txt disagrees with the rule" in e and "[1]" in e for e in report["errors"])


def test_strict_lists_each_deviation_from_published_counts(veri_root):
    report = verify_dataset("veri", veri_root, strict=True)
    assert not report["valid"] and not report["errors"]
    deviations = report["strict"]["deviations"]
    assert "train images: expected 37,778, found 4" in deviations
    assert "gallery identities: expected 200, found 2" in deviations
    assert len(deviations) == 6


def test_vehicleid_report_coverage_and_strict(vehicleid_root):
    report = verify_dataset("vehicleid", vehicleid_root, strict=True)
    assert report["test_lists"] == {"2": {"vehicles": 2, "images": 4}, "4": {"vehicles": 4, "images": 8}}
    assert report["attributes"]["train_attribute_labelled"] == {"vehicles": 1, "images": 2}
    assert report["attributes"]["train"]["color_id"]["labelled_vehicles"] == 1
    deviations = report["strict"]["deviations"]
    assert "train identities: expected 13,164, found 3" in deviations
    assert "test_list_800.txt: expected, not found" in deviations
    assert report["valid"] is False
    assert verify_dataset("vehicleid", vehicleid_root)["valid"] is True


def test_no_pixels_still_reports_a_missing_image(veri_root):
    (veri_root / "image_test" / "0004_c001_00001900_0.jpg").unlink()
    (veri_root / "image_train" / "0005_c001_00000200_0.jpg").write_bytes(b"\xff\xd8 not decoded without pixels")
    report = verify_dataset("veri", veri_root, check_pixels=False)
    assert not report["valid"]
    assert report["image_check"]["missing"] == ["image_test/0004_c001_00001900_0.jpg"]
    assert report["image_check"]["undecodable_count"] == 0 and report["image_check"]["decoded"] is False
