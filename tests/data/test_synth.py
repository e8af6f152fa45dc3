"""Synthetic twins: real on-disk formats (read by the real readers), determinism, plausible world."""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from agnet.cli import main
from agnet.data import verify as verify_module
from agnet.data.constants import RELEASE_CROPS, VEHICLEID_PUBLISHED, VERI_COLORS, VERI_PUBLISHED, VERI_TYPES
from agnet.data.synth.plan import allocate, plan_vehicleid, plan_veri, vehicleid_target, veri_target
from agnet.data.synth.vehicleid import synth_vehicleid
from agnet.data.synth.veri import synth_veri
from agnet.data.synth.world import STAGING_OWNER, make_vehicles, release_looks
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


# ------------------------------------------------------------------------- release-size twins (issue 13)


def test_allocate_is_exact_bounded_and_refuses_the_impossible():
    rng = np.random.default_rng(0)
    counts = allocate(rng, 1_000, 40, 11, 60)
    assert counts.sum() == 1_000 and counts.min() >= 11 and counts.max() <= 60
    low = np.arange(1, 11)
    counts = allocate(rng, 100, 10, low, 20)
    assert counts.sum() == 100 and np.all(counts >= low)
    with pytest.raises(AgnetError, match="cannot split"):
        allocate(rng, 100, 10, 11, 60)


def test_full_size_veri_plan_has_the_release_counts_exactly():
    target = veri_target(1.0)
    plans = plan_veri(np.random.default_rng(5), target)
    train = [p for p in plans if p.train]
    test = [p for p in plans if not p.train]
    assert (len(train), len(test)) == (576, 200)
    assert sum(sum(p.images_per_camera) for p in train) == VERI_PUBLISHED["train"]["images"] == 37_778
    assert sum(sum(p.images_per_camera) for p in test) == VERI_PUBLISHED["gallery"]["images"] == 11_579
    assert sum(len(p.images_per_camera) for p in test) + 1 == VERI_PUBLISHED["query"]["images"] == 1_678
    assert all(2 <= len(p.images_per_camera) <= 18 and min(p.images_per_camera) >= 1 for p in plans)
    assert all(11 <= sum(p.images_per_camera) <= 289 for p in train)
    assert all(11 <= sum(p.images_per_camera) <= 202 for p in test)
    assert all(len(p.images_per_camera) <= 19 for p in test)  # the 20th camera is training-only


def test_full_size_vehicleid_plan_has_the_release_counts_and_label_coverage():
    target = vehicleid_target(1.0)
    plan = plan_vehicleid(np.random.default_rng(5), target)
    train = plan.images[: target.train_vehicles]
    assert (len(train), int(train.sum())) == (13_164, 113_346)
    assert target.test_sizes == (800, 1600, 2400, 3200, 6000, 13_164)
    test = plan.images[target.train_vehicles :]
    for size, images in zip(target.test_sizes, target.test_images):
        assert int(test[:size].sum()) == images
    for size, images in VEHICLEID_PUBLISHED["test_images"].items():
        assert int(test[:size].sum()) == images
    assert int(plan.images.sum()) == 221_567 and len(plan.images) == 26_328
    assert plan.images.min() >= 2
    assert (int(plan.model_labelled.sum()), int(plan.color_labelled.sum())) == (10_309, 10_086)
    assert not np.any(plan.color_labelled & ~plan.model_labelled)
    assert not plan.model_labelled[target.train_vehicles : target.train_vehicles + 800].any()  # list 800: none
    assert tuple(np.bincount(plan.color[plan.color_labelled], minlength=7)) == (2_862, 86, 1_726, 673, 2_193, 2_507, 39)
    assert len(set(plan.model[plan.model_labelled].tolist())) == 228 and plan.model.max() < 250


def test_release_crops_follow_the_documented_profile():
    rng = np.random.default_rng(0)
    for fmt in ("veri", "vehicleid"):
        crops = RELEASE_CROPS[fmt]
        sizes = np.array([look.crop_px for look in release_looks(rng, 400, "any", fmt)])
        assert abs(np.median(sizes) / crops["median_px"] - 1) < 0.1
        assert sizes.min() >= crops["min_px"] and sizes.max() <= crops["max_px"]


@pytest.fixture
def small_crops(monkeypatch):
    """Release-size twins with tiny crops: the counts logic is what is tested, not the pixels."""
    for fmt in ("veri", "vehicleid"):
        monkeypatch.setitem(RELEASE_CROPS, fmt, {**RELEASE_CROPS[fmt], "median_px": 40, "min_px": 24, "max_px": 60})


