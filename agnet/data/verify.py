"""Dataset verification: a JSON report of what a dataset root holds and everything wrong with it.

The report has ``valid`` (bool), ``errors`` (list of messages; any error makes the dataset invalid),
``warnings``, per-split counts (images, identities, cameras), attribute coverage, the image check
(every listed image present and, unless pixel checks are off, decodable) and, with ``strict``, each deviation from the published
counts of the real release.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image

from agnet import __version__
from agnet.data.constants import VEHICLEID_PUBLISHED, VERI_PUBLISHED
from agnet.data.datasets import Dataset, read_dataset, resolve_root
from agnet.data.vehicleid import VehicleIdDataset
from agnet.data.veri import VeriDataset, junk_rule_index
from agnet.errors import AgnetError
from agnet.fileio import write_text

MAX_LISTED = 20  # problems listed by name per category; the count is always complete


def check_image(path: Path, decode: bool = True) -> str | None:
    """None if ``path`` is a fully decodable image (only present, without ``decode``), else a one-line reason."""
    if not path.is_file():
        return "missing"
    if not decode:
        return None
    try:
        with Image.open(path) as image:
            image.load()  # decodes every pixel: a truncated JPEG raises here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return f"undecodable ({error})"
    return None


def check_images(root: Path, relative_paths: list[str], workers: int | None = None,
                 decode: bool = True) -> dict[str, Any]:
    """Check every listed image (present and, with ``decode``, decodable); returns counts and the first problems."""
    unique = list(dict.fromkeys(relative_paths))
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(lambda rel: check_image(root / rel, decode), unique, chunksize=64))
    missing = [rel for rel, reason in zip(unique, reasons) if reason == "missing"]
    broken = [f"{rel}: {reason}" for rel, reason in zip(unique, reasons) if reason and reason != "missing"]
    return {
        "checked": len(unique),
        "missing_count": len(missing),
        "missing": missing[:MAX_LISTED],
        "undecodable_count": len(broken),
        "undecodable": broken[:MAX_LISTED],
        "decoded": decode,
    }


def _split_counts(images: list, with_cameras: bool) -> dict[str, int]:
    counts = {"images": len(images), "identities": len({image.vehicle_id for image in images})}
    if with_cameras:
        counts["cameras"] = len({image.camera_id for image in images})
    return counts


def _coverage(images: list, attribute: str) -> dict[str, Any]:
    vehicles = {image.vehicle_id for image in images}
    labelled_vehicles = {image.vehicle_id for image in images if getattr(image, attribute) is not None}
    labelled_images = sum(getattr(image, attribute) is not None for image in images)
    return {
        "labelled_vehicles": len(labelled_vehicles),
        "vehicles": len(vehicles),
        "labelled_images": labelled_images,
        "images": len(images),
        "image_fraction": round(labelled_images / len(images), 4) if images else 0.0,
    }


def _deviation(what: str, expected: int, found: int) -> str | None:
    return None if expected == found else f"{what}: expected {expected:,}, found {found:,}"


def _veri_checks(dataset: VeriDataset, report: dict[str, Any], strict: bool) -> None:
    splits = {name: dataset.split(name) for name in ("train", "query", "gallery")}
    report["splits"] = {name: _split_counts(images, True) for name, images in splits.items()}
    report["attributes"] = {
        split: {attr: _coverage(images, attr) for attr in ("color_id", "type_id")} for split, images in splits.items()
    }
    gallery_names = {image.name for image in splits["gallery"]}
    strays = [image.name for image in splits["query"] if image.name not in gallery_names]
    if strays:
        report["errors"].append(
            f"{len(strays)} query image(s) are not in name_test.txt (VeRi queries are copies of test images): "
            + ", ".join(strays[:MAX_LISTED])
        )
    overlap = {i.vehicle_id for i in splits["train"]} & {i.vehicle_id for i in splits["gallery"]}
    if overlap:
        report["errors"].append(f"{len(overlap)} vehicle(s) appear in both train and test: {sorted(overlap)[:MAX_LISTED]}")
    rule_gt, rule_jk = junk_rule_index(dataset)
    without_positive = sum(not gt for gt in rule_gt)
    if without_positive:
        report["warnings"].append(f"{without_positive} query image(s) have no same-vehicle image from another camera")
    for kind, listed, rule in (("gt", dataset.gt_index, rule_gt), ("jk", dataset.jk_index, rule_jk)):
        if listed is None:
            report["warnings"].append(f"no {kind}_index.txt; the protocol rebuilds it from the junk rule")
            continue
        differing = [q for q, (a, b) in enumerate(zip(listed, rule)) if sorted(a) != sorted(b)]
        if differing:
            report["errors"].append(
                f"{kind}_index.txt disagrees with the rule (same vehicle, {'other' if kind == 'gt' else 'same'} camera) "
                f"for {len(differing)} query line(s), first: {[q + 1 for q in differing[:MAX_LISTED]]}"
            )
    if dataset.camera_dist is None:
        report["warnings"].append("no camera_Dist.txt; spatio-temporal re-ranking will be unavailable")
    else:
        report["cameras"] = {"count": len(dataset.camera_dist), "max_distance": int(dataset.camera_dist.max())}
    if strict:
        for split, published in VERI_PUBLISHED.items():
            for key, expected in published.items():
                found = report["splits"][split][key]
                report["strict"]["deviations"].append(_deviation(f"{split} {key}", expected, found))


def _vehicleid_checks(dataset: VehicleIdDataset, report: dict[str, Any], strict: bool) -> None:
    train, test = dataset.split("train"), dataset.split("test")
    report["splits"] = {"train": _split_counts(train, False), "test": _split_counts(test, False)}
    report["test_lists"] = {
        str(size): {"vehicles": len(vids), "images": sum(size in image.test_lists for image in test)}
        for size, vids in sorted(dataset.test_lists.items())
    }
    report["attributes"] = {
        split: {attr: _coverage(images, attr) for attr in ("color_id", "type_id")}
        for split, images in (("train", train), ("test", test))
    }
    labelled = {i.vehicle_id for i in train if i.color_id is not None and i.type_id is not None}
    report["attributes"]["train_attribute_labelled"] = {
        "vehicles": len(labelled),
        "images": sum(i.vehicle_id in labelled for i in train),
    }
    if strict:
        published = VEHICLEID_PUBLISHED
        for key, expected in published["train"].items():
            report["strict"]["deviations"].append(_deviation(f"train {key}", expected, report["splits"]["train"][key]))
        for size, counts in report["test_lists"].items():
            report["strict"]["deviations"].append(_deviation(f"test_list_{size} vehicles", int(size), counts["vehicles"]))
            if int(size) in published["test_images"]:
                expected = published["test_images"][int(size)]
                report["strict"]["deviations"].append(_deviation(f"test_list_{size} images", expected, counts["images"]))
        for size in published["test_images"]:
            if str(size) not in report["test_lists"]:
                report["strict"]["deviations"].append(f"test_list_{size}.txt: expected, not found")


def verify_dataset(fmt: str, root_or_locator: str | Path, strict: bool = False, check_pixels: bool = True) -> dict[str, Any]:
    """Verify a dataset and return the report (see the module docstring). Never raises for dataset problems."""
    report: dict[str, Any] = {
        "format": fmt,
        "root": str(root_or_locator),
        "valid": False,
        "errors": [],
        "warnings": [],
        "strict": {"checked": strict, "deviations": []},
        "agnet_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        root = resolve_root(fmt, root_or_locator)
        report["root"] = str(root.resolve())
        dataset: Dataset = read_dataset(fmt, root)
    except AgnetError as error:
        report["errors"].append(str(error))
        return report
    report["notes"] = list(dataset.notes)
    if isinstance(dataset, VeriDataset):
        _veri_checks(dataset, report, strict)
    else:
        _vehicleid_checks(dataset, report, strict)
    report["strict"]["deviations"] = [d for d in report["strict"]["deviations"] if d]
    # Every listed image must exist, always; ``check_pixels`` also decodes each one.
    report["image_check"] = check_images(root, [image.path for image in dataset.images], decode=check_pixels)
    for key, label in (("missing", "missing"), ("undecodable", "truncated or corrupt")):
        count = report["image_check"][f"{key}_count"]
        if count:
            shown = ", ".join(report["image_check"][key][:5])
            report["errors"].append(f"{count} listed image(s) {label} under {root}: {shown}")
    report["valid"] = not report["errors"] and not report["strict"]["deviations"]
    return report


def write_report(report: dict[str, Any], path: str | Path) -> None:
    """Atomically write the report as indented JSON."""
    write_text(path, json.dumps(report, indent=2) + "\n")
