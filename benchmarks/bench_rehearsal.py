"""Benchmark: every data stage at release size, each in a fresh process, wall time and peak memory.

Stages (``--stages``, default all): synthesis of the release-size twins (``agnet data synth --release``),
``agnet data verify --strict`` (every image decoded), ``agnet data manifest``; then, on samples or
random features: ResNet-50 AGNet extraction rate at 224 x 224 on the CPU, the VehicleID protocol
(10 trials, lists 800-3,200) and the VeRi protocol with STR at full size. From the measured figures
and the stated GPU assumptions it projects the full paper protocol on one GPU.

Memory: ``peak_rss_mb`` is the stage's main process VmHWM (``wait4`` ru_maxrss); ``tree_rss_mb`` the
largest summed RSS of the process and its children, sampled every 0.5 s (synthesis renders in worker
processes). Targets (issue 13): verify --strict of the VehicleID-size twin <= 10 min on 2 cores,
manifests <= 1 min, no stage above 8 GB.

    python benchmarks/bench_rehearsal.py --work /tmp/rehearsal --write            # release size (~1-2 h)
    python benchmarks/bench_rehearsal.py --work /tmp/r --scale 0.02 --stages synth,verify,manifest
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from _machine import cpu_name

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
START, END = "<!-- bench:rehearsal:start -->", "<!-- bench:rehearsal:end -->"
STAGES = ("synth", "verify", "manifest", "extract", "eval")
GB = 1024.0

# Assumptions of the one-GPU projection (stated in the output; measure them with benchmarks/gpu_check.sh).
GPU_TRAIN_IMAGES_PER_S = 1200.0  # AGNet-ResNet-50 (two layer4 branches), 224 x 224, AMP, batch 32, H100-class
GPU_EXTRACT_IMAGES_PER_S = 3000.0
PROTOCOL = {"variants": 3, "seeds": 3, "epochs": 75}


def _tree_rss_kb(pid: int) -> int:
    """Summed RSS (kB) of ``pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
        match = re.search(r"^VmRSS:\s+(\d+)", status, re.MULTILINE)
        rss[int(entry.name)] = int(match.group(1)) if match else 0
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total


def run_stage(name: str, argv: list[str], log_dir: Path) -> dict:
    """Run one stage in a fresh process; wall time, exit status, VmHWM of the process, sampled tree RSS."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    log = (log_dir / f"{name}.log").open("w")
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    tree_peak = 0
    while True:
        finished, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if finished:
            break
        tree_peak = max(tree_peak, _tree_rss_kb(proc.pid))
        time.sleep(0.5)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    record = {"stage": name, "seconds": round(wall, 1), "rc": proc.returncode,
              "peak_rss_mb": round(usage.ru_maxrss / 1024.0, 0), "tree_rss_mb": round(tree_peak / 1024.0, 0),
              "log": str(log_dir / f"{name}.log")}
    print(json.dumps(record), flush=True)
    return record


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _count_bytes(root: Path) -> dict:
    sizes = [p.stat().st_size for p in root.rglob("*.jpg")] if root.is_dir() else []
    if not sizes:
        return {}
    return {"jpeg_files": len(sizes), "jpeg_mean_kb": round(sum(sizes) / len(sizes) / 1000, 1),
            "jpeg_total_gb": round(sum(sizes) / 1e9, 2)}


EXTRACT_CODE = r"""
import json, sys, time, torch
from PIL import Image
from agnet.data.manifest import read_manifest
from agnet.model import AGNet, build_trunk
torch.set_num_threads({threads})
frame, meta = read_manifest("{manifest}")
paths = frame[frame["split"] != "train"]["path"].head({n}).tolist()
model = AGNet(build_trunk("resnet50"), num_classes=576, num_colors=10, num_types=9, embedding_dim=4096).eval()
mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1); std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
def batch(chunk):
    ims = [torch.frombuffer(bytearray(Image.open("{root}/" + p).convert("RGB").resize((224, 224)).tobytes()),
           dtype=torch.uint8).view(224, 224, 3) for p in chunk]
    return (torch.stack(ims).permute(0, 3, 1, 2).float() / 255 - mean) / std
with torch.no_grad():
    model(batch(paths[:4]))
    start = time.perf_counter()
    for i in range(0, len(paths), 32):
        model(batch(paths[i:i + 32]))
    seconds = time.perf_counter() - start
