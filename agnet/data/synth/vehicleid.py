"""Synthetic twin of PKU VehicleID, written in the release's exact on-disk format.

What is mirrored: ``image/NNNNNNN.jpg``; ``train_test_split/train_list.txt`` and nested
``test_list_<N>.txt`` files (N = vehicles listed; four sizes at 1/4, 2/4, 3/4 and all of the test
vehicles, standing in for 800/1600/2400/3200), lines contiguous per vehicle with image names
descending; ``attribute/{img2vid,color_attr,model_attr,color_names,model_names}.txt`` with sparse
attributes (colour-labelled vehicles are a subset of the model-labelled ones, and no vehicle of
the smallest test list is labelled, as in the release); CRLF ``color_names.txt`` with the
release's "sliver"; UTF-8 Chinese model names.

What is simulated: half the vehicles are for training (13,164 of 26,328 in the release); every
vehicle is filmed from the front or the rear only, by 2 of the ``cameras`` checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agnet.data.constants import RELEASE_CROPS, VEHICLEID_COLORS, twin_test_sizes
from agnet.data.synth import render
from agnet.data.synth.plan import plan_vehicleid, vehicleid_target
from agnet.data.synth.world import (
    JPEG_QUALITY,
    Shot,
    check_positive,
    make_vehicles,
    release_looks,
    render_shots,
    staged_directory,
)
from agnet.errors import AgnetError

STYLE_NAMES_ZH = {
    "sedan": "轿车", "suv": "越野车", "van": "面包车", "hatchback": "两厢车", "mpv": "商务车",
    "pickup": "皮卡", "bus": "客车", "truck": "货车", "estate": "旅行车",
}


def model_catalogue(n_models: int) -> list[tuple[str, int]]:
    """``(body style, variant)`` of each model id: styles cycle, variants make same-style models differ."""
    styles = render.BODY_STYLES
    return [(styles[m % len(styles)], m // len(styles)) for m in range(n_models)]


def synth_vehicleid(
    out_dir: str | Path,
    vehicles: int = 200,
    cameras: int = 6,
    seed: int = 0,
    models: int = 24,
    labelled_fraction: float = 0.6,
    workers: int | None = None,
    release_scale: float | None = None,
) -> Path:
    """Write a VehicleID twin with ``vehicles`` identities to ``out_dir`` (built aside, renamed into place).

    With ``release_scale`` the counts are the release's times the scale instead (1: exactly 13,164
    training vehicles / 113,346 images, test lists 800 ... 13,164 with the release's image counts,
    221,567 images in all, the release's label coverage and colour histogram, 250 model ids of which
    228 occur; ``vehicles``, ``models`` and ``labelled_fraction`` are then ignored) and crops and
    JPEG sizes follow the release (constants.RELEASE_CROPS).
    """
    if release_scale is not None:
        check_positive("cameras", cameras, 2)
        return _synth_release(Path(out_dir), release_scale, cameras, seed, workers)
    check_positive("vehicles", vehicles, 8)
    check_positive("cameras", cameras, 2)
    check_positive("models", models, 1)
    if not 0.0 < labelled_fraction <= 1.0:
        raise AgnetError(f"labelled_fraction must be in (0, 1], got {labelled_fraction}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)

    looks = [render.sample_camera(rng, "front_rear") for _ in range(cameras)]
    catalogue = model_catalogue(models)
    vids = np.sort(rng.choice(np.arange(vehicles * 3), size=vehicles, replace=False))  # non-contiguous ids
    fleet = make_vehicles(rng, vids, VEHICLEID_COLORS, catalogue)
    order = rng.permutation(vehicles)
    train, test = sorted(order[: vehicles // 2]), list(order[vehicles // 2 :])  # test in list order
    sizes = twin_test_sizes(vehicles)

    # Sparse attributes: the smallest test list is unlabelled; elsewhere a fraction is labelled.
    smallest = set(test[: sizes[0]])
    model_labelled = {i for i in range(vehicles) if i not in smallest and rng.random() < labelled_fraction}
    color_labelled = {i for i in model_labelled if rng.random() < 0.97}

    image_numbers = iter(rng.permutation(np.arange(1, vehicles * 40)))
    images: dict[int, list[tuple[str, int]]] = {}  # vehicle index -> [(name, camera)]
    for index in range(vehicles):
        views = rng.choice(cameras, size=2, replace=False)
        count = int(rng.integers(4, 13))
        shots = [(f"{int(next(image_numbers)):07d}", int(rng.choice(views))) for _ in range(count)]
        images[index] = sorted(shots, reverse=True)

    _write(out_dir, fleet, train, test, sizes, images, model_labelled, color_labelled, catalogue, looks, seed,
           workers, JPEG_QUALITY)
    return out_dir


def _synth_release(out_dir: Path, scale: float, cameras: int, seed: int, workers: int | None) -> Path:
    """The release-size twin: exact planned counts (plan.plan_vehicleid), release-like crops."""
    target = vehicleid_target(scale)
    rng = np.random.default_rng([seed, 26_328])
    looks = release_looks(rng, cameras, "front_rear", "vehicleid")
    catalogue = model_catalogue(target.models)
    plan = plan_vehicleid(rng, target)
    n = len(plan.images)
    # vids 0..27,957 in the release (non-contiguous); fleet order = plan order (train, then test lists)
    vids = rng.permutation(np.sort(rng.choice(np.arange(round(n * 1.062) + 1), size=n, replace=False)))
    fleet = make_vehicles(rng, vids, VEHICLEID_COLORS, catalogue, classes=list(zip(plan.color, plan.model)))
    train = list(range(target.train_vehicles))
    test = list(range(target.train_vehicles, n))
    numbers = iter(rng.permutation(np.arange(1, max(10**6, 4 * int(plan.images.sum()))))[: int(plan.images.sum())])
    images: dict[int, list[tuple[str, int]]] = {}
    for index in range(n):
        views = rng.choice(cameras, size=2, replace=False)
        picks = rng.choice(views, size=int(plan.images[index]))
        shots = [(f"{int(next(numbers)):07d}", int(camera)) for camera in picks]
        images[index] = sorted(shots, reverse=True)
    _write(out_dir, fleet, train, test, list(target.test_sizes), images, set(np.flatnonzero(plan.model_labelled)),
           set(np.flatnonzero(plan.color_labelled)), catalogue, looks, seed, workers,
           RELEASE_CROPS["vehicleid"]["jpeg_quality"])
    return out_dir


def _write(out_dir, fleet, train, test, sizes, images, model_labelled, color_labelled, catalogue, looks, seed,
           workers, quality) -> None:
    """Every list, attribute and image file of the release layout."""
    vehicles = len(fleet)
    with staged_directory(out_dir) as build:
        split_dir, attr_dir = build / "train_test_split", build / "attribute"
        split_dir.mkdir()
        attr_dir.mkdir()

        def lines(indices):
            return "".join(f"{name} {fleet[i].vehicle_id}\n" for i in indices for name, _ in images[i])

        (split_dir / "train_list.txt").write_text(lines(train))
        for size in sizes:
            (split_dir / f"test_list_{size}.txt").write_text(lines(test[:size]))
        (attr_dir / "img2vid.txt").write_text(lines(range(vehicles)))
        (attr_dir / "model_attr.txt").write_text(
            "".join(f"{fleet[i].vehicle_id} {fleet[i].vtype}\n" for i in sorted(model_labelled))
        )
        (attr_dir / "color_attr.txt").write_text(
            "".join(f"{fleet[i].vehicle_id} {fleet[i].color}\n" for i in sorted(color_labelled))
        )
        (attr_dir / "color_names.txt").write_bytes("".join(f"{n} {i}\r\n" for i, n in enumerate(VEHICLEID_COLORS)).encode())
        (attr_dir / "model_names.txt").write_text(
            "".join(f"{STYLE_NAMES_ZH[s]}{v + 1:02d}-{2010 + (m % 9)}款 {m}\n" for m, (s, v) in enumerate(catalogue)),
            encoding="utf-8",
        )
        (build / "README.md").write_text(
            f"Synthetic twin of PKU VehicleID generated by agnet (not real data): {vehicles} vehicles.\n"
        )
        shots = [
            Shot(build / "image" / f"{name}.jpg", index, camera, int(name))
            for index in range(vehicles)
            for name, camera in images[index]
        ]
        render_shots(shots, fleet, looks, seed, workers, quality)
