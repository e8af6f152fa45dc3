"""The sensitivity report (agnet.report.sensitivity): α table and figure from metrics.json files, the configured α
marked, the cross-fitted α beside it, the ALS arms or how to add them; inputs checked."""

from __future__ import annotations

import json

import pytest
import yaml

from agnet.cli import main
from agnet.config import deep_merge, validate_config
from agnet.errors import AgnetError
from agnet.report.sensitivity import make_sensitivity
from agnet.settings import plan, report_document
from tests.conftest import REPO

BASE = yaml.safe_load((REPO / "config.yaml").read_text())
DEMO = yaml.safe_load((REPO / "workflow/configs/demo.yaml").read_text())
ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0]
ARM = {"variants": {"agnet_asl_theta0.4": {"verification_loss": "als", "als": {"theta": 0.4, "alpha": 0.1,
                                                                                "beta": 1.0}}}}


def settings_of(**overrides) -> dict:
    config = validate_config(deep_merge(deep_merge(BASE, DEMO), overrides))
    return plan(config).document("report/sensitivity")["settings"]


def write_metrics(folder, dataset, variant, seed, protocols, alpha=0.5, sweep=True):
    shift = 0.01 * seed + {"agnet_asl": 0.05, "agnet_ce": 0.0, "only_id": -0.1}.get(variant, 0.02)
    data = {"provenance": {"dataset": dataset, "variant": variant, "seed": seed}, "evaluation": {"alpha": alpha},
            "records": [{"descriptor": d, "protocol": p, "distance": "euclidean", "mAP": 0.4 + shift,
                         "rank1": 0.6 + shift, "cmc": [0.6 + shift, 0.8], "num_queries": 5, "num_gallery": 20}
                        for d in ("ID", "All") for p in protocols]}
    if sweep:
        data["alpha_sweep"] = [{"alpha": a, "protocol": p, "mAP": 0.3 + shift + 0.2 * a * (1 - a),
                                "rank1": 0.5, "rank5": 0.7} for p in protocols if p != "veri-str" for a in ALPHAS]
        data["alpha_crossfit"] = [{"protocol": p, "mAP": 0.33 + shift, "configured_alpha": alpha,
                                   "configured_mAP": 0.35 + shift, "best_alpha": 0.5, "best_mAP": 0.35 + shift,
                                   "folds": [{"fold": 0, "alpha": 0.25}, {"fold": 1, "alpha": 0.5 + 0.25 * (seed % 2)}]}
                                  for p in protocols if p != "veri-str"]
    path = folder / f"{dataset}-{variant}-{seed}.json"
    path.write_text(json.dumps(data))
    return path


def all_metrics(folder, variants=("only_id", "agnet_ce", "agnet_asl"), **kwargs):
    paths = []
    for dataset, protocols in (("veri-synth", ["veri", "veri-str"]), ("vehicleid-synth", ["vehicleid-8", "vehicleid-16"])):
        for variant in variants:
            for seed in (0, 1):
                paths.append(write_metrics(folder, dataset, variant, seed, protocols, **kwargs))
    return paths


def test_table_and_figure_are_written_with_the_configured_alpha_marked(tmp_path):
    written = make_sensitivity(all_metrics(tmp_path), settings_of(), tmp_path / "tables", tmp_path / "figures")
    assert sorted(p.name for p in written) == ["alpha_sensitivity.pdf", "alpha_sensitivity.png", "sensitivity.md",
                                               "sensitivity.tex"]
    assert all(p.stat().st_size > 0 for p in written)
    md = (tmp_path / "tables/sensitivity.md").read_text()
    for protocol in ("veri", "vehicleid-8", "vehicleid-16"):
        assert f", {protocol} — SYNTHETIC TWIN" in md
    assert "veri-str —" not in md  # re-ranked protocols are not swept
    assert "| **0.5 (configured)** |" in md and md.count("(configured)") == 3
    assert "AGNet-ASL (n=2)" in md and "Only-ID (n=" not in md  # Only-ID's Tables III/IV row is its ID descriptor
    mean = 100 * (0.3 + 0.055 + 0.2 * 0.25 * 0.75)
    assert f"{mean:.2f} ± 0.71" in md  # α = 0.25 of AGNet-ASL, seeds 0 and 1
    assert "s0: 0.25/0.5; s1: 0.25/0.75" in md  # the α of each fold, per seed
    assert "No ALS arm is trained" in md and "agnet_asl_theta0.4: {verification_loss: als" in md
    tex = (tmp_path / "tables/sensitivity.tex").read_text()
    assert "\\textbf{0.5 (configured)}" in tex and "\\begin{tabular}" in tex