print(json.dumps({{"images": len(paths), "seconds": seconds, "images_per_s": len(paths) / seconds}}))
"""

EVAL_CODE = r"""
import json, time, numpy as np, torch
from agnet.data.manifest import read_manifest
from agnet.evaluate import EvalSettings, run_protocol
torch.set_num_threads({threads})
frame, meta = read_manifest("{manifest}")
rng = np.random.default_rng(0)
keep = frame[frame["split"] != "train"]
train = frame[frame["split"] == "train"].head(3000)
paths = keep["path"].tolist() + train["path"].tolist()
paths = list(dict.fromkeys(paths))
features = {{"paths": paths, "provenance": {{"random": True}}}}
for name, dim in (("Attr", 4096), ("ID", 4096), ("All", 8192)):
    values = torch.from_numpy(rng.standard_normal((len(paths), dim), dtype=np.float32))
    features[name] = values / values.norm(dim=1, keepdim=True)
settings = EvalSettings()
out = {{}}
for protocol in {protocols}:
    start = time.perf_counter()
    record = run_protocol(features, frame, meta, "All", protocol, settings)
    out[protocol] = {{"seconds": round(time.perf_counter() - start, 1), "queries": record["num_queries"],
                     "gallery": record["num_gallery"], "mAP": round(record["mAP"], 4)}}
