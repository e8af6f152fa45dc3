"""Synthetic twins: real on-disk formats (read by the real readers), determinism, plausible world."""

from __future__ import annotations

import hashlib
import itertools
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from agnet.data.constants import VERI_COLORS, VERI_TYPES
from agnet.data.synth.vehicleid import synth_vehicleid
from agnet.data.synth.veri import synth_veri
from agnet.data.synth.world import make_vehicles
from agnet.data.vehicleid import read_vehicleid
from agnet.data.veri import junk_rule_index, read_veri
from agnet.data.verify import verify_dataset
from agnet.errors import AgnetError


@pytest.fixture(scope="module")
def veri_twin(tmp_path_factory) -> Path:
    return synth_veri(tmp_path_factory.mktemp("twin") / "VeRi", vehicles=16, cameras=6, seed=3, workers=1)


@pytest.fixture(scope="module")
def vehicleid_twin(tmp_path_factory) -> Path:
    return synth_vehicleid(tmp_path_factory.mktemp("twin") / "VehicleID", vehicles=24, cameras=4, seed=3, workers=1)


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_veri_twin_is_valid_for_the_real_reader_and_checks(veri_twin):
    report = verify_dataset("veri", veri_twin)
    assert report["valid"], report["errors"]
    assert report["image_check"]["checked"] > 100
    assert report["splits"]["train"]["identities"] + report["splits"]["gallery"]["identities"] == 16


def test_veri_twin_has_the_release_quirks(veri_twin):
    with pytest.raises(ValueError, match="multi-byte encodings"):
        ET.parse(veri_twin / "train_label.xml")
    raw = (veri_twin / "camera_Dist.txt").read_bytes()
    assert b"\r\n" in raw and not raw.endswith(b"\n")
    rows = [list(map(int, line.split())) for line in raw.decode().splitlines()]
    assert len(rows) == 6 and all(len(r) == 6 for r in rows)
    assert np.all(np.tril(np.array(rows)) == 0)  # upper-triangular
    assert all(line.endswith(" ") for line in (veri_twin / "gt_index.txt").read_text().splitlines() if line)
    names = (veri_twin / "name_test.txt").read_text().split()
    assert names == sorted(names)


def test_veri_twin_queries_are_copies_of_test_images_and_index_files_follow_the_rule(veri_twin):
    data = read_veri(veri_twin)
    for query in data.split("query"):
        assert (veri_twin / query.path).read_bytes() == (veri_twin / "image_test" / query.name).read_bytes()
    assert (data.gt_index, data.jk_index) == junk_rule_index(data)
    assert all(data.gt_index)  # every query has a positive in another camera


def test_veri_twin_times_are_consistent_with_camera_distances(veri_twin):
    data = read_veri(veri_twin)
    for vid in {i.vehicle_id for i in data.images}:
        first_seen: dict[int, int] = {}
        for image in data.images:
            if image.vehicle_id == vid:
                first_seen[image.camera_id] = min(first_seen.get(image.camera_id, 10**9), image.timestamp)
        visits = sorted((t, c) for c, t in first_seen.items())
        for (t0, c0), (t1, c1) in itertools.pairwise(visits):
            # no vehicle drives faster than 15 m/s (+ rounding to multiples of 5)
            assert t1 - t0 >= data.camera_dist[c0, c1] / 15.0 - 5


def test_veri_twin_typeid_zero_bug_reads_back_as_suv(veri_twin):
    xml = (veri_twin / "train_label.xml").read_bytes().decode("gb2312")
    buggy = {line.split('vehicleID="')[1][:4] for line in xml.splitlines() if 'typeID="0"' in line}
    suv = VERI_TYPES.index("suv")
    data = read_veri(veri_twin)
    assert all(i.type_id == suv for i in data.images if f"{i.vehicle_id:04d}" in buggy)
    assert len(buggy) <= 3


def test_twins_are_deterministic_for_a_seed(tmp_path):
    a = synth_veri(tmp_path / "a", vehicles=6, cameras=3, seed=11, workers=1)
    b = synth_veri(tmp_path / "b", vehicles=6, cameras=3, seed=11, workers=2)  # worker count does not matter
    c = synth_veri(tmp_path / "c", vehicles=6, cameras=3, seed=12, workers=1)
    assert tree_digest(a) == tree_digest(b) != tree_digest(c)


def test_existing_output_is_never_overwritten(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "keep.txt").write_text("mine")
    with pytest.raises(AgnetError, match="already exists and is not empty"):
        synth_veri(tmp_path / "t", vehicles=6, cameras=3, workers=1)
    assert (tmp_path / "t" / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["t"]  # no staging folder left behind


def test_vehicleid_twin_is_valid_with_nested_lists_and_sparse_labels(vehicleid_twin):
    report = verify_dataset("vehicleid", vehicleid_twin)
    assert report["valid"], report["errors"]
    data = read_vehicleid(vehicleid_twin)
    sizes = sorted(data.test_lists)
    assert sizes == [3, 6, 9, 12]  # 1/4 .. 4/4 of the 12 test vehicles
    for small, large in itertools.pairwise(sizes):
        assert set(data.test_lists[small]) < set(data.test_lists[large])
    assert all(len(vids) == size for size, vids in data.test_lists.items())
    smallest = set(data.test_lists[sizes[0]])
    assert all(i.color_id is None and i.type_id is None for i in data.images if i.vehicle_id in smallest)
    colour = {i.vehicle_id for i in data.images if i.color_id is not None}
    model = {i.vehicle_id for i in data.images if i.type_id is not None}
    assert colour <= model and colour


def test_vehicleid_twin_files_follow_the_release(vehicleid_twin):
    assert (vehicleid_twin / "attribute" / "color_names.txt").read_bytes().endswith(b"yellow 6\r\n")
    assert "sliver" in read_vehicleid(vehicleid_twin).color_names
    lines = (vehicleid_twin / "train_test_split" / "train_list.txt").read_text().split("\n")
    by_vehicle: dict[str, list[str]] = {}
    for line in filter(None, lines):
        name, vid = line.split(" ")
        assert len(name) == 7
        by_vehicle.setdefault(vid, []).append(name)
    assert all(names == sorted(names, reverse=True) for names in by_vehicle.values())  # descending per vehicle


def test_many_vehicles_share_colour_and_type():
    """The hard negatives ALS is about: most vehicles have a same-colour, same-type look-alike."""
    rng = np.random.default_rng(0)
    fleet = make_vehicles(rng, range(1, 101), VERI_COLORS, [(s, 0) for s in VERI_TYPES])
    combos = [(v.color, v.vtype) for v in fleet]
    shared = sum(combos.count(c) > 1 for c in combos)
    assert shared >= 60
    assert len(set(combos)) >= 10  # but not one big class either
    assert len({v.color for v in fleet}) >= 5
