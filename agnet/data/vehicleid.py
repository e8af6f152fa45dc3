"""Reader for PKU VehicleID in its released on-disk format.

Layout read (``ROOT/``)::

    image/NNNNNNN.jpg
    train_test_split/train_list.txt          "<image name without .jpg> <vehicle id>"
    train_test_split/test_list_<N>.txt       same; N = number of vehicles in the list
    attribute/color_attr.txt                 "<vehicle id> <colour id 0-6>"   (sparse)
    attribute/model_attr.txt                 "<vehicle id> <model id 0-249>"  (sparse)
    attribute/color_names.txt                "<name> <id>", CRLF (optional)
    attribute/model_names.txt                "<name> <id>", UTF-8 or GBK (optional)
    attribute/img2vid.txt                    "<image> <vehicle id>" (optional cross-check)

Attributes are sparse: a vehicle absent from ``color_attr.txt``/``model_attr.txt`` has a *missing*
colour/model (``None``), never an invented class. The model id is this package's ``type_id``.
VehicleID has no cameras and no timestamps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from agnet.data.constants import VEHICLEID_COLORS, VEHICLEID_NUM_MODELS
from agnet.data.textfiles import expect_fields, parse_int, require_file, token_lines
from agnet.errors import DatasetFormatError

TEST_LIST_RE = re.compile(r"^test_list_(\d+)\.txt$")
IMAGE_RE = re.compile(r"^\d+$")


@dataclass(frozen=True)
class VehicleIdImage:
    """One listed image; ``color_id``/``type_id`` are None where the vehicle has no label."""

    name: str
    split: str  # "train" or "test"
    vehicle_id: int
    color_id: int | None
    type_id: int | None
    test_lists: frozenset[int] = frozenset()  # sizes N of the test_list_N.txt files listing it

    @property
    def path(self) -> str:
        """Path relative to the dataset root (POSIX separators)."""
        return f"image/{self.name}.jpg"


@dataclass
class VehicleIdDataset:
    """Everything read from a VehicleID root. ``test_lists`` maps N -> vehicle ids of test_list_N.txt."""

    root: Path
    images: list[VehicleIdImage]
    test_lists: dict[int, list[int]]
    color_names: tuple[str, ...] = VEHICLEID_COLORS
    model_names: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[VehicleIdImage]:
        """Images of one split (``train`` or ``test``) in list order."""
        return [image for image in self.images if image.split == name]


def read_pair_list(path: Path, key: str, value: str) -> list[tuple[int, str, str]]:
    """Read a two-column list file into ``(line, first, second)`` triples."""
    return [(line, *expect_fields(path, line, tokens, 2, f"<{key}> <{value}>")) for line, tokens in token_lines(path)]


def read_image_list(path: Path) -> list[tuple[int, str, int]]:
    """Read a ``train_list.txt``/``test_list_N.txt``: ``(line, image name, vehicle id)``; duplicates are errors."""
    require_file(path, "lines '<image name> <vehicle id>'")
    seen: dict[str, int] = {}
    rows = []
    for line, name, vid in read_pair_list(path, "image name", "vehicle id"):
        name = name.removesuffix(".jpg")
        if not IMAGE_RE.match(name):
            raise DatasetFormatError(path, f"expected a numeric image name like 0000001, got {name!r}", line)
        if name in seen:
            raise DatasetFormatError(path, f"image {name} is listed twice (first on line {seen[name]})", line)
        seen[name] = line
        rows.append((line, name, parse_int(path, line, vid, "vehicle id", 0)))
    return rows


def read_attribute(path: Path, what: str, n_classes: int) -> dict[int, int]:
    """Read ``color_attr.txt``/``model_attr.txt``: vehicle id -> 0-based class id."""
    require_file(path, f"lines '<vehicle id> <{what} id>'")
    labels: dict[int, int] = {}
    for line, vid, cls in read_pair_list(path, "vehicle id", f"{what} id"):
        vehicle = parse_int(path, line, vid, "vehicle id", 0)
        value = parse_int(path, line, cls, f"{what} id", 0, n_classes - 1)
        if labels.get(vehicle, value) != value:
            raise DatasetFormatError(path, f"vehicle {vehicle} has two different {what} ids", line)
        labels[vehicle] = value
    return labels


def read_names(path: Path, default: tuple[str, ...]) -> tuple[str, ...]:
    """Read ``color_names.txt``/``model_names.txt`` (``<name> <id>``, 0-based). Absent file: ``default``."""
    if not path.is_file():
        return default
    names: dict[int, str] = {}
    for line, tokens in token_lines(path):
        if len(tokens) < 2:
            raise DatasetFormatError(path, f"expected '<name> <id>', got {' '.join(tokens)!r}", line)
        names[parse_int(path, line, tokens[-1], "class id", 0)] = " ".join(tokens[:-1])
    if sorted(names) != list(range(len(names))):
        raise DatasetFormatError(path, f"ids must be 0..{len(names) - 1} without gaps")
    return tuple(names[i] for i in range(len(names)))


def read_vehicleid(root: str | Path) -> VehicleIdDataset:
    """Read a VehicleID root (real or synthetic twin). Raises DatasetFormatError on malformed input."""
    root = Path(root)
    split_dir, attr_dir = root / "train_test_split", root / "attribute"
    color_names = read_names(attr_dir / "color_names.txt", VEHICLEID_COLORS)
    model_names = read_names(attr_dir / "model_names.txt", ())
    colors = read_attribute(attr_dir / "color_attr.txt", "colour", len(color_names))
    models = read_attribute(attr_dir / "model_attr.txt", "model", len(model_names) or VEHICLEID_NUM_MODELS)

    test_files = sorted(
        (int(m.group(1)), path) for path in split_dir.glob("test_list_*.txt") if (m := TEST_LIST_RE.match(path.name))
    )
    if not test_files:
        raise DatasetFormatError(split_dir, "no test_list_<N>.txt file (expected e.g. test_list_800.txt)")
    by_size: dict[int, list[str]] = {}
    for size, path in test_files:
        by_size.setdefault(size, []).append(path.name)
    for size, names in by_size.items():
        if len(names) > 1:
            raise DatasetFormatError(split_dir, f"{' and '.join(sorted(names))} both name the test list of {size} "
                                                "vehicles; keep one (a stray copy would be merged into the list)")
        if size <= 0:
            raise DatasetFormatError(split_dir / names[0], "a test list of 0 vehicles")

    images: list[VehicleIdImage] = []
    train_path = split_dir / "train_list.txt"
    train_rows = read_image_list(train_path)
    if not train_rows:
        raise DatasetFormatError(train_path, "lists no image (the training split cannot be empty)")
    train_vids = {vid for _, _, vid in train_rows}
    for _, name, vid in train_rows:
        images.append(VehicleIdImage(name, "train", vid, colors.get(vid), models.get(vid)))

    train_names = {name for _, name, _ in train_rows}
    test_lists: dict[int, list[int]] = {}
    test_membership: dict[str, tuple[int, set[int]]] = {}
    test_order: list[str] = []
    for size, path in test_files:
        vids: dict[int, None] = {}
        rows = read_image_list(path)
        if not rows:
            raise DatasetFormatError(path, "lists no image (an empty test list cannot be evaluated)")
        for line, name, vid in rows:
            if name in train_names:
                raise DatasetFormatError(path, f"image {name} is also in {train_path.name} (an image is either "
                                               "training or test, never both)", line)
            if vid in train_vids:
                raise DatasetFormatError(path, f"vehicle {vid} is also in {train_path.name} (splits must be disjoint)", line)
            known_vid, lists = test_membership.setdefault(name, (vid, set()))
            if known_vid != vid:
                raise DatasetFormatError(path, f"image {name} has vehicle id {vid} here but {known_vid} in another list", line)
            if not lists:
                test_order.append(name)
            lists.add(size)
            vids[vid] = None
        test_lists[size] = list(vids)
    for name in test_order:
        vid, lists = test_membership[name]
        images.append(VehicleIdImage(name, "test", vid, colors.get(vid), models.get(vid), frozenset(lists)))

    dataset = VehicleIdDataset(root, images, test_lists, color_names, model_names)
    _cross_check_img2vid(dataset, attr_dir / "img2vid.txt")
    for size, vids in test_lists.items():
        if len(vids) != size:
            dataset.notes.append(f"test_list_{size}.txt lists {len(vids)} vehicles, not {size}")
    return dataset


def _cross_check_img2vid(dataset: VehicleIdDataset, path: Path) -> None:
    """If ``img2vid.txt`` exists, every listed image must map to the same vehicle there."""
    if not path.is_file():
        return
    mapping = {name.removesuffix(".jpg"): (line, vid) for line, name, vid in read_pair_list(path, "image", "vehicle id")}
    for image in dataset.images:
        if image.name not in mapping:
            raise DatasetFormatError(path, f"image {image.name} (listed in the {image.split} split) is missing")
        line, vid = mapping[image.name]
        if parse_int(path, line, vid, "vehicle id", 0) != image.vehicle_id:
            raise DatasetFormatError(path, f"image {image.name} maps to vehicle {vid}, the split lists say {image.vehicle_id}", line)