print(json.dumps(out))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the twins and manifests (kept)")
    parser.add_argument("--scale", type=float, default=1.0, help="release scale of the twins (1 = release size)")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--datasets", default="veri,vehicleid")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--extract-images", type=int, default=96)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--note", default="", help="added to the docs block (e.g. that the machine was shared)")
    args = parser.parse_args()
    stages = args.stages.split(",")
    args.work.mkdir(parents=True, exist_ok=True)
    logs = args.work / "logs"
    logs.mkdir(exist_ok=True)
    records, extra = [], {}
    release = ["--release"] if args.scale == 1.0 else ["--release-scale", str(args.scale)]
    for fmt in args.datasets.split(","):
        root, manifest = args.work / fmt, args.work / f"{fmt}.parquet"
        if "synth" in stages:
            shutil.rmtree(root, ignore_errors=True)
            records.append({**run_stage(f"{fmt}-synth", _python("-m", "agnet", "data", "synth", fmt, str(root),
                                                                  *release, "--workers", str(args.workers)), logs),
                            **_count_bytes(root)})
        if "verify" in stages:
            strict = ["--strict"] if args.scale == 1.0 else []
            records.append(run_stage(f"{fmt}-verify{'-strict' if strict else ''}",
                                     _python("-m", "agnet", "data", "verify", fmt, str(root), *strict,
                                             "-o", str(args.work / f"{fmt}-verify.json")), logs))
        if "manifest" in stages:
            holdout = max(1, round(50 * args.scale)) if fmt == "veri" else 0  # config.yaml's VeRi hold-out
            records.append(run_stage(f"{fmt}-manifest", _python("-m", "agnet", "data", "manifest", fmt, str(root),
                                                                 "-o", str(manifest), "--holdout-vehicles",
                                                                 str(holdout)), logs))
        if "extract" in stages and fmt == "veri":
            code = EXTRACT_CODE.format(threads=args.workers, manifest=manifest, root=root, n=args.extract_images)
            records.append(run_stage("resnet50-extract-cpu", _python("-c", code), logs))
            extra["extract"] = json.loads((logs / "resnet50-extract-cpu.log").read_text().strip().splitlines()[-1])
        if "eval" in stages:
            if fmt == "veri":
                protocols = ["veri", "veri-str"]
            else:
                sys.path.insert(0, str(REPO))
                from agnet.data.constants import release_twin_test_size

                protocols = [f"vehicleid-{release_twin_test_size(s, args.scale)}" for s in (800, 1600, 2400, 3200)]
            code = EVAL_CODE.format(threads=args.workers, manifest=manifest, protocols=protocols)
            records.append(run_stage(f"{fmt}-evaluate", _python("-c", code), logs))
            extra[f"{fmt}-evaluate"] = json.loads((logs / f"{fmt}-evaluate.log").read_text().strip().splitlines()[-1])
        if manifest.exists():
            extra[f"{fmt}-train-images"] = _train_images(manifest)

    meta = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "cpu": cpu_name(), "cores": os.cpu_count(),
            "python": platform.python_version(), "scale": args.scale, "workers": args.workers}
    projection = project(extra)
    result = {"meta": meta, "stages": records, "details": extra, "projection": projection}
    (args.work / "bench_rehearsal.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if args.write:
        write_docs(result, args.note)
    failed = [r["stage"] for r in records if r["rc"] != 0]
    too_big = [r["stage"] for r in records if max(r["peak_rss_mb"], r["tree_rss_mb"]) > 8 * GB]
    if failed or too_big:
        print(f"failed: {failed}; above 8 GB: {too_big}", file=sys.stderr)
        return 1
    return 0


def _train_images(manifest: Path) -> int:
    import pandas as pd

    frame = pd.read_parquet(manifest, columns=["split"])
    return int((frame["split"] == "train").sum())


def project(extra: dict) -> dict:
    """Full protocol on one GPU from the measured image counts and the stated throughput assumptions."""
    train = {ds: extra.get(f"{ds}-train-images") for ds in ("veri", "vehicleid")}
    if not all(train.values()):
        return {}
    runs = PROTOCOL["variants"] * PROTOCOL["seeds"]
    train_h = {ds: runs * PROTOCOL["epochs"] * n / GPU_TRAIN_IMAGES_PER_S / 3600 for ds, n in train.items()}
    # extraction: VeRi gallery + query (+ held-out val images, not counted); VehicleID all 108,221 test images
    extract_images = {"veri": 11_579 + 1_678, "vehicleid": 108_221}
    extract_h = {ds: runs * n / GPU_EXTRACT_IMAGES_PER_S / 3600 for ds, n in extract_images.items()}
    eval_s = 0.0
    for ds, per_protocol in (("veri", 2), ("vehicleid", 4)):
        measured = extra.get(f"{ds}-evaluate")
        if measured:  # measured per descriptor on the CPU; 3 descriptors per run
            eval_s += runs * 3 * sum(p["seconds"] for p in measured.values())
    total = sum(train_h.values()) + sum(extract_h.values()) + eval_s / 3600
    return {"train_images_per_epoch": train, "train_hours": {k: round(v, 2) for k, v in train_h.items()},
            "extract_hours": {k: round(v, 2) for k, v in extract_h.items()}, "evaluate_hours_cpu": round(eval_s / 3600, 2),
            "total_hours": round(total, 2),
            "assumptions": {"gpu_train_images_per_s": GPU_TRAIN_IMAGES_PER_S,
                            "gpu_extract_images_per_s": GPU_EXTRACT_IMAGES_PER_S, **PROTOCOL}}


def write_docs(result: dict, note: str) -> None:
    meta = result["meta"]
    rows = []
    for r in result["stages"]:
        size = f"{r['jpeg_files']:,} JPEGs, mean {r['jpeg_mean_kb']} kB, {r['jpeg_total_gb']} GB" if "jpeg_files" in r else ""
        rows.append(f"| {r['stage']} | {r['seconds']:,.1f} | {r['peak_rss_mb']:,.0f} | {r['tree_rss_mb']:,.0f} | "
                    f"{'ok' if r['rc'] == 0 else 'FAILED'} | {size} |")
    lines = [START, f"Measured {meta['date']} on {meta['cpu']} ({meta['cores']} cores), Python {meta['python']}, "
             f"release scale {meta['scale']:g}, {meta['workers']} workers. {note}".strip(), "",
             "| stage | wall s | peak RSS MB (VmHWM) | process tree MB (sampled) | status | output |",
             "|---|---|---|---|---|---|", *rows]
    details = result["details"]
    if "extract" in details:
        e = details["extract"]
        lines += ["", (f"ResNet-50 AGNet extraction on the CPU at 224 x 224 (decode + resize + forward, batch 32): "
                  f"{e['images_per_s']:.1f} images/s on {e['images']} images.")]
    for ds in ("veri", "vehicleid"):
        if f"{ds}-evaluate" in details:
            parts = [f"{p}: {v['seconds']} s ({v['queries']:,} queries x {v['gallery']:,} gallery)"
                     for p, v in details[f"{ds}-evaluate"].items()]
            lines += ["", f"{ds} evaluation from random 8,192-d features (one descriptor): " + "; ".join(parts) + "."]
    p = result["projection"]
    if p:
        a = p["assumptions"]
        lines += ["", (f"Projection of the full protocol ({a['variants']} variants x {a['seeds']} seeds x {a['epochs']} "
                  f"epochs, both datasets) on one GPU, assuming {a['gpu_train_images_per_s']:,.0f} training and "
                  f"{a['gpu_extract_images_per_s']:,.0f} extraction images/s (to be replaced by gpu_check.sh's figures):"),
                  "", "| part | hours |", "|---|---|",
                  *[f"| training {ds} ({n:,} images/epoch) | {p['train_hours'][ds]} |"
                    for ds, n in p["train_images_per_epoch"].items()],
                  *[f"| extraction {ds} | {h} |" for ds, h in p["extract_hours"].items()],
                  f"| evaluation (all runs, CPU as measured) | {p['evaluate_hours_cpu']} |",
                  f"| **total** | **{p['total_hours']}** |"]
    lines.append(END)
    block = "\n".join(lines)
    text = DOCS.read_text()
    if START in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.DOTALL)
    else:
        text += "\n" + block + "\n"
    DOCS.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
