"""Benchmark: training throughput (images/s) with the compute / data-wait split, and the input pipeline alone.

Every training measurement runs the real training loop (``agnet.train.loop.train``) for one epoch on
a synthetic VeRi twin and reads images/s and the data-wait share from its ``train_log.csv``, so the
numbers are what users get. Configurations:

* CPU: the demo network (quarter-width ResNet-18, 64 x 64) and the paper's (ResNet-50, 224 x 224,
  batch 32), full precision;
* GPU (``--gpu``, for ``benchmarks/gpu_check.sh`` or by hand on a CUDA machine): ResNet-50 at 224 x 224
  with AMP on/off x channels_last on/off, JPEG decoding vs the decoded-image cache, with
  ``--gpu-workers`` loader workers; then k = 1, 2, 3 concurrent training processes on the one GPU
  (aggregate images/s), and the full protocol (every variant of config.yaml's ``train_variants``, each image
  weighted by its network's forward FLOPs over this ResNet-50's: ``projection.py``) projected from the best
  aggregate rate.

Every run also reports **host reads per optimizer step** outside the loop's logging points, counted
by :class:`agnet.train.hostreads.HostReadCounter` in a separate short run (the target is 0).

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
from projection import paper_train_images, project, protocol_config

from agnet.config import load_config
from agnet.data.manifest import make_manifest, read_manifest
from agnet.data.synth.veri import synth_veri
from agnet.train.data import DecodedCache, PairSampler, TrainSet, make_loader
from agnet.train.hostreads import HostReadCounter
from agnet.train.loop import train
from agnet.train.settings import resolve_settings

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
START, END = "<!-- bench:train:start -->", "<!-- bench:train:end -->"


def settings(overrides: dict) -> object:
    config = load_config(REPO / "config.yaml")
    config["training"].update(overrides)
    return resolve_settings(config, "agnet_asl")


def protocol_images() -> dict:
    """Images the full training protocol processes (config.yaml: both paper datasets x every train_variant x its
    seeds and epochs, an epoch = its sampler's full batches), in all and weighted by each variant's forward FLOPs
    per image over AGNet-ResNet-50 at 224 x 224 (the network the GPU rows measure), with the per-variant split."""
    config = protocol_config()
    projection = project(config, paper_train_images(config))
    return {"images": projection["images"], "reference_images": projection["reference_images"],
            "reference_images_per_variant": projection["variant_reference_images"],
            "assumption": projection["assumption"]}


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
            "decoded_cache": record.get("decoded_cache_used", overrides.get("decoded_cache", False))}


def host_reads_per_step(manifest: Path, work: Path, overrides: dict, device: str, steps: int = 12) -> dict:
    """Host reads per optimizer step outside the logging points, and at them, over a ``steps``-step run."""
    out = work / f"host-reads-{len(list(work.glob('host-reads-*')))}"
    with HostReadCounter() as counter:
        record = train(settings({**overrides, "max_steps": steps, "log_every": 5}), manifest, out, seed=0,
                       device=device, cache_dir=work / "cache", progress=False)
    counted = max(record["steps"] - 1, 1)  # reads are attributed from the first completed step on
    return {"in_step_per_step": round(len(counter.in_steps()) / counted, 3),
            "logging_reads": len(counter.at_points("_read_device_sums")), "steps": record["steps"]}


def concurrent_jobs(manifest: Path, work: Path, overrides: dict, k: int, steps: int) -> dict:
    """k training processes on the same device at once: aggregate images/s (sum of each job's rate) and
    the wall-clock rate (all images / time from the first start to the last end, start-up included)."""
    import subprocess

    import yaml

    config = work / f"concurrent-{k}.yaml"
    config.write_text(yaml.safe_dump({"training": {**overrides, "max_steps": steps, "epochs": 1000}}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    jobs = [subprocess.Popen([sys.executable, "-m", "agnet", "train", "--config", str(REPO / "config.yaml"),
                              "--config", str(config), "--manifest", str(manifest), "--variant", "agnet_asl",
                              "--seed", str(j), "--out", str(work / f"concurrent-{k}-{j}"), "--no-progress",
                              "--cache-dir", str(work / "cache")], env=env, stderr=subprocess.PIPE, text=True)
             for j in range(k)]
    for job in jobs:
        _, err = job.communicate()
        if job.returncode:
            raise RuntimeError(f"concurrent training job failed: {err[-2000:]}")
    wall = time.perf_counter() - start
    rates, images = [], 0
    for j in range(k):
        with open(work / f"concurrent-{k}-{j}" / "train_log.csv") as f:
            rows = list(csv.DictReader(f))
        rates.append(sum(float(r["images"]) for r in rows) / sum(float(r["seconds"]) for r in rows))
        images += sum(int(r["images"]) for r in rows)
    return {"k": k, "aggregate_images_per_s": round(sum(rates), 1), "per_job": [round(r, 1) for r in rates],
            "wall_images_per_s": round(images / wall, 1)}


def gpu_rows(manifest: Path, work: Path, paper: dict, workers: int, steps: int) -> dict:
    """The GPU measurements: precision x layout x input source, concurrent jobs, protocol projection."""
    results = []
    for amp in ("on", "off"):
        for channels_last in ("on", "off"):
            for cache in (False, True):
                name = f"gpu-amp_{amp}-cl_{channels_last}-{'cache' if cache else 'jpeg'}"
                overrides = {**paper, "workers": workers, "amp": amp, "channels_last": channels_last,
                             "decoded_cache": cache}
                results.append(run_epoch(manifest, work, name, overrides, "cuda"))
    best = {**paper, "workers": workers, "amp": "on", "channels_last": "on", "decoded_cache": True}
    reads = host_reads_per_step(manifest, work, best, "cuda")
    concurrent = [concurrent_jobs(manifest, work, best, k, steps) for k in (1, 2, 3)]
    rate = max(c["aggregate_images_per_s"] for c in concurrent)
    protocol = protocol_images()
    hours = {v: round(n / rate / 3600, 2) for v, n in protocol["reference_images_per_variant"].items()} if rate else {}
    return {"training": results, "host_reads": reads, "concurrent": concurrent,
            "protocol_images": protocol["images"], "protocol_reference_images": protocol["reference_images"],
            "protocol_cost_assumption": protocol["assumption"], "protocol_hours_per_variant": hours,
            "protocol_hours_at_best_aggregate": round(protocol["reference_images"] / rate / 3600, 1) if rate else None}


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
    parser.add_argument("--gpu", action="store_true", help="only the GPU measurements (needs CUDA)")
    parser.add_argument("--gpu-steps", type=int, default=300, help="steps of each concurrent GPU job")
    parser.add_argument("--paper-steps", type=int, default=20,
                        help="steps of the CPU ResNet-50 row (max_steps; a full epoch takes minutes on 2 cores)")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu: no CUDA device here")

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
        if args.gpu:
            gpu = gpu_rows(manifest, work, paper, args.gpu_workers, args.gpu_steps)
            print(json.dumps(gpu, indent=2))
            if args.write:
                write_gpu_section(gpu, args)
            return 0
        results.append(run_epoch(manifest, work, "cpu-demo", {**demo, "decoded_cache": False}, "cpu"))
        results.append(run_epoch(manifest, work, "cpu-demo-cache", {**demo, "decoded_cache": "auto"}, "cpu"))
        results.append(run_epoch(manifest, work, "cpu-demo-bf16-cl", {**demo, "decoded_cache": "auto", "amp": "on",
                                                                       "channels_last": "on"}, "cpu"))
        results.append(run_epoch(manifest, work, "cpu-paper", {**paper, "max_steps": args.paper_steps,
                                                                "decoded_cache": False}, "cpu"))
        reads = host_reads_per_step(manifest, work, demo, "cpu")
        reads_bf16 = host_reads_per_step(manifest, work, {**demo, "amp": "on", "channels_last": "on"}, "cpu")
        for size in ((64, 64), (224, 224)):
            for workers in (0, cpu_workers):
                jpeg = loader_only(frame, meta["root"], size, workers, None)
                cache = DecodedCache.for_trainset(TrainSet.from_manifest(frame, meta["root"]), size, work / "cache")
                cached = loader_only(frame, meta["root"], size, workers, cache)
                pipeline.append({"input_size": list(size), "workers": workers, "jpeg_images_per_s": round(jpeg, 1),
                                 "cache_images_per_s": round(cached, 1)})
    meta_record = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "torch": str(torch.__version__),
                   "python": platform.python_version(), "cpu_threads": torch.get_num_threads(),
                   "cores": os.cpu_count(),
                   "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(json.dumps({"meta": meta_record, "training": results, "pipeline": pipeline, "host_reads": reads,
                      "host_reads_bf16_channels_last": reads_bf16}, indent=2))
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
            f"{args.vehicles}-vehicle synthetic VeRi twin (pairs: every image is an anchor once; the ResNet-50 row "
            f"is cut to {args.paper_steps} steps). The machine was shared with other jobs (load average "
            f"{os.getloadavg()[0]:.1f} on {meta_record['cores']} cores at the end), so the rates are lower bounds.\n\n"
            "| run | backbone | input | batch | precision | channels_last | images from | workers | images/s | "
            "data wait |\n|---|---|---|---|---|---|---|---|---|---|\n" + training_rows + "\n\n"
            "Input pipeline alone (decode or cache read, resize, flip, normalise, collate; no model):\n\n"
            "| input | workers | JPEG images/s | decoded cache images/s |\n|---|---|---|---|\n" + pipeline_rows
            + f"\n\nHost reads of device values per optimizer step outside the logging points (counted by "
            f"`agnet.train.hostreads`; each is a host-device synchronisation on a GPU): **{reads['in_step_per_step']}** "
            f"in float32, **{reads_bf16['in_step_per_step']}** with bf16 autocast + channels_last "
            f"(before this version: 8); {reads['logging_reads']} reads of the device sums in {reads['steps']} steps "
            "at `log_every: 5`."
            + f"\n{END}"
        )
        text = DOCS.read_text()
        DOCS.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.DOTALL))
    return 0


GPU_START, GPU_END = "<!-- bench:train-gpu:start -->", "<!-- bench:train-gpu:end -->"


def write_gpu_section(gpu: dict, args) -> None:
    """Replace the GPU block of docs/benchmarks.md (between the train-gpu markers)."""
    rows = "\n".join(
        f"| {r['name']} | {r['precision']} | {'yes' if r['channels_last'] else 'no'} | "
        f"{'cache' if r['decoded_cache'] else 'JPEG'} | {r['workers']} | {r['images_per_s']:.0f} | "
        f"{100 * r['data_wait_share']:.0f} % |" for r in gpu["training"])
    concurrent = "\n".join(f"| {c['k']} | {c['aggregate_images_per_s']:.0f} | {c['wall_images_per_s']:.0f} | "
                            f"{', '.join(f'{x:.0f}' for x in c['per_job'])} |" for c in gpu["concurrent"])
    block = (
        f"{GPU_START}\nMeasured {datetime.now(UTC).strftime('%Y-%m-%d')} on {torch.cuda.get_device_name(0)}, torch "
        f"{torch.__version__}: ResNet-50, 224 x 224, batch 32, {args.gpu_workers} workers.\n\n"
        "| run | precision | channels_last | images from | workers | images/s | data wait |\n"
        "|---|---|---|---|---|---|---|\n" + rows + "\n\n"
        "| concurrent jobs | aggregate images/s | wall-clock images/s | per job |\n|---|---|---|---|\n"
        + concurrent + f"\n\nHost reads per step outside logging points: {gpu['host_reads']['in_step_per_step']}. "
        f"Full protocol (every train_variant: {gpu['protocol_images'] / 1e6:.0f} M images, "
        f"{gpu['protocol_reference_images'] / 1e6:.0f} M weighted by forward FLOPs per image over this AGNet-ResNet-50's; "
        f"assumption: {gpu['protocol_cost_assumption']}): **{gpu['protocol_hours_at_best_aggregate']} h** at the best "
        f"aggregate rate ("
        + ", ".join(f"{v} {h} h" for v, h in gpu["protocol_hours_per_variant"].items()) + f").\n{GPU_END}"
    )
    text = DOCS.read_text()
    if GPU_START not in text:
        raise SystemExit(f"{DOCS}: no {GPU_START} block to fill")
    DOCS.write_text(re.sub(re.escape(GPU_START) + ".*?" + re.escape(GPU_END), lambda _: block, text, flags=re.DOTALL))


if __name__ == "__main__":
    sys.exit(main())
