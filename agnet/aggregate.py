"""Collect the per-run metrics files into tidy tables the report stage reads.

A metrics file (written by ``agnet evaluate``) holds one run's records: ``provenance`` (dataset label,
variant, seed and the sha256 of the features, model and manifest they came from) and ``records`` (one
per descriptor × protocol). Nothing is read from folder names.

``runs.csv``/``runs.parquet``: one row per (dataset, variant, seed, descriptor, protocol) with mAP,
Rank-1/5/10, mINP, counts, distance, (VehicleID) the number of trials and the trial std, (All) α, (VeRi+STR) λ,
and the hashes of the features and model. ``summary.csv``/``.parquet``: the same grouped over seeds — mean, std
(ddof 1; 0 for a single seed), the number of seeds, and the trials and α the rows were computed with.

The runs of one dataset must have been evaluated with the same settings (the ``evaluation`` section each metrics
file records): a stale file next to fresh ones is refused, naming both, instead of being averaged with them. ``cmc.parquet``: the CMC curves in long form (dataset, variant,
seed, descriptor, protocol, rank, cmc).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from agnet.errors import AgnetError
from agnet.fileio import atomic_path

KEYS = ["dataset", "variant", "seed", "descriptor", "protocol"]
VALUES = ["mAP", "rank1", "rank5", "rank10", "mINP", "official_mAP"]
OUTPUTS = ("runs.csv", "runs.parquet", "summary.csv", "summary.parquet", "cmc.parquet")


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A metrics file of ``agnet evaluate``: ``{"provenance": ..., "records": [...]}`` (checked)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AgnetError(f"{path}: unreadable metrics file ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("records"), list) or not data["records"]:
        raise AgnetError(f"{path}: not a metrics file of `agnet evaluate` (no 'records')")
    provenance = data.get("provenance")
    missing = [k for k in ("dataset", "variant", "seed") if not isinstance(provenance, dict) or k not in provenance]
    if missing:
        raise AgnetError(f"{path}: the metrics' provenance lacks {', '.join(missing)}")
    for i, record in enumerate(data["records"]):
        absent = [k for k in ("descriptor", "protocol", "distance", "mAP", "cmc", "num_queries", "num_gallery")
                  if k not in record]
        if absent:
            raise AgnetError(f"{path}: record {i} lacks {', '.join(absent)}")
    return data


def metrics_rows(data: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """(tidy rows, CMC rows) of one metrics file's content (:func:`read_metrics`)."""
    provenance = data["provenance"]
    rows, cmc = [], []
    for record in data["records"]:
        row = {"dataset": str(provenance["dataset"]), "variant": str(provenance["variant"]),
               "seed": int(provenance["seed"]), "descriptor": record["descriptor"], "protocol": record["protocol"],
               "distance": record["distance"], "num_queries": record["num_queries"],
               "num_gallery": record["num_gallery"]}
        for key in VALUES:
            row[key] = record.get(key)
            if f"{key}_std" in record:
                row[f"{key}_trial_std"] = record[f"{key}_std"]
        if "trials" in record:
            row["trials"] = len(record["trials"])
        if record["descriptor"] == "All" and "alpha" in (data.get("evaluation") or {}):
            row["alpha"] = data["evaluation"]["alpha"]
        if "str" in record:
            row["str_lambda"] = record["str"]["lambda"]
        row["features_sha256"] = provenance.get("features_sha256")
        row["model_sha256"] = provenance.get("model_sha256")
        rows.append(row)
        keys = {k: row[k] for k in KEYS}
        cmc += [{**keys, "rank": rank, "cmc": value} for rank, value in enumerate(record["cmc"], start=1)]
    return rows, cmc


def _difference(ours: Any, theirs: Any, where: str = "") -> str:
    """The first setting two evaluation records disagree on, as ``key: a vs b``."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in sorted(set(ours) | set(theirs)):
            if ours.get(key) != theirs.get(key):
                return _difference(ours.get(key), theirs.get(key), f"{where}.{key}" if where else key)
    return f"{where or 'evaluation'}: {ours!r} vs {theirs!r}"


def aggregate(paths: list[str | Path], out_dir: str | Path) -> pd.DataFrame:
    """Write runs.{csv,parquet}, summary.{csv,parquet} and cmc.parquet to ``out_dir``; returns the summary."""
    if not paths:
        raise AgnetError("no metrics files to aggregate")
    rows: list[dict] = []
    cmc_rows: list[dict] = []
    settings_of: dict[str, tuple[str, str]] = {}  # dataset -> (its evaluation settings as text, first file)
    for path in paths:
        data = read_metrics(path)
        dataset = str(data["provenance"]["dataset"])
        settings = json.dumps(data.get("evaluation"), sort_keys=True)
        first = settings_of.setdefault(dataset, (settings, str(path)))
        if first[0] != settings:
            raise AgnetError(f"{path} and {first[1]} were evaluated with different settings for dataset {dataset!r} "
                             f"({_difference(data.get('evaluation'), json.loads(first[0]))}): one of them is stale; "
                             "rerun the evaluation (snakemake reruns exactly the stale ones)")
        some, curves = metrics_rows(data)
        rows += some
        cmc_rows += curves
    runs = pd.DataFrame(rows).sort_values(KEYS).reset_index(drop=True)
    hashes = [c for c in runs.columns if c.endswith("_sha256")]
    runs = runs[[c for c in runs.columns if c not in hashes] + hashes]  # provenance columns last
    twice = runs[runs.duplicated(KEYS, keep=False)]
    if not twice.empty:
        first = twice.iloc[0]
        raise AgnetError("two metrics files hold the same result: " + ", ".join(f"{k} {first[k]}" for k in KEYS))
    cmc = pd.DataFrame(cmc_rows)
    values = [v for v in VALUES if runs[v].notna().any()]
    grouped = runs.groupby(["dataset", "variant", "descriptor", "protocol", "distance"], sort=True)
    summary = grouped[values].agg(["mean", "std"])
    summary.columns = [f"{value}_{stat}" for value, stat in summary.columns]
    summary = summary.fillna({c: 0.0 for c in summary.columns if c.endswith("_std")})
    summary["seeds"] = grouped.size()
    for setting in ("trials", "alpha"):  # equal within a group (the settings check above)
        if setting in runs:
            summary[setting] = grouped[setting].first()
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
