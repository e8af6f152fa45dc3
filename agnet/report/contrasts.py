"""What each factor contributes: the ablation arms' one-factor contrasts, measured on our runs.

The paper's rows differ from each other in more than one thing (docs/paper-mapping.md, "What each contrast
isolates"); the arms ``agnet_ce_uniform`` and ``agnet_asl_shuffled`` make each step one factor. These contrasts are
not claims of the paper — it printed no gap for them — so they are reported as measurements: the mean paired gap
over seeds (same seed for both variants; on VehicleID the same gallery draws), its 95 % interval (seeds and, with
per-query results, the test set's vehicle bootstrap), a two-sided test Holm-adjusted within the contrast (its
protocols × metrics), and the smallest gap these seeds detect. A contrast is shown where both of its variants ran.

The same measurement serves the claims report's "Beside a modern baseline" section (``BASELINE_CONTRASTS``): AGNet's
additions on BoT — BoT+Attr − BoT, BoT+ALS − BoT+Attr, BoT+ALS − BoT — each side read by the descriptor it is shown
by in Table V (BoT has only ID, its BNNeck feature; the others All). No paper printed a gap for them either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from agnet.report.stats import ALPHA, evidence, holm, vehicle_bootstrap

METRICS = {"mAP": "mAP", "Rank1": "rank1"}
DESCRIPTOR = "All"  # every variant has it (Only-ID too), so both sides read the same descriptor


@dataclass(frozen=True)
class Contrast:
    """``a`` − ``b``: two variants differing in exactly one factor, each read by its descriptor."""

    id: str
    a: str
    b: str
    factor: str
    a_descriptor: str = DESCRIPTOR
    b_descriptor: str = DESCRIPTOR
    group: str = "arms"  # the report section: "arms" (the ablation arms) or "baseline" (AGNet's additions on BoT)


CONTRASTS = (
    Contrast("attribute-supervision", "agnet_ce_uniform", "only_id",
             "attribute supervision (colour/type losses); uniform negatives on both sides"),
    Contrast("attribute-negatives", "agnet_ce", "agnet_ce_uniform", "attribute-based negative mining"),
    Contrast("als-smoothing", "agnet_asl_shuffled", "agnet_ce",
             "ALS's label smoothing with its attribute information removed"),
    Contrast("als-attribute-term", "agnet_asl", "agnet_asl_shuffled",
             "the attribute information in ALS (which pairs count as hard)"),
)
BASELINE_CONTRASTS = (
    Contrast("bot-attr", "bot_attr", "bot", "AGNet's attribute branch and Eq. 5 fusion on BoT",
             b_descriptor="ID", group="baseline"),
    Contrast("bot-attr-id", "bot_attr", "bot", "AGNet's attribute-guided network on BoT's identity feature alone",
             a_descriptor="ID", b_descriptor="ID", group="baseline"),
    Contrast("bot-als", "bot_als", "bot_attr", "a verification term, trained with ALS, on BoT+Attr", group="baseline"),
    Contrast("bot-attr-als", "bot_als", "bot", "the attribute branch, fusion and ALS together on BoT",
             b_descriptor="ID", group="baseline"),
)
SECTIONS = {  # group -> (heading, what it is, what to do when nothing ran)
    "arms": ("## What each factor contributes (our ablation arms)",
             ("Contrasts of two variants that differ in one factor (docs/paper-mapping.md, \"What each contrast "
              "isolates\"); the paper printed no gap for them, so they are measurements, not verdicts on the paper. "
              f"Gap = A − B of the {DESCRIPTOR} descriptor in percentage points, paired by seed"),
             ("No contrast ran: list `agnet_ce_uniform` and `agnet_asl_shuffled` in `train_variants` "
              "(the demo trains them on the VehicleID twin).")),
    "baseline": ("### AGNet's additions on BoT",
                 ("AGNet's attribute branch (with Eq. 5 fusion) and its ALS verification term added to the BoT "
                  "baseline; no paper printed a gap for them, so they are measurements of direction, not verdicts on "
                  "a paper. Gap = A − B in percentage points, each side by the descriptor Table V shows (BoT: ID, its "
                  "only one; BoT+Attr and BoT+ALS: All), paired by seed"),
                 "No contrast ran: list `bot`, `bot_attr` and `bot_als` in `train_variants`."),
}


@dataclass(frozen=True)
class Measurement:
    contrast: Contrast
    dataset: str
    protocol: str
    metric: str
    n: int
    a: float | None = None  # means over seeds, percentage points
    b: float | None = None
    gap: float | None = None
    low: float | None = None
    high: float | None = None
    sd: float | None = None
    test_se: float | None = None
    p_two: float | None = None
    p_family: float | None = None
    detectable: float | None = None
    verdict: str = ""
    diffs: tuple[float, ...] = field(default=(), repr=False)


def _per_seed(runs: pd.DataFrame, dataset: str, variant: str, descriptor: str, protocol: str, column: str
              ) -> pd.Series:
    rows = runs[(runs["dataset"] == dataset) & (runs["variant"] == variant) & (runs["descriptor"] == descriptor)
                & (runs["protocol"] == protocol)]
    return 100 * rows.set_index("seed")[column].astype(float)


def _flagged(runs: pd.DataFrame, dataset: str, variants: tuple[str, str]) -> bool:
    rows = runs[(runs["dataset"] == dataset) & runs["variant"].isin(variants)]
    return any(bool(rows[c].fillna(False).astype(bool).any()) for c in ("truncated", "schedule_changed") if c in rows)


def measure(runs: pd.DataFrame, queries=None, contrasts=CONTRASTS + BASELINE_CONTRASTS) -> list[Measurement]:
    """Every contrast whose two variants ran, per dataset × protocol (re-ranked protocols left out) × metric;
    ``queries`` (:class:`agnet.report.claims.QueryIndex`) adds the test set's uncertainty."""
    from agnet.report.claims import Side

    out: list[Measurement] = []
    for contrast in contrasts:
        for dataset in sorted(runs["dataset"].unique()):
            ran = set(runs.loc[runs["dataset"] == dataset, "variant"])
            if not {contrast.a, contrast.b} <= ran:
                continue
            protocols = sorted(p for p in runs.loc[runs["dataset"] == dataset, "protocol"].unique()
                               if not p.startswith("veri-"))
            family: list[Measurement] = []
            for protocol in protocols:
                for metric, column in METRICS.items():
                    a = _per_seed(runs, dataset, contrast.a, contrast.a_descriptor, protocol, column)
                    b = _per_seed(runs, dataset, contrast.b, contrast.b_descriptor, protocol, column)
                    paired = pd.concat({"a": a, "b": b}, axis=1, join="inner").dropna()
                    diffs = tuple(float(x) for x in paired["a"] - paired["b"])
                    test_se = None
                    if queries and len(diffs) >= 2:
                        sides = [queries.runs(dataset, Side("", 0.0, v, d), protocol)
                                 for v, d in ((contrast.a, contrast.a_descriptor), (contrast.b, contrast.b_descriptor))]
                        if all(s is not None and set(paired.index) <= set(s) for s in sides):
                            seeds = [int(s) for s in paired.index]
                            test_se = vehicle_bootstrap({s: sides[0][s] for s in seeds},
                                                        {s: sides[1][s] for s in seeds}, metric)
                    family.append(Measurement(contrast, dataset, protocol, metric, len(diffs),
                                              float(paired["a"].mean()) if diffs else None,
                                              float(paired["b"].mean()) if diffs else None,
                                              sum(diffs) / len(diffs) if diffs else None, test_se=test_se,
                                              diffs=diffs))
            out += _decide(family, _flagged(runs, dataset, (contrast.a, contrast.b)))
    return out


