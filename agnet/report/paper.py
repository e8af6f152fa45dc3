"""The paper as data: its Tables I–IV (``paper_results.yaml``) and the statements of its §IV text
(``paper_text.yaml``), and the check of the text against the tables.

Every number of the paper that the suite uses is read from those two files: the tables for every value
and gap (Tables I–IV, the claims' "paper gap"), the text file for what the text *says* about them. A
statement whose printed number or comparison disagrees with the tables becomes a
:class:`Finding` — the paper disagreeing with itself, reported apart from our results.

A cell is addressed by table id (``table1`` … ``table4``), row (the method as printed), group (the
VehicleID test size; ``None`` for VeRi tables) and column (``mAP``, ``Rank1``, ``Rank5``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from agnet.errors import AgnetError

PAPER_RESULTS = Path(__file__).with_name("paper_results.yaml")
PAPER_TEXT = Path(__file__).with_name("paper_text.yaml")
KINDS = ("value", "gap", "better", "count", "equal")
ROMAN = {"table1": "I", "table2": "II", "table3": "III", "table4": "IV"}


def load_paper(path: Path = PAPER_RESULTS) -> dict[str, Any]:
    """The paper's Tables I–IV (values are strings exactly as printed)."""
    return yaml.safe_load(Path(path).read_text())


def load_statements(path: Path = PAPER_TEXT) -> list[dict[str, Any]]:
    """The §IV statements (see the header of ``paper_text.yaml``)."""
    return yaml.safe_load(Path(path).read_text())["statements"]


def single_row_descriptors(paper: dict | None = None) -> dict[str, str]:
    """Variants that have a single row in the ablation tables (III/IV) -> the descriptor that row shows.

    Only-ID is one row, and ``paper_results.yaml`` says which of its descriptors it is; tables, claims and
    figures all take it from there.
    """
    paper = paper or load_paper()
    rows: dict[str, set[str]] = {}
    for table_id in ("table3", "table4"):
        for row in paper["tables"][table_id]["rows"]:
            if "ours" in row:
                rows.setdefault(row["ours"]["variant"], set()).add(row["ours"]["descriptor"])
    return {variant: next(iter(d)) for variant, d in rows.items() if len(d) == 1}


def parse_value(text: str) -> float | None:
    """Numeric value of a printed entry, None for the paper's "-"."""
    return None if text.strip() == "-" else float(text)


@dataclass(frozen=True)
class CellRef:
    table: str
    row: str
    group: int | None
    column: str

    def label(self) -> str:
        size = "" if self.group is None else f", test size {self.group}"
        return f"Table {ROMAN.get(self.table, self.table)}, {self.row}{size}, {self.column}"


def table_row(paper: dict, table: str, row: str) -> dict[str, Any]:
    """The row ``row`` (method as printed) of ``table``."""
    try:
        rows = paper["tables"][table]["rows"]
    except KeyError:
        raise AgnetError(f"paper tables: no table {table!r}") from None
    for entry in rows:
        if entry["method"] == row:
            return entry
    raise AgnetError(f"paper tables: {table} has no row {row!r}")


def cell(paper: dict, ref: CellRef) -> float | None:
    """The printed value of one cell (None where the paper prints "-")."""
    table = paper["tables"][ref.table]
    try:
        g, c = table["groups"].index(ref.group), table["columns"].index(ref.column)
    except ValueError:
        raise AgnetError(f"paper tables: {ref.table} has no cell {ref.group}/{ref.column}") from None
    return parse_value(table_row(paper, ref.table, ref.row)["values"][g * len(table["columns"]) + c])


def checked_cells(paper: dict, statement: dict) -> list[tuple[str, int | None, str]]:
    """(table, group, column) of every cell a statement speaks about, in check order."""
    out = []
    for table in statement["tables"]:
        groups = statement.get("groups", paper["tables"][table]["groups"])
        for group in groups:
            for column in statement.get("columns", paper["tables"][table]["columns"]):
                out.append((table, group, column))
    return out


def _tolerance(printed: str) -> float:
    """Half a unit of the last printed digit (a text value of "8.5" is any gap in [8.45, 8.55])."""
    exponent = Decimal(printed).as_tuple().exponent
    return 0.5 * 10.0 ** int(exponent) + 1e-9


