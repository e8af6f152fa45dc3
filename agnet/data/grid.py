"""A picture grid of dataset samples: one row per vehicle, its images across cameras.

Rows are chosen to show the hard cases: vehicles are taken in groups that share colour and type,
so neighbouring rows differ only by identity-level details.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from agnet.data.datasets import read_dataset, resolve_root
from agnet.fileio import atomic_path

CELL = 112  # pixels, square cells
LABEL_W = 110


def _label(image, names_color, names_type) -> str:
    """Two text lines: vehicle id, then colour and type (type id where the name is not ASCII)."""
    color = names_color[image.color_id] if image.color_id is not None else "no colour"
    if image.type_id is None:
        vtype = "no type"
    elif names_type and names_type[image.type_id].isascii():
        vtype = names_type[image.type_id]
    else:
        vtype = f"model {image.type_id}"
    return f"id {image.vehicle_id}\n{color}\n{vtype}"


def sample_grid(fmt: str, root: str | Path, output: str | Path, vehicles: int = 8, per_vehicle: int = 8, seed: int = 0) -> None:
    """Save a ``vehicles`` x ``per_vehicle`` grid of training images of ``fmt`` at ``root`` as PNG."""
    root = resolve_root(fmt, root)
    dataset = read_dataset(fmt, root)
    type_names = getattr(dataset, "type_names", None) or dataset.model_names
    rng = np.random.default_rng(seed)
    by_vehicle: dict[int, list] = {}
    for image in dataset.split("train"):
        by_vehicle.setdefault(image.vehicle_id, []).append(image)
    groups: dict[tuple, list[int]] = {}
    for vid, images in by_vehicle.items():
        groups.setdefault((images[0].color_id, images[0].type_id), []).append(vid)
    chosen: list[int] = []
    labelled_first = sorted(groups, key=lambda k: (None in k, -len(groups[k])))  # biggest labelled groups first
    for key in labelled_first:
        chosen.extend(groups[key][:2])
        if len(chosen) >= vehicles:
            break
    chosen = chosen[:vehicles]

    sheet = Image.new("RGB", (LABEL_W + per_vehicle * CELL, len(chosen) * CELL), "white")
    draw = ImageDraw.Draw(sheet)
    for row, vid in enumerate(chosen):
        images = by_vehicle[vid]
        picks = rng.choice(len(images), size=min(per_vehicle, len(images)), replace=False)
        draw.multiline_text((6, row * CELL + 36), _label(images[0], dataset.color_names, type_names), fill="black")
        for col, pick in enumerate(sorted(picks, key=lambda i: getattr(images[i], "camera_id", 0) or 0)):
            with Image.open(root / images[pick].path) as tile:
                tile = tile.convert("RGB")
                tile.thumbnail((CELL - 4, CELL - 4))
                x = LABEL_W + col * CELL + (CELL - tile.width) // 2
                sheet.paste(tile, (x, row * CELL + (CELL - tile.height) // 2))
    with atomic_path(output) as tmp:
        sheet.save(tmp, format="PNG")
