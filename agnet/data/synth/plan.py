"""Exact-count plans for release-size twins: how many vehicles, images, cameras and labels go where.

A release-size twin (``agnet data synth ... --release-scale S``) has the real release's counts
multiplied by ``S`` (``S = 1``: exactly the published counts, so ``agnet data verify --strict``
passes). The plan is pure arithmetic on a seeded generator: every count is an exact integer
partition (``allocate``) of a target total under the per-item bounds the release shows, so the
full-size plan can be checked without rendering a single image.

Figures and where they come from: ``agnet/data/constants.py`` and docs/datasets.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agnet.data.constants import (
    VEHICLEID_COLOR_HISTOGRAM,
    VEHICLEID_MODELS_USED,
    VEHICLEID_PUBLISHED,
    VEHICLEID_RELEASE,
    VERI_PUBLISHED,
    VERI_RELEASE,
)
from agnet.errors import AgnetError


def allocate(rng: np.random.Generator, total: int, n: int, low, high, sigma: float = 0.5) -> np.ndarray:
    """``n`` integers in ``[low, high]`` (scalars or per-item arrays) summing exactly to ``total``.

    The shares above ``low`` follow log-normal weights (spread ``sigma``), so the counts are
    long-tailed like real per-vehicle image counts. Raises if the bounds make ``total`` impossible.
    """
    low = np.broadcast_to(np.asarray(low, dtype=np.int64), (n,)).copy()
    high = np.broadcast_to(np.asarray(high, dtype=np.int64), (n,)).copy()
    if n < 1 or np.any(high < low) or not low.sum() <= total <= high.sum():
        raise AgnetError(
            f"cannot split {total:,} into {n:,} counts between {int(low.min()) if n else 0} and "
            f"{int(high.max()) if n else 0}"
        )
    weights = rng.lognormal(0.0, sigma, n)
    capacity = high - low
    extra = total - int(low.sum())
    share = np.minimum(np.floor(extra * weights / weights.sum()).astype(np.int64), capacity)
    left = extra - int(share.sum())
    while left > 0:  # hand out the remainder one unit at a time, weighted, never past ``high``
        open_ = np.flatnonzero(share < capacity)
        take = min(left, len(open_))
        p = weights[open_] / weights[open_].sum()
        chosen = rng.choice(open_, size=take, replace=False, p=p)
        share[chosen] += 1
        left -= take
    return low + share


def _scaled(value: int, scale: float, minimum: int = 1) -> int:
    return max(minimum, round(value * scale))


def check_scale(scale: float) -> float:
    if not 0.0 < scale <= 1.0:
        raise AgnetError(f"--release-scale must be in (0, 1] (1 = the release's exact counts), got {scale}")
    return float(scale)


# ------------------------------------------------------------------------------------------------ VeRi


@dataclass(frozen=True)
class VeriTarget:
    """Counts of a VeRi-776 twin (the release's at scale 1)."""

    train_vehicles: int
    test_vehicles: int
    train_images: int
    test_images: int
    test_pairs: int  # (vehicle, camera) pairs of the test set = query images - 1 (one pair has two)
    train_pairs: int
    cameras: int
    min_images: int
    max_train_images: int
    max_test_images: int
    max_cameras: int

    @property
    def query_images(self) -> int:
        return self.test_pairs + 1


def veri_target(scale: float = 1.0) -> VeriTarget:
    """The release's VeRi counts times ``scale`` (exact at 1)."""
    check_scale(scale)
    r = VERI_RELEASE
    train_v = _scaled(VERI_PUBLISHED["train"]["identities"], scale, 2)
    test_v = _scaled(VERI_PUBLISHED["gallery"]["identities"], scale, 2)
    max_cams = r["max_cameras_per_vehicle"]
    test_cams = r["cameras"] - 1  # the last camera is seen in training only (c020 in the release)
    pairs = min(max(_scaled(r["test_pairs"], scale), 2 * test_v), min(max_cams, test_cams) * test_v)
    train_pairs = min(max(round(pairs * train_v / test_v), 2 * train_v), max_cams * train_v)
    lo = r["min_images_per_vehicle"]
    train_images = max(_scaled(VERI_PUBLISHED["train"]["images"], scale), lo * train_v, train_pairs)
    test_images = max(_scaled(VERI_PUBLISHED["gallery"]["images"], scale), lo * test_v, pairs + 1)
    target = VeriTarget(train_v, test_v, train_images, test_images, pairs, train_pairs, r["cameras"], lo,
                        r["max_train_images_per_vehicle"], r["max_test_images_per_vehicle"], max_cams)
    if scale == 1.0:  # the release itself: the published counts, nothing adjusted
        assert target.query_images == VERI_PUBLISHED["query"]["images"]
        assert (train_images, test_images) == (VERI_PUBLISHED["train"]["images"], VERI_PUBLISHED["gallery"]["images"])
    return target


@dataclass(frozen=True)
class VeriVehiclePlan:
    index: int  # position in the fleet
    train: bool
    images_per_camera: tuple[int, ...]  # one entry per camera visited, in route order


def plan_veri(rng: np.random.Generator, target: VeriTarget) -> list[VeriVehiclePlan]:
    """Per vehicle (train first): the images seen at each of its cameras, summing to the target exactly."""
    plans = []
    for train, vehicles, pairs, images, max_images, n_cams in (
        (True, target.train_vehicles, target.train_pairs, target.train_images, target.max_train_images,
         target.cameras),
        (False, target.test_vehicles, target.test_pairs, target.test_images, target.max_test_images,
         target.cameras - 1),
    ):
        cams = allocate(rng, pairs, vehicles, 2, min(target.max_cameras, n_cams), sigma=0.4)
        low = np.maximum(target.min_images, cams)
        if not train:  # room for the one pair with two queries
            low = low.copy()
            low[int(np.argmax(cams))] += 1
        per_vehicle = allocate(rng, images, vehicles, low, np.maximum(max_images, low), sigma=0.6)
        for k, n in zip(cams, per_vehicle):
            per_camera = allocate(rng, int(n), int(k), 1, int(n), sigma=0.5)
            plans.append(VeriVehiclePlan(len(plans), train, tuple(int(x) for x in per_camera)))
    return plans


# ------------------------------------------------------------------------------------------- VehicleID


@dataclass(frozen=True)
class VehicleIdTarget:
    """Counts of a VehicleID twin (the release's at scale 1)."""

    train_vehicles: int
    train_images: int
    test_sizes: tuple[int, ...]  # nested test lists, vehicles
    test_images: tuple[int, ...]  # images of each list (cumulative)
    model_labelled: int
    color_labelled: int
    color_histogram: tuple[int, ...]  # colour-labelled vehicles per colour id
    models: int
    models_used: int
    min_images: int
    max_images: int

    @property
    def vehicles(self) -> int:
        return self.train_vehicles + self.test_sizes[-1]

    @property
    def images(self) -> int:
        return self.train_images + self.test_images[-1]


def _round_to_total(values: np.ndarray, total: int) -> np.ndarray:
    """Largest-remainder rounding of non-negative ``values`` to integers summing to ``total``."""
    scaled = values * total / values.sum()
    out = np.floor(scaled).astype(np.int64)
    out[np.argsort(out - scaled)[: total - int(out.sum())]] += 1
    return out


def vehicleid_target(scale: float = 1.0) -> VehicleIdTarget:
    """The release's VehicleID counts times ``scale`` (exact at 1)."""
    check_scale(scale)
    r = VEHICLEID_RELEASE
    lo, hi = r["min_images_per_vehicle"], r["max_images_per_vehicle"]
    sizes, images = [], []
    for size, count in r["test_list_images"].items():
        s = max(_scaled(size, scale), (sizes[-1] + 1) if sizes else 1)
        n = max(_scaled(count, scale), (images[-1] if images else 0) + lo * (s - (sizes[-1] if sizes else 0)))
        sizes.append(s)
        images.append(n)
    train_v = _scaled(VEHICLEID_PUBLISHED["train"]["identities"], scale, 2)
    train_images = max(_scaled(VEHICLEID_PUBLISHED["train"]["images"], scale), lo * train_v)
    eligible = train_v + sizes[-1] - sizes[0]  # the smallest test list carries no labels
    model = min(_scaled(r["model_labelled_vehicles"], scale), eligible)
    color = min(_scaled(r["color_labelled_vehicles"], scale), model)
    histogram = _round_to_total(np.asarray(VEHICLEID_COLOR_HISTOGRAM, dtype=float), color)
    used = min(VEHICLEID_MODELS_USED, max(1, model))
    target = VehicleIdTarget(train_v, train_images, tuple(sizes), tuple(images), model, color,
                             tuple(int(h) for h in histogram), r["models"], used, lo, hi)
    if scale == 1.0:
        assert target.images == r["images"] and target.vehicles == r["vehicles"]
        assert all(target.test_images[target.test_sizes.index(s)] == n
                   for s, n in VEHICLEID_PUBLISHED["test_images"].items())
    return target


@dataclass(frozen=True)
class VehicleIdPlan:
    """Per vehicle, in fleet order (train first, then the test list order)."""

    images: np.ndarray  # images per vehicle
    train: np.ndarray  # bool
    model: np.ndarray  # model id per vehicle (used for rendering whether or not it is labelled)
    color: np.ndarray  # colour id per vehicle
    model_labelled: np.ndarray  # bool
    color_labelled: np.ndarray  # bool (a subset of model_labelled)


def plan_vehicleid(rng: np.random.Generator, target: VehicleIdTarget) -> VehicleIdPlan:
    """Images per vehicle (train, then each test-list tranche, exactly) and the attribute labels."""
    counts = [allocate(rng, target.train_images, target.train_vehicles, target.min_images, target.max_images)]
    prev_size, prev_images = 0, 0
    for size, images in zip(target.test_sizes, target.test_images):
        counts.append(allocate(rng, images - prev_images, size - prev_size, target.min_images,
                               max(target.max_images, -(-(images - prev_images) // (size - prev_size)))))
        prev_size, prev_images = size, images
    images = np.concatenate(counts)
    n = len(images)
    train = np.zeros(n, bool)
    train[: target.train_vehicles] = True

    # Labels: none in the smallest test list; model labels on `model_labelled` of the rest, colour on a
    # subset of those, with the release's colour histogram over the colour-labelled vehicles.
    eligible = np.concatenate([np.arange(target.train_vehicles),
                               np.arange(target.train_vehicles + target.test_sizes[0], n)])
    model_lab = np.zeros(n, bool)
    model_lab[rng.choice(eligible, size=target.model_labelled, replace=False)] = True
    color_lab = np.zeros(n, bool)
    color_lab[rng.choice(np.flatnonzero(model_lab), size=target.color_labelled, replace=False)] = True
    p_color = np.asarray(VEHICLEID_COLOR_HISTOGRAM, dtype=float)
    color = rng.choice(len(p_color), size=n, p=p_color / p_color.sum())
    color[np.flatnonzero(color_lab)] = rng.permutation(np.repeat(np.arange(len(p_color)), target.color_histogram))
    used = np.sort(rng.choice(target.models, size=target.models_used, replace=False))
    p_model = rng.dirichlet(np.full(target.models_used, 0.8))
    model = used[rng.choice(target.models_used, size=n, p=p_model)]
    # every used model id occurs among the labelled vehicles where there are enough of them
    labelled = np.flatnonzero(model_lab)
    if len(labelled) >= target.models_used:
        model[rng.choice(labelled, size=target.models_used, replace=False)] = used
    return VehicleIdPlan(images, train, model, color, model_lab, color_lab)
