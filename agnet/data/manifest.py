"""Per-image manifests (Parquet): the one table later stages read instead of the raw dataset files.

Columns (one row per image and split; a VeRi query image also has its own ``gallery`` row):

=============  ========  ==========================================================================
column         dtype     meaning
=============  ========  ==========================================================================
path           string    image path relative to the dataset root (``metadata["root"]``), POSIX
split          string    VeRi: ``train``/``query``/``gallery``; VehicleID: ``train``/``test``; ``val``: training
                         vehicles held out of training (``holdout_vehicles``, 0 in every shipped config; no
                         evaluation reads them: STR's λ is cross-fitted on the test vehicles)
list_index     int32     0-based position in the split's list file (VeRi gt/jk indices refer to it)
vehicle_id     int32     the dataset's own vehicle number (VeRi 1..776, VehicleID 0..27957)
class_id       Int32     0-based identity class for training (train rows, by ascending vehicle_id); NA elsewhere
                         (``val`` rows too: a held-out vehicle is never a training class)
camera_id      Int16     0-based camera (VeRi ``c001`` -> 0); NA for VehicleID
color_id       Int16     0-based colour class; NA where unlabelled (VehicleID is sparse)
type_id        Int16     0-based type class (VeRi typeID-1; VehicleID model id); NA where unlabelled
timestamp      Int64     VeRi file-name timestamp (units of the release, multiples of 5); NA for VehicleID
in_test_<N>    bool      VehicleID only: image is in ``test_list_<N>.txt`` (one column per list)
=============  ========  ==========================================================================

The Parquet schema metadata key ``agnet`` holds JSON: format, root, class names, the symmetric
camera distance matrix (VeRi), the training-vehicle filter, the held-out vehicles and the reader's notes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from agnet.data.datasets import Dataset, read_dataset
from agnet.data.vehicleid import VehicleIdDataset
from agnet.errors import AgnetError, DatasetFormatError
from agnet.fileio import atomic_path, locate, relative_location

METADATA_KEY = b"agnet"
TRAIN_FILTERS = ("attribute-labelled", "all")
BASE_COLUMNS = {
    "path": "string",
    "split": "string",
    "list_index": "int32",
    "vehicle_id": "int32",
    "class_id": "Int32",
    "camera_id": "Int16",
    "color_id": "Int16",
    "type_id": "Int16",
    "timestamp": "Int64",
}


def _rows(dataset: Dataset) -> list[dict[str, Any]]:
    rows = []
    positions: dict[str, int] = {}
    for image in dataset.images:
        index = getattr(image, "list_index", None)
        if index is None:  # VehicleID lists have no cross-referencing index files; number per split
            index = positions[image.split] = positions.get(image.split, -1) + 1
        rows.append(
            {
                "path": image.path,
                "split": image.split,
                "list_index": index,
                "vehicle_id": image.vehicle_id,
                "camera_id": getattr(image, "camera_id", None),
                "color_id": image.color_id,
                "type_id": image.type_id,
                "timestamp": getattr(image, "timestamp", None),
            }
        )
    return rows


def build_manifest(dataset: Dataset, train_vehicles: str = "attribute-labelled", holdout_vehicles: int = 0,
                   holdout_seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Build the manifest table and its metadata.

    ``train_vehicles="attribute-labelled"`` (the paper's setting) keeps only training vehicles that have
    both a colour and a type label; ``"all"`` keeps every training vehicle with missing labels as NA.
    Test rows are never filtered (evaluation protocols fix them). ``holdout_vehicles`` training vehicles
    (a seeded uniform draw among those kept) become split ``val``: never trained on, they are where
    spatio-temporal re-ranking tunes λ without touching the test labels.
    """
    if train_vehicles not in TRAIN_FILTERS:
        raise AgnetError(f"train_vehicles must be one of {', '.join(TRAIN_FILTERS)}, got {train_vehicles!r}")
    frame = pd.DataFrame(_rows(dataset), columns=list(BASE_COLUMNS))
    if isinstance(dataset, VehicleIdDataset):
        for size in sorted(dataset.test_lists):
            frame[f"in_test_{size}"] = [size in image.test_lists for image in dataset.images]
    frame = frame.astype(BASE_COLUMNS)

    train = frame["split"] == "train"
    dropped = 0
    if train_vehicles == "attribute-labelled":
        unlabelled = train & (frame["color_id"].isna() | frame["type_id"].isna())
        dropped = int(frame.loc[unlabelled, "vehicle_id"].nunique())
        frame = frame.loc[~unlabelled].reset_index(drop=True)
        train = frame["split"] == "train"
    if not train.any():
        raise DatasetFormatError(dataset.root, f"no training images left after the '{train_vehicles}' filter")
    held_out = _holdout(frame.loc[train, "vehicle_id"], holdout_vehicles, holdout_seed)
    if held_out:
        frame.loc[train & frame["vehicle_id"].isin(held_out), "split"] = "val"
        train = frame["split"] == "train"
    classes = {vid: index for index, vid in enumerate(sorted(frame.loc[train, "vehicle_id"].unique()))}
    frame.loc[train, "class_id"] = frame.loc[train, "vehicle_id"].map(classes).astype("Int32")

    metadata = {
        "format": "vehicleid" if isinstance(dataset, VehicleIdDataset) else "veri",
        "root": str(Path(dataset.root).resolve()),
        "color_names": list(dataset.color_names),
        "type_names": list(getattr(dataset, "type_names", None) or getattr(dataset, "model_names", ())),
        "camera_dist": getattr(dataset, "camera_dist", None),
        "train_vehicles": train_vehicles,
        "train_vehicles_dropped": dropped,
        "holdout": {"vehicles": len(held_out), "seed": holdout_seed, "vehicle_ids": held_out},
        "num_classes": len(classes),
        "notes": list(dataset.notes),
    }
    if metadata["camera_dist"] is not None:
        metadata["camera_dist"] = metadata["camera_dist"].tolist()
    return frame, metadata