@dataclass(frozen=True)
class Finding:
    """A statement of the text that the paper's own tables contradict."""

    statement: str  # id in paper_text.yaml
    where: str
    quote: str
    kind: str
    text_value: str  # what the text prints (a number, or the comparison it makes)
    table_value: str  # what the tables give
    cells: str  # which table cells
    note: str = ""


def _explain_gap(paper: dict, table: str, group, column: str, a_row: str, printed: str) -> str:
    """Which other row of the table the printed gap is actually the gap to, if any."""
    a = cell(paper, CellRef(table, a_row, group, column))
    hits = []
    for entry in paper["tables"][table]["rows"]:
        other = cell(paper, CellRef(table, entry["method"], group, column))
        if entry["method"] != a_row and other is not None and a is not None \
                and abs((a - other) - float(printed)) <= _tolerance(printed):
            hits.append(entry["method"])
    return f"the printed {printed} is the gap to {', '.join(hits)} in the same column" if hits else ""


def check_statement(paper: dict, statement: dict) -> list[Finding]:
    """Findings of one statement (empty when the tables bear the text out)."""
    kind = statement["kind"]
    if kind not in KINDS:
        raise AgnetError(f"paper_text.yaml: statement {statement.get('id')!r} has unknown kind {kind!r}")
    base = {"statement": statement["id"], "where": statement["where"], "quote": " ".join(statement["quote"].split()),
            "kind": kind}
    note = statement.get("note", "")
    findings = []
    if kind == "count":
        table = statement["tables"][0]
        compared = [r["method"] for r in paper["tables"][table]["rows"] if "ours" not in r]
        printed = statement["values"][0]
        if int(printed) != len(compared):
            findings.append(Finding(**base, text_value=printed, table_value=str(len(compared)),
                                    cells=f"Table {ROMAN[table]}: {', '.join(compared)}"))
        return findings
    cells = checked_cells(paper, statement)
    if kind in ("value", "gap") and len(statement["values"]) != len(cells):
        raise AgnetError(f"paper_text.yaml: statement {statement['id']!r} prints {len(statement['values'])} "
                         f"value(s) for {len(cells)} checked cell(s)")
    for index, (table, group, column) in enumerate(cells):
        a_ref = CellRef(table, statement["a"], group, column)
        a = cell(paper, a_ref)
        if kind == "value":
            printed = statement["values"][index]
            if a is None or abs(a - float(printed)) > _tolerance(printed):
                findings.append(Finding(**base, text_value=printed, table_value="-" if a is None else f"{a:.2f}",
                                        cells=a_ref.label(), note=note))
        elif kind == "gap":
            printed = statement["values"][index]
            b_ref = CellRef(table, statement["b"], group, column)
            b = cell(paper, b_ref)
            gap = None if a is None or b is None else a - b
            if gap is None or abs(gap - float(printed)) > _tolerance(printed):
                findings.append(Finding(
                    **base, text_value=printed, table_value="-" if gap is None else f"{gap:.2f}",
                    cells=f"{a_ref.label()} − {b_ref.label()}",
                    note=_explain_gap(paper, table, group, column, statement["a"], printed) or note))
        elif kind == "better":
            for other in statement["b"]:
                b_ref = CellRef(table, other, group, column)
                b = cell(paper, b_ref)
                if a is not None and b is not None and not a > b:
                    findings.append(Finding(**base, text_value=f"{statement['a']} > {other}",
                                            table_value=f"{a:.2f} vs {b:.2f}", cells=f"{a_ref.label()}; {b_ref.label()}",
                                            note=note))
        else:  # equal
            b_ref = CellRef(statement["other_table"], statement["b"], group, column)
            b = cell(paper, b_ref)
            if a != b:
                findings.append(Finding(**base, text_value=f"{a_ref.label()} = {b_ref.label()}",
                                        table_value=f"{a} vs {b}", cells=f"{a_ref.label()}; {b_ref.label()}"))
    return findings


