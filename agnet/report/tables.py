"""Tables I–IV: the paper's rows as printed, our reproduced rows (mean ± std over seeds) and the gap.

Each table is written as LaTeX (booktabs, a ``table`` environment ready to ``\\input``, best
published value per column in bold as in the paper) and as markdown. The caption states the
dataset, protocol, distance, seeds and trials — the seeds, trials and distance as the summary's rows record them,
never as a configuration says they should be — and whether the data is the real dataset or a synthetic twin: a
table made from synthetic data says so in its caption and title row.

A VeRi caption states that every row trains on all training vehicles (or how many a dataset holds out). A row
re-ranked with the spatio-temporal term (``veri-str``) states its λ: the caption lists each seed's fold λs and how
they were chosen (cross-fitting on the test vehicles, the grid), and the row is marked ‡ when a fold's λ sits at an
edge of its searched grid (the summary's ``str_lambdas``, ``str_edge_seeds``, ``str_tuning``). A table's
``controls`` (Table I: the spatio-temporal term alone, ``veri-st``) are our rows without a paper value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from agnet.errors import AgnetError
from agnet.fileio import write_text
from agnet.protocols import parse
from agnet.report.paper import load_paper, parse_value

METRIC_KEYS = {"mAP": "mAP", "Rank1": "rank1", "Rank5": "rank5"}
FLAG = " †"  # a result that includes a truncated run or one resumed with a changed schedule
FLAG_NOTE = ("† includes seeds whose model was cut short (training.max_steps) or resumed with a changed schedule "
             "(--allow-changed): not the paper's training")
SYNTHETIC_NOTE = "SYNTHETIC TWIN, not the real dataset: these numbers are not a reproduction of the paper"
EDGE = " ‡"  # a re-ranked row one of whose folds chose a λ at an edge of the searched grid
EDGE_NOTE = ("‡ a fold's λ is at the edge of the searched grid (upper: the largest searched, after doubling; "
             "lower: the smallest, re-ranking did not help there)")


@dataclass(frozen=True)
class Cell:
    """One table cell: the printed text, its numeric value (None for "-"), and whether it is bold."""

    text: str
    value: float | None = None
    bold: bool = False


def group_protocols(dataset_format: str, groups: list, available: list[str],
                    stand_ins: dict[int, int] | None = None) -> list[str | None]:
    """Our protocol for each column group of a paper table (``None``: not evaluated, shown as "n/a").

    VeRi tables have one group (``veri``). A VehicleID group is a test size: on the real data exactly
    ``vehicleid-<size>``; on a synthetic twin the list that ``stand_ins`` (paper size -> twin list size,
    :func:`agnet.data.constants.twin_stand_ins`) names for it. A column never shows another size's result.
    """
    if dataset_format == "veri":
        return ["veri"]
    stand_ins = {int(k): int(v) for k, v in (stand_ins or {}).items()}  # JSON documents key them by text
    protocols = []
    for size in groups:
        protocol = f"vehicleid-{stand_ins[size] if stand_ins else size}"
        protocols.append(protocol if protocol in available else None)
    return protocols


def _ours(summary: pd.DataFrame, dataset: str, variant: str, descriptor: str, protocol: str | None,
          column: str) -> tuple[float, float, int] | None:
    if protocol is None:
        return None
    match = summary[(summary["dataset"] == dataset) & (summary["variant"] == variant)
                    & (summary["descriptor"] == descriptor) & (summary["protocol"] == protocol)]
    key = METRIC_KEYS[column]
    if match.empty or f"{key}_mean" not in match:
        return None
    row = match.iloc[0]
    return (100 * float(row[f"{key}_mean"]), 100 * float(row[f"{key}_std"]), int(row["seeds"]),
            int(row.get("flagged_seeds", 0) or 0))


def build_rows(table: dict, summary: pd.DataFrame, dataset: str, stand_ins: dict[int, int] | None = None
               ) -> tuple[list[str], list[list[Cell]], list[int]]:
    """Row labels, cells and the indices after which a rule goes (literature | AGNet | ours)."""
    available = sorted(summary.loc[summary["dataset"] == dataset, "protocol"].unique())
    protocols = group_protocols(table["dataset"], table["groups"], available, stand_ins)
    columns = table["columns"]
    labels, rows, rules = [], [], []
    printed = [[Cell(text, parse_value(text)) for text in row["values"]] for row in table["rows"]]
    # Best published value per column in bold, as the paper does.
    for col in range(len(printed[0])):
        values = [r[col].value for r in printed if r[col].value is not None]
        best = max(values) if values else None
        for r in printed:
            if r[col].value is not None and r[col].value == best:
                r[col] = Cell(r[col].text, r[col].value, bold=True)
    first_agnet = next((i for i, row in enumerate(table["rows"]) if "ours" in row), len(table["rows"]))
    for index, row in enumerate(table["rows"]):
        if index == first_agnet and index > 0:
            rules.append(len(rows))
        ref = f" {row['ref']}" if row.get("ref") else ""
        labels.append(f"{row['method']}{ref}" + (" (paper)" if "ours" in row else ""))
        rows.append(printed[index])
    ours_rows = [row for row in table["rows"] if "ours" in row]
    if ours_rows:
        rules.append(len(rows))
    for index, row in enumerate(table["rows"]):
        if "ours" not in row:
            continue
        spec = row["ours"]
        row_protocols = spec.get("protocols", protocols)
        ours, delta = [], []
        for g, protocol in enumerate(row_protocols):
            for c, column in enumerate(columns):
                got = _ours(summary, dataset, spec["variant"], spec["descriptor"], protocol, column)
                paper = printed[index][g * len(columns) + c].value
                if got is None:
                    ours.append(Cell("n/a"))
                    delta.append(Cell("n/a"))
                    continue
                mean = got[0]
                ours.append(_our_cell(*got))
                delta.append(Cell("-" if paper is None else f"{mean - paper:+.2f}", None if paper is None else mean - paper))
        edge = any((_str_info(summary, dataset, spec, p) or {}).get("edge_seeds") for p in row_protocols)
        labels += [f"{row['method']} (ours){EDGE if edge else ''}", f"{row['method']} (ours − paper)"]
        rows += [ours, delta]
    arms = [arm for arm in table.get("arms", ())
            if ((summary["dataset"] == dataset) & (summary["variant"] == arm["ours"]["variant"])).any()]
    if arms:
        rules.append(len(rows))
    for arm in arms:  # our ablation arms: no paper value, so no difference row
        spec = arm["ours"]
        cells = []
        for protocol in spec.get("protocols", protocols):
            for column in columns:
                got = _ours(summary, dataset, spec["variant"], spec["descriptor"], protocol, column)
                cells.append(Cell("n/a") if got is None else _our_cell(*got))
        labels.append(arm.get("label") or f"{arm['method']} (ours; not in the paper)")
        rows.append(cells)
    controls = [c for c in table.get("controls", ()) if _ran(summary, dataset, c["ours"])]
    if controls:
        rules.append(len(rows))
    for control in controls:  # e.g. the spatio-temporal term alone: no paper value, no difference row
        spec = control["ours"]
        cells = []
        for protocol in spec["protocols"]:
            for column in columns:
                got = _ours(summary, dataset, spec["variant"], spec["descriptor"], protocol, column)
                cells.append(Cell("n/a") if got is None else _our_cell(*got))
        labels.append(f"{control['method']} (ours, control)")
        rows.append(cells)
    return labels, rows, rules


def _ran(summary: pd.DataFrame, dataset: str, spec: dict) -> bool:
    return bool(((summary["dataset"] == dataset) & (summary["variant"] == spec["variant"])
                 & (summary["descriptor"] == spec["descriptor"]) & summary["protocol"].isin(spec["protocols"])).any())


def _str_info(summary: pd.DataFrame, dataset: str, spec: dict, protocol: str | None) -> dict[str, Any] | None:
    """A re-ranked (``veri-str``) row's λ as the summary records it: each seed's fold λs, the number of seeds with a
    fold at a grid edge and how λ was chosen; None for another protocol or without these columns."""
    if protocol is None or "str_lambdas" not in summary:
        return None
    parsed = parse(protocol)
    if not (parsed.reranked and parsed.appearance):
        return None
    match = summary[(summary["dataset"] == dataset) & (summary["variant"] == spec["variant"])
                    & (summary["descriptor"] == spec["descriptor"]) & (summary["protocol"] == protocol)]
    if match.empty or pd.isna(match.iloc[0]["str_lambdas"]):
        return None
    row = match.iloc[0]
    edge_seeds = row.get("str_edge_seeds")
    tuning = row.get("str_tuning")
    return {"lambdas": str(row["str_lambdas"]), "edge_seeds": 0 if pd.isna(edge_seeds) else int(edge_seeds),
            "tuning": None if tuning is None or pd.isna(tuning) else str(tuning)}


def _veri_notes(table: dict, context: dict[str, Any], summary: pd.DataFrame) -> list[str]:
    """A VeRi caption's training set, and each re-ranked row's λ and how it was chosen."""
    dataset, notes = context["dataset"], []
    held = context.get("holdout_vehicles") or 0
    notes.append("every row trains on all training vehicles" if not held else
                 f"every row trains on all training vehicles but {held} held out of training")
    edge = False
    for row in table["rows"]:
        spec = row.get("ours") or {}
        for protocol in spec.get("protocols", ()):
            info = _str_info(summary, dataset, spec, protocol)
            if info is None:
                continue
            how = (f"cross-fitted on the test vehicles: {info['tuning']}; each fold's queries ranked with the λ of "
                   "best mAP on the other folds' queries (full gallery), never with a λ tuned on their own labels"
                   if info["tuning"] and "fold" in info["tuning"] else info["tuning"] or "as recorded")
            notes.append(f"{row['method']}: λ per fold across seeds: {info['lambdas']} (seeds in order; λ {how})")
            edge |= info["edge_seeds"] > 0
    if any(_ran(summary, dataset, c["ours"]) for c in table.get("controls", ())):
        notes.append("'control' rows rank by the spatio-temporal term alone, without appearance (it reads no "
                     "features: the same in every run; ties ranked pessimistically)")
    if edge:
        notes.append(EDGE_NOTE)
    return notes


def _our_cell(mean: float, std: float, seeds: int, flagged: int) -> Cell:
    spread = f" ± {std:.2f}" if seeds > 1 else " (1 seed)"  # one seed has no spread to show
    return Cell(f"{mean:.2f}{spread}{FLAG if flagged else ''}", mean)


def _latex_escape(text: str) -> str:
    text = text.replace("\\", "\\textbackslash{}")
    for char in "&%$#_{}":
        text = text.replace(char, "\\" + char)
    text = text.replace("±", "$\\pm$").replace("−", "$-$").replace("~", "\\textasciitilde{}")
    return text.replace("λ", "$\\lambda$").replace("‡", "\\ddag{}").replace("–", "--")


def to_latex(table: dict, labels: list[str], rows: list[list[Cell]], rules: list[int], caption: str,
             label: str) -> str:
    """A booktabs ``table`` environment."""
    columns, groups = table["columns"], table["groups"]
    spec = "l" + "".join("c" * len(columns) for _ in groups)
    lines = ["\\begin{table*}[t]", "\\centering", "\\small", f"\\caption{{{_latex_escape(caption)}}}",
             f"\\label{{{label}}}", f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    if groups != [None]:
        heads = " & ".join(f"\\multicolumn{{{len(columns)}}}{{c}}{{Test size = {g}}}" for g in groups)
        lines.append(f" & {heads} \\\\")
        rules_mid = " ".join(f"\\cmidrule(lr){{{2 + i * len(columns)}-{1 + (i + 1) * len(columns)}}}"
                             for i in range(len(groups)))
        lines.append(rules_mid)
    lines.append("Method & " + " & ".join(columns * len(groups)) + " \\\\")
    lines.append("\\midrule")
    for index, (name, cells) in enumerate(zip(labels, rows, strict=True)):
        if index in rules:
            lines.append("\\midrule")
        rendered = [f"\\textbf{{{_latex_escape(c.text)}}}" if c.bold else _latex_escape(c.text) for c in cells]
        lines.append(_latex_escape(name) + " & " + " & ".join(rendered) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table*}", ""]
    return "\n".join(lines)


def to_markdown(table_id: str, table: dict, labels: list[str], rows: list[list[Cell]], caption: str) -> str:
    """A GitHub-flavoured markdown table with the caption above it."""
    columns, groups = table["columns"], table["groups"]
    headers = ["Method"] + [c if g is None else f"{g}: {c}" for g in groups for c in columns]
    body = [[name] + [f"**{c.text}**" if c.bold else c.text for c in cells] for name, cells in zip(labels, rows, strict=True)]
    return f"**Table {table_id.removeprefix('table')}.** {caption}\n\n" + tabulate(body, headers=headers, tablefmt="github", disable_numparse=True) + "\n"


def _recorded(summary: pd.DataFrame, dataset: str, column: str) -> str:
    """The values of ``column`` in the summary rows of ``dataset`` as text ("2", "1–3", or "?" if absent)."""
    if column not in summary:
        return "?"
    values = sorted({v for v in summary.loc[summary["dataset"] == dataset, column].dropna()})
    if not values:
        return "?"
    if all(isinstance(v, (int, float)) for v in values):
        low, high = (int(v) if float(v).is_integer() else v for v in (values[0], values[-1]))
        return f"{low}" if low == high else f"{low}–{high}"
    return " / ".join(map(str, values))


def caption_for(table_id: str, table: dict, context: dict[str, Any], summary: pd.DataFrame) -> str:
    """The paper's title plus what the reader must know: data, protocol, distance, seeds, trials (the last three
    as ``summary`` records them for the dataset)."""
    parts = [table["title"].rstrip(".")]
    if context["synthetic"]:
        parts.append(SYNTHETIC_NOTE + ".")
    dataset = context["dataset"]
    parts.append(f"Ours: dataset '{dataset}', mean ± std over {_recorded(summary, dataset, 'seeds')} seed(s)")
    if table["dataset"] == "vehicleid":
        parts.append(f"each the mean of {_recorded(summary, dataset, 'trials')} random gallery draws "
                     "(one image per vehicle)")
        if context.get("stand_ins"):
            lists = ", ".join(f"{twin} for {paper}" for paper, twin in
                              sorted(context["stand_ins"].items(), key=lambda item: int(item[0])))
            parts.append(f"the twin's test lists of N vehicles stand in for the paper's sizes ({lists}; "
                         "each the same quarter of the test vehicles)")
    else:
        parts.append("1 query per (vehicle, camera) against the test set, same-vehicle-same-camera images removed")
        parts += _veri_notes(table, context, summary)
    visual = summary[summary["descriptor"] != "none"] if "descriptor" in summary else summary  # not the ST control
    parts.append(f"distance: {_recorded(visual, dataset, 'distance')}; mAP: non-interpolated (open re-ID toolboxes)")
    if any(((summary["dataset"] == dataset) & (summary["variant"] == arm["ours"]["variant"])).any()
           for arm in table.get("arms", ())):
        parts.append(table.get("arms_note") or ("rows marked 'not in the paper' are our ablation arms, each one factor "
                                                "away from a paper row (docs/paper-mapping.md, \"What each contrast "
                                                "isolates\")"))
    if "flagged_seeds" in summary and summary.loc[summary["dataset"] == dataset, "flagged_seeds"].fillna(0).any():
        parts.append(FLAG_NOTE)
    return "; ".join(parts) + "."


def source_line(source: dict[str, str] | None) -> str:
    """"Computed from FILE (sha256 …)": the provenance line a table or report carries (empty without one)."""
    return "" if not source else f"Computed from {source['path']} (sha256 {source['sha256']})."


def write_tables(summary: pd.DataFrame, datasets: dict[str, dict[str, Any]], out_dir: str | Path,
                 paper: dict | None = None, source: dict[str, str] | None = None) -> list[Path]:
    """Write table{1..5}.{tex,md} (Table V: :mod:`agnet.report.baselines`); ``datasets`` maps a format (veri/vehicleid) to its context dict.

    ``source`` (``{"path", "sha256"}`` of the summary read) is recorded in every file: a LaTeX comment and a
    markdown line, so a table can always be traced to, and checked against, the numbers it shows.
    """
    paper = paper or load_paper()
    out_dir = Path(out_dir)
    written = []
    for table_id, table in paper["tables"].items():
        context = datasets.get(table["dataset"])
        if context is None:
            raise AgnetError(f"{table_id} needs a {table['dataset']} dataset in the run")
        labels, rows, rules = build_rows(table, summary, context["dataset"], context.get("stand_ins"))
        caption = caption_for(table_id, table, context, summary)
        number = table_id.removeprefix("table")
        line = source_line(source)
        tex = to_latex(table, labels, rows, rules, caption, f"tab:agnet-{number}") + (f"% {line}\n" if line else "")
        md = to_markdown(table_id, table, labels, rows, caption) + (f"\n{line}\n" if line else "")
        for suffix, text in (("tex", tex), ("md", md)):
            path = out_dir / f"{table_id}.{suffix}"
            write_text(path, text)
            written.append(path)
    from agnet.report.baselines import write_table5  # Table V reads this module's rows and captions

    return written + write_table5(summary, datasets, out_dir, paper=paper, source=source)

