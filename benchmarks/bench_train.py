"""Benchmark: training throughput (images/s) with the compute / data-wait split, and the input pipeline alone.

Every training measurement runs the real training loop (``agnet.train.loop.train``) for one epoch on
a synthetic VeRi twin and reads images/s and the data-wait share from its ``train_log.csv``, so the
numbers are what users get. Configurations:

* CPU: the demo network (quarter-width ResNet-18, 64 x 64) and the paper's (ResNet-50, 224 x 224,
  batch 32), full precision;
* GPU (when one is present): ResNet-50 at 224 x 224 with AMP on/off x channels_last on/off, JPEG
  decoding vs the decoded-image cache, with ``--gpu-workers`` loader workers.

The input pipeline alone (no model) is timed too — images/s per worker for JPEG decoding and for the
decoded cache — which says how many workers a GPU of a given speed needs. With --write the tables
replace the matching section of docs/benchmarks.md.

    python benchmarks/bench_train.py --write
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from agnet.config import load_config
from agnet.data.manifest import make_manifest, read_manifest
from agnet.data.synth.veri import synth_veri
from agnet.train.data import DecodedCache, PairSampler, TrainSet, make_loader
from agnet.train.loop import train
from agnet.train.settings import resolve_settings

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
START, END = "<!-- bench:train:start -->", "<!-- bench:train:end -->"


def settings(overrides: dict) -> object:
    config = load_config(REPO / "config.yaml")
    config["training"].update(overrides)
    return resolve_settings(config, "agnet_asl")


def run_epoch(manifest: Path, work: Path, name: str, overrides: dict, device: str) -> dict:
    out = work / name
    record = train(settings(overrides), manifest, out, seed=0, device=device, cache_dir=work / "cache",
                   progress=False)
    with open(out / "train_log.csv") as f:
        row = next(csv.DictReader(f))
    return {"name": name, "device": device, "images": int(row["images"]), "images_per_s": float(row["images_per_s"]),
            "data_wait_share": float(row["data_wait_share"]), "precision": record["precision"],
            "channels_last": record["channels_last"], **{k: overrides[k] for k in ("backbone", "input_size",
                                                                                  "batch_size", "workers")},
            "decoded_cache": overrides.get("decoded_cache", False)}


def loader_only(manifest_frame, root: str, input_size, workers: int, cache: DecodedCache | None) -> float:
    """Images/s the input pipeline delivers for one epoch, with no model."""
    train_set = TrainSet.from_manifest(manifest_frame, root)
    sampler = PairSampler(train_set, 32, 0.5, 0.5, seed=0)
    s = settings({"input_size": list(input_size), "workers": workers})
    start, images = time.perf_counter(), 0
    for batch in make_loader(train_set, sampler, s, epoch=0, cache=cache):
        images += batch["images"].shape[0]
    return images / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vehicles", type=int, default=40, help="size of the synthetic VeRi twin")
    parser.add_argument("--gpu-workers", type=int, default=8)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    results, pipeline = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = synth_veri(work / "VeRi", vehicles=args.vehicles, cameras=10, seed=0)
        manifest = work / "manifest.parquet"
        make_manifest("veri", root, manifest)
        frame, meta = read_manifest(manifest)
        base = {"pretrained": "none", "epochs": 1, "deterministic": False}
        cpu_workers = min(2, os.cpu_count() or 1)
        demo = {**base, "backbone": "resnet18_narrow", "input_size": [64, 64], "embedding_dim": 128,
                "batch_size": 32, "workers": 0}
        paper = {**base, "backbone": "resnet50", "input_size": [224, 224], "embedding_dim": 4096,
                 "batch_size": 32, "workers": cpu_workers}
        results.append(run_epoch(manifest, work, "cpu-demo", demo, "cpu"))
        results.append(run_epoch(manifest, work, "cpu-paper", paper, "cpu"))
        for size in ((64, 64), (224, 224)):
            for workers in (0, cpu_workers):
                jpeg = loader_only(frame, meta["root"], size, workers, None)
                cache = DecodedCache.for_trainset(TrainSet.from_manifest(frame, meta["root"]), size, work / "cache")
                cached = loader_only(frame, meta["root"], size, workers, cache)
                pipeline.append({"input_size": list(size), "workers": workers, "jpeg_images_per_s": round(jpeg, 1),
                                 "cache_images_per_s": round(cached, 1)})
        if torch.cuda.is_available():
            for amp in ("on", "off"):
                for channels_last in ("on", "off"):
                    for cache in (False, True):
                        name = f"gpu-amp_{amp}-cl_{channels_last}-{'cache' if cache else 'jpeg'}"
                        overrides = {**paper, "workers": args.gpu_workers, "amp": amp,
                                     "channels_last": channels_last, "decoded_cache": cache, "batch_size": 64}
                        results.append(run_epoch(manifest, work, name, overrides, "cuda"))
    meta_record = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "torch": str(torch.__version__),
                   "python": platform.python_version(), "cpu_threads": torch.get_num_threads(),
                   "cores": os.cpu_count(),
                   "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(json.dumps({"meta": meta_record, "training": results, "pipeline": pipeline}, indent=2))
    if args.write:
        training_rows = "\n".join(
            f"| {r['name']} | {r['backbone']} | {r['input_size'][0]} | {r['batch_size']} | {r['precision']} | "
            f"{'yes' if r['channels_last'] else 'no'} | {'cache' if r['decoded_cache'] else 'JPEG'} | {r['workers']} | "
            f"{r['images_per_s']:.1f} | {100 * r['data_wait_share']:.0f} % |"
            for r in results
        )
        pipeline_rows = "\n".join(
            f"| {p['input_size'][0]} | {p['workers']} | {p['jpeg_images_per_s']:.0f} | {p['cache_images_per_s']:.0f} |"
            for p in pipeline
        )
        where = meta_record["gpu"] or "no GPU in this run"
        block = (
            f"{START}\nMeasured {meta_record['date']} on {meta_record['cores']} CPU cores ({where}), torch "
            f"{meta_record['torch']}, Python {meta_record['python']}; one epoch of the real training loop on a "
            f"{args.vehicles}-vehicle synthetic VeRi twin (pairs: every image is an anchor once).\n\n"
            "| run | backbone | input | batch | precision | channels_last | images from | workers | images/s | "
            "data wait |\n|---|---|---|---|---|---|---|---|---|---|\n" + training_rows + "\n\n"
            "Input pipeline alone (decode or cache read, resize, flip, normalise, collate; no model):\n\n"
            "| input | workers | JPEG images/s | decoded cache images/s |\n|---|---|---|---|\n" + pipeline_rows
            + f"\n{END}"
        )
        text = DOCS.read_text()
        DOCS.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.DOTALL))
    return 0


if __name__ == "__main__":
    sys.exit(main())
