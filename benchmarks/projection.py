"""GPU-time projection of the paper protocol: every variant of config.yaml's ``train_variants`` on one GPU.

Shared by ``bench_rehearsal.py`` and ``bench_train.py`` (both import it from this folder) and runnable on its own to
refresh its block of docs/benchmarks.md without the heavy rehearsal DAG:

    python benchmarks/projection.py                 # print the projection (JSON)
    python benchmarks/projection.py --write-docs    # and replace the bench:projection block of docs/benchmarks.md

Per (dataset, variant) it takes, from the variant's resolved training settings (``agnet.train.settings``):

* epochs and seeds (config.yaml's ``seeds``);
* images per epoch: the package's own sampler (``agnet.train.data.make_sampler``) on a stand-in training set of
  the dataset's size gives the steps per epoch, each of ``batch_size`` images -- pairs sampler
  2 x floor(N / (B/2)) x B/2 (every image an anchor with its partner), P x K sampler floor(N / B) x B;
* a **relative cost per image**: forward FLOPs of the variant's network (``agnet.model.build_model``: AGNet or BoT,
  backbone, last stride, BNNeck, embedding) at its input size over those of AGNet-ResNet-50 at 224 x 224 -- the
  network the assumed throughputs are stated for -- counted by ``torch.utils.flop_counter.FlopCounterMode`` on the
  ``meta`` device (no weights, no memory; convolutions and matrix products, 2 FLOPs per multiply-add).

Projected GPU hours = sum over rows of seeds x epochs x images per epoch x cost / assumed images/s. The
assumption: a GPU's training images/s scales inversely with the network's forward FLOPs per image (backward ~ 2x
forward, so the same ratio), independent of the batch size (32 for AGNet, 64 for BoT).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import cpu_name
from torch.utils.flop_counter import FlopCounterMode

from agnet.errors import ConfigError
from agnet.model import build_model
from agnet.settings import load_plan
from agnet.train.data import TrainSet, make_sampler
from agnet.train.settings import TrainSettings, resolve_settings

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config.yaml"
DOCS = REPO / "docs" / "benchmarks.md"
START, END = "<!-- bench:projection:start -->", "<!-- bench:projection:end -->"

# Assumed GPU rates (benchmarks/gpu_check.sh measures them): training images/s of AGNet-ResNet-50 (two layer4
# branches) at 224 x 224, AMP, batch 32 on an H100-class GPU -- a plain estimate and the training-speed issue's
# target -- and extraction images/s of the same network.
GPU_TRAIN_IMAGES_PER_S = (1200.0, 3000.0)
GPU_EXTRACT_IMAGES_PER_S = 3000.0
# Training images of the paper's datasets (config.yaml's `run` names). VehicleID: the attribute-labelled training
# set as the paper trains on it ("78956 images"; the release's colour labels cover 78,957 images).
PAPER_TRAIN_IMAGES = {"veri": 37_778, "vehicleid": 78_956}
# The network the assumed rates are stated for: config.yaml's `training` with these keys (its embedding_dim).
REFERENCE_NAME = "AGNet-ResNet-50 @ 224 x 224"
REFERENCE = {"architecture": "agnet", "backbone": "resnet50", "input_size": [224, 224], "last_stride": 2,
             "bnneck": False}
# Classifier sizes of the FLOP count (VeRi-776's 576 vehicles, 10 colours, 9 types): the heads are < 1 % of the
# FLOPs, so one size serves every dataset.
HEADS = {"num_classes": 576, "num_colors": 10, "num_types": 9}
ASSUMPTION = (f"a GPU's training (and extraction) images/s scales inversely with the network's forward FLOPs per "
              f"image, independent of the batch size; the rates are stated for {REFERENCE_NAME}, batch 32, AMP")


def protocol_config(path: str | Path = CONFIG) -> dict[str, Any]:
    """config.yaml (or ``path``) checked as the workflow checks it (``agnet.settings.load_plan``)."""
    return load_plan(path).config


def paper_train_images(config: dict[str, Any]) -> dict[str, int]:
    """The paper's training-image count of every dataset in ``config['run']``."""
    missing = [ds for ds in config["run"] if ds not in PAPER_TRAIN_IMAGES]
    if missing:
        raise ConfigError(f"run: no paper training-image count for {', '.join(missing)} (known: "
                          f"{', '.join(PAPER_TRAIN_IMAGES)}); the projection covers the paper's datasets")
    return {ds: PAPER_TRAIN_IMAGES[ds] for ds in config["run"]}


