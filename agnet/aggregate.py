"""Collect the per-run metrics files into tidy tables the report stage reads.

A metrics file (written by ``agnet evaluate``) holds one run's records: ``provenance`` (dataset label,
variant, seed and the sha256 of the features, model and manifest they came from) and ``records`` (one
per descriptor × protocol). Nothing is read from folder names.

``runs.csv``/``runs.parquet``: one row per (dataset, variant, seed, descriptor, protocol) with mAP,
Rank-1/5/10, mINP, counts, distance, (VehicleID) the number of trials and the trial std, (All) α, (VeRi+STR) λ
(``str_lambda``: the mean of the cross-fitting folds' λ, or the one fixed λ; ``str_lambdas``: each fold's, e.g.
``0.3/0.5``; ``str_at_edge``: the grid edges a fold's choice sits at, e.g. ``upper``, empty when none),
whether the model was truncated (``max_steps``) or resumed with a changed schedule, and the hashes of the
features and model (``flagged_seeds`` in the summary counts the seeds so marked). ``summary.csv``/``.parquet``: the same grouped over seeds — mean, std
(ddof 1; 0 for a single seed), the number of seeds, and the trials and α the rows were computed with; a re-ranked
group also ``str_lambdas`` (each seed's fold λs, in seed order, ``; ``-separated) and ``str_edge_seeds`` (how many
seeds have a fold whose λ is at an edge of its grid). The spatio-temporal control ``veri-st`` reads no features: its
rows have the descriptor ``none``.

The runs of one dataset must have been evaluated with the same settings (the ``evaluation`` section each metrics
file records: the same protocols and scoring for every run, the same α for every run scored with All, the same
descriptors for every seed of a variant; a model without the attribute branch, bot, is scored on ID alone): a stale
file next to fresh ones is refused, naming both, instead of being averaged with them. ``cmc.parquet``: the CMC curves in long form (dataset, variant,
seed, descriptor, protocol, rank, cmc).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from agnet.errors import AgnetError
from agnet.fileio import check_complete, file_set

KEYS = ["dataset", "variant", "seed", "descriptor", "protocol"]
VALUES = ["mAP", "rank1", "rank5", "rank10", "mINP", "official_mAP"]
OUTPUTS = ("runs.csv", "runs.parquet", "summary.csv", "summary.parquet", "cmc.parquet")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# record field -> (check, what it must be); optional fields are checked where present
_RECORD_FIELDS = {
    "descriptor": (lambda v: v in ("Attr", "ID", "All", "none"), "Attr, ID, All or none (veri-st)"),
    "protocol": (lambda v: isinstance(v, str), "a protocol name"),
    "distance": (lambda v: isinstance(v, str), "a text"),
    "mAP": (lambda v: _is_number(v) and 0.0 <= v <= 1.0, "a number in [0, 1]"),
    "cmc": (lambda v: isinstance(v, list) and len(v) > 0 and all(_is_number(x) and 0.0 <= x <= 1.0 for x in v),
            "a non-empty list of numbers in [0, 1]"),
    "num_queries": (lambda v: _is_integer(v) and v >= 0, "a count"),
    "num_gallery": (lambda v: _is_integer(v) and v >= 0, "a count"),
}
_OPTIONAL_NUMBERS = ("rank1", "rank5", "rank10", "mINP", "official_mAP")


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A metrics file of ``agnet evaluate``: ``{"provenance": ..., "evaluation": ..., "records": [...]}``, checked
    field by field (an error names the file, the record and the field, and what it must be)."""
    from agnet.protocols import parse

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
    if not _is_integer(provenance["seed"]) or provenance["seed"] < 0:
        raise AgnetError(f"{path}: provenance.seed must be a non-negative integer, got {provenance['seed']!r}")
    for key in ("dataset", "variant"):
        if not isinstance(provenance[key], str) or not provenance[key]:
            raise AgnetError(f"{path}: provenance.{key} must be a name, got {provenance[key]!r}")
    for i, record in enumerate(data["records"]):
        if not isinstance(record, dict):
            raise AgnetError(f"{path}: record {i} is not a mapping")
        absent = [k for k in _RECORD_FIELDS if k not in record]
        if absent:
            raise AgnetError(f"{path}: record {i} lacks {', '.join(absent)}")
        for key, (ok, what) in _RECORD_FIELDS.items():
            if not ok(record[key]):
                raise AgnetError(f"{path}: record {i} ({record.get('descriptor')} {record.get('protocol')}): {key} "
                                 f"must be {what}, got {str(record[key])[:60]!r}")
        try:
            parsed = parse(record["protocol"])
        except AgnetError as error:
            raise AgnetError(f"{path}: record {i}: {error}") from None
        if (record["descriptor"] == "none") == parsed.appearance:
            raise AgnetError(f"{path}: record {i}: descriptor {record['descriptor']!r} with protocol "
                             f"{record['protocol']}: 'none' is the descriptor of a protocol that reads no features "
                             "(veri-st), and only of it")
        for key in (*_OPTIONAL_NUMBERS, *(f"{k}_std" for k in _OPTIONAL_NUMBERS), "mAP_std"):
            if record.get(key) is not None and not _is_number(record[key]):
                raise AgnetError(f"{path}: record {i}: {key} must be a number, got {record[key]!r}")
        if "trials" in record and not (isinstance(record["trials"], list) and record["trials"]):
            raise AgnetError(f"{path}: record {i}: trials must be a non-empty list of trials, got "
                             f"{str(record['trials'])[:40]!r}")
        if "str" in record and not (isinstance(record["str"], dict) and _is_number(record["str"].get("lambda"))):
            raise AgnetError(f"{path}: record {i}: str must be a mapping with a number 'lambda', got "
                             f"{str(record['str'])[:40]!r}")
        if "str" in record and record["str"].get("folds") is not None:
            folds = record["str"]["folds"]
            if not (isinstance(folds, list) and folds and all(
                    isinstance(f, dict) and _is_number(f.get("lambda")) and f.get("at_edge") in (None, "upper", "lower")
                    for f in folds)):
                raise AgnetError(f"{path}: record {i}: str.folds must be a non-empty list of folds, each with a "
                                 f"number 'lambda' and 'at_edge' null, 'upper' or 'lower', got {str(folds)[:60]!r}")
    if not isinstance(data.get("evaluation", {}), dict):
        raise AgnetError(f"{path}: 'evaluation' must be the mapping of settings the run was evaluated with")
    from agnet.sensitivity import check_sweep

    check_sweep(data, path)  # the optional alpha_sweep / alpha_crossfit (Eq. 5's α sensitivity)
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
            row.update(str_columns(record["str"]))
        row["truncated"] = bool(provenance.get("truncated", False))
        row["schedule_changed"] = bool(provenance.get("schedule_changes", 0))
        row["features_sha256"] = provenance.get("features_sha256")
        row["model_sha256"] = provenance.get("model_sha256")
        rows.append(row)
        keys = {k: row[k] for k in KEYS}
        cmc += [{**keys, "rank": rank, "cmc": value} for rank, value in enumerate(record["cmc"], start=1)]
    return rows, cmc


