"""The claims check's test-set bootstrap at release size: per-query files of 9 VehicleID runs (3 variants x 3 seeds,
3 descriptors x 4 test lists x 10 trials: 15.7 M rows) written, loaded and checked against a runs table, indexed,
and 8 claims bootstrapped (1,000 vehicle draws each). Random values: the time does not depend on them.

    python benchmarks/bench_claims.py     (prints the timings; docs/benchmarks.md, "The claims check at release size")
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from agnet.queries import load_for_runs, write_queries
from agnet.report.claims import QueryIndex, Side
from agnet.report.stats import vehicle_bootstrap

SIZES = {800: 6493, 1600: 13377, 2400: 19777, 3200: 26350}  # VehicleID's test lists: vehicles -> images
VARIANTS, SEEDS, DESCRIPTORS, TRIALS = ("only_id", "agnet_ce", "agnet_asl"), range(3), ("Attr", "ID", "All"), 10


def one_run(rng: np.random.Generator) -> list[pd.DataFrame]:
    frames = []
    for descriptor in DESCRIPTORS:
        for size, images in SIZES.items():
            queries = images - size  # one gallery image per vehicle, the rest are queries
            for trial in range(TRIALS):
                frames.append(pd.DataFrame({
                    "descriptor": descriptor, "protocol": f"vehicleid-{size}", "trial": np.int32(trial),
                    "query": np.arange(queries, dtype=np.int32),
                    "vehicle_id": rng.integers(0, size, queries).astype(np.int64),
                    "ap": rng.uniform(0, 1, queries), "first_match_rank": rng.integers(1, 20, queries)}))
    return frames


def main() -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        paths, rows = [], []
        start = time.perf_counter()
        for variant in VARIANTS:
            for seed in SEEDS:
                frames = one_run(rng)
                provenance = {"dataset": "vehicleid", "variant": variant, "seed": seed, "features_sha256": "a" * 64}
                path = Path(folder) / f"{variant}-seed{seed}.parquet"
                write_queries(path, frames, provenance)
                paths.append(path)
                means = pd.concat(frames).groupby(["descriptor", "protocol", "trial"])["ap"].mean()
                for (descriptor, protocol), value in means.groupby(level=[0, 1]).mean().items():
                    rows.append({**provenance, "descriptor": descriptor, "protocol": protocol, "mAP": value})
        size_mb = sum(p.stat().st_size for p in paths) / 1e6
        print(f"written {len(paths)} files, {size_mb:.0f} MB, in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        table = load_for_runs(paths, pd.DataFrame(rows))
        print(f"loaded and checked {len(table):,} rows ({table.memory_usage(deep=True).sum() / 1e6:.0f} MB) "
              f"in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        index = QueryIndex(table)
        print(f"indexed in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        for size in SIZES:
            for metric in ("mAP", "Rank1"):
                a, b = (index.runs("vehicleid", Side("", 0.0, v, "All"), f"vehicleid-{size}")
                        for v in ("agnet_asl", "agnet_ce"))
                vehicle_bootstrap(a, b, metric)
        print(f"8 claims bootstrapped (1,000 draws each) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
