"""Benchmark: the paper protocol's DAG on release-size twins, every job's wall time and memory.

Runs (``--run``) or only reads (``--collect``) the rehearsal DAG in a work folder:
``snakemake --configfile workflow/configs/rehearsal.yaml [workflow/configs/offline.yaml]``, i.e. both
release-size twins (exact VeRi-776 and VehicleID counts), strict verification, manifests, one ResNet-50
224 x 224 run per dataset cut to ``training.max_steps`` steps, extraction of every image the protocols read
(VeRi: every evaluation image; VehicleID: the configured test lists), every protocol (VeRi with STR, VehicleID
800-3,200 x 10 trials), aggregation, tables, figures.

Every rule writes a Snakemake ``benchmark:`` file (``results/benchmarks/...tsv``): wall seconds, CPU seconds,
and the memory of the job's process tree, from which this script reports ``max_pss`` (proportional set size:
shared pages counted once, so a memory-mapped cache or the loader workers' copy-on-write pages are not counted
per process) beside ``max_rss`` (summed over the tree, which counts shared pages once per process). The
targets (issue 13): ``verify --strict`` of the VehicleID-size twin <= 10 min on 2 cores, manifests <= 1 min
each, no job above 8 GB (PSS). From the measured image counts and stated GPU throughputs it projects the full
paper protocol (both datasets x every variant of config.yaml's ``train_variants`` x its seeds, each variant's
epochs, images per epoch and forward-FLOP cost per image: ``projection.py``) on one GPU.

    python benchmarks/bench_rehearsal.py --run /work/rehearsal --offline --write   # ~1.5 h on 2 cores
    python benchmarks/bench_rehearsal.py --collect /work/rehearsal --write          # a DAG already run there
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from _machine import cpu_name
from projection import (
    GPU_EXTRACT_IMAGES_PER_S,
    GPU_TRAIN_IMAGES_PER_S,
    PAPER_TRAIN_IMAGES,
    protocol_config,
    replace_block,
)
from projection import project as project_training

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
START, END = "<!-- bench:rehearsal:start -->", "<!-- bench:rehearsal:end -->"
GB = 1024.0  # MB per GB (Snakemake's benchmark files are in MB)
TARGET_MB = 8 * GB
TARGET_S = {"verify": 600.0, "manifest": 60.0}  # per job; verify's target is the VehicleID-size twin's

# The one-GPU projection's assumed rates (stated in the output; benchmarks/gpu_check.sh measures them) and the
# paper's training-image counts live in projection.py. The twin spreads VehicleID's labelled vehicles over both
# splits and trains on fewer images (44,552), so the projection takes the paper's attribute-labelled count.
PAPER_VEHICLEID_TRAIN_IMAGES = PAPER_TRAIN_IMAGES["vehicleid"]
ORDER = ("synthesize", "verify", "manifest", "train", "extract", "evaluate", "aggregate", "tables", "claims",
         "figures_cmc", "figures_illustrations", "figures_training")


def run_dag(work: Path, cores: int, offline: bool) -> dict:
    """Run the rehearsal DAG in ``work``; the whole run's wall time and exit status."""
    configs = [str(REPO / "workflow/configs/rehearsal.yaml")]
    if offline:
        configs.append(str(REPO / "workflow/configs/offline.yaml"))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), "--cores",
               str(cores), "--configfile", *configs, "--rerun-incomplete"]
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with (work / "rehearsal-snakemake.log").open("w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False, cwd=REPO)
    return {"seconds": round(time.perf_counter() - start, 1), "rc": done.returncode, "command": " ".join(command)}


def _read_benchmark(path: Path) -> dict:
    with path.open() as handle:
        row = list(csv.DictReader(handle, delimiter="\t"))[-1]

    def number(key: str) -> float:
        value = row.get(key, "-")
        return float(value) if value not in ("-", "", "NA") else 0.0

    return {"seconds": number("s"), "cpu_seconds": number("cpu_time"), "max_rss_mb": number("max_rss"),
            "max_pss_mb": number("max_pss")}


def _job_of(relative: Path) -> tuple[str, str]:
    """(rule, dataset or '') from a benchmark file's path under results/benchmarks."""
    parts = relative.with_suffix("").parts
    if parts[0] == "report":
        return parts[1], ""
    if len(parts) == 1:
        return parts[0], ""
    if parts[0] == "weights":
        return "fetch_weights", parts[1]
    return parts[1], parts[0]


def _extracted_images(log: Path) -> int | None:
    match = re.search(r"extracting (\d+) images", log.read_text()) if log.exists() else None
    return int(match.group(1)) if match else None


def collect(work: Path) -> list[dict]:
    """One record per job benchmark file of the DAG in ``work``, with what it processed."""
    root = work / "results" / "benchmarks"
    records = []
    for path in sorted(root.rglob("*.tsv")):
        rule, ds = _job_of(path.relative_to(root))
        record = {"rule": rule, "dataset": ds, **_read_benchmark(path), "detail": ""}
        data = work / "results" / "data" / ds
        if rule == "synthesize":
            sizes = [p.stat().st_size for p in (data / "root").rglob("*.jpg")]
            record["images"] = len(sizes)
            record["detail"] = (f"{len(sizes):,} JPEGs, mean {sum(sizes) / max(1, len(sizes)) / 1000:.1f} kB, "
                                f"{sum(sizes) / 1e9:.1f} GB")
        elif rule == "verify":
            report = json.loads((data / "verify.json").read_text())
            record["images"] = sum(s["images"] for s in report["splits"].values())
            strict = report.get("strict", {})
            record["detail"] = (f"{record['images']:,} images decoded; valid {report['valid']}, strict "
                                f"{'checked' if strict.get('checked') else 'not checked'}, "
                                f"{len(strict.get('deviations', []))} deviations")
        elif rule == "train":
            run = json.loads((work / "results" / "runs" / ds / path.stem.replace("-seed", "/seed") / "run.json")
                             .read_text())
            final = run["final"]
            record["images"] = final["images"]
            record["detail"] = (f"{run['steps']} steps (truncated: {run['truncated']}), {final['images']:,} images at "
                                f"{final['images_per_s']} images/s, {run['precision']}, decoded cache "
                                f"{run['decoded_cache_used']}, data wait {final['data_wait_share']:.1%}")
        elif rule == "extract":
            images = _extracted_images(work / "results" / "logs" / ds / "extract" / f"{path.stem}.log")
            if images and record["seconds"] > 0:
                record["images"] = images
                record["detail"] = f"{images:,} images, {images / record['seconds']:.1f} images/s end to end"
        records.append(record)
    records.sort(key=lambda r: (ORDER.index(r["rule"]) if r["rule"] in ORDER else len(ORDER), r["dataset"]))
    return records


def _train_images(work: Path) -> dict[str, int]:
    import pandas as pd

    out = {}
    for manifest in sorted((work / "results" / "data").glob("*/manifest.parquet")):
        frame = pd.read_parquet(manifest, columns=["split"])
        out[manifest.parent.name] = int((frame["split"] == "train").sum())
    return out


def _projected_train_images(train_images: dict[str, int]) -> dict[str, int]:
    """Training images per dataset for the projection: the twin's, except VehicleID's (the paper's count)."""
    return {ds: PAPER_VEHICLEID_TRAIN_IMAGES if "vehicleid" in ds else n for ds, n in train_images.items()}


def project(train_images: dict[str, int], records: list[dict], config: dict | None = None) -> dict:
    """Full protocol (``config``, default config.yaml: every train_variant x its seeds) on one GPU from the measured
    image counts and the stated throughput assumptions. Training: ``projection.project`` (per variant its epochs,
    images per epoch of its sampler and forward-FLOP cost per image); extraction: every run extracts the measured
    images at its variant's cost; evaluation: the measured CPU seconds once per run."""
    config = protocol_config() if config is None else config
    train_images = _projected_train_images(train_images)
    if not train_images:
        return {"train_images": {}, "training": None, "extract_hours": {}, "evaluate_hours_cpu": {}, "total_hours": []}
    training = project_training(config, train_images, GPU_TRAIN_IMAGES_PER_S)
    extract_h = {r["dataset"]: training["reference_runs"] * r["images"] / GPU_EXTRACT_IMAGES_PER_S / 3600
                 for r in records if r["rule"] == "extract" and r.get("images")}
    evaluate_h = {r["dataset"]: training["runs"] * r["seconds"] / 3600 for r in records if r["rule"] == "evaluate"}
    rest = sum(extract_h.values())  # evaluation runs on CPUs beside the GPU jobs: not on the GPU's clock
    return {"train_images": train_images, "training": training, "extract_hours": extract_h,
            "evaluate_hours_cpu": evaluate_h, "total_hours": [h + rest for h in training["total_hours"]],
            "assumptions": {"gpu_train_images_per_s": GPU_TRAIN_IMAGES_PER_S,
                            "gpu_extract_images_per_s": GPU_EXTRACT_IMAGES_PER_S, "seeds": len(config["seeds"]),
                            "train_variants": list(config["train_variants"]), "cost": training["assumption"]}}


def check_targets(records: list[dict]) -> list[str]:
    """The issue's targets that a record misses, as sentences (empty when every target is met)."""
    missed = []
    for r in records:
        name = f"{r['rule']} {r['dataset']}".strip()
        if r["max_pss_mb"] > TARGET_MB:
            missed.append(f"{name}: {r['max_pss_mb']:,.0f} MB PSS > 8 GB")
        limit = TARGET_S.get(r["rule"])
        if limit and r["seconds"] > limit:
            missed.append(f"{name}: {r['seconds']:,.0f} s > {limit:,.0f} s")
    return missed


def _fmt_h(hours: float) -> str:
    return f"{hours:.2f}"


def write_docs(result: dict, note: str) -> None:
    meta, records = result["meta"], result["records"]
    rows = [f"| {r['rule']} | {r['dataset']} | {r['seconds']:,.1f} | {r['cpu_seconds']:,.0f} | "
            f"{r['max_pss_mb']:,.0f} | {r['max_rss_mb']:,.0f} | {r['detail']} |" for r in records]
    dag = result.get("dag")
    lines = [START, (f"Measured {meta['date']} on {meta['cpu']} ({meta['cores']} cores, {meta['memory_gb']:.0f} GB), "
                     f"Python {meta['python']}, torch {meta['torch']}; configs: {', '.join(meta['configs'])}. "
                     f"{note}").strip(), ""]
    if dag:
        lines += [f"Whole DAG: {dag['seconds'] / 60:,.1f} min wall on {meta['cores']} cores (exit status {dag['rc']}).",
                  ""]
    lines += ["| job | dataset | wall s | CPU s | peak PSS MB | peak RSS MB (tree sum) | what it did |",
              "|---|---|---|---|---|---|---|", *rows, ""]
    missed = result["missed"]
    lines.append("Targets (verify --strict <= 10 min, manifests <= 1 min, every job <= 8 GB PSS): "
                 + ("all met." if not missed else "MISSED: " + "; ".join(missed) + "."))
    p = result["projection"]
    if p["training"]:
        a, training = p["assumptions"], p["training"]
        rates = [f"{r:,.0f}" for r in a["gpu_train_images_per_s"]]
        lines += ["", (f"Projection of the full protocol ({len(a['train_variants'])} train_variants x {a['seeds']} "
                       f"seeds, each variant's epochs, both datasets) on one GPU, from the VeRi twin's training set "
                       f"(all its training vehicles) and the paper's {PAPER_VEHICLEID_TRAIN_IMAGES:,} "
                       f"attribute-labelled VehicleID images (an epoch = the variant's sampler's steps x batch: pairs "
                       f"2 x floor(N / (B/2)) x B/2, P x K floor(N / B) x B) and **assumed** "
                       f"{' or '.join(rates)} training and {a['gpu_extract_images_per_s']:,.0f} extraction "
                       f"images/s of AGNet-ResNet-50 at 224 x 224 (gpu_check.sh measures them), each variant's images "
                       f"weighted by its forward FLOPs over that network's (cost; assumption: {a['cost']}). "
                       f"Evaluation runs on CPUs beside the GPU jobs (its CPU hours as measured here, not part of the "
                       f"GPU total):"),
                  "", f"| part | hours at {rates[0]} images/s | hours at {rates[1]} images/s |", "|---|---|---|",
                  *[f"| training {r['variant']} {r['dataset']} ({r['train_images']:,} images, "
                    f"{r['images_per_epoch']:,} per epoch, {r['seeds'] * r['epochs']} epochs, cost "
                    f"{r['cost']:.2f}) | {_fmt_h(r['hours'][0])} | {_fmt_h(r['hours'][1])} |"
                    for r in training["rows"]],
                  *[f"| extraction {ds} | {_fmt_h(h)} | {_fmt_h(h)} |" for ds, h in p["extract_hours"].items()],
                  f"| **GPU total** | **{_fmt_h(p['total_hours'][0])}** | **{_fmt_h(p['total_hours'][1])}** |",
                  *[f"| evaluation {ds} (CPU, beside) | {_fmt_h(h)} | {_fmt_h(h)} |"
                    for ds, h in p["evaluate_hours_cpu"].items()]]
    lines.append(END)
    replace_block(DOCS, START, END, "\n".join(lines))


def _meta(work: Path, offline: bool) -> dict:
    import torch

    memory_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    configs = ["rehearsal.yaml", *(["offline.yaml"] if offline else [])]
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "cpu": cpu_name(), "cores": os.cpu_count(),
            "memory_gb": memory_kb / 1024 ** 2, "python": platform.python_version(), "torch": torch.__version__,
            "configs": configs, "work": str(work)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", type=Path, metavar="DIR", help="run the rehearsal DAG in DIR, then collect")
    where.add_argument("--collect", type=Path, metavar="DIR", help="only collect a DAG already run in DIR")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--offline", action="store_true",
                        help="add workflow/configs/offline.yaml (no ImageNet weights; with --collect: say so)")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--note", default="", help="added to the docs block (e.g. that the machine was shared)")
    args = parser.parse_args()
    work = args.run or args.collect
    dag = run_dag(work, args.cores, args.offline) if args.run else None
    records = collect(work)
    if not records:
        print(f"bench_rehearsal: no benchmark files under {work / 'results/benchmarks'}", file=sys.stderr)
        return 1
    result = {"meta": _meta(work, args.offline), "dag": dag, "records": records, "missed": check_targets(records),
              "projection": project(_train_images(work), records)}
    (work / "bench_rehearsal.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if args.write:
        write_docs(result, args.note)
    if (dag and dag["rc"] != 0) or result["missed"]:
        print(f"DAG exit status {dag and dag['rc']}; missed: {result['missed']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