def _number_text(value: float) -> str:
    return f"{float(value):g}"


def str_columns(rerank: dict[str, Any]) -> dict[str, Any]:
    """runs.csv's λ columns of a ``veri-str`` record: ``str_lambda`` (the mean of the folds' λ; the fixed λ),
    ``str_lambdas`` (each fold's λ, ``/``-separated, in fold order) and ``str_at_edge`` (the edges, ``upper`` and/or
    ``lower``, that a fold's choice sits at; empty when none, or when λ was not tuned)."""
    folds = rerank.get("folds") or [{"lambda": rerank["lambda"], "at_edge": rerank.get("at_edge")}]
    edges = sorted({f["at_edge"] for f in folds if f.get("at_edge")})
    tuning = "one fixed λ (not tuned)"
    if rerank.get("folds"):
        grid, assignment = rerank.get("grid") or [], rerank.get("fold_assignment") or {}
        tuning = (f"{len(folds)} folds of the test vehicles (seed {assignment.get('seed', '?')}), grid "
                  + (f"{_number_text(min(grid))}–{_number_text(max(grid))} ({len(grid)} values)" if grid else "?")
                  + f", doubled upwards up to {rerank.get('max_doublings', '?')} times while its largest wins")
    return {"str_lambda": float(rerank["lambda"]), "str_lambdas": "/".join(_number_text(f["lambda"]) for f in folds),
            "str_at_edge": "/".join(edges), "str_tuning": tuning}


