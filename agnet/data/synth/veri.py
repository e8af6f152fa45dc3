"""Synthetic twin of VeRi-776, written in the release's exact on-disk format.

What is mirrored: ``image_{train,query,test}/`` with ``VVVV_cCCC_TTTTTTTT_K.jpg`` names, sorted
``name_*.txt``, gb2312-declared ``train_label.xml``/``test_label.xml`` (root ``TrainingImages``),
the ``typeID="0"`` label bug on up to three SUVs, ``list_color.txt``/``list_type.txt``,
upper-triangular CRLF ``camera_Dist.txt`` without a final newline, 1-based ``gt_index.txt``/
``jk_index.txt`` with trailing spaces, ``test_track.txt`` and ``camera_ID.txt``.

What is simulated: each vehicle drives through 2..8 nearby cameras at a constant speed, so the
time between two sightings matches the camera distance; at each camera it is filmed as a short
track of frames 5 time units apart. About 74% of the vehicles (576/776 in the release) are for
training; each (test vehicle, camera) pair gives one query, which is also in the test set.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from agnet.data.constants import RELEASE_CROPS, VERI_COLORS, VERI_TYPEID_ZERO_FIX, VERI_TYPES
from agnet.data.synth import render
from agnet.data.synth.plan import plan_veri, veri_target
from agnet.data.synth.world import (
    JPEG_QUALITY,
    Shot,
    arrival_times,
    camera_distances,
    camera_positions,
    check_positive,
    make_vehicles,
    release_looks,
    render_shots,
    route,
    staged_directory,
)

TRAIN_FRACTION = 576 / 776


def _xml(items: list[tuple[str, int, int, int, int]]) -> bytes:
    """Label XML as the release writes it: gb2312 declaration, 4/8-space indentation, CRLF-free."""
    lines = ['<?xml version="1.0" encoding="gb2312" ?>', '<TrainingImages Version="1.0">', f'    <Items number="{len(items)}">']
    for name, vid, cam, color, vtype in items:
        lines.append(
            f'        <Item imageName="{name}" vehicleID="{vid:04d}" cameraID="c{cam:03d}" colorID="{color}" typeID="{vtype}" />'
        )
    lines += ["    </Items>", "</TrainingImages>", ""]
    return "\n".join(lines).encode("gb2312")


def synth_veri(
    out_dir: str | Path,
    vehicles: int = 100,
    cameras: int = 20,
    seed: int = 0,
    workers: int | None = None,
    release_scale: float | None = None,
) -> Path:
    """Write a VeRi-776 twin with ``vehicles`` identities and ``cameras`` cameras to ``out_dir``.

    With ``release_scale`` the counts are the release's times the scale instead (1: exactly
    37,778 / 1,678 / 11,579 images of 576 + 200 vehicles, 20 cameras; ``vehicles`` and ``cameras``
    are then ignored) and crops and JPEG sizes follow the release (constants.RELEASE_CROPS).
    The directory is built beside ``out_dir`` and renamed into place at the end; an existing
    non-empty ``out_dir`` is an error (nothing is overwritten).
    """
    out_dir = Path(out_dir)
    if release_scale is not None:
        world = _release_world(release_scale, seed)
    else:
        world = _small_world(vehicles, cameras, seed)
    fleet, records, query, tracks, dist, train_ids, looks, quality = world

    with staged_directory(out_dir) as build:
        _write_files(build, fleet, records, query, tracks, dist, train_ids)
        shots = []
        for split in ("train", "test"):
            for name in sorted(records[split]):
                index, camera, _ = records[split][name]
                shots.append(Shot(build / f"image_{split}" / name, index, camera, len(shots)))
        render_shots(shots, fleet, looks, seed, workers, quality)
        # Query images are byte-identical copies of their test images, as in the release.
        (build / "image_query").mkdir()
        for name in query:
            shutil.copyfile(build / "image_test" / name, build / "image_query" / name)
    return out_dir


def _small_world(vehicles: int, cameras: int, seed: int):
    """The small twin: random counts (2..8 cameras and 2..6 frames per camera per vehicle)."""
    check_positive("vehicles", vehicles, 4)
    check_positive("cameras", cameras, 2)
    rng = np.random.default_rng(seed)

    positions = camera_positions(rng, cameras)
    dist = camera_distances(positions)
    looks = [render.sample_camera(rng, "any") for _ in range(cameras)]
    ids = rng.permutation(np.arange(1, vehicles + 1))
    n_train = max(2, min(vehicles - 2, round(vehicles * TRAIN_FRACTION)))
    train_ids = {int(v) for v in ids[:n_train]}
    fleet = make_vehicles(rng, sorted(int(v) for v in ids), VERI_COLORS, [(s, 0) for s in VERI_TYPES])

    records: dict[str, dict[str, tuple[int, int, int]]] = {"train": {}, "test": {}}  # name -> (vehicle, camera, time)
    tracks = []
    for index, vehicle in enumerate(fleet):
        stops = int(rng.integers(2, min(cameras, 8) + 1))
        path = route(rng, dist, stops)
        split = "train" if vehicle.vehicle_id in train_ids else "test"
        for camera, start in zip(path, arrival_times(rng, dist, path)):
            frames = int(rng.integers(2, 7))
            names = []
            for frame in range(frames):
                timestamp = start + 5 * frame
                k = 0 if rng.random() < 0.9 else 1
                name = f"{vehicle.vehicle_id:04d}_c{camera + 1:03d}_{timestamp:08d}_{k}.jpg"
                if name in records[split]:
                    continue
                records[split][name] = (index, camera, timestamp)
                names.append(name)
            if split == "test":
                tracks.append((f"{vehicle.vehicle_id:04d}_c{camera + 1:03d}_t{len(tracks):04d}", names))

    # One query per (test vehicle, camera) pair, chosen among that pair's images.
    pairs: dict[tuple[int, int], list[str]] = {}
    for name, (index, camera, _) in sorted(records["test"].items()):
        pairs.setdefault((index, camera), []).append(name)
    query = sorted(str(rng.choice(names)) for names in pairs.values())
    return fleet, records, query, tracks, dist, train_ids, looks, JPEG_QUALITY


TRACK_FRAMES = 6  # "each track contains about 6 images of the same vehicle captured by one camera"


def _release_world(scale: float, seed: int):
    """The release-size twin: exact planned counts (plan.plan_veri), release-like crops."""
    target = veri_target(scale)
    rng = np.random.default_rng([seed, 776])
    dist = camera_distances(camera_positions(rng, target.cameras))
    looks = release_looks(rng, target.cameras, "any", "veri")
    plans = plan_veri(rng, target)
    ids = [int(v) for v in rng.permutation(np.arange(1, len(plans) + 1))]  # plan order: train first
    train_ids = set(ids[: target.train_vehicles])
    fleet = make_vehicles(rng, ids, VERI_COLORS, [(s, 0) for s in VERI_TYPES])
    test_dist = dist[: target.cameras - 1, : target.cameras - 1]  # the last camera: training only

    records: dict[str, dict[str, tuple[int, int, int]]] = {"train": {}, "test": {}}
    tracks = []
    pair_names: list[list[str]] = []
    for plan, vehicle in zip(plans, fleet):
        split = "train" if plan.train else "test"
        path = route(rng, dist if plan.train else test_dist, len(plan.images_per_camera))
        for camera, start, count in zip(path, arrival_times(rng, dist, path), plan.images_per_camera):
            names = []
            passes = -(-count // TRACK_FRAMES)
            begin = start
            for p in range(passes):  # more images than one track holds: later passes by the same camera
                frames = count // passes + (p < count % passes)
                if p:
                    begin += 5 * TRACK_FRAMES + 5 * round(rng.uniform(900, 3600) / 5)
                track = []
                for frame in range(frames):
                    timestamp = begin + 5 * frame
                    k = 0 if rng.random() < 0.9 else 1
                    name = f"{vehicle.vehicle_id:04d}_c{camera + 1:03d}_{timestamp:08d}_{k}.jpg"
                    assert name not in records[split], name
                    records[split][name] = (plan.index, camera, timestamp)
                    track.append(name)
                if split == "test":
                    tracks.append((f"{vehicle.vehicle_id:04d}_c{camera + 1:03d}_t{len(tracks):04d}", track))
                names += track
            if split == "test":
                pair_names.append(sorted(names))
    # One query per (vehicle, camera) pair and a second one for one pair, as in the release.
    query = [str(rng.choice(names)) for names in pair_names]
    doubles = [i for i, names in enumerate(pair_names) if len(names) > 1]
    twice = pair_names[int(rng.choice(doubles))]
    query.append(str(rng.choice([n for n in twice if n not in query])))
    return fleet, records, sorted(query), tracks, dist, train_ids, looks, RELEASE_CROPS["veri"]["jpeg_quality"]


def _write_files(root: Path, fleet, records, query, tracks, dist: np.ndarray, train_ids: set[int]) -> None:
    """Every list and label file of the release layout."""
    train_names, test_names = sorted(records["train"]), sorted(records["test"])
    for split, names in (("train", train_names), ("query", query), ("test", test_names)):
        (root / f"name_{split}.txt").write_text("".join(f"{n}\n" for n in names))

    # typeID="0" bug of the 2016 release: up to three training SUVs carry 0 instead of 2.
    suv = VERI_TYPEID_ZERO_FIX - 1
    buggy = sorted(v.vehicle_id for v in fleet if v.vtype == suv and v.vehicle_id in train_ids)[:3]

    def items(names, split):
        out = []
        for name in names:
            index, camera, _ = records[split][name]
            vehicle = fleet[index]
            vtype = 0 if vehicle.vehicle_id in buggy else vehicle.vtype + 1
            out.append((name, vehicle.vehicle_id, camera + 1, vehicle.color + 1, vtype))
        return out

    (root / "train_label.xml").write_bytes(_xml(items(train_names, "train")))
    (root / "test_label.xml").write_bytes(_xml(items(test_names, "test")))
    (root / "list_color.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(VERI_COLORS, 1)))
    (root / "list_type.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(VERI_TYPES, 1)))
    (root / "camera_ID.txt").write_text("".join(f"c{c + 1:03d}\n" for c in range(len(dist))))
    upper = np.triu(dist, 1)
    (root / "camera_Dist.txt").write_bytes("\r\n".join(" ".join(str(x) for x in row) for row in upper).encode())

    position = {name: i + 1 for i, name in enumerate(test_names)}
    by_vehicle: dict[int, list[str]] = {}
    for name in test_names:
        by_vehicle.setdefault(records["test"][name][0], []).append(name)
    gt_lines, jk_lines = [], []
    for name in query:
        q_index, q_camera, _ = records["test"][name]
        same = by_vehicle[q_index]
        gt_lines.append("".join(f"{position[n]} " for n in same if records["test"][n][1] != q_camera))
        jk_lines.append("".join(f"{position[n]} " for n in same if records["test"][n][1] == q_camera))
    (root / "gt_index.txt").write_text("".join(f"{line}\n" for line in gt_lines))
    (root / "jk_index.txt").write_text("".join(f"{line}\n" for line in jk_lines))
    (root / "test_track.txt").write_text("".join(f"{tid} {' '.join(names)} \n" for tid, names in tracks if names))
    (root / "ReadMe.txt").write_text(
        "Synthetic twin of VeRi-776 generated by agnet (not real data).\n"
        f"{len(fleet)} vehicles, {len(dist)} cameras; same layout and file formats as the release.\n"
    )