def consistency_findings(paper: dict | None = None, statements: list[dict] | None = None) -> list[Finding]:
    """Every place where the paper's §IV text disagrees with its own Tables I–IV."""
    paper = paper or load_paper()
    statements = statements if statements is not None else load_statements()
    return [f for s in statements for f in check_statement(paper, s)]


# ------------------------------------------------------------------------------------------- the tables' own audit


@dataclass(frozen=True)
class TableFinding:
    """A value (or pair of rows) of the paper's tables that its protocol makes impossible or suspicious."""

    check: str  # range | cmc-order | vehicleid-bounds | duplicate-rows | test-size-order
    cells: str
    values: str
    note: str


_ROUNDING = 0.005 + 1e-9  # two printed decimals


def _cells_of(table: dict, row: dict) -> dict[tuple, float | None]:
    columns = table["columns"]
    return {(group, column): parse_value(row["values"][g * len(columns) + c])
            for g, group in enumerate(table["groups"]) for c, column in enumerate(columns)}


def table_findings(paper: dict | None = None) -> list[TableFinding]:
    """Every value of Tables I–IV checked against what its protocol makes possible, computed from the tables:

    * ``range``: a percentage outside [0, 100];
    * ``cmc-order``: Rank-5 below Rank-1 of the same row and test size (a CMC curve never falls);
    * ``vehicleid-bounds``: VehicleID's gallery holds one image per vehicle, so a query's AP is 1/rank of its one
      match: Rank-1 ≤ mAP ≤ (100 + Rank-1)/2 (beyond rounding);
    * ``duplicate-rows``: two rows of one table printing the same values in every cell both fill (≥ 2 cells);
    * ``test-size-order``: a VehicleID value higher at a larger test size than at a smaller one (a larger gallery
      only adds distractors, so this is expected only from the noise of one random gallery draw).
    """
    paper = paper or load_paper()
    found: list[TableFinding] = []
    for table_id, table in paper["tables"].items():
        label = f"Table {ROMAN.get(table_id, table_id)}"
        rows = [(row["method"], _cells_of(table, row)) for row in table["rows"]]
        for method, cells in rows:
            for (group, column), value in cells.items():
                where = CellRef(table_id, method, group, column).label()
                if value is not None and not 0.0 <= value <= 100.0:
                    found.append(TableFinding("range", where, f"{value:.2f}", "a percentage outside [0, 100]"))
            for group in table["groups"]:
                r1, r5, m = cells.get((group, "Rank1")), cells.get((group, "Rank5")), cells.get((group, "mAP"))
                ref = CellRef(table_id, method, group, "Rank1").label().removesuffix(", Rank1")
                if r1 is not None and r5 is not None and r5 < r1 - _ROUNDING:
                    found.append(TableFinding("cmc-order", ref, f"Rank-1 {r1:.2f} > Rank-5 {r5:.2f}",
                                              "a CMC curve never falls"))
                if table["dataset"] == "vehicleid" and r1 is not None and m is not None and not (
                        r1 - _ROUNDING <= m <= (100.0 + r1) / 2 + _ROUNDING):
                    found.append(TableFinding("vehicleid-bounds", ref, f"mAP {m:.2f}, Rank-1 {r1:.2f}",
                                              f"one gallery image per vehicle bounds mAP to [{r1:.2f}, "
                                              f"{(100 + r1) / 2:.2f}]"))
            if table["dataset"] == "vehicleid":
                for column in table["columns"]:
                    sizes = [(g, cells[(g, column)]) for g in table["groups"] if cells[(g, column)] is not None]
                    for (small, a), (large, b) in itertools.pairwise(sizes):
                        if b > a + _ROUNDING:
                            found.append(TableFinding(
                                "test-size-order", f"{label}, {method}, {column}", f"{a:.2f} at {small} < {b:.2f} at "
                                f"{large}", "higher on the larger test set (expected only from one gallery draw's "
                                            "noise)"))
        for i, (first, a) in enumerate(rows):
            for second, b in rows[i + 1:]:
                shared = [k for k in a if a[k] is not None and b[k] is not None]
                if len(shared) >= 2 and all(a[k] == b[k] for k in shared):
                    found.append(TableFinding("duplicate-rows", f"{label}: {first} and {second}",
                                              f"{len(shared)} identical cells", "two methods, the same numbers"))
    return found
