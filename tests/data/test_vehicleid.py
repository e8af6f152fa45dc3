"""VehicleID reader on the hand-written fixture: sparse attributes, test-list membership, errors."""

from __future__ import annotations

import pytest

from agnet.data.vehicleid import read_vehicleid
from agnet.errors import DatasetFormatError


def test_reads_train_and_test_with_membership(vehicleid_root):
    data = read_vehicleid(vehicleid_root)
    assert len(data.split("train")) == 5
    assert len(data.split("test")) == 8  # union of the nested lists, each image once
    assert data.test_lists == {2: [40, 41], 4: [40, 41, 52, 53]}
    first_test = data.split("test")[0]
    assert first_test.name == "0000102" and first_test.test_lists == frozenset({2, 4})
    assert data.split("test")[-1].test_lists == frozenset({4})
    assert first_test.path == "image/0000102.jpg"


def test_attributes_are_sparse_never_invented(vehicleid_root):
    by_vid = {i.vehicle_id: (i.color_id, i.type_id) for i in read_vehicleid(vehicleid_root).images}
    assert by_vid[10] == (3, 2)
    assert by_vid[11] == (None, 0)  # model but no colour label
    assert by_vid[13] == (None, None)  # no label at all
    assert by_vid[40] == (None, None)  # smallest test list: unlabelled, as in the release
    assert by_vid[52] == (4, 249)


def test_color_names_crlf_name_first(vehicleid_root):
    assert read_vehicleid(vehicleid_root).color_names[4] == "sliver"


def test_missing_train_list_names_the_file(vehicleid_root):
    (vehicleid_root / "train_test_split" / "train_list.txt").unlink()
    with pytest.raises(DatasetFormatError, match=r"train_list\.txt: required file is missing"):
        read_vehicleid(vehicleid_root)


def test_no_test_list_is_an_error(vehicleid_root):
    for path in (vehicleid_root / "train_test_split").glob("test_list_*.txt"):
        path.unlink()
    with pytest.raises(DatasetFormatError, match="no test_list_<N>.txt file"):
        read_vehicleid(vehicleid_root)


def test_malformed_line_reports_file_and_line(vehicleid_root):
    with open(vehicleid_root / "train_test_split" / "train_list.txt", "a") as f:
        f.write("0000040\n")
    with pytest.raises(DatasetFormatError, match=r"train_list\.txt:6: expected 2 fields '<image name> <vehicle id>'"):
        read_vehicleid(vehicleid_root)


def test_colour_out_of_range_is_rejected(vehicleid_root):
    (vehicleid_root / "attribute" / "color_attr.txt").write_text("10 3\n52 7\n")
    with pytest.raises(DatasetFormatError, match=r"color_attr\.txt:2: colour id 7 is out of range \(expected 0\.\.6\)"):
        read_vehicleid(vehicleid_root)


def test_vehicle_in_train_and_test_is_rejected(vehicleid_root):
    with open(vehicleid_root / "train_test_split" / "test_list_4.txt", "a") as f:
        f.write("0000099 10\n")
    with pytest.raises(DatasetFormatError, match=r"test_list_4\.txt:9: vehicle 10 is also in train_list\.txt"):
        read_vehicleid(vehicleid_root)


def test_img2vid_disagreement_is_rejected(vehicleid_root):
    path = vehicleid_root / "attribute" / "img2vid.txt"
    path.write_text(path.read_text().replace("0000020 11", "0000020 12"))
    with pytest.raises(DatasetFormatError, match=r"img2vid\.txt:3: image 0000020 maps to vehicle 12"):
        read_vehicleid(vehicleid_root)


def test_list_size_mismatch_is_a_note_not_an_error(vehicleid_root):
    split = vehicleid_root / "train_test_split"
    (split / "test_list_4.txt").rename(split / "test_list_5.txt")
    data = read_vehicleid(vehicleid_root)
    assert "test_list_5.txt lists 4 vehicles, not 5" in data.notes
