"""VeRi-776 reader on the hand-written fixture: real-format quirks accepted, broken input rejected."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from agnet.data.veri import junk_rule_index, read_veri
from agnet.errors import DatasetFormatError


def test_fixture_xml_is_rejected_by_the_standard_parser(veri_root):
    # The reason the reader decodes the file itself: expat refuses the gb2312 declaration.
    with pytest.raises(ValueError, match="multi-byte encodings are not supported"):
        ET.parse(veri_root / "train_label.xml")


def test_reads_splits_in_list_order_with_zero_based_classes(veri_root):
    data = read_veri(veri_root)
    assert [len(data.split(s)) for s in ("train", "query", "gallery")] == [4, 2, 6]
    first = data.split("train")[0]
    assert first.name == "0003_c001_00000100_0.jpg"  # trailing space and CRLF stripped
    assert (first.vehicle_id, first.camera_id, first.timestamp) == (3, 0, 100)
    assert first.color_id == 9  # colorID 10 (black) -> 9
    assert first.path == "image_train/0003_c001_00000100_0.jpg"
    query = data.split("query")[1]
    assert (query.vehicle_id, query.camera_id, query.color_id, query.type_id) == (4, 1, 3, 8)
    assert query.path.startswith("image_query/")
    assert [g.list_index for g in data.split("gallery")] == list(range(6))


def test_typeid_zero_bug_is_mapped_to_suv_and_noted(veri_root):
    data = read_veri(veri_root)
    vehicle3 = [i for i in data.images if i.vehicle_id == 3]
    assert {i.type_id for i in vehicle3} == {1}  # typeID 0 -> 2 (suv) -> class 1
    assert data.type_names[1] == "suv"
    assert any("typeID 0" in note and "3" in note for note in data.notes)


def test_camera_distances_upper_triangular_crlf_are_symmetrised(veri_root):
    dist = read_veri(veri_root).camera_dist
    np.testing.assert_array_equal(dist, [[0, 120, 300], [120, 0, 250], [300, 250, 0]])


def test_gt_jk_index_zero_based_and_equal_to_the_junk_rule(veri_root):
    data = read_veri(veri_root)
    assert data.gt_index == [[2, 3], [4]]
    assert data.jk_index == [[0, 1], [5]]
    assert junk_rule_index(data) == (data.gt_index, data.jk_index)


def test_alternative_index_file_names_are_accepted(veri_root):
    (veri_root / "gt_index.txt").rename(veri_root / "gt_image.txt")
    (veri_root / "jk_index.txt").rename(veri_root / "jk_image.txt")
    assert read_veri(veri_root).gt_index == [[2, 3], [4]]


def test_list_color_with_name_first_is_accepted(veri_root):
    (veri_root / "list_color.txt").write_text("yellow\t1\norange\t2\n" + "".join(f"c{i}\t{i}\n" for i in range(3, 11)))
    assert read_veri(veri_root).color_names[:2] == ("yellow", "orange")


def test_missing_required_file_names_it(veri_root):
    (veri_root / "name_query.txt").unlink()
    with pytest.raises(DatasetFormatError, match=r"name_query\.txt: required file is missing"):
        read_veri(veri_root)


def test_missing_label_names_xml_image_and_list_line(veri_root):
    xml = (veri_root / "test_label.xml").read_bytes()
    start = xml.index(b'<Item imageName="0002_c002_00001300_0.jpg"')
    end = xml.index(b"\n", start) + 1
    (veri_root / "test_label.xml").write_bytes(xml[:start] + xml[end:])
    with pytest.raises(DatasetFormatError) as error:
        read_veri(veri_root)
    assert "test_label.xml" in str(error.value)
    assert "no <Item> label for 0002_c002_00001300_0.jpg (listed in name_test.txt line 3)" in str(error.value)


def test_bad_image_name_reports_file_and_line(veri_root):
    with open(veri_root / "name_train.txt", "ab") as f:
        f.write(b"0007-c001.jpg\r\n")
    with pytest.raises(DatasetFormatError, match=r"name_train\.txt:5: expected an image name like"):
        read_veri(veri_root)


def test_out_of_range_color_reports_xml_line(veri_root):
    xml = (veri_root / "train_label.xml").read_bytes().replace(b'colorID="7"', b'colorID="11"', 1)
    (veri_root / "train_label.xml").write_bytes(xml)
    with pytest.raises(DatasetFormatError, match=r"train_label\.xml:7: colorID 11 is out of range \(expected 1\.\.10\)"):
        read_veri(veri_root)


def test_label_contradicting_file_name_is_rejected(veri_root):
    xml = (veri_root / "train_label.xml").read_bytes().replace(b'vehicleID="0005"', b'vehicleID="0006"', 1)
    (veri_root / "train_label.xml").write_bytes(xml)
    with pytest.raises(DatasetFormatError, match="says vehicleID 6, cameraID c001; the file name says 5, c001"):
        read_veri(veri_root)


def test_malformed_xml_reports_line(veri_root):
    xml = (veri_root / "train_label.xml").read_bytes().replace(b"</Items>", b"</Itemz>")
    (veri_root / "train_label.xml").write_bytes(xml)
    with pytest.raises(DatasetFormatError, match=r"train_label\.xml:\d+: malformed XML"):
        read_veri(veri_root)


def test_camera_dist_not_square_is_rejected(veri_root):
    (veri_root / "camera_Dist.txt").write_bytes(b"0 120 300\r\n0 0\r\n0 0 0")
    with pytest.raises(DatasetFormatError, match=r"camera_Dist\.txt: expected a square matrix"):
        read_veri(veri_root)


def test_index_file_with_wrong_line_count_is_rejected(veri_root):
    (veri_root / "gt_index.txt").write_bytes(b"3 4 \n")
    with pytest.raises(DatasetFormatError, match=r"gt_index\.txt: expected one line per query \(2 lines\), got 1"):
        read_veri(veri_root)


LATIN1_COLORS = "1 yellow\n2 orange\n3 green\n4 grün\n5 red\n6 blue\n7 white\n8 golden\n9 brown\n10 black\n"


def test_latin1_class_names_are_refused_not_read_as_gbk(veri_root):
    (veri_root / "list_color.txt").write_bytes(LATIN1_COLORS.encode("latin-1"))
    with pytest.raises(DatasetFormatError, match=r"list_color.txt:4: is not UTF-8 text \(byte 0xFC in b'4 gr\\xfcn'\)"
                       r".*re-save the file as UTF-8"):
        read_veri(veri_root)


def test_utf8_and_gbk_class_names_decode_to_the_same_text(veri_root):
    for encoding in ("utf-8", "gbk"):
        (veri_root / "list_color.txt").write_bytes(LATIN1_COLORS.replace("grün", "灰色").encode(encoding))
        assert read_veri(veri_root).color_names[3] == "灰色"
    (veri_root / "list_color.txt").write_bytes(LATIN1_COLORS.encode("utf-8"))
    assert read_veri(veri_root).color_names[3] == "grün"
