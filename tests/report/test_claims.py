"""Claims judged by direction and size on paired seeds; the paper's text checked against its own tables."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from agnet.report.claims import check, check_all, paper_claims, write_claims
from agnet.report.paper import (
    CellRef,
    cell,
    checked_cells,
    consistency_findings,
    load_paper,
    load_statements,
    single_row_descriptors,
    table_findings,
)

CONTEXTS = {
    "veri": {"dataset": "veri-x", "synthetic": True, "seeds": 3, "trials": 10, "distance": "cosine",
             "stand_ins": None},
    "vehicleid": {"dataset": "vid-x", "synthetic": True, "seeds": 3, "trials": 10, "distance": "cosine",
                  "stand_ins": {800: 3, 1600: 6, 2400: 9, 3200: 12}},
}


def runs(rows):
    """Per-run table: (dataset, variant, descriptor, protocol, {seed: value}) with value in [0, 1]."""
    records = []
    for dataset, variant, descriptor, protocol, per_seed in rows:
        for seed, value in per_seed.items():
            records.append({"dataset": dataset, "variant": variant, "seed": seed, "descriptor": descriptor,
                            "protocol": protocol, "mAP": value, "rank1": value, "rank5": value})
    return pd.DataFrame(records)


def claim(claim_id_prefix: str):
    return next(c for c in paper_claims() if c.id.startswith(claim_id_prefix))


# ---------------------------------------------------------------------------------------- claims


def test_every_paper_gap_comes_from_the_tables():
    paper = load_paper()
    claims = paper_claims()
    assert len(claims) > 40
    for c in claims:
        a = cell(paper, CellRef(c.table, c.a.row, c.group, c.metric))
        b = cell(paper, CellRef(c.table, c.b.row, c.group, c.metric))
        assert c.paper_gap == pytest.approx(a - b)
    only_id = claim("asl-vs-only-id-veri/table3/mAP/Only-ID")
    assert only_id.paper_gap == pytest.approx(66.32 - 57.82)
    assert (only_id.b.variant, only_id.b.descriptor) == ("only_id", "ID")  # Only-ID's row is its ID descriptor
    # "beats every method" is judged against the strongest published competitor of the cell
    best = claim("veri-highest/table1/Rank1/")
    assert (best.b.row, best.b.paper, best.b.variant) == ("VAMI+ST", 85.92, None)
    # One claim per comparison: two statements about AGNet-ASL vs VAMI+ST mAP make one claim naming both.
    keys = [(c.table, c.group, c.metric, c.a.row, c.b.row) for c in claims]
    assert len(keys) == len(set(keys))
    assert claim("veri-highest/table1/mAP/").statement == "veri-highest, veri-vs-spatio-temporal"


def test_a_changed_table_value_changes_the_claims_paper_gap():
    paper = copy.deepcopy(load_paper())
    row = next(r for r in paper["tables"]["table3"]["rows"] if r["method"] == "Only-ID")
    row["values"][0] = "50.00"
    moved = next(c for c in paper_claims(paper) if c.id.startswith("asl-vs-only-id-veri/"))
    assert moved.paper_gap == pytest.approx(66.32 - 50.00)


def test_size_matters_a_small_positive_gap_is_direction_only():
    c = claim("asl-vs-only-id-veri/")  # paper: +8.50 mAP
    small = runs([("veri-x", "only_id", "ID", "veri", {0: 0.50, 1: 0.52, 2: 0.51}),
                  ("veri-x", "agnet_asl", "All", "veri", {0: 0.505, 1: 0.526, 2: 0.516})])
    v = check(c, small, "veri-x")
    assert v.gap == pytest.approx(0.566, abs=1e-3) and v.low > 0 and v.verdict.startswith("direction only")
    large = runs([("veri-x", "only_id", "ID", "veri", {0: 0.50, 1: 0.52, 2: 0.51}),
                  ("veri-x", "agnet_asl", "All", "veri", {0: 0.585, 1: 0.60, 2: 0.60})])
    assert check(c, large, "veri-x").verdict == "reproduced"


def test_differences_are_paired_by_seed_with_a_t_interval():
    c = claim("asl-vs-ce/table3/mAP/")
    # Seeds vary a lot, the paired difference barely: unpaired stds would swamp a +1.5 gap, pairing does not.
    a = {0: 0.40, 1: 0.60, 2: 0.50, 3: 0.70}
    b = {s: v - 0.015 + 0.001 * s for s, v in a.items()}
    v = check(c, runs([("veri-x", "agnet_asl", "All", "veri", a), ("veri-x", "agnet_ce", "All", "veri", b)]), "veri-x")
    d = np.array([100 * (a[s] - b[s]) for s in a])
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert v.seeds == 4 and v.gap == pytest.approx(d.mean())
    assert (v.low, v.high) == (pytest.approx(d.mean() - half), pytest.approx(d.mean() + half))
    assert v.verdict == "reproduced"  # paper gap 66.32 - 64.78 = 1.54 inside the prediction interval [0.89, 1.81]
    assert v.df == 3 and v.t_crit == pytest.approx(stats.t.ppf(0.95, 3)) and v.sd == pytest.approx(d.std(ddof=1))
    pi = stats.t.ppf(0.975, 3) * d.std(ddof=1) * np.sqrt(1 + 1 / 4)
    assert (v.pi_low, v.pi_high) == (pytest.approx(d.mean() - pi), pytest.approx(d.mean() + pi))
    assert v.p_family == pytest.approx(stats.t.sf(d.mean() / (d.std(ddof=1) / 2), 3))  # a family of one
    assert v.seeds_needed == 2 and v.detectable < 1.54
    # A seed run by only one side is not paired (and not counted).
    lonely = runs([("veri-x", "agnet_asl", "All", "veri", {**a, 9: 0.99}), ("veri-x", "agnet_ce", "All", "veri", b)])
    assert check(c, lonely, "veri-x").seeds == 4


def test_too_few_seeds_or_a_missing_result_is_inconclusive():
    c = claim("asl-vs-ce/table3/mAP/")
    one = runs([("veri-x", "agnet_asl", "All", "veri", {0: 0.6}), ("veri-x", "agnet_ce", "All", "veri", {0: 0.5})])
    assert check(c, one, "veri-x").verdict == "inconclusive (fewer than 2 seeds: no interval)"
    missing = runs([("veri-x", "agnet_asl", "All", "veri", {0: 0.6, 1: 0.6})])
    assert check(c, missing, "veri-x").verdict == "inconclusive (result missing)"


def test_literature_claims_compare_with_the_published_value():
    c = claim("veri-vs-lomo/")
    assert c.b.paper == 9.64 and c.b.variant is None and c.paper_gap == pytest.approx(56.68)
    v = check(c, runs([("veri-x", "agnet_asl", "All", "veri", {0: 0.66, 1: 0.67, 2: 0.65})]), "veri-x")
    assert v.ours_b == 9.64 and v.gap == pytest.approx(56.36) and v.verdict == "reproduced"


def test_vehicleid_claims_use_the_twins_stated_stand_in():
    c = claim("asl-vs-only-id-vehicleid/table4-1600/Rank1/")
    rows = [("vid-x", "agnet_asl", "All", "vehicleid-6", {0: 0.70, 1: 0.71, 2: 0.72}),
            ("vid-x", "only_id", "ID", "vehicleid-6", {0: 0.66, 1: 0.675, 2: 0.685}),
            ("vid-x", "agnet_asl", "All", "vehicleid-9", {0: 0.10, 1: 0.10, 2: 0.10})]
    v = check(c, runs(rows), "vid-x", CONTEXTS["vehicleid"]["stand_ins"])
    assert v.ours_a == pytest.approx(71.0) and v.verdict == "reproduced"  # 3.33 ± … holds the paper's 3.36
    assert check(c, runs(rows), "vid-x", {**CONTEXTS["vehicleid"]["stand_ins"], 1600: 50}).verdict == \
        "inconclusive (result missing)"  # another list stands for 1600: no silent fallback


# --------------------------------------------------------------------------------- the paper itself


def test_the_papers_own_inconsistencies_are_found():
    found = {(f.statement, f.text_value, f.table_value) for f in consistency_findings()}
    assert ("asl-vs-only-id-vehicleid", "3.94", "3.59") in found  # 71.15 - 67.56
    assert ("vid-vs-lomo", "68.34", "51.39") in found and ("vid-vs-dgd", "51.39", "26.35") in found
    assert ("vid-method-count", "9", "11") in found
    assert ("vid-beats-deep-methods", "AGNet-ASL > OIFE", "65.74 vs 67.00") in found
    lomo = next(f for f in consistency_findings() if f.statement == "vid-vs-lomo")
    assert "BOW-SIFT" in lomo.note  # the printed gain is the gap to the row above
    # What the text gets right is not reported.
    assert not {f.statement for f in consistency_findings()} & {"veri-vs-lomo", "all-vs-id-veri", "veri-headline",
                                                                "asl-vs-only-id-veri", "table1-is-table3"}


def test_a_finding_appears_and_vanishes_with_the_table_value():
    paper = copy.deepcopy(load_paper())
    only_id = next(r for r in paper["tables"]["table4"]["rows"] if r["method"] == "Only-ID")
    only_id["values"][1] = "67.21"  # 800 Rank-1: now 71.15 - 67.21 = 3.94, as the text says
    statements = load_statements()
    assert "asl-vs-only-id-vehicleid" not in {f.statement for f in consistency_findings(paper, statements)}
    asl = next(r for r in paper["tables"]["table3"]["rows"] if r["method"] == "AGNet-ASL-ID")
    asl["values"][0] = "62.00"  # the text's "3.71" over AGNet-ASL-ID no longer holds
    found = [f for f in consistency_findings(paper, statements) if f.statement == "all-vs-id-veri"]
    assert [(f.text_value, f.table_value) for f in found] == [("3.71", "4.32")]


def test_every_statement_names_existing_cells():
    paper = load_paper()
    for statement in load_statements():
        if statement["kind"] == "count":
            continue
        rows = [statement["a"]] + ([statement["b"]] if isinstance(statement.get("b"), str) else statement.get("b", []))
        for table, group, column in checked_cells(paper, statement):
            for row in rows:
                target = statement.get("other_table", table) if row == statement.get("b") else table
                cell(paper, CellRef(target, row, group, column))  # raises on a typo


def test_only_id_is_one_row_with_one_descriptor():
    assert single_row_descriptors() == {"only_id": "ID"}


def test_a_claim_the_papers_own_table_contradicts_is_not_judged():
    """"Outperforms all deep methods" at 2,400 vehicles, where the paper's Table II has OIFE higher: the paper's gap
    there is negative, so our results agreeing with the table must not read as "not reproduced"."""
    c = claim("vid-beats-deep-methods/table2-2400/Rank1/OIFE")
    assert c.paper_gap == pytest.approx(-1.26)
    v = check(c, runs([("vid-x", "agnet_asl", "All", "vehicleid-9", {0: 0.6, 1: 0.61, 2: 0.62})]), "vid-x",
              CONTEXTS["vehicleid"]["stand_ins"])
    assert v.verdict == "not judged (the paper's own table gives -1.26 in this cell)" and v.seeds == 0


def test_claims_on_truncated_or_rescheduled_runs_are_not_judged():
    c = claim("asl-vs-ce/table3/mAP/")
    table = runs([("veri-x", "agnet_asl", "All", "veri", {0: 0.600, 1: 0.612, 2: 0.622}),
                  ("veri-x", "agnet_ce", "All", "veri", {0: 0.585, 1: 0.596, 2: 0.608})])
    table["truncated"], table["schedule_changed"] = False, False
    assert check(c, table, "veri-x").verdict == "reproduced"
    for column in ("truncated", "schedule_changed"):
        flagged = table.copy()
        flagged.loc[(flagged["variant"] == "agnet_ce") & (flagged["seed"] == 1), column] = True
        assert check(c, flagged, "veri-x").verdict.startswith("not judged (includes a truncated run")


def test_a_family_is_adjusted_together():
    """The claims of one family share Holm's adjustment: each family p-value is at least its own one-sided p, and a
    claim judged alone (a family of one) keeps its own."""
    rng = np.random.default_rng(3)
    rows = []
    for variant, shift in (("agnet_asl", 0.01), ("agnet_ce", 0.0)):
        for protocol in ("vehicleid-3", "vehicleid-6", "vehicleid-9", "vehicleid-12"):
            rows.append(("vid-x", variant, "All", protocol,
                         {s: 0.5 + shift + rng.normal(0, 0.006) for s in range(4)}))
    verdicts = [v for v in check_all(runs(rows), {"vehicleid": CONTEXTS["vehicleid"]}) if v.family == "als-vs-ce"]
    assert len(verdicts) == 8 and all(v.primary for v in verdicts)
    assert all(v.p_family >= v.p_one for v in verdicts)
    alone = {v.claim.id: check(v.claim, runs(rows), "vid-x", CONTEXTS["vehicleid"]["stand_ins"]) for v in verdicts}
    assert all(alone[v.claim.id].p_family == pytest.approx(v.p_one) for v in verdicts)
    smallest = min(verdicts, key=lambda v: v.p_one)
    assert smallest.p_family == pytest.approx(min(1.0, 8 * smallest.p_one))  # Holm's first step: m x p


# --------------------------------------------------------------------------------------- report


def test_claims_report_shows_intervals_n_verdicts_legend_and_findings(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for variant in ("only_id", "agnet_ce", "agnet_asl"):
        for descriptor in ("Attr", "ID", "All"):
            for protocol in ("veri", "veri-str", "vehicleid-3", "vehicleid-6", "vehicleid-9", "vehicleid-12"):
                dataset = "veri-x" if protocol.startswith("veri") else "vid-x"
                rows.append((dataset, variant, descriptor, protocol, {s: rng.uniform(0.4, 0.6) for s in range(3)}))
    verdicts = check_all(runs(rows), CONTEXTS)
    assert len(verdicts) == len(paper_claims())
    source = {"path": "results/metrics/runs.csv", "sha256": "cd" * 32}
    write_claims(verdicts, CONTEXTS, tmp_path / "claims.md", tmp_path / "claims.json", source=source)
    text = (tmp_path / "claims.md").read_text()
    assert f"Computed from results/metrics/runs.csv (sha256 {'cd' * 32})." in text
    assert "Synthetic twins, not the real datasets" in text and "prediction interval" in text
    assert "## Primary claims" in text and "| family | dataset | claims | verdicts | seeds |" in text
    assert "| df | t crit | seed sd | test-set se | detectable gap | seeds needed |" in text and "Summary:" not in text
    primary = text.split("## Primary claims")[1].split("## Other claims")[0]
    assert "als-vs-ce" in primary and "asl-vs-only-id" in primary and "| str |" in primary
    assert "veri-vs-lomo" not in primary
    assert "- **direction only**:" in text and "## The paper against itself" in text
    assert "### The tables against their protocols" in text and "| test-size-order | Table II, VGG+CCL, Rank5 |" in text
    assert "| §IV.D, fourth paragraph | “For VehicleID, it has 3.94%" in text
    record = json.loads((tmp_path / "claims.json").read_text())
    assert len(record["claims"]) == len(verdicts) and record["claims"][0]["seeds"] == 3
    assert record["source"] == source
    assert {"low", "high", "gap", "verdict", "df", "t_crit", "sd", "detectable", "seeds_needed", "p_family",
            "family", "primary"} <= set(record["claims"][0])
    assert {row["family"] for row in record["primary_families"]} == {"als-vs-ce", "asl-vs-only-id", "str"}
    assert any(f["text_value"] == "3.94" for f in record["paper_consistency"])


def test_the_table_audit_is_computed_from_the_tables():
    """Each check finds a value flipped into an impossible one, and the finding vanishes with the value restored."""
    paper = load_paper()
    assert {f.check for f in table_findings(paper)} == {"test-size-order"}  # BOW-SIFT and VGG+CCL at 1600
    assert any(f.cells == "Table II, VGG+CCL, Rank5" for f in table_findings(paper))

    def flipped(table, method, index, value):
        changed = copy.deepcopy(paper)
        row = next(r for r in changed["tables"][table]["rows"] if r["method"] == method)
        row["values"][index] = value
        return {(f.check, f.cells) for f in table_findings(changed)} - {(f.check, f.cells) for f in table_findings(paper)}

    assert flipped("table1", "LOMO", 2, "20.00") == {("cmc-order", "Table I, LOMO")}  # Rank-5 below Rank-1
    assert flipped("table4", "Only-ID", 0, "90.00") == {("vehicleid-bounds", "Table IV, Only-ID, test size 800")}
    assert flipped("table3", "Only-ID", 0, "101.00") == {("range", "Table III, Only-ID, mAP")}
    assert flipped("table4", "Only-ID", 4, "68.00") == {("test-size-order", "Table IV, Only-ID, Rank1")}
    dup = copy.deepcopy(paper)
    rows = dup["tables"]["table3"]["rows"]
    rows[1]["values"] = list(rows[0]["values"])
    assert ("duplicate-rows", "Table III: Only-ID and AGNet-CE-Attr") in {(f.check, f.cells) for f in table_findings(dup)}


def test_the_test_sets_uncertainty_joins_the_seeds_and_can_change_a_verdict():
    """Four seeds agree on a +1.5 gap (a 'reproduced' claim on seeds alone); but the gap comes from a handful of test
    vehicles, so resampling whole vehicles shows it could be chance: with the per-query results the interval widens
    by the bootstrap's standard error and the direction is no longer established."""
    from agnet.report.claims import QueryIndex

    c = claim("asl-vs-ce/table3/mAP/")
    rng = np.random.default_rng(1)
    vehicles = np.repeat(np.arange(40), 3)
    base = rng.uniform(0.3, 0.7, size=len(vehicles))
    lucky = np.isin(vehicles, [0, 1])  # the whole gap sits on 2 of 40 vehicles
    rows, per_seed_a, per_seed_b = [], {}, {}
    for seed in range(4):
        a_ap = np.clip(base + lucky * (0.30 + 0.002 * seed), 0, 1)
        for variant, ap in (("agnet_asl", a_ap), ("agnet_ce", base)):
            rows.append(pd.DataFrame({"dataset": "veri-x", "variant": variant, "seed": seed, "descriptor": "All",
                                      "protocol": "veri", "trial": 0, "query": np.arange(len(ap)),
                                      "vehicle_id": vehicles, "ap": ap, "first_match_rank": 1}))
        per_seed_a[seed], per_seed_b[seed] = float(a_ap.mean()), float(base.mean())
    table = runs([("veri-x", "agnet_asl", "All", "veri", per_seed_a), ("veri-x", "agnet_ce", "All", "veri", per_seed_b)])
    seeds_only = check(c, table, "veri-x")
    both = check(c, table, "veri-x", queries=QueryIndex(pd.concat(rows, ignore_index=True)))
    assert seeds_only.test_se is None and seeds_only.verdict == "reproduced"
    assert both.test_se > 1.0 and both.gap == pytest.approx(seeds_only.gap)
    se = np.sqrt(both.sd ** 2 / 4 + both.test_se ** 2)
    assert both.high - both.low == pytest.approx(2 * stats.t.ppf(0.975, 3) * se)
    assert (both.pi_low, both.pi_high) == (pytest.approx(seeds_only.pi_low), pytest.approx(seeds_only.pi_high))
    assert both.verdict.startswith("inconclusive")
