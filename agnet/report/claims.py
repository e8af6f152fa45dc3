"""The paper's claims, judged on our results by direction AND size, plus the paper checked against itself.

Claims come from the statements of ``paper_text.yaml`` marked ``claim: true``; the paper's gap of each claim
is computed from its Tables I–IV (``paper_results.yaml``), never typed in. A claim says "A beats B" on one
metric of one table cell (VeRi, or one VehicleID test size); B is one of our rows or a published literature
value (for "beats every method" statements: the strongest published competitor of that cell).

**Statistics.** The unit of replication is the training seed. For each seed run by both sides, the paired
difference d_s = A_s − B_s (percentage points; the same seed for both variants; on VehicleID both sides'
values are means over the same seeded gallery draws, so the trials are paired as well). The interval is the
95 % Student-t interval of the mean of d over the n seeds (B published: d_s = A_s − B). Verdicts:

* ``reproduced``: the interval lies above 0 and contains the paper's gap (direction and size);
* ``direction only``: the interval lies above 0 but excludes the paper's gap (ours smaller or larger);
* ``not reproduced``: the interval lies below 0 (reversed), or it contains 0 but excludes the paper's gap;
* ``inconclusive``: the interval contains both 0 and the paper's gap (too few seeds or too noisy to decide),
  fewer than 2 seeds (no interval), or a result is missing.

Results on a synthetic twin are checked the same way, and the report says they do not test the paper's
claims about the real datasets.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
from scipy.special import stdtrit  # the Student-t quantile (scipy.stats costs a second to import)

from agnet.fileio import write_text
from agnet.report.paper import (
    ROMAN,
    CellRef,
    Finding,
    cell,
    checked_cells,
    consistency_findings,
    load_paper,
    load_statements,
    table_row,
)
from agnet.report.tables import group_protocols, source_line

METRIC_COLUMN = {"mAP": "mAP", "Rank1": "rank1", "Rank5": "rank5"}
CONFIDENCE = 0.95
INTERVAL_METHOD = (f"{CONFIDENCE:.0%} Student-t interval of the mean paired difference over training seeds "
                   "(A − B per seed; VehicleID values are each seed's mean over the same seeded gallery draws)")
LEGEND = {
    "reproduced": "the interval lies above 0 and contains the paper's gap (direction and size)",
    "direction only": "the interval lies above 0 but excludes the paper's gap (ours smaller or larger)",
    "not reproduced": "the interval lies below 0, or contains 0 but excludes the paper's gap",
    "inconclusive": "the interval contains both 0 and the paper's gap, fewer than 2 seeds, or a result is missing",
}


@dataclass(frozen=True)
class Side:
    """One side of a claim: a row of a paper table and, if it is an AGNet row, the result of ours it maps to."""

    row: str
    paper: float
    variant: str | None = None  # None: a literature row, compared as published
    descriptor: str | None = None
    protocol: str | None = None  # VeRi rows name it; VehicleID rows take it from the table group


@dataclass(frozen=True)
class Claim:
    """A beats B on ``metric`` in one cell of ``table``; ``paper_gap`` = A − B as the tables print them."""

    id: str
    statement: str
    where: str
    text: str
    dataset: str  # veri | vehicleid
    table: str
    group: int | None  # VehicleID test size
    metric: str
    a: Side
    b: Side

    @property
    def paper_gap(self) -> float:
        return self.a.paper - self.b.paper


def _side(paper: dict, table: str, row: str, group, column: str) -> Side | None:
    value = cell(paper, CellRef(table, row, group, column))
    if value is None:
        return None
    ours = table_row(paper, table, row).get("ours")
    if ours is None:
        return Side(row, value)
    return Side(row, value, ours["variant"], ours["descriptor"], (ours.get("protocols") or [None])[0])


def paper_claims(paper: dict | None = None, statements: list[dict] | None = None) -> list[Claim]:
    """Every claim of the statements marked ``claim: true`` (one per table cell and B row)."""
    paper = paper or load_paper()
    statements = statements if statements is not None else load_statements()
    claims: dict[tuple, Claim] = {}  # one claim per comparison, however many statements make it
    for statement in statements:
        if not statement.get("claim"):
            continue
        b_rows = [statement["b"]] if isinstance(statement["b"], str) else list(statement["b"])
        for table, group, column in checked_cells(paper, statement):
            a = _side(paper, table, statement["a"], group, column)
            if a is None or a.variant is None:
                continue
            sides = [s for s in (_side(paper, table, row, group, column) for row in b_rows) if s is not None]
            ours = [s for s in sides if s.variant is not None]
            published = [s for s in sides if s.variant is None]
            if published:  # "beats every method": judged against the strongest published competitor
                ours.append(max(published, key=lambda s: s.paper))
            where = "" if group is None else f" ({group})"
            for b in ours:
                key = (table, group, column, a.row, b.row)
                if key in claims:
                    first = claims[key]
                    claims[key] = replace(first, statement=f"{first.statement}, {statement['id']}",
                                          where=f"{first.where}; {statement['where']}")
                    continue
                claims[key] = Claim(
                    id=f"{statement['id']}/{table}{'' if group is None else f'-{group}'}/{column}/{b.row}",
                    statement=statement["id"], where=statement["where"],
                    text=f"{a.row} beats {b.row} in {column} (Table {ROMAN[table]}{where})",
                    dataset=paper["tables"][table]["dataset"], table=table, group=group, metric=column, a=a, b=b)
    return list(claims.values())


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    dataset: str  # the dataset name checked (e.g. veri-synth)
    ours_a: float | None  # mean over seeds, percentage points
    ours_b: float | None
    gap: float | None  # mean paired difference
    low: float | None  # interval
    high: float | None
    seeds: int
    verdict: str


def _per_seed(runs: pd.DataFrame, dataset: str, side: Side, protocol: str | None, metric: str) -> pd.Series | None:
    if protocol is None:
        return None
    match = runs[(runs["dataset"] == dataset) & (runs["variant"] == side.variant)
                 & (runs["descriptor"] == side.descriptor) & (runs["protocol"] == protocol)]
    column = METRIC_COLUMN[metric]
    if match.empty or column not in match or match[column].isna().all():
        return None
    return 100 * match.set_index("seed")[column].astype(float)


def decide(paper_gap: float, low: float | None, high: float | None, seeds: int) -> str:
    """The verdict of an interval [low, high] for a claimed positive gap (see the module docstring)."""
    if seeds < 2 or low is None or high is None:
        return "inconclusive (fewer than 2 seeds: no interval)"
    holds_paper = low <= paper_gap <= high
    if low > 0:
        if holds_paper:
            return "reproduced"
        return "direction only (" + ("smaller" if high < paper_gap else "larger") + " than the paper's gap)"
    if high < 0:
        return "not reproduced (reversed)"
    if holds_paper:
        return "inconclusive (interval holds both 0 and the paper's gap)"
    return "not reproduced (no gap detected; the paper's gap lies outside the interval)"


def check(claim: Claim, runs: pd.DataFrame, dataset: str, stand_ins: dict[int, int] | None = None) -> Verdict:
    """Verdict of one claim on one dataset's per-seed results (``runs``: one row per run, metrics in [0, 1])."""
    available = sorted(runs.loc[runs["dataset"] == dataset, "protocol"].unique())

    def protocol_of(side: Side) -> str | None:
        if side.protocol is not None:
            return side.protocol if side.protocol in available else None
        return group_protocols(claim.dataset, [claim.group], available, stand_ins)[0]

    a = _per_seed(runs, dataset, claim.a, protocol_of(claim.a), claim.metric)
    if claim.b.variant is None:
        b = None if a is None else pd.Series(claim.b.paper, index=a.index)
    else:
        b = _per_seed(runs, dataset, claim.b, protocol_of(claim.b), claim.metric)
    if a is None or b is None:
        return Verdict(claim, dataset, None if a is None else float(a.mean()), None if b is None else float(b.mean()),
                       None, None, None, 0, "inconclusive (result missing)")
    paired = pd.concat({"a": a, "b": b}, axis=1, join="inner").dropna()
    diff = paired["a"] - paired["b"]
    n = len(diff)
    mean = float(diff.mean()) if n else None
    low = high = None
    if n >= 2:
        half = float(stdtrit(n - 1, 0.5 + CONFIDENCE / 2) * diff.std(ddof=1) / math.sqrt(n))
        low, high = mean - half, mean + half
    verdict = "inconclusive (result missing)" if n == 0 else decide(claim.paper_gap, low, high, n)
    return Verdict(claim, dataset, float(paired["a"].mean()) if n else None, float(paired["b"].mean()) if n else None,
                   mean, low, high, n, verdict)