def _holdout(train_ids: pd.Series, count: int, seed: int) -> list[int]:
    """``count`` of the training vehicles, drawn uniformly with ``seed`` (sorted ids)."""
    vehicles = np.sort(train_ids.unique())
    if count < 0:
        raise AgnetError(f"holdout_vehicles must be >= 0, got {count}")
    if count >= len(vehicles):
        raise AgnetError(f"holdout_vehicles={count} would leave no training vehicle (the split has {len(vehicles)})")
    chosen = np.random.default_rng([int(seed), 0x484F4C44]).choice(vehicles, size=count, replace=False)
    return sorted(int(v) for v in chosen)


def write_manifest(frame: pd.DataFrame, metadata: dict, path: str | Path) -> None:
    """Atomically write ``frame`` to Parquet with ``metadata`` under the ``agnet`` schema key (the root also
    relative to the manifest's folder when it lies under it: :func:`agnet.fileio.locate`)."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    merged = dict(table.schema.metadata or {})
    metadata = {**metadata, "root_relative": relative_location(metadata["root"], path)}
    merged[METADATA_KEY] = json.dumps(metadata).encode()
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(merged), tmp)


def read_manifest(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read a manifest written by :func:`write_manifest`: ``(frame, metadata)``."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise DatasetFormatError(path, f"not a readable Parquet manifest ({error})") from None
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise DatasetFormatError(path, "Parquet file lacks the 'agnet' metadata (was it written by agnet?)")
    try:
        metadata = json.loads(raw)
    except ValueError as error:
        raise DatasetFormatError(path, f"unreadable 'agnet' metadata ({error})") from None
    frame = table.to_pandas()
    check_manifest(frame, metadata, path)
    metadata["root"] = str(locate(metadata["root"], metadata.get("root_relative"), path))
    return frame, metadata


SPLITS = {"veri": {"train", "val", "query", "gallery"}, "vehicleid": {"train", "val", "test"}}


def check_manifest(frame: pd.DataFrame, metadata: Any, path: str | Path) -> None:
    """Refuse a manifest that is not what :func:`write_manifest` writes: the metadata's format and root, every column
    of :data:`BASE_COLUMNS` with an integer type where ids are, the splits of its format, VehicleID's test lists, and
    VeRi's cameras and timestamps on every evaluation row. Each problem names the file and what to do."""
    rebuild = "; rebuild it with `agnet data manifest` (or rerun the workflow)"
    if not isinstance(metadata, dict) or metadata.get("format") not in SPLITS or not metadata.get("root"):
        raise DatasetFormatError(path, "the 'agnet' metadata lacks the dataset format or root" + rebuild)
    fmt = metadata["format"]
    missing = [c for c in BASE_COLUMNS if c not in frame.columns]
    if missing:
        raise DatasetFormatError(path, f"the manifest lacks column(s) {', '.join(missing)}" + rebuild)
    wrong = [c for c, dtype in BASE_COLUMNS.items() if dtype != "string" and len(frame)
             and not pd.api.types.is_integer_dtype(frame[c]) and not frame[c].isna().all()]
    if wrong:
        raise DatasetFormatError(path, f"column(s) {', '.join(wrong)} must hold integers" + rebuild)
    splits = set(frame["split"].dropna().unique())
    if splits - SPLITS[fmt] or "train" not in splits or frame["path"].isna().any():
        raise DatasetFormatError(path, f"a {fmt} manifest has the splits {', '.join(sorted(SPLITS[fmt]))} and a path "
                                       f"in every row (found {', '.join(sorted(map(str, splits)))})" + rebuild)
    if fmt == "vehicleid" and not any(c.startswith("in_test_") for c in frame.columns):
        raise DatasetFormatError(path, "a VehicleID manifest has one in_test_<N> column per test list; found none"
                                 + rebuild)
    if fmt == "veri":
        evaluation = frame[frame["split"] != "train"]
        for column in ("camera_id", "timestamp"):
            if evaluation[column].isna().any():
                raise DatasetFormatError(path, f"{column} is missing on {int(evaluation[column].isna().sum())} VeRi "
                                               "evaluation row(s) (the junk rule and re-ranking need it)" + rebuild)


def make_manifest(fmt: str, root: str | Path, output: str | Path, train_vehicles: str = "attribute-labelled",
                  holdout_vehicles: int = 0, holdout_seed: int = 0) -> pd.DataFrame:
    """Read a dataset, build its manifest and write it to ``output``; returns the table."""
    frame, metadata = build_manifest(read_dataset(fmt, root), train_vehicles, holdout_vehicles, holdout_seed)
    write_manifest(frame, metadata, output)
    return frame
