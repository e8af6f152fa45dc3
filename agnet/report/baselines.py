"""Table V (not in the paper): AGNet beside a modern baseline.

One part per dataset format (VeRi: mAP, Rank-1, Rank-5; VehicleID: Rank-1 and Rank-5 per test size): the published
strong-baseline numbers with their source (``baselines.yaml``, each copied from a named file), the AGNet paper's row
as Tables I/II print it (read from ``paper_results.yaml``, never retyped), and ours — AGNet-ASL (All), BoT (its one
descriptor, ID: the BNNeck feature), BoT+Attr and BoT+ALS (All) — each the mean ± std over the seeds the summary
records. A row of ours whose variant did not run on the dataset is left out. The rows are built by
:func:`agnet.report.tables.build_rows` (the published rows as a table's literature rows, the paper row with ours and
the difference, the BoT rows as rows of ours without a paper value), so Table V is formatted and captioned as
Tables I–IV are, the synthetic-twin warning included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from agnet.errors import AgnetError
from agnet.fileio import write_text
from agnet.report.paper import ROMAN, load_paper, parse_value, table_row
from agnet.report.tables import build_rows, caption_for, source_line, to_latex, to_markdown

BASELINES = Path(__file__).with_name("baselines.yaml")
PUBLISHED = "published; different backbone/protocol: note {n}"
NAMES = {"veri": "VeRi-776", "vehicleid": "VehicleID"}


def load_baselines(path: Path = BASELINES, paper: dict | None = None) -> dict[str, Any]:
    """``baselines.yaml``, checked: every published row has a source and one value per cell, every paper row exists
    in ``paper_results.yaml`` and has a row of ours, every row of ours names a variant and a descriptor."""
    paper = paper or load_paper()
    data = yaml.safe_load(Path(path).read_text())
    sources = data.get("sources") or {}
    for name, part in (data.get("parts") or {}).items():
        where = f"{path}: parts.{name}"
        for key in ("dataset", "groups", "columns", "published", "paper", "ours"):
            if key not in part:
                raise AgnetError(f"{where}: missing field {key!r}")
        cells = len(part["groups"]) * len(part["columns"])
        ours = {row.get("method") for row in part["ours"]}
        for i, row in enumerate(part["ours"]):
            if not row.get("variant") or not row.get("descriptor"):
                raise AgnetError(f"{where}.ours[{i}]: needs 'method', 'variant' and 'descriptor'")
        for i, row in enumerate(part["published"]):
            if row.get("source") not in sources:
                raise AgnetError(f"{where}.published[{i}].source: {row.get('source')!r} is not one of 'sources' "
                                 f"({', '.join(sources) or 'none'})")
            for key in ("method", "where", "backbone", "input", "differs"):
                if not row.get(key):
                    raise AgnetError(f"{where}.published[{i}]: missing field {key!r}")
            if len(row.get("values", ())) != cells:
                raise AgnetError(f"{where}.published[{i}].values: {len(row.get('values', ()))} value(s) for "
                                 f"{cells} cell(s) ({len(part['groups'])} group(s) x {part['columns']})")
            for value in row["values"]:
                try:
                    parse_value(str(value))
                except ValueError:
                    raise AgnetError(f"{where}.published[{i}].values: {value!r} is neither a number nor '-'") from None
            if row.get("stands_for") is not None and row["stands_for"] not in ours:
                raise AgnetError(f"{where}.published[{i}].stands_for: {row['stands_for']!r} is no method of 'ours'")
        for i, row in enumerate(part["paper"]):
            if row.get("method") not in ours:
                raise AgnetError(f"{where}.paper[{i}]: no row of 'ours' with method {row.get('method')!r}")
            try:
                table_row(paper, row["table"], row["row"])
            except (AgnetError, KeyError) as error:
                raise AgnetError(f"{where}.paper[{i}]: {error}") from None
            if paper["tables"][row["table"]]["dataset"] != part["dataset"]:
                raise AgnetError(f"{where}.paper[{i}]: {row['table']} is a {paper['tables'][row['table']]['dataset']} "
                                 f"table, not {part['dataset']}")
    return data


def printed(paper: dict, table: str, row: str, group, column: str) -> str:
    """One cell of the paper's Tables I–IV exactly as printed."""
    spec = paper["tables"][table]
    index = spec["groups"].index(group) * len(spec["columns"]) + spec["columns"].index(column)
    return table_row(paper, table, row)["values"][index]