def variant_settings(config: dict[str, Any]) -> dict[str, TrainSettings]:
    """Resolved training settings of every variant in ``train_variants``, in that order."""
    variants = config.get("train_variants") or []
    if not variants:
        raise ConfigError("train_variants: empty; nothing to project")
    return {variant: resolve_settings(config, variant) for variant in variants}


def reference_settings(config: dict[str, Any]) -> TrainSettings:
    """The reference network's settings: ``config['training']`` with :data:`REFERENCE` merged in."""
    name = "_projection_reference"
    return resolve_settings({**config, "variants": {name: REFERENCE}}, name)


def images_per_epoch(train_images: int, settings: TrainSettings) -> int:
    """Images one epoch of ``settings`` processes on ``train_images`` training images: the steps per epoch of the
    package's sampler (``make_sampler``; they depend on the image count and batch shape only) x ``batch_size``."""
    if train_images < 1:
        raise ValueError(f"train_images must be >= 1, got {train_images}")
    k = max(settings.instances_per_identity, 1)  # K images per identity, at least P = B / K identities
    identities = min(train_images, max(train_images // k, settings.batch_size // k, 1))
    stand_in = TrainSet([""] * train_images, np.arange(train_images) % identities)
    return make_sampler(stand_in, settings, seed=0).steps_per_epoch * settings.batch_size


def forward_flops(settings: TrainSettings) -> int:
    """Forward FLOPs per image of the network ``settings`` builds, at its input size (meta device, batch 1)."""
    with torch.device("meta"):
        model = build_model(settings, **HEADS).eval()
        images = torch.empty(1, 3, *settings.input_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images)
    flops = int(counter.get_total_flops())
    if flops <= 0:
        raise RuntimeError(f"FlopCounterMode counted no FLOPs for variant {settings.variant!r}")
    return flops


def _describe(settings: TrainSettings) -> dict[str, Any]:
    return {"architecture": settings.architecture, "backbone": settings.backbone,
            "input_size": list(settings.input_size), "last_stride": settings.last_stride, "bnneck": settings.bnneck,
            "sampler": settings.sampler, "batch_size": settings.batch_size}


def flop_ratios(config: dict[str, Any]) -> dict[str, Any]:
    """Forward FLOPs per image of the reference and of every train_variant, with each variant's ratio (its cost)."""
    reference_net = reference_settings(config)
    reference = forward_flops(reference_net)
    variants = {}
    for variant, settings in variant_settings(config).items():
        flops = forward_flops(settings)
        variants[variant] = {**_describe(settings), "flops": flops, "cost": flops / reference}
    return {"reference": {**_describe(reference_net), "name": REFERENCE_NAME, "flops": reference, "cost": 1.0},
            "variants": variants}


def _hours(images: float, rates: tuple[float, ...]) -> list[float]:
    return [images / rate / 3600 for rate in rates]


def project(config: dict[str, Any], train_images: dict[str, int],
            rates: tuple[float, ...] = GPU_TRAIN_IMAGES_PER_S) -> dict[str, Any]:
    """Training GPU hours of every (dataset, variant) of ``config`` on ``train_images`` images per dataset, at each
    assumed reference rate in ``rates``; per-variant sums and the total."""
    if not train_images:
        raise ValueError("train_images: no dataset to project")
    settings = variant_settings(config)
    flops = flop_ratios(config)
    seeds = len(config["seeds"])
    rows = []
    for dataset, n in train_images.items():
        for variant, s in settings.items():
            per_epoch = images_per_epoch(n, s)
            images = seeds * s.epochs * per_epoch
            cost = flops["variants"][variant]["cost"]
            rows.append({"dataset": dataset, "variant": variant, "train_images": n, "epochs": s.epochs,
                         "seeds": seeds, "images_per_epoch": per_epoch, "images": images, "cost": cost,
                         "reference_images": images * cost, "hours": _hours(images * cost, rates)})
    per_variant = {variant: sum(r["reference_images"] for r in rows if r["variant"] == variant) for variant in settings}
    reference_images = sum(r["reference_images"] for r in rows)
    return {"rows": rows, "variant_reference_images": per_variant,
            "variant_hours": {variant: _hours(n, rates) for variant, n in per_variant.items()},
            "total_hours": _hours(reference_images, rates),
            "images": sum(r["images"] for r in rows), "reference_images": reference_images,
            "runs": seeds * len(settings), "reference_runs": seeds * sum(v["cost"] for v in flops["variants"].values()),
            "flops": flops, "rates": list(rates), "assumption": ASSUMPTION}



def replace_block(path: Path, start: str, end: str, block: str) -> None:
    """Replace the text from ``start`` to ``end`` in ``path`` by ``block`` (which carries both markers), leaving the
    rest of the file as it is now; where the markers are absent, append the block."""
    text = path.read_text()
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.DOTALL)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def _flop_row(name: str, d: dict[str, Any]) -> str:
    size = " x ".join(map(str, d["input_size"]))
    return (f"| {name} | {d['architecture']}, {d['backbone']}, {size}, last stride {d['last_stride']}"
            f"{', BNNeck' if d['bnneck'] else ''} | {d['flops'] / 1e9:.2f} | {d['cost']:.3f} |")


def docs_block(projection: dict[str, Any], meta: dict[str, str]) -> str:
    """The bench:projection block: provenance, FLOP ratios, per-variant hours at each assumed rate, the total."""
    flops, rates = projection["flops"], [f"{r:,.0f}" for r in projection["rates"]]
    counts = ", ".join(f"{ds} {n:,}" for ds, n in {r["dataset"]: r["train_images"] for r in projection["rows"]}.items())
    ratio_rows = [_flop_row(f"{REFERENCE_NAME} (reference)", flops["reference"]),
                  *(_flop_row(v, d) for v, d in flops["variants"].items())]
    hour_rows = []
    for variant, hours in projection["variant_hours"].items():
        rows = [r for r in projection["rows"] if r["variant"] == variant]
        d = flops["variants"][variant]
        per_epoch = ", ".join(f"{r['dataset']} {r['images_per_epoch']:,}" for r in rows)
        hour_rows.append(f"| {variant} | {d['sampler']}, batch {d['batch_size']} | {rows[0]['seeds']} x "
                         f"{rows[0]['epochs']} | {per_epoch} | {d['cost']:.3f} | "
                         + " | ".join(f"{h:.2f}" for h in hours) + " |")
    lines = [START,
             (f"Computed {meta['date']} on {meta['machine']}, torch {meta['torch']} (nothing measured: FLOPs counted on "
              f"the meta device) from {meta['config']}: {len(projection['variant_hours'])} train_variants x "
              f"{projection['rows'][0]['seeds']} seeds on {counts} training images."),
             "",
             (f"Forward FLOPs per image (`FlopCounterMode`, 2 per multiply-add; heads sized for VeRi-776) and the "
              f"cost per image relative to {REFERENCE_NAME}:"),
             "",
             "| network | architecture, backbone, input, last stride | GFLOPs | cost |", "|---|---|---|---|",
             *ratio_rows,
             "",
             (f"Training hours on one GPU at the **assumed** {' or '.join(rates)} images/s of the reference "
              f"(assumption: {projection['assumption']}); seeds x epochs, images per epoch per dataset:"),
             "",
             "| variant | sampler | seeds x epochs | images per epoch | cost | "
             + " | ".join(f"hours at {r} images/s" for r in rates) + " |",
             "|---|---|---|---|---|" + "---|" * len(rates),
             *hour_rows,
             "| **total** | | | | | " + " | ".join(f"**{h:.2f}**" for h in projection["total_hours"]) + " |",
             "",
             (f"{projection['images'] / 1e6:.1f} M training images, {projection['reference_images'] / 1e6:.1f} M "
              f"weighted by cost. Extraction and evaluation are in the rehearsal block: each dataset's test images "
              f"are extracted once per run ({projection['runs']} runs, {projection['reference_runs']:.1f} weighted "
              f"by cost)."),
             END]
    return "\n".join(lines)


def meta_record(config_path: Path) -> dict[str, str]:
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": cpu_name(), "torch": str(torch.__version__),
            "config": str(config_path.relative_to(REPO)) if config_path.is_relative_to(REPO) else str(config_path)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG, help="the protocol's config (default: config.yaml)")
    parser.add_argument("--write-docs", action="store_true", help="replace the bench:projection block of "
                                                                  "docs/benchmarks.md")
    args = parser.parse_args(argv)
    config = protocol_config(args.config)
    result = project(config, paper_train_images(config))
    print(json.dumps(result, indent=2))
    if args.write_docs:
        replace_block(DOCS, START, END, docs_block(result, meta_record(args.config.resolve())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
