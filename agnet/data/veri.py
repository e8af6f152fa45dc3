"""Reader for VeRi-776 in its released on-disk format.

Layout read (``ROOT/``)::

    image_{train,query,test}/           JPEG crops named VVVV_cCCC_TTTTTTTT_K.jpg
    name_{train,query,test}.txt         one file name per line
    train_label.xml, test_label.xml     <Item imageName vehicleID cameraID colorID typeID/>, declared gb2312
    list_color.txt, list_type.txt       "<id> <name>" (optional; the published names are the default)
    camera_Dist.txt                     20x20 upper-triangular integers, CRLF (optional)
    gt_index.txt / gt_image.txt         per query: 1-based indices into name_test.txt (optional)
    jk_index.txt / jk_image.txt         same, junk images (optional)

Conventions of the result: ``vehicle_id`` keeps the dataset's number (1..776); ``camera_id`` is
0-based (``c001`` -> 0); ``color_id``/``type_id`` are 0-based (``colorID - 1``, ``typeID - 1``)
after the ``typeID="0"`` fix (0 -> 2, SUV); the ``test`` split is called ``gallery``; gt/jk
indices become 0-based positions in the gallery list.
"""

from __future__ import annotations

import re
import xml.parsers.expat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agnet.data.constants import VERI_COLORS, VERI_TYPEID_ZERO_FIX, VERI_TYPES
from agnet.data.textfiles import decode_text, parse_int, require_file, token_lines
from agnet.errors import DatasetFormatError

NAME_RE = re.compile(r"^(\d{4})_c(\d{3})_(\d{8})_(\d+)\.jpg$")
SPLIT_FILES = {"train": "train", "query": "query", "gallery": "test"}  # our split -> file infix
LABEL_FILES = {"train": "train_label.xml", "query": "test_label.xml", "gallery": "test_label.xml"}
CAMERA_DIST_FILE = "camera_Dist.txt"
INDEX_FILES = {"gt": ("gt_index.txt", "gt_image.txt"), "jk": ("jk_index.txt", "jk_image.txt")}


@dataclass(frozen=True)
class VeriImage:
    """One listed image. ``list_index`` is its 0-based position in ``name_<split>.txt``."""

    name: str
    split: str
    list_index: int
    vehicle_id: int
    camera_id: int
    timestamp: int
    color_id: int
    type_id: int

    @property
    def path(self) -> str:
        """Path relative to the dataset root (POSIX separators)."""
        return f"image_{SPLIT_FILES[self.split]}/{self.name}"


@dataclass
class VeriDataset:
    """Everything read from a VeRi-776 root. ``camera_dist`` is symmetric (C x C) or None."""

    root: Path
    images: list[VeriImage]
    color_names: tuple[str, ...] = VERI_COLORS
    type_names: tuple[str, ...] = VERI_TYPES
    camera_dist: np.ndarray | None = None
    gt_index: list[list[int]] | None = None
    jk_index: list[list[int]] | None = None
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[VeriImage]:
        """Images of one split (``train``, ``query`` or ``gallery``) in list order."""
        return [image for image in self.images if image.split == name]


@dataclass(frozen=True)
class _Label:
    line: int
    vehicle_id: int
    camera: int  # 1-based as in the file
    color_id: int  # 1-based as in the file
    type_id: int  # 1-based, after the typeID 0 fix


def parse_name(path: Path, line: int, name: str) -> tuple[int, int, int]:
    """Parse ``VVVV_cCCC_TTTTTTTT_K.jpg`` into ``(vehicle_id, camera 1-based, timestamp)``."""
    match = NAME_RE.match(name)
    if match is None:
        raise DatasetFormatError(path, f"expected an image name like 0001_c001_00016450_0.jpg, got {name!r}", line)
    vehicle, camera, timestamp, _ = match.groups()
    return int(vehicle), int(camera), int(timestamp)


def read_name_list(path: Path) -> list[tuple[int, str]]:
    """Read ``name_<split>.txt``: ``(line, file name)`` pairs; duplicates are an error."""
    require_file(path, "one image file name per line")
    seen: dict[str, int] = {}
    names = []
    for line, tokens in token_lines(path):
        if len(tokens) != 1:
            raise DatasetFormatError(path, f"expected one file name per line, got {' '.join(tokens)!r}", line)
        name = tokens[0]
        if name in seen:
            raise DatasetFormatError(path, f"{name} is listed twice (first on line {seen[name]})", line)
        seen[name] = line
        names.append((line, name))
    return names


