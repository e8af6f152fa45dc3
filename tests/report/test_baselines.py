"""Table V (baselines) and the claims "Beside a modern baseline": published rows with their sources, the paper's row
read from its tables, ours where they ran (BoT by its only descriptor, ID), and BoT vs AGNet-ASL judged by the rule."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess

import pandas as pd
import pytest
import yaml

from agnet.errors import AgnetError
from agnet.report.baselines import BASELINES, load_baselines, table_spec, write_table5
from agnet.report.claims import baseline_claims, check_all, write_claims
from agnet.report.contrasts import BASELINE_CONTRASTS, markdown, measure
from agnet.report.paper import load_paper
from agnet.report.tables import build_rows
from tests.report.test_claims import CONTEXTS as CLAIM_CONTEXTS
from tests.report.test_claims import runs
from tests.report.test_tables import CONTEXTS, summary

VID_PROTOCOLS = ("vehicleid-3", "vehicleid-6", "vehicleid-9", "vehicleid-12")


def table5_summary(seeds: dict[str, int] | None = None) -> pd.DataFrame:
    """AGNet-ASL (every descriptor) and BoT+Attr on both twins, BoT with its ID descriptor only, BoT+ALS on the
    VehicleID twin only (as `variant_datasets` would keep it); ``seeds`` overrides a variant's recorded seed count."""
    rows = []
    values = {"agnet_asl": 0.50, "bot": 0.60, "bot_attr": 0.62, "bot_als": 0.64}
    for variant, descriptors in (("agnet_asl", ("Attr", "ID", "All")), ("bot", ("ID",)),
                                 ("bot_attr", ("Attr", "ID", "All")), ("bot_als", ("Attr", "ID", "All"))):
        for descriptor in descriptors:
            if variant != "bot_als":
                rows.append(("veri-x", variant, descriptor, "veri", values[variant], 0.01))
            rows += [("vid-x", variant, descriptor, p, values[variant] + 0.05, 0.02) for p in VID_PROTOCOLS]
    frame = summary(rows)
    for variant, n in (seeds or {}).items():
        frame.loc[frame["variant"] == variant, "seeds"] = n
    return frame


def test_published_numbers_are_as_their_source_prints_them_with_the_source_named():
    baselines = load_baselines()
    veri, vid = baselines["parts"]["veri"], baselines["parts"]["vehicleid"]
    assert veri["published"][0]["values"] == ["78.8", "96.1", "-"]  # FastReID MODEL_ZOO.md (2020-05), BoT(R50-ibn)
    assert veri["published"][1]["values"] == ["81.9", "97.0", "-"]  # later: SBS(R50-ibn), shown as context
    assert veri["published"][0]["stands_for"] == "BoT" and veri["published"][1]["stands_for"] is None
    assert "1eea244afbb22fabf65df300e0d70726e945396b" in baselines["sources"][veri["published"][0]["source"]]["file"]
    assert vid["published"][0]["values"] == ["86.6", "97.9", "82.9", "96.0", "80.6", "93.9"]  # BoT(R50-ibn)
    source = baselines["sources"]["fastreid-model-zoo"]
    assert "2006.02631" in source["cite"] and "ab4afdb3c1c9a8400cacf2b7fd25b0e1e7585e64" in source["file"]
    for part in (veri, vid):
        row = part["published"][0]
        assert "R50-ibn" in row["method"] and "IBN" in row["backbone"] and row["input"] == "256 x 256"
    # The paper's row is read from its tables, never retyped.
    paper = load_paper()
    spec = table_spec(veri, baselines["title"], paper)
    agnet = next(r for r in spec["rows"] if r["method"] == "AGNet-ASL")
    assert agnet["values"] == ["66.32", "90.90", "96.20"]
    spec = table_spec(vid, baselines["title"], paper)
    assert next(r for r in spec["rows"] if r["method"] == "AGNet-ASL")["values"] == [
        "71.15", "83.78", "69.23", "81.41", "65.74", "78.28"]


def test_table5_rows_ours_and_published_omitting_variants_that_did_not_run():
    baselines, paper = load_baselines(), load_paper()
    data = table5_summary()
    spec = table_spec(baselines["parts"]["veri"], baselines["title"], paper)
    labels, cells, _ = build_rows(spec, data, "veri-x")
    assert labels[:2] == ["BoT(R50-ibn), FastReID (published; different backbone/protocol: note 1)",
                          "SBS(R50-ibn), FastReID (published; different backbone/protocol: note 2)"]
    assert labels[2:] == ["AGNet-ASL (paper)", "AGNet-ASL (ours)", "AGNet-ASL (ours − paper)", "BoT (ours, ID)",
                          "BoT+Attr (ours, All)"]
    assert [c.text for c in cells[0]] == ["78.8", "96.1", "-"] and [c.text for c in cells[1]] == ["81.9", "97.0", "-"]
    assert [c.text for c in cells[labels.index("BoT (ours, ID)")]] == ["60.00 ± 1.00"] * 3  # BoT: its ID rows only
    assert [c.text for c in cells[labels.index("AGNet-ASL (ours − paper)")]] == ["-16.32", "-40.90", "-46.20"]
    spec = table_spec(baselines["parts"]["vehicleid"], baselines["title"], paper)
    labels, cells, _ = build_rows(spec, data, "vid-x", CONTEXTS["vehicleid"]["stand_ins"])
    assert labels[-3:] == ["BoT (ours, ID)", "BoT+Attr (ours, All)", "BoT+ALS (ours, All)"]  # ran on the twin
    assert [c.text for c in cells[-1]] == ["69.00 ± 2.00"] * 6  # 800/1600/2400 stand-ins, Rank-1 and Rank-5