def check_all(runs: pd.DataFrame, datasets: dict[str, dict]) -> list[Verdict]:
    """Every claim whose dataset format is in ``datasets`` (format -> context with ``dataset``, ``stand_ins``)."""
    return [check(c, runs, datasets[c.dataset]["dataset"], datasets[c.dataset].get("stand_ins"))
            for c in paper_claims() if c.dataset in datasets]


def _fmt(value: float | None, sign: bool = False) -> str:
    return "n/a" if value is None else (f"{value:+.2f}" if sign else f"{value:.2f}")


def write_claims(verdicts: list[Verdict], datasets: dict[str, dict], out_md: str | Path, out_json: str | Path,
                 findings: list[Finding] | None = None, source: dict[str, str] | None = None) -> None:
    """claims.md (verdicts with intervals, then the paper's own inconsistencies) and claims.json; ``source``
    (``{"path", "sha256"}`` of the runs table read) is recorded in both."""
    findings = consistency_findings() if findings is None else findings
    synthetic = any(ctx["synthetic"] for ctx in datasets.values())
    lines = ["# Claims check", ""]
    if synthetic:
        lines += [("> **Synthetic twins, not the real datasets.** These verdicts test the suite end to end; they say "
                  "nothing about the paper's claims on VeRi-776 and VehicleID."), ""]
    lines += ["## Our results against the paper's claims", "",
              (f"Gap = A − B in percentage points; the paper's gap is computed from its Tables I–IV. Ours: mean paired "
               f"difference and its {INTERVAL_METHOD}; n = seeds. Verdicts:"), ""]
    lines += [f"- **{name}**: {meaning}" for name, meaning in LEGEND.items()]
    lines += ["", "| claim | dataset | paper gap | our A | our B | our gap | interval | n | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        interval = "n/a" if v.low is None else f"[{v.low:+.2f}, {v.high:+.2f}]"
        lines.append(f"| {v.claim.text} | {v.dataset} | {v.claim.paper_gap:+.2f} | {_fmt(v.ours_a)} | {_fmt(v.ours_b)} | "
                     f"{_fmt(v.gap, sign=True)} | {interval} | {v.seeds} | {v.verdict} |")
    counts = pd.Series([v.verdict.split(" (")[0] for v in verdicts], dtype=object).value_counts().to_dict()
    lines += ["", ("Comparisons with literature methods use their published value as B. On a synthetic twin they "
              "only show that the check runs: the literature numbers were measured on the real datasets.")]
    lines += ["", "Summary: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())), ""]
    if source:
        lines += [source_line(source), ""]
    lines += ["## The paper against itself", "",
              ("Statements of the paper's §IV text that its own Tables I–IV contradict, found by checking every "
               "number and comparison of the text (agnet/report/paper_text.yaml) against the tables "
               "(agnet/report/paper_results.yaml). These are not about our results."), ""]
    if findings:
        lines += ["| where | the text | the text says | the tables give | cells | note |", "|---|---|---|---|---|---|"]
        for f in findings:
            lines.append(f"| {f.where} | “{f.quote}” | {f.text_value} | {f.table_value} | {f.cells} | {f.note} |")
    else:
        lines.append("No inconsistency: every checked statement agrees with the tables.")
    lines.append("")
    write_text(out_md, "\n".join(lines))
    records = [{**asdict(v), "claim": {**asdict(v.claim), "paper_gap": v.claim.paper_gap}} for v in verdicts]
    write_text(out_json, json.dumps({"synthetic": synthetic, "source": source, "interval": INTERVAL_METHOD,
                                     "legend": LEGEND,
                                     "claims": records, "paper_consistency": [asdict(f) for f in findings]},
                                    indent=2) + "\n")