def read_label_xml(path: Path, notes: list[str]) -> dict[str, _Label]:
    """Read a VeRi label XML (any root element; ``<Item>`` elements anywhere) into ``imageName -> label``.

    The file declares ``encoding="gb2312"``, which the standard library's expat parser rejects; the
    bytes are decoded here (GB18030, a superset) and parsed as text. ``typeID="0"`` (vehicles 3, 7, 41
    of the 2016 release) is corrected to 2 and recorded in ``notes``.
    """
    require_file(path, "VeRi label XML with <Item imageName vehicleID cameraID colorID typeID/>")
    text = decode_text(path, path.read_bytes())
    labels: dict[str, _Label] = {}
    fixed: set[int] = set()
    parser = xml.parsers.expat.ParserCreate()

    def start(tag: str, attrs: dict[str, str]) -> None:
        if tag != "Item":
            return
        line = parser.CurrentLineNumber
        missing = [key for key in ("imageName", "vehicleID", "cameraID", "colorID", "typeID") if key not in attrs]
        if missing:
            raise DatasetFormatError(path, f"<Item> lacks attribute(s) {', '.join(missing)}", line)
        name = attrs["imageName"].strip()
        camera = attrs["cameraID"].strip()
        if not re.fullmatch(r"c\d{3}", camera):
            raise DatasetFormatError(path, f"cameraID must look like 'c001', got {camera!r}", line)
        vehicle = parse_int(path, line, attrs["vehicleID"], "vehicleID", 1)
        color = parse_int(path, line, attrs["colorID"], "colorID", 1, len(VERI_COLORS))
        vtype = parse_int(path, line, attrs["typeID"], "typeID", 0, len(VERI_TYPES))
        if vtype == 0:
            vtype = VERI_TYPEID_ZERO_FIX
            fixed.add(vehicle)
        if name in labels:
            raise DatasetFormatError(path, f"{name} is labelled twice (first on line {labels[name].line})", line)
        labels[name] = _Label(line, vehicle, int(camera[1:]), color, vtype)

    parser.StartElementHandler = start
    try:
        parser.Parse(text, True)
    except xml.parsers.expat.ExpatError as error:
        raise DatasetFormatError(path, f"malformed XML: {xml.parsers.expat.ErrorString(error.code)}", error.lineno)
    if fixed:
        ids = ", ".join(str(v) for v in sorted(fixed))
        notes.append(f"{path.name}: typeID 0 (not a legal type) mapped to {VERI_TYPEID_ZERO_FIX} (suv) for vehicle(s) {ids}")
    return labels


def read_class_names(path: Path, default: tuple[str, ...]) -> tuple[str, ...]:
    """Read ``list_color.txt``/``list_type.txt`` (``<id> <name>`` or ``<name> <id>``, 1-based ids).

    Absent file: the published names. The ids must be exactly 1..N.
    """
    if not path.is_file():
        return default
    names: dict[int, str] = {}
    for line, tokens in token_lines(path):
        numeric = [token for token in tokens if token.isdigit()]
        words = [token for token in tokens if not token.isdigit()]
        if len(numeric) != 1 or not words:
            raise DatasetFormatError(path, f"expected '<id> <name>', got {' '.join(tokens)!r}", line)
        names[int(numeric[0])] = " ".join(words)
    if sorted(names) != list(range(1, len(names) + 1)):
        raise DatasetFormatError(path, f"ids must be 1..{len(names)}, got {sorted(names)}")
    return tuple(names[i] for i in range(1, len(names) + 1))


def read_camera_dist(path: Path) -> np.ndarray:
    """Read ``camera_Dist.txt``: N lines of N integers, upper-triangular; returns the symmetric matrix.

    A full symmetric matrix is accepted too; a lower triangle that contradicts the upper one is an error.
    """
    rows = []
    for line, tokens in token_lines(path):
        rows.append([parse_int(path, line, token, "camera distance", 0) for token in tokens])
    if not rows or any(len(row) != len(rows) for row in rows):
        shape = ", ".join(str(len(row)) for row in rows)
        raise DatasetFormatError(path, f"expected a square matrix of integers, got rows of lengths [{shape}]")
    matrix = np.asarray(rows, dtype=np.int64)
    upper, lower = np.triu(matrix, 1), np.tril(matrix, -1)
    if np.any(np.diag(matrix) != 0):
        raise DatasetFormatError(path, "the diagonal (a camera's distance to itself) must be 0")
    if lower.any() and not np.array_equal(lower.T, upper):
        raise DatasetFormatError(path, "expected an upper-triangular (or symmetric) matrix; lower triangle disagrees")
    return upper + upper.T