def test_table5_counts_seeds_from_the_data_and_writes_markdown_and_latex(tmp_path):
    source = {"path": "results/metrics/summary.csv", "sha256": "ab" * 32}
    written = write_table5(table5_summary(seeds={"bot": 3, "bot_attr": 1}), CONTEXTS, tmp_path, source=source)
    assert sorted(p.name for p in written) == ["table5.md", "table5.tex"]
    md = (tmp_path / "table5.md").read_text()
    assert md.startswith("**Table 5 (VeRi-776).**") and "**Table 5 (VehicleID).**" in md
    assert md.count("SYNTHETIC TWIN") == 2 and "mean ± std over 1–3 seed(s)" in md
    assert "62.00 (1 seed)" in md and "60.00 ± 1.00" in md  # one seed shows no spread
    assert "| 800: Rank1" in md and "2400: Rank5" in md and "3200" not in md.split("\n\n")[1]
    assert "MODEL_ZOO.md" in md and "ResNet-50-IBN-a" in md and f"(sha256 {'ab' * 32})." in md
    tex = (tmp_path / "table5.tex").read_text()
    assert "\\label{tab:agnet-5-veri}" in tex and "\\label{tab:agnet-5-vehicleid}" in tex
    assert "\\multicolumn{2}{c}{Test size = 800}" in tex and "\\textbf{81.9}" in tex
    # Only a VeRi run: the VehicleID part is left out.
    only = write_table5(table5_summary(), {"veri": CONTEXTS["veri"]}, tmp_path / "veri")
    assert "VehicleID" not in only[1].read_text().split("\n")[0]


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no TeX installation")
def test_table5_latex_compiles(tmp_path):
    write_table5(table5_summary(), CONTEXTS, tmp_path)
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\\usepackage{booktabs}\\usepackage[T1]{fontenc}"
                                      "\\usepackage[utf8]{inputenc}\\begin{document}\n\\input{table5.tex}\n"
                                      "\\end{document}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], check=False,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["parts"]["veri"]["published"][0]["values"].pop(), "parts.veri.published[0].values: 2 value(s)"),
    (lambda d: d["parts"]["veri"]["published"][0].update(source="elsewhere"), "parts.veri.published[0].source"),
    (lambda d: d["parts"]["veri"]["published"][0].update(values=["81.9", "x", "-"]), "'x' is neither a number"),
    (lambda d: d["parts"]["vehicleid"]["paper"][0].update(row="AGNet-XYZ"), "parts.vehicleid.paper[0]"),
    (lambda d: d["parts"]["veri"]["paper"][0].update(table="table2"), "table2 is a vehicleid table"),
    (lambda d: d["parts"]["veri"]["published"][0].pop("backbone"), "missing field 'backbone'"),
])
def test_a_bad_baselines_file_is_refused_naming_the_field(tmp_path, edit, message):
    data = yaml.safe_load(BASELINES.read_text())
    edit(data)
    path = tmp_path / "baselines.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(AgnetError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        load_baselines(path)


# --------------------------------------------------------------------------------------- claims


def baseline_runs(bot_shift: float, attr_shift: float = 0.0):
    """Runs of AGNet-ASL (All) and BoT (ID only), BoT+Attr and BoT+ALS (All) on both twins, 4 seeds with small noise;
    BoT is ``bot_shift`` above AGNet-ASL, BoT+Attr ``attr_shift`` above BoT, BoT+ALS equal to BoT+Attr."""
    noise = {0: 0.002, 1: -0.001, 2: 0.0, 3: -0.002}
    base = {s: 0.60 + n for s, n in noise.items()}
    bot = {s: v + bot_shift + 0.5 * noise[(s + 1) % 4] for s, v in base.items()}
    attr = {s: v + attr_shift + 0.5 * noise[(s + 2) % 4] for s, v in bot.items()}
    als = {s: v + 0.5 * noise[(s + 3) % 4] for s, v in attr.items()}
    rows = []
    for variant, descriptor, per_seed in (("agnet_asl", "All", base), ("bot", "ID", bot), ("bot_attr", "All", attr),
                                          ("bot_als", "All", als)):
        rows.append(("veri-x", variant, descriptor, "veri", per_seed))
        rows += [("vid-x", variant, descriptor, p, per_seed) for p in VID_PROTOCOLS]
    return runs(rows)


