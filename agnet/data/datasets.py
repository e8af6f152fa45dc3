"""One entry point over both dataset formats, and the ``dataset.json`` locator.

``agnet data fetch`` (and the synthesis rule) write ``dataset.json``: ``{"format", "root", "source"}``.
Every command that takes a dataset ROOT also accepts that file, so workflow rules never need to
know whether the data was downloaded, unpacked or already on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

from agnet.data.constants import HOW_TO_OBTAIN
from agnet.data.vehicleid import VehicleIdDataset, read_vehicleid
from agnet.data.veri import VeriDataset, read_veri
from agnet.errors import DatasetFormatError, DatasetMissingError
from agnet.fileio import locate, relative_location, write_text

FORMATS = ("veri", "vehicleid")
READERS = {"veri": read_veri, "vehicleid": read_vehicleid}
# A file or directory whose presence identifies a dataset root of each format.
ROOT_MARKERS = {"veri": "name_train.txt", "vehicleid": "train_test_split"}
LOCATOR_NAME = "dataset.json"

Dataset = VeriDataset | VehicleIdDataset


def check_format(fmt: str) -> str:
    """Return ``fmt`` if it is a known dataset format, else raise naming the choices."""
    if fmt not in READERS:
        raise DatasetFormatError(fmt, f"unknown dataset format (expected one of {', '.join(FORMATS)})")
    return fmt


def write_locator(path: str | Path, fmt: str, root: Path, source: dict) -> None:
    """Atomically write the ``dataset.json`` locator for a dataset root."""
    record = {"format": check_format(fmt), "root": str(Path(root).resolve()),
              "root_relative": relative_location(root, path), "source": source}
    write_text(path, json.dumps(record, indent=2) + "\n")


def resolve_root(fmt: str, root_or_locator: str | Path) -> Path:
    """Dataset root from a directory or a ``dataset.json`` locator; a missing root says how to obtain it."""
    path = Path(root_or_locator)
    if path.is_file() and path.suffix == ".json":
        try:
            record = json.loads(path.read_text())
            located_fmt, path = record["format"], locate(record["root"], record.get("root_relative"), path)
        except (ValueError, KeyError, TypeError) as error:
            raise DatasetFormatError(path, f"not a dataset locator with 'format' and 'root' ({error})") from None
        if located_fmt != fmt:
            raise DatasetFormatError(root_or_locator, f"locates a {located_fmt} dataset, not {fmt}")
    if not path.is_dir():
        raise DatasetMissingError(f"{fmt} dataset not found at {path}. {HOW_TO_OBTAIN[check_format(fmt)]}")
    if not (path / ROOT_MARKERS[fmt]).exists():
        raise DatasetMissingError(
            f"{path} is not a {fmt} dataset root (no {ROOT_MARKERS[fmt]} in it). {HOW_TO_OBTAIN[fmt]}"
        )
    return path


def find_root(directory: Path, fmt: str) -> Path:
    """The dataset root inside an extracted archive: the shallowest folder holding the format's marker."""
    candidates = sorted((marker.parent for marker in directory.rglob(ROOT_MARKERS[fmt])), key=lambda p: len(p.parts))
    if not candidates:
        raise DatasetMissingError(
            f"no {fmt} dataset inside {directory} (no {ROOT_MARKERS[fmt]} found). {HOW_TO_OBTAIN[fmt]}"
        )
    return candidates[0]


def read_dataset(fmt: str, root_or_locator: str | Path) -> Dataset:
    """Read a dataset of format ``fmt`` from a root directory or a ``dataset.json`` locator."""
    return READERS[check_format(fmt)](resolve_root(fmt, root_or_locator))