def _decide(family: list[Measurement], flagged: bool) -> list[Measurement]:
    """Two-sided tests (= two one-sided at α/2), Holm within the contrast's cells, and each cell's wording."""
    from dataclasses import replace

    evs = [evidence(m.diffs, 0.0, family=2 * len(family), test_se=m.test_se or 0.0) if m.n >= 2 else None
           for m in family]
    p_two = [None if e is None else min(1.0, 2 * min(e.p_one, 1 - e.p_one)) for e in evs]
    adjusted = holm(p_two)
    decided = []
    for m, e, p, q in zip(family, evs, p_two, adjusted, strict=True):
        if flagged:
            decided.append(replace(m, verdict="not judged (includes a truncated or re-scheduled run)"))
            continue
        if e is None:
            decided.append(replace(m, verdict="fewer than 2 seeds: no interval"))
            continue
        if q < ALPHA:
            word = "A higher" if e.mean > 0 else "A lower"
        else:
            word = f"no difference established (± {e.detectable:.2f} detectable)"
        decided.append(replace(m, low=e.low, high=e.high, sd=e.sd, p_two=p, p_family=q, detectable=e.detectable,
                               verdict=word))
    return decided


def markdown(measurements: list[Measurement], group: str = "arms") -> list[str]:
    """The claims report's section on the contrasts of ``group`` (lines): the arms, or AGNet's additions on BoT."""
    heading, intro, empty = SECTIONS[group]
    measurements = [m for m in measurements if m.contrast.group == group]
    lines = [heading, "", (f"{intro}; 95 % interval from the seeds and the test set's vehicle bootstrap; two-sided "
                           "tests, Holm within a contrast's cells."), ""]
    if not measurements:
        return lines + [empty, ""]
    lines += [("| factor (A − B) | dataset | protocol | metric | n | A | B | gap | 95 % CI | seed sd | test-set se | "
               "p (Holm) | result |"), "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(x, sign=False):
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else (f"{x:+.2f}" if sign else f"{x:.2f}")

    for m in measurements:
        ci = "n/a" if m.low is None else f"[{m.low:+.2f}, {m.high:+.2f}]"
        p = "n/a" if m.p_family is None else f"{m.p_family:.3f}"
        c = m.contrast
        sides = (f"{c.a} − {c.b}" if c.a_descriptor == c.b_descriptor == DESCRIPTOR
                 else f"{c.a} {c.a_descriptor} − {c.b} {c.b_descriptor}")
        lines.append(f"| {c.factor} ({sides}) | {m.dataset} | {m.protocol} | "
                     f"{m.metric} | {m.n} | {fmt(m.a)} | {fmt(m.b)} | {fmt(m.gap, True)} | {ci} | {fmt(m.sd)} | "
                     f"{fmt(m.test_se)} | {p} | {m.verdict} |")
    return lines + [""]