def test_als_arms_are_shown_against_agnet_asl(tmp_path):
    config = {**ARM, "train_variants": [*DEMO["train_variants"], "agnet_asl_theta0.4"]}
    settings = settings_of(**config)
    assert settings["als"]["variants"] == {"agnet_asl_theta0.4": {"theta": 0.4, "alpha": 0.1, "beta": 1.0}}
    paths = all_metrics(tmp_path, variants=("agnet_asl", "agnet_asl_theta0.4"))
    make_sensitivity(paths, settings, tmp_path, tmp_path)
    md = (tmp_path / "sensitivity.md").read_text()
    als = md.split("## ALS constants")[1]
    assert "| AGNet-ASL " in als and "| agnet_asl_theta0.4 | 0.4 " in als and "veri-synth veri-str" in als
    assert "No ALS arm" not in md


def test_only_als_constants_make_an_arm():
    shuffled = settings_of()["als"]["variants"]  # agnet_asl_shuffled differs in the pairs: not a θ/α/β arm
    assert shuffled == {}
    other = {"variants": {"asl_lr": {"verification_loss": "als", "lr": 0.01, "als": {"theta": 0.4}}},
             "train_variants": ["agnet_asl", "asl_lr"]}
    assert settings_of(**other)["als"]["variants"] == {}


def test_stale_or_mixed_inputs_are_refused_naming_the_file(tmp_path):
    paths = all_metrics(tmp_path)
    with pytest.raises(AgnetError, match=r"evaluation\.alpha is 0\.3, but the report's settings say 0\.5"):
        make_sensitivity([write_metrics(tmp_path, "veri-synth", "agnet_asl", 5, ["veri"], alpha=0.3)], settings_of(),
                         tmp_path, tmp_path)
    lacking = write_metrics(tmp_path, "veri-synth", "agnet_asl", 7, ["veri"], sweep=False)
    with pytest.raises(AgnetError, match=r"lacks alpha_sweep while .* has it"):
        make_sensitivity([*paths, lacking], settings_of(), tmp_path, tmp_path)


def test_runs_scored_on_id_alone_are_not_swept_and_do_not_make_the_others_stale(tmp_path):
    """bot has no attribute branch: its metrics hold ID alone and no sweep; the table is the AGNet runs' alone."""
    paths = all_metrics(tmp_path)
    make_sensitivity(paths, settings_of(), tmp_path / "without", tmp_path / "without")
    bot = []
    for seed in (0, 1):
        path = write_metrics(tmp_path, "veri-synth", "bot", seed, ["veri"], sweep=False)
        data = json.loads(path.read_text())
        data["evaluation"] = {"descriptors": ["ID"]}
        data["records"] = [r for r in data["records"] if r["descriptor"] == "ID"]
        path.write_text(json.dumps(data))
        bot.append(path)
    make_sensitivity([*paths, *bot], settings_of(), tmp_path / "with", tmp_path / "with")
    tables = [(tmp_path / f"{run}/sensitivity.md").read_text().split("Computed from ")[0] for run in ("with", "without")]
    assert tables[0] == tables[1]  # all but the list of the files read


def test_cli_reports_a_malformed_sweep_with_the_file_and_field(tmp_path, capsys):
    paths = all_metrics(tmp_path)
    data = json.loads(paths[0].read_text())
    data["alpha_sweep"][0]["mAP"] = float("nan")
    paths[0].write_text(json.dumps(data))
    document = tmp_path / "sensitivity.json"
    document.write_text(json.dumps(report_document(validate_config(deep_merge(BASE, DEMO)), "sensitivity")))
    code = main(["report", "sensitivity", "--settings", str(document), "--metrics", *map(str, paths),
                 "--tables", str(tmp_path / "t"), "--figures", str(tmp_path / "f")])
    assert code == 1
    err = capsys.readouterr().err
    assert str(paths[0]) in err and "alpha_sweep[0].mAP must be a number in [0, 1], got nan" in err
    assert not (tmp_path / "t").exists()


def test_without_a_sweep_the_outputs_say_so(tmp_path):
    paths = all_metrics(tmp_path, sweep=False)
    make_sensitivity(paths, settings_of(), tmp_path, tmp_path)
    assert "No α sweep in the metrics" in (tmp_path / "sensitivity.md").read_text()
    assert (tmp_path / "alpha_sensitivity.png").is_file()
