"""Collect every ``metrics.json`` into tidy tables the report stage reads.

``runs.csv``/``runs.parquet``: one row per (dataset, variant, seed, descriptor, protocol) with mAP,
Rank-1/5/10, mINP, counts, distance and (VehicleID) the trial std. ``summary.csv``/``.parquet``:
the same grouped over seeds — mean, std (ddof 1; 0 for a single seed) and the number of seeds.
``cmc.parquet``: the CMC curves in long form (dataset, variant, seed, descriptor, protocol, rank, cmc).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from agnet.atomic import atomic_path
from agnet.errors import AgnetError

KEYS = ["dataset", "variant", "seed", "descriptor", "protocol"]
VALUES = ["mAP", "rank1", "rank5", "rank10", "mINP", "official_mAP"]


def cmc_rows(path: Path, row: dict) -> list[dict]:
    """The CMC curve of one metrics file, one row per rank (1-based)."""
    cmc = json.loads(path.read_text())["cmc"]
    keys = {k: row[k] for k in KEYS}
    return [{**keys, "rank": rank, "cmc": value} for rank, value in enumerate(cmc, start=1)]


def metrics_row(path: Path) -> dict:
    """One tidy row from ``results/runs/<dataset>/<variant>/seed<S>/metrics/<descriptor>/<protocol>.json``."""
    try:
        record = json.loads(path.read_text())
        dataset, variant, seed_dir = path.parts[-6:-3]
        seed = int(seed_dir.removeprefix("seed"))
    except (OSError, ValueError, IndexError) as error:
        raise AgnetError(f"{path}: not a metrics file of a run directory ({error})") from None
    row = {"dataset": dataset, "variant": variant, "seed": seed, "descriptor": record["descriptor"],
           "protocol": record["protocol"], "distance": record["distance"],
           "num_queries": record["num_queries"], "num_gallery": record["num_gallery"]}
    for key in VALUES:
        row[key] = record.get(key)
        if f"{key}_std" in record:
            row[f"{key}_trial_std"] = record[f"{key}_std"]
    if "str" in record:
        row["str_lambda"] = record["str"]["lambda"]
    return row


def aggregate(paths: list[Path], out_dir: str | Path) -> pd.DataFrame:
    """Write runs.{csv,parquet} and summary.{csv,parquet} to ``out_dir``; returns the summary."""
    if not paths:
        raise AgnetError("no metrics files to aggregate")
    rows = [metrics_row(Path(p)) for p in paths]
    runs = pd.DataFrame(rows).sort_values(KEYS).reset_index(drop=True)
    cmc = pd.DataFrame([r for p, row in zip(paths, rows, strict=True) for r in cmc_rows(Path(p), row)])
    values = [v for v in VALUES if runs[v].notna().any()]
    grouped = runs.groupby(["dataset", "variant", "descriptor", "protocol", "distance"], sort=True)
    summary = grouped[values].agg(["mean", "std"])
    summary.columns = [f"{value}_{stat}" for value, stat in summary.columns]
    summary = summary.fillna({c: 0.0 for c in summary.columns if c.endswith("_std")})
    summary["seeds"] = grouped.size()
    summary = summary.reset_index()
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "cmc.parquet") as tmp:
        cmc.to_parquet(tmp, index=False)
    for name, table in (("runs", runs), ("summary", summary)):
        with atomic_path(out_dir / f"{name}.csv") as tmp:
            table.to_csv(tmp, index=False)
        with atomic_path(out_dir / f"{name}.parquet") as tmp:
            table.to_parquet(tmp, index=False)
    return summary