def read_index_file(path: Path, n_queries: int, n_gallery: int) -> list[list[int]]:
    """Read ``gt_index.txt``/``jk_index.txt``: one line per query of 1-based gallery indices -> 0-based lists.

    Blank lines are meaningful here (a query with no entries), so lines are counted, not skipped;
    trailing empty lines at the end of the file are ignored.
    """
    text = decode_text(path, path.read_bytes())
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) != n_queries:
        raise DatasetFormatError(path, f"expected one line per query ({n_queries} lines), got {len(lines)}")
    return [
        [parse_int(path, number, token, "gallery index", 1, n_gallery) - 1 for token in line.split()]
        for number, line in enumerate(lines, start=1)
    ]


def _find_index_file(root: Path, kind: str) -> Path | None:
    for name in INDEX_FILES[kind]:
        if (root / name).is_file():
            return root / name
    return None


def read_veri(root: str | Path) -> VeriDataset:
    """Read a VeRi-776 root (real or synthetic twin). Raises DatasetFormatError on malformed input."""
    root = Path(root)
    notes: list[str] = []
    label_cache: dict[str, dict[str, _Label]] = {}
    images: list[VeriImage] = []
    for split, infix in SPLIT_FILES.items():
        list_path = root / f"name_{infix}.txt"
        label_name = LABEL_FILES[split]
        if label_name not in label_cache:
            label_cache[label_name] = read_label_xml(root / label_name, notes)
        labels = label_cache[label_name]
        listed = read_name_list(list_path)
        if not listed:
            raise DatasetFormatError(list_path, f"lists no image (the {split} split cannot be empty)")
        for index, (line, name) in enumerate(listed):
            vehicle, camera, timestamp = parse_name(list_path, line, name)
            label = labels.get(name)
            if label is None:
                raise DatasetFormatError(
                    root / label_name, f"no <Item> label for {name} (listed in {list_path.name} line {line})"
                )
            if (label.vehicle_id, label.camera) != (vehicle, camera):
                raise DatasetFormatError(
                    root / label_name,
                    f"label of {name} says vehicleID {label.vehicle_id}, cameraID c{label.camera:03d}; "
                    f"the file name says {vehicle}, c{camera:03d}",
                    label.line,
                )
            images.append(
                VeriImage(name, split, index, vehicle, camera - 1, timestamp, label.color_id - 1, label.type_id - 1)
            )
    dataset = VeriDataset(
        root=root,
        images=images,
        color_names=read_class_names(root / "list_color.txt", VERI_COLORS),
        type_names=read_class_names(root / "list_type.txt", VERI_TYPES),
        notes=notes,
    )
    _check_attribute_ranges(dataset, root)
    if (root / CAMERA_DIST_FILE).is_file():
        dataset.camera_dist = read_camera_dist(root / CAMERA_DIST_FILE)
        n_cameras = len(dataset.camera_dist)
        worst = max(image.camera_id for image in images) if images else -1
        if worst >= n_cameras:
            raise DatasetFormatError(
                root / CAMERA_DIST_FILE, f"has {n_cameras} cameras but images use camera c{worst + 1:03d}"
            )
    n_queries, n_gallery = len(dataset.split("query")), len(dataset.split("gallery"))
    for kind in INDEX_FILES:
        index_path = _find_index_file(root, kind)
        if index_path is not None:
            setattr(dataset, f"{kind}_index", read_index_file(index_path, n_queries, n_gallery))
    return dataset


def _check_attribute_ranges(dataset: VeriDataset, root: Path) -> None:
    """Colour/type ids must index the class-name lists actually shipped with the dataset."""
    for attribute, names, listing in (("color_id", dataset.color_names, "list_color.txt"),
                                      ("type_id", dataset.type_names, "list_type.txt")):
        worst = max((getattr(image, attribute) for image in dataset.images), default=-1)
        if worst >= len(names):
            raise DatasetFormatError(
                root / listing, f"defines {len(names)} classes but a label uses id {worst + 1} (1-based)"
            )


def junk_rule_index(dataset: VeriDataset) -> tuple[list[list[int]], list[list[int]]]:
    """gt/jk lists rebuilt from the protocol's junk rule (:func:`agnet.protocols.junk`): same vehicle and another
    camera -> gt; same vehicle and camera -> junk.

    Returns 0-based gallery positions per query; equal to the official files on the real dataset.
    """
    import numpy as np

    from agnet.protocols import junk

    gallery, queries = dataset.split("gallery"), dataset.split("query")
    g_ids = np.array([g.vehicle_id for g in gallery])
    g_cams = np.array([g.camera_id for g in gallery])
    positions = np.array([g.list_index for g in gallery])
    gt, jk = [], []
    for query in queries:
        same = g_ids == query.vehicle_id
        skip = junk([query.vehicle_id], [query.camera_id], g_ids, g_cams)[0]
        gt.append(positions[same & ~skip].tolist())
        jk.append(positions[skip].tolist())
    return gt, jk