def _scaled_published(monkeypatch, veri=None, vehicleid=None):
    """Make ``verify --strict`` expect a scaled target's counts (the release's at scale 1)."""
    if veri is not None:
        monkeypatch.setattr(verify_module, "VERI_PUBLISHED", {
            "train": {"images": veri.train_images, "identities": veri.train_vehicles},
            "query": {"images": veri.query_images, "identities": veri.test_vehicles},
            "gallery": {"images": veri.test_images, "identities": veri.test_vehicles},
        })
    if vehicleid is not None:
        monkeypatch.setattr(verify_module, "VEHICLEID_PUBLISHED", {
            "train": {"images": vehicleid.train_images, "identities": vehicleid.train_vehicles},
            "test_images": dict(zip(vehicleid.test_sizes[:3], vehicleid.test_images[:3])),
        })


def test_scaled_release_veri_twin_meets_its_target_exactly(tmp_path, small_crops, monkeypatch):
    assert main(["data", "synth", "veri", str(tmp_path / "VeRi"), "--release-scale", "0.01", "--workers", "1"]) == 0
    target = veri_target(0.01)
    _scaled_published(monkeypatch, veri=target)
    report = verify_dataset("veri", tmp_path / "VeRi", strict=True)
    assert report["valid"], (report["errors"], report["strict"]["deviations"])
    data = read_veri(tmp_path / "VeRi")
    pairs = {(i.vehicle_id, i.camera_id) for i in data.split("gallery")}
    query_pairs = [(i.vehicle_id, i.camera_id) for i in data.split("query")]
    assert set(query_pairs) == pairs and len(query_pairs) == len(pairs) + 1 == target.query_images
    assert target.cameras - 1 not in {i.camera_id for i in data.split("gallery")}  # c020: training only
    assert (data.gt_index, data.jk_index) == junk_rule_index(data)


def test_scaled_release_vehicleid_twin_meets_its_target_exactly(tmp_path, small_crops, monkeypatch):
    assert main(["data", "synth", "vehicleid", str(tmp_path / "VID"), "--release-scale", "0.003",
                 "--workers", "1"]) == 0
    target = vehicleid_target(0.003)
    _scaled_published(monkeypatch, vehicleid=target)
    report = verify_dataset("vehicleid", tmp_path / "VID", strict=True)
    assert report["valid"], (report["errors"], report["strict"]["deviations"])
    assert [(int(k), v["images"]) for k, v in report["test_lists"].items()] == list(
        zip(target.test_sizes, target.test_images))
    data = read_vehicleid(tmp_path / "VID")
    model = {i.vehicle_id for i in data.images if i.type_id is not None}
    colour = {i.vehicle_id for i in data.images if i.color_id is not None}
    assert (len(model), len(colour)) == (target.model_labelled, target.color_labelled) and colour <= model
    assert not model & set(data.test_lists[target.test_sizes[0]])


def test_release_options_refuse_counts_the_release_fixes(tmp_path, capsys):
    assert main(["data", "synth", "veri", str(tmp_path / "t"), "--release", "--vehicles", "50"]) == 1
    assert "--vehicles cannot be combined with --release" in capsys.readouterr().err
    assert main(["data", "synth", "veri", str(tmp_path / "t"), "--release-scale", "1.5"]) == 1
    assert "--release-scale must be in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


# ------------------------------------------------------------- killed runs leave nothing behind (issue 12)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_staging_folder_of_a_killed_run_is_removed_by_the_next_run(tmp_path):
    stale = tmp_path / ".t.staging-abc123"
    (stale / "image_train").mkdir(parents=True)
    (stale / STAGING_OWNER).write_text(f"{socket.gethostname()} {_dead_pid()}\n")
    alive = tmp_path / ".t.staging-live"  # a run still in progress is left alone
    alive.mkdir()
    (alive / STAGING_OWNER).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    synth_veri(tmp_path / "t", vehicles=6, cameras=3, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".t.staging-live", "t"]
    assert not (tmp_path / "t" / STAGING_OWNER).exists()


def test_sigkilled_synth_leaves_a_staging_folder_that_the_rerun_removes(tmp_path):
    out = tmp_path / "VeRi"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "agnet", "data", "synth", "veri", str(out), "--vehicles", "200",
                             "--workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".VeRi.staging-*/image_*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".VeRi.staging-*")) and not out.exists()
    synth_veri(out, vehicles=6, cameras=3, workers=1)
    assert [p.name for p in tmp_path.iterdir()] == ["VeRi"]