def _difference(ours: Any, theirs: Any, where: str = "") -> str:
    """The first setting two evaluation records disagree on, as ``key: a vs b``."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in sorted(set(ours) | set(theirs)):
            if ours.get(key) != theirs.get(key):
                return _difference(ours.get(key), theirs.get(key), f"{where}.{key}" if where else key)
    return f"{where or 'evaluation'}: {ours!r} vs {theirs!r}"


FUSION_KEYS = ("alpha", "alpha_sweep")  # settings of the All descriptor: only in the documents of runs that have it


def _settings_parts(evaluation: Any, dataset: str, variant: str) -> list[tuple[tuple, Any]]:
    """What must agree between the metrics files of a dataset, by scope: the protocols and scoring settings across
    all its runs; α and its sweep across the runs scored with All; the descriptors across the seeds of a variant (a
    model without the attribute branch, bot, is scored on ID alone: agnet.settings.evaluation_key)."""
    if not isinstance(evaluation, dict):
        return [((dataset,), evaluation)]
    shared = {k: v for k, v in evaluation.items() if k != "descriptors" and k not in FUSION_KEYS}
    parts = [((dataset,), shared)]
    if "alpha" in evaluation:  # every run scored with All: one descriptor list and one α for all of them
        parts.append(((dataset, "All"), {k: evaluation.get(k) for k in ("descriptors", *FUSION_KEYS)}))
    else:
        parts.append(((dataset, variant), {"descriptors": evaluation.get("descriptors")}))
    return parts


def aggregate(paths: list[str | Path], out_dir: str | Path) -> pd.DataFrame:
    """Write runs.{csv,parquet}, summary.{csv,parquet} and cmc.parquet to ``out_dir``; returns the summary."""
    if not paths:
        raise AgnetError("no metrics files to aggregate")
    rows: list[dict] = []
    cmc_rows: list[dict] = []
    settings_of: dict[tuple, tuple[str, str]] = {}  # scope -> (its evaluation settings as text, first file)
    data_of: dict[str, tuple[tuple, str]] = {}  # dataset -> ((format, manifest sha256), first file)
    for path in paths:
        data = read_metrics(path)
        dataset = str(data["provenance"]["dataset"])
        source = (data["provenance"].get("dataset_format"), data["provenance"].get("manifest_sha256"))
        seen = data_of.setdefault(dataset, (source, str(path)))
        if seen[0] != source:
            (fmt_a, sha_a), (fmt_b, sha_b) = source, seen[0]
            what = f"format {fmt_a} vs {fmt_b}" if fmt_a != fmt_b else f"manifest sha256 {str(sha_a)[:12]}… vs " \
                                                                         f"{str(sha_b)[:12]}…"
            raise AgnetError(f"{path} and {seen[1]} both say dataset {dataset!r} but were computed from different data "
                             f"({what}): two datasets under one label cannot be averaged as seeds; give each its "
                             "own dataset name")
        variant = str(data["provenance"].get("variant"))
        for scope, part in _settings_parts(data.get("evaluation"), dataset, variant):
            settings = json.dumps(part, sort_keys=True)
            first = settings_of.setdefault(scope, (settings, str(path)))
            if first[0] != settings:
                raise AgnetError(f"{path} and {first[1]} were evaluated with different settings for dataset "
                                 f"{dataset!r} ({_difference(part, json.loads(first[0]))}): one of them is stale; "
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
    # seeds of a group whose model was cut short (max_steps) or resumed with a changed schedule: flagged in the tables
    flagged = (runs["truncated"] | runs["schedule_changed"]).groupby(
        [runs[k] for k in ("dataset", "variant", "descriptor", "protocol", "distance")], sort=True).sum()
    summary["flagged_seeds"] = flagged.astype(int)
    for setting in ("trials", "alpha"):  # equal within a group (the settings check above)
        if setting in runs:
            summary[setting] = grouped[setting].first()
    if "str_lambdas" in runs:  # each seed's fold λs (seed order: runs is sorted) and the seeds with an edge
        by_seed = runs["str_lambdas"].where(runs["str_lambdas"].notna(), None)
        summary["str_lambdas"] = by_seed.groupby([runs[k] for k in ("dataset", "variant", "descriptor", "protocol",
                                                                    "distance")], sort=True).agg(
            lambda values: "; ".join(str(v) for v in values if isinstance(v, str)) or None)
        summary["str_edge_seeds"] = runs["str_at_edge"].fillna("").astype(str).ne("").groupby(
            [runs[k] for k in ("dataset", "variant", "descriptor", "protocol", "distance")], sort=True).sum().where(
            summary["str_lambdas"].notna())
        summary["str_tuning"] = grouped["str_tuning"].first()
    summary = summary.reset_index()
    with file_set(out_dir, OUTPUTS) as staged:  # the five files replace the old five as one set
        cmc.to_parquet(staged["cmc.parquet"], index=False)
        for name, table in (("runs", runs), ("summary", summary)):
            table.to_csv(staged[f"{name}.csv"], index=False)
            table.to_parquet(staged[f"{name}.parquet"], index=False)
    return summary


# What each table of this module holds at least (the report reads them by these columns).
TABLE_COLUMNS = {
    "runs": [*KEYS, "distance", "mAP", "rank1"],
    "summary": ["dataset", "variant", "descriptor", "protocol", "distance", "mAP_mean", "mAP_std", "rank1_mean",
                "seeds"],
    "cmc": [*KEYS, "rank", "cmc"],
}
_FILES = {"runs": "results/metrics/runs.csv", "summary": "results/metrics/summary.csv",
          "cmc": "results/metrics/cmc.parquet"}


def read_table(path: str | Path, kind: str) -> pd.DataFrame:
    """A table written by :func:`aggregate` (``kind``: runs, summary or cmc), checked: the set it belongs to is
    complete, it has the columns of its kind, and it is not another kind's table given by mistake."""
    path = Path(path)
    if not path.is_file():
        raise AgnetError(f"{path}: no such {kind} table (written by `agnet aggregate`: {_FILES[kind]})")
    check_complete(path)
    try:
        table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise AgnetError(f"{path}: unreadable {kind} table ({str(error).splitlines()[0]})") from None
    missing = [c for c in TABLE_COLUMNS[kind] if c not in table.columns]
    if missing:
        other = next((k for k, cols in TABLE_COLUMNS.items() if k != kind and all(c in table for c in cols)), None)
        hint = f": this is a {other} table; pass the {kind} table ({_FILES[kind]})" if other else ""
        raise AgnetError(f"{path}: not a {kind} table (lacks column(s) {', '.join(missing)}){hint}")
    if table.empty:
        raise AgnetError(f"{path}: the {kind} table has no rows")
    return table
