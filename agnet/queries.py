"""Per-query results of a run (``queries.parquet``, written by ``agnet evaluate --queries``) and their checks.

One row per query and trial of every descriptor × protocol the run's metrics file holds (columns
:data:`COLUMNS`; see :func:`agnet.evaluate.per_query_frame`), so that anyone can recompute a metric over any subset
of test vehicles — the claims check resamples whole vehicles (:func:`agnet.report.stats.vehicle_bootstrap`). The file
names its run (dataset, variant, seed) and the features it was computed from (``features_sha256`` in the Parquet
metadata); :func:`check_against_runs` refuses a file whose means are not the run's reported metrics (stale or
another run's).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agnet.errors import AgnetError
from agnet.fileio import atomic_path

COLUMNS = ("dataset", "variant", "seed", "descriptor", "protocol", "trial", "query", "vehicle_id", "ap",
           "first_match_rank")
_META_KEY = b"agnet"
TOLERANCE = 1e-6  # |mean of the file's AP − the run's mAP| allowed (float rounding of the JSON value)


def write_queries(path: str | Path, frames: Sequence[pd.DataFrame], provenance: dict[str, Any]) -> None:
    """Write one run's per-query frames (:func:`agnet.evaluate.per_query_frame`) atomically as Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pd.concat(list(frames), ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS[3:])
    table.insert(0, "seed", int(provenance.get("seed", 0)))
    table.insert(0, "variant", str(provenance.get("variant", "")))
    table.insert(0, "dataset", str(provenance.get("dataset", "")))
    for column in ("dataset", "variant", "descriptor", "protocol"):
        table[column] = table[column].astype("category")
    arrow = pa.Table.from_pandas(table[list(COLUMNS)], preserve_index=False)
    meta = {"features_sha256": provenance.get("features_sha256"), "columns": list(COLUMNS)}
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), _META_KEY: json.dumps(meta).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)


def read_queries(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A per-query file and its metadata, checked: its columns, that AP lies in [0, 1] (or NaN where not scored) and
    that a scored query has a first-match rank ≥ 1."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise AgnetError(f"{path}: no such per-query file (written by `agnet evaluate --queries`)")
    try:
        arrow = pq.read_table(path)
    except (OSError, ValueError) as error:
        raise AgnetError(f"{path}: not a per-query Parquet file ({str(error).splitlines()[0]})") from None
    missing = [c for c in COLUMNS if c not in arrow.column_names]
    if missing:
        raise AgnetError(f"{path}: not a per-query file of `agnet evaluate --queries` (lacks {', '.join(missing)})")
    raw = (arrow.schema.metadata or {}).get(_META_KEY)
    meta = json.loads(raw) if raw else {}
    table = arrow.to_pandas()
    for column in ("dataset", "variant", "descriptor", "protocol"):  # categories: millions of rows at release size
        table[column] = table[column].astype("category")
    ap = table["ap"].to_numpy(np.float64)
    scored = ~np.isnan(ap)
    bad = scored & ((ap < 0) | (ap > 1) | (table["first_match_rank"].to_numpy() < 1))
    if bad.any():
        row = table[bad].iloc[0]
        raise AgnetError(f"{path}: query {row['query']} of {row['descriptor']} {row['protocol']} has AP {row['ap']} "
                         f"and first-match rank {row['first_match_rank']}: expected AP in [0, 1] and a rank ≥ 1")
    return table, meta


def run_means(table: pd.DataFrame) -> pd.DataFrame:
    """mAP per (dataset, variant, seed, descriptor, protocol) from per-query rows: the mean over scored queries,
    averaged over trials — what the run's metrics file reports."""
    keys = ["dataset", "variant", "seed", "descriptor", "protocol"]
    per_trial = table.dropna(subset=["ap"]).groupby([*keys, "trial"], observed=True)["ap"].mean()
    return per_trial.groupby(level=keys, observed=True).mean().rename("mAP").reset_index()


def check_against_runs(table: pd.DataFrame, meta: dict[str, Any], runs: pd.DataFrame, path: str | Path) -> None:
    """Refuse a per-query file that is not the one behind ``runs``' rows of its run: another features file
    (``features_sha256``), a record missing, or a mean that differs from the reported mAP."""
    means = run_means(table)
    keys = ["dataset", "variant", "seed", "descriptor", "protocol"]
    if means.empty:
        raise AgnetError(f"{path}: holds no scored query")
    dataset, variant, seed = means.iloc[0][["dataset", "variant", "seed"]]
    ours = runs[(runs["dataset"] == dataset) & (runs["variant"] == variant) & (runs["seed"] == seed)]
    if ours.empty:
        raise AgnetError(f"{path}: per-query results of {dataset} {variant} seed {seed}, a run the runs table lacks")
    sha = meta.get("features_sha256")
    if sha and "features_sha256" in ours and ours["features_sha256"].notna().any() \
            and sha not in set(ours["features_sha256"].dropna()):
        raise AgnetError(f"{path}: computed from features {str(sha)[:12]}…, but the runs table's {dataset} {variant} "
                         f"seed {seed} come from {str(ours['features_sha256'].dropna().iloc[0])[:12]}…: the per-query "
                         "file is stale; rerun the evaluation")
    joined = ours[keys + ["mAP"]].merge(means, on=keys, how="left", suffixes=("", "_queries"))
    absent = joined[joined["mAP_queries"].isna()]
    if not absent.empty:
        row = absent.iloc[0]
        raise AgnetError(f"{path}: lacks the queries of {row['descriptor']} {row['protocol']} ({dataset} {variant} "
                         f"seed {seed}) that the runs table reports")
    off = joined[(joined["mAP"] - joined["mAP_queries"]).abs() > TOLERANCE]
    if not off.empty:
        row = off.iloc[0]
        raise AgnetError(f"{path}: {row['descriptor']} {row['protocol']} averages to mAP {row['mAP_queries']:.6f}, "
                         f"the runs table reports {row['mAP']:.6f} ({dataset} {variant} seed {seed}): the per-query "
                         "file is stale or of another run; rerun the evaluation")


def load_for_runs(paths: Sequence[str | Path], runs: pd.DataFrame) -> pd.DataFrame:
    """The per-query files of runs in ``runs``, each checked against them (:func:`check_against_runs`), as one
    table; a run given twice is refused."""
    tables, seen = [], {}
    for path in paths:
        table, meta = read_queries(path)
        check_against_runs(table, meta, runs, path)
        run = tuple(table.iloc[0][["dataset", "variant", "seed"]]) if len(table) else None
        if run in seen:
            raise AgnetError(f"{path} and {seen[run]} both hold the per-query results of {' '.join(map(str, run))}")
        seen[run] = path
        tables.append(table)
    if not tables:
        return pd.DataFrame(columns=list(COLUMNS))
    from pandas.api.types import union_categoricals

    for column in ("dataset", "variant", "descriptor", "protocol"):  # one set of categories, kept through concat
        categories = union_categoricals([t[column] for t in tables]).categories
        for t in tables:
            t[column] = t[column].cat.set_categories(categories)
    return pd.concat(tables, ignore_index=True)
