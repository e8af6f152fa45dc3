"""Benchmark: generating a synthetic VeRi-776 twin (100 vehicles, 20 cameras) on this machine.

Target (issue 2): under one minute on 2 cores. Prints a JSON record and, with --write, replaces
the matching section of docs/benchmarks.md (machine, versions, date, numbers).

    python benchmarks/bench_synth.py --write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import PIL
from _machine import cpu_name

from agnet.data.synth.vehicleid import synth_vehicleid
from agnet.data.synth.veri import synth_veri
from agnet.data.verify import verify_dataset

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
START, END = "<!-- bench:synth:start -->", "<!-- bench:synth:end -->"


def time_synth(fmt: str, vehicles: int, cameras: int, workers: int, repeats: int) -> dict:
    times, images = [], 0
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "twin"
            start = time.perf_counter()
            if fmt == "veri":
                synth_veri(out, vehicles=vehicles, cameras=cameras, seed=repeat, workers=workers)
            else:
                synth_vehicleid(out, vehicles=vehicles, cameras=cameras, seed=repeat, workers=workers)
            times.append(time.perf_counter() - start)
            report = verify_dataset(fmt, out, check_pixels=False)
            images = sum(split["images"] for name, split in report["splits"].items() if name != "query")
    return {
        "format": fmt, "vehicles": vehicles, "cameras": cameras, "workers": workers, "repeats": repeats,
        "images": images, "seconds_median": round(float(np.median(times)), 2), "seconds_max": round(max(times), 2),
        "images_per_second": round(images / float(np.median(times)), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    results = [
        time_synth("veri", 100, 20, args.workers, args.repeats),
        time_synth("vehicleid", 200, 6, args.workers, args.repeats),
    ]
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"), "cpu": cpu_name(), "cores": os.cpu_count(),
        "python": platform.python_version(), "numpy": np.__version__, "pillow": PIL.__version__,
    }
    print(json.dumps({"meta": meta, "results": results}, indent=2))
    if args.write:
        rows = "\n".join(
            f"| {r['format']} | {r['vehicles']} | {r['cameras']} | {r['images']:,} | {r['workers']} | "
            f"{r['seconds_median']:.1f} | {r['seconds_max']:.1f} | {r['images_per_second']:.0f} |"
            for r in results
        )
        block = (
            f"{START}\nMeasured {meta['date']} on {meta['cpu']} ({meta['cores']} cores), Python {meta['python']}, "
            f"NumPy {meta['numpy']}, Pillow {meta['pillow']}; median of {args.repeats} seeds "
            "(generation only; the verification pass is not timed).\n\n"
            "| twin | vehicles | cameras | images | workers | median s | max s | images/s |\n"
            "|---|---|---|---|---|---|---|---|\n" + rows + f"\n{END}"
        )
        text = DOCS.read_text()
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.DOTALL)
        DOCS.write_text(text)
    veri = results[0]
    return 0 if veri["seconds_max"] < 60 else 1


if __name__ == "__main__":
    sys.exit(main())