def test_baseline_claims_compare_the_published_baseline_with_the_papers_row():
    claims = {c.id: c for c in baseline_claims()}
    veri = claims["baseline/veri/mAP/bot-vs-agnet_asl"]
    assert veri.source == "published" and veri.paper_gap == pytest.approx(78.8 - 66.32)  # BoT's row, not SBS's
    assert (veri.a.variant, veri.a.descriptor, veri.b.variant, veri.b.descriptor) == ("bot", "ID", "agnet_asl", "All")
    assert "baseline/veri/Rank5/bot-vs-agnet_asl" not in claims  # FastReID prints no Rank-5 for VeRi
    assert claims["baseline/vehicleid-1600/Rank1/bot-vs-agnet_asl"].paper_gap == pytest.approx(82.9 - 69.23)
    assert len(claims) == 2 + 6
    # Were the published baseline below the paper's row, the claim would run the other way.
    baselines = copy.deepcopy(load_baselines())
    baselines["parts"]["veri"]["published"][0]["values"] = ["60.0", "96.1", "-"]
    flipped = {c.id: c for c in baseline_claims(baselines)}
    assert flipped["baseline/veri/mAP/agnet_asl-vs-bot"].paper_gap == pytest.approx(66.32 - 60.0)


def test_a_planted_gap_establishes_the_direction_and_none_does_not():
    planted = [v for v in check_all(baseline_runs(0.15), CLAIM_CONTEXTS) if v.claim.source == "published"]
    assert len(planted) == 8 and {v.family for v in planted} == {"beside a modern baseline: BoT vs AGNet-ASL"}
    # a cross-paper gap is judged by direction alone: its size mixes the two papers' backbones and protocols
    assert all(v.verdict == "direction established (size not judged: the published gap is cross-paper)"
               and v.seeds == 4 for v in planted)
    assert all(v.p_family >= v.p_one for v in planted)
    none = [v for v in check_all(baseline_runs(0.0), CLAIM_CONTEXTS) if v.claim.source == "published"]
    assert none and all(v.verdict.startswith("no direction established (size not judged") for v in none)
    # BoT not run: its claims are left out quietly, the paper's claims are unchanged.
    without = baseline_runs(0.15)
    without = without[without["variant"] != "bot"]
    assert not [v for v in check_all(without, CLAIM_CONTEXTS) if v.claim.source == "published"]


def test_agnets_additions_on_bot_are_measured_by_each_sides_descriptor():
    measured = measure(baseline_runs(0.0, attr_shift=0.05), contrasts=BASELINE_CONTRASTS)
    attr = [m for m in measured if m.contrast.id == "bot-attr"]
    assert attr and all(m.verdict == "A higher" and m.gap == pytest.approx(5.0, abs=0.5) for m in attr)
    als = [m for m in measured if m.contrast.id == "bot-als"]
    assert als and all(m.verdict.startswith("no difference established") for m in als)
    assert {m.dataset for m in measured} == {"veri-x", "vid-x"}
    text = "\n".join(markdown(measured, group="baseline"))
    assert "### AGNet's additions on BoT" in text and "(bot_attr All − bot ID)" in text
    assert "(bot_als − bot_attr)" in text
    # The arms section does not show them; without the BoT variants nothing is measured.
    assert "bot_attr" not in "\n".join(markdown(measured))
    assert not measure(runs([("vid-x", "agnet_asl", "All", "vehicleid-3", {0: 0.5, 1: 0.6})]),
                       contrasts=BASELINE_CONTRASTS)


def test_claims_report_has_the_baseline_section(tmp_path):
    data = baseline_runs(0.15, attr_shift=0.05)
    verdicts = check_all(data, CLAIM_CONTEXTS)
    write_claims(verdicts, CLAIM_CONTEXTS, tmp_path / "claims.md", tmp_path / "claims.json", contrasts=measure(data))
    text = (tmp_path / "claims.md").read_text()
    section = text.split("## Beside a modern baseline")[1].split("## The paper against itself")[0]
    assert "### BoT against AGNet-ASL" in section and "| published gap (cross-paper) |" in section
    assert "cross-paper gap" in section and "ResNet-50-IBN" in section
    assert "BoT beats AGNet-ASL in mAP (Table V, VeRi-776; published: BoT(R50-ibn), FastReID 78.8 vs AGNet paper " \
           "66.32)" in section
    assert "### AGNet's additions on BoT" in section and "| +12.48 |" in section and "by direction alone" in section
    other = text.split("## Other claims")[1].split("## Beside a modern baseline")[0]
    assert "Table V" not in other
    record = json.loads((tmp_path / "claims.json").read_text())
    published = [c for c in record["claims"] if c["claim"]["source"] == "published"]
    assert len(published) == 8 and published[0]["claim"]["published_gap"] == pytest.approx(12.48)
    assert "paper_gap" not in published[0]["claim"]  # a cross-paper gap is not the paper's
    assert {c["contrast"]["group"] for c in record["contrasts"]} == {"baseline"}
