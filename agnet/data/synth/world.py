"""The synthetic world shared by both twins: a camera network, vehicles with attributes, sightings.

All randomness comes from ``numpy.random.Generator`` objects seeded from the user's seed, so a twin
is a pure function of its arguments. Images are rendered in worker processes, each from its own
generator seeded by ``(seed, image number)``, so the result does not depend on the worker count.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from agnet.data.constants import COLOR_RGB, RELEASE_CROPS
from agnet.data.synth import render
from agnet.errors import AgnetError

JPEG_QUALITY = 90


@dataclass(frozen=True)
class Vehicle:
    """A synthetic vehicle: its dataset id, 0-based colour and type classes, and look."""

    vehicle_id: int
    color: int
    vtype: int
    identity: render.VehicleIdentity


@dataclass(frozen=True)
class Shot:
    """One image to render: where it goes and who is seen by which camera."""

    path: Path
    vehicle: int  # index into the vehicle list
    camera: int  # index into the camera list
    number: int  # global image number, seeds the image's generator


def check_positive(name: str, value: int, minimum: int = 1) -> int:
    """Validate a size argument, naming the flag in the error."""
    if value < minimum:
        raise AgnetError(f"--{name} must be at least {minimum}, got {value}")
    return value


STAGING_OWNER = ".agnet-staging"  # inside a staging folder: "<host> <pid>" of the process building it


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_staging(out_dir: Path) -> list[Path]:
    """Delete the staging folders of ``out_dir`` left by dead processes of this host; return them.

    A staging folder is ``.NAME.staging-*`` beside ``out_dir`` holding a ``.agnet-staging`` owner
    record. It is stale when its owner ran on this host and no longer exists (a SIGKILL, a power
    cut); a folder of a live process, of another host, or without a readable record is left alone.
    """
    removed = []
    host = socket.gethostname()
    for folder in out_dir.parent.glob(f".{glob.escape(out_dir.name)}.staging-*"):
        try:
            owner_host, pid = (folder / STAGING_OWNER).read_text().split()
            stale = owner_host == host and not _process_alive(int(pid))
        except (OSError, ValueError):
            continue
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@contextlib.contextmanager
def staged_directory(out_dir: Path) -> Iterator[Path]:
    """Yield a fresh directory beside ``out_dir``; rename it onto ``out_dir`` when the body succeeds.

    A killed run leaves only a hidden ``.NAME.staging-*`` folder, never a half-written dataset, and
    the next run into ``out_dir`` deletes it once its owner process is gone. An existing non-empty
    ``out_dir`` is an error: nothing is overwritten.
    """
    if out_dir.exists() and any(out_dir.iterdir()):
        raise AgnetError(f"{out_dir} already exists and is not empty; remove it first")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out_dir)
    build = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    try:
        (build / STAGING_OWNER).write_text(f"{socket.gethostname()} {os.getpid()}\n")
        yield build
        (build / STAGING_OWNER).unlink()
        if out_dir.exists():
            out_dir.rmdir()
        build.rename(out_dir)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise


def skewed_probabilities(rng: np.random.Generator, n: int, concentration: float = 0.6) -> np.ndarray:
    """A long-tailed distribution over ``n`` classes (a few common colours/types, many rare ones).

    Real fleets are dominated by a few colours and body types, which is what makes many distinct
    vehicles share both attributes (the hard negatives ALS is about).
    """
    weights = rng.dirichlet(np.full(n, concentration))
    return np.sort(weights)[::-1][rng.permutation(n)]


def camera_positions(rng: np.random.Generator, n_cameras: int, extent_m: float = 1000.0) -> np.ndarray:
    """Camera positions (metres) spread over a square area: (n_cameras, 2)."""
    return rng.uniform(0.0, extent_m, size=(n_cameras, 2))


def camera_distances(positions: np.ndarray) -> np.ndarray:
    """Road distance between cameras: Manhattan metres rounded to multiples of 10 (min 10 off-diagonal)."""
    manhattan = np.abs(positions[:, None, :] - positions[None, :, :]).sum(-1)
    dist = np.maximum(np.round(manhattan / 10.0) * 10.0, 10.0).astype(np.int64)
    np.fill_diagonal(dist, 0)
    return dist


def route(rng: np.random.Generator, dist: np.ndarray, stops: int) -> list[int]:
    """A plausible drive through ``stops`` distinct cameras: each next camera is one of the 3 nearest unvisited."""
    current = int(rng.integers(len(dist)))
    path = [current]
    while len(path) < stops:
        unvisited = [c for c in np.argsort(dist[current]) if c not in path]
        current = int(rng.choice(unvisited[:3]))
        path.append(current)
    return path


def arrival_times(rng: np.random.Generator, dist: np.ndarray, path: Sequence[int], day_s: int = 86_400) -> list[int]:
    """Arrival time (s) at each camera of ``path`` for one drive at a constant speed of 6-15 m/s.

    Consecutive sightings are separated by road distance / speed (+ up to 60 s of stops), so time
    gaps are consistent with ``camera_Dist.txt`` and spatio-temporal re-ranking has real signal.
    """
    speed = rng.uniform(6.0, 15.0)
    t = float(rng.uniform(0, day_s * 0.9))
    times = [t]
    for a, b in itertools.pairwise(path):
        t += dist[a, b] / speed + rng.uniform(0.0, 60.0)
        times.append(t)
    return [round(x / 5.0) * 5 for x in times]


def make_vehicles(
    rng: np.random.Generator,
    vehicle_ids: Sequence[int],
    color_names: Sequence[str],
    type_of_model: Sequence[tuple[str, int]],
    classes: Sequence[tuple[int, int]] | None = None,
) -> list[Vehicle]:
    """Vehicles with long-tailed colour/type (model) frequencies and identity-level details.

    ``type_of_model[k] = (body style, variant)`` renders type/model class ``k``. ``classes`` gives
    each vehicle's ``(colour, type)`` explicitly (release-size twins plan them); otherwise they are drawn.
    """
    if classes is None:
        p_color = skewed_probabilities(rng, len(color_names))
        p_type = skewed_probabilities(rng, len(type_of_model))
    shapes: dict[int, render.BodyShape] = {}
    vehicles = []
    for number, vid in enumerate(vehicle_ids):
        if classes is None:
            color = int(rng.choice(len(color_names), p=p_color))
            vtype = int(rng.choice(len(type_of_model), p=p_type))
        else:
            color, vtype = (int(c) for c in classes[number])
        if vtype not in shapes:
            shapes[vtype] = render.body_shape(*type_of_model[vtype])
        identity = render.sample_identity(rng, shapes[vtype], COLOR_RGB[color_names[color]])
        vehicles.append(Vehicle(int(vid), color, vtype, identity))
    return vehicles


_WORKER: dict = {}


def _init_worker(vehicles: list[Vehicle], cameras: list[render.CameraLook], seed: int, quality: int) -> None:
    _WORKER.update(vehicles=vehicles, cameras=cameras, seed=seed, quality=quality)


def _render_shot(shot: Shot) -> None:
    rng = np.random.default_rng([_WORKER["seed"], shot.number])
    image = render.render(_WORKER["vehicles"][shot.vehicle].identity, _WORKER["cameras"][shot.camera], rng)
    shot.path.parent.mkdir(parents=True, exist_ok=True)
    image.save(shot.path, format="JPEG", quality=_WORKER["quality"])


def render_shots(
    shots: Sequence[Shot],
    vehicles: list[Vehicle],
    cameras: list[render.CameraLook],
    seed: int,
    workers: int | None = None,
    quality: int = JPEG_QUALITY,
) -> None:
    """Render and save every shot as JPEG, in ``workers`` processes (default: all cores)."""
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        _init_worker(vehicles, cameras, seed, quality)
        for shot in shots:
            _render_shot(shot)
        return
    chunk = max(1, min(256, len(shots) // (workers * 8)))
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(vehicles, cameras, seed, quality)) as pool:
        for _ in pool.map(_render_shot, shots, chunksize=chunk):
            pass


def release_looks(rng: np.random.Generator, n: int, viewpoints: str, fmt: str) -> list[render.CameraLook]:
    """``n`` cameras whose crop sizes follow the release's (constants.RELEASE_CROPS[fmt])."""
    crops = RELEASE_CROPS[fmt]
    looks = []
    for _ in range(n):
        look = render.sample_camera(rng, viewpoints)
        px = crops["median_px"] * rng.lognormal(0.0, crops["sigma"])
        looks.append(replace(look, crop_px=int(np.clip(round(px), crops["min_px"], crops["max_px"]))))
    return looks