def table_spec(part: dict, title: str, paper: dict) -> dict[str, Any]:
    """One part of Table V as a table of ``paper_results.yaml`` (``rows``, ``arms``), for :func:`build_rows`."""
    ours = {row["method"]: row for row in part["ours"]}
    rows = [{"method": row["method"], "ref": f"({PUBLISHED.format(n=n)})", "values": [str(v) for v in row["values"]]}
            for n, row in enumerate(part["published"], start=1)]
    for row in part["paper"]:
        spec = {k: v for k, v in ours[row["method"]].items() if k in ("variant", "descriptor", "protocols")}
        rows.append({"method": row["method"], "ours": spec,
                     "values": [printed(paper, row["table"], row["row"], g, c)
                                for g in part["groups"] for c in part["columns"]]})
    paired = {row["method"] for row in part["paper"]}
    arms = [{"method": method, "label": f"{method} (ours, {row['descriptor']})",
             "ours": {k: v for k, v in row.items() if k in ("variant", "descriptor", "protocols")}}
            for method, row in ours.items() if method not in paired]
    return {"title": f"{title}, {NAMES.get(part['dataset'], part['dataset'])}", "dataset": part["dataset"],
            "groups": part["groups"], "columns": part["columns"], "rows": rows, "arms": arms,
            "arms_note": ("AGNet-ASL (ours) is its All descriptor, as in Tables I/II; BoT rows are our variants (config.yaml `variants`: bot, bot_attr, bot_als; "
                          "docs/paper-mapping.md, \"Table V: baselines\"), each shown by the descriptor in brackets: "
                          "BoT has only its BNNeck feature (ID), BoT+Attr and BoT+ALS fuse it with the attribute "
                          "feature (All, Eq. 5); a variant that did not run on this dataset has no row")}


def _notes(part: dict, sources: dict, paper_rows: list[dict]) -> list[str]:
    notes = []
    for n, row in enumerate(part["published"], start=1):
        source = sources[row["source"]]
        notes.append(f"note {n}: {row['method']} as published in {source['cite']}, {source['file']} "
                     f"({source['url']}): {row['where']}; backbone {row['backbone']}, input {row['input']}, config "
                     f"{row['config']}; differs from ours: {row['differs']}; '-' where it prints no value")
    for row in paper_rows:
        notes.append(f"{row['method']} (paper): the AGNet paper's row '{row['row']}' of its Table "
                     f"{ROMAN.get(row['table'], row['table'])}, "
                     "without spatio-temporal re-ranking")
    return notes


def write_table5(summary: pd.DataFrame, datasets: dict[str, dict[str, Any]], out_dir: str | Path,
                 paper: dict | None = None, source: dict[str, str] | None = None,
                 baselines: dict | None = None) -> list[Path]:
    """table5.{tex,md}: one part per dataset format that ``datasets`` (format -> context) holds, in file order."""
    paper = paper or load_paper()
    baselines = baselines or load_baselines(paper=paper)
    parts_tex, parts_md = [], []
    for name, part in baselines["parts"].items():
        context = datasets.get(part["dataset"])
        if context is None:
            continue
        spec = table_spec(part, baselines["title"], paper)
        variants = {row["variant"] for row in part["ours"]}
        shown = summary[summary["variant"].isin(variants)]  # the caption counts the seeds of these rows only
        labels, rows, rules = build_rows(spec, shown, context["dataset"], context.get("stand_ins"))
        caption = "; ".join([caption_for("table5", spec, context, shown).rstrip(".")]
                            + _notes(part, baselines["sources"], part["paper"])) + "."
        label = NAMES.get(part["dataset"], name)
        parts_tex.append(to_latex(spec, labels, rows, rules, caption, f"tab:agnet-5-{name}"))
        parts_md.append(to_markdown(f"table5 ({label})", spec, labels, rows, caption))
    if not parts_tex:
        raise AgnetError(f"Table V needs a dataset of format {' or '.join(p['dataset'] for p in baselines['parts'].values())}"
                         " in the run")
    line = source_line(source)
    out_dir = Path(out_dir)
    written = []
    for suffix, text in (("tex", "\n".join(parts_tex) + (f"% {line}\n" if line else "")),
                         ("md", "\n".join(parts_md) + (f"\n{line}\n" if line else ""))):
        path = out_dir / f"table5.{suffix}"
        write_text(path, text)
        written.append(path)
    return written
