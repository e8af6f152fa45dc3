"""Settings documents (agnet.settings): each stage's document holds exactly the settings the stage reads, so a
changed setting reruns exactly its dependants; operational settings are in none of them; every cross-field rule
is applied by the one function the workflow and `agnet config check` share."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from agnet.cli import main
from agnet.config import deep_merge, validate_config
from agnet.errors import AgnetError, ConfigError
from agnet.settings import (
    OPERATIONAL,
    OPERATIONAL_DEFAULTS,
    check_config,
    evaluation_key,
    load_plan,
    plan,
    read_document,
    train_settings,
)
from tests.conftest import REPO

BASE = yaml.safe_load((REPO / "config.yaml").read_text())
DEMO = yaml.safe_load((REPO / "workflow/configs/demo.yaml").read_text())


def demo_config(**overrides) -> dict:
    """config.yaml + demo.yaml (+ overrides), as the workflow merges them."""
    return validate_config(deep_merge(deep_merge(BASE, DEMO), overrides))


def changed_documents(overrides: dict) -> set[str]:
    """Documents rewritten, added or gone (a job reading one of them reruns)."""
    before, after = plan(demo_config()), plan(demo_config(**overrides))
    common = set(before.documents) & set(after.documents)
    return {key for key in common if before.text(key) != after.text(key)} | (set(before.documents) ^ set(after.documents))


EVALUATE = {"evaluate/veri-synth", "evaluate/vehicleid-synth"}
# BoT's runs have an ID descriptor alone (no attribute branch): their own evaluate documents, which hold no α
EVALUATE_ID = {"evaluate/veri-synth.ID", "evaluate/vehicleid-synth.ID"}
TRAIN = {"train/only_id", "train/agnet_ce", "train/agnet_asl", "train/agnet_ce_uniform", "train/agnet_asl_shuffled"}
BOT = {"train/bot", "train/bot_attr", "train/bot_als"}  # they set their own input size, lr and schedule

# setting -> the documents (so the jobs) it may change; everything else must stay byte-identical
DEPENDANTS = [
    ({"evaluation": {"alpha": 0.3}}, EVALUATE | {"report/figures_illustrations", "report/sensitivity"}),
    ({"evaluation": {"alpha_sweep": [0.0, 0.25, 1.0]}}, EVALUATE),  # scored by the evaluate jobs only
    ({"evaluation": {"distance": "cosine"}}, EVALUATE | EVALUATE_ID | {"report/figures_illustrations"}),
    ({"evaluation": {"max_rank": 20}}, EVALUATE | EVALUATE_ID),
    ({"evaluation": {"trial_seed": 4}}, {"evaluate/vehicleid-synth", "evaluate/vehicleid-synth.ID"}),
    ({"evaluation": {"vehicleid_trials": 3}}, {"evaluate/vehicleid-synth", "evaluate/vehicleid-synth.ID"}),
    ({"evaluation": {"str": {"lambdas": [0.0, 0.4]}}}, {"evaluate/veri-synth", "evaluate/veri-synth.ID"}),
    ({"evaluation": {"str": {"same_camera": "zero"}}}, {"evaluate/veri-synth", "evaluate/veri-synth.ID"}),
    ({"evaluation": {"str": {"folds": 3}}}, {"evaluate/veri-synth", "evaluate/veri-synth.ID"}),
    ({"evaluation": {"str": {"fold_seed": 5}}}, {"evaluate/veri-synth", "evaluate/veri-synth.ID"}),
    ({"evaluation": {"str": {"enabled": False}}}, {"evaluate/veri-synth", "evaluate/veri-synth.ID"}),  # VeRi features cover every image
    ({"evaluation": {"descriptors": ["ID"]}},  # no All: no α to mark; BoT provides them all now: evaluate/<ds>
     EVALUATE | EVALUATE_ID | {"report/sensitivity"}),
    ({"evaluation": {"vehicleid_test_sizes": [800]}}, set()),  # a small twin has its own four lists
    ({"training": {"lr": 0.02}}, TRAIN),
    ({"training": {"input_size": [48, 48]}}, TRAIN),
    ({"training": {"amp": "on"}}, TRAIN | BOT),
    ({"training": {"als": {"theta": 0.3}}},  # CE: no ALS read; the sensitivity report states AGNet-ASL's constants
     {"train/agnet_asl", "train/agnet_asl_shuffled", "train/bot_als", "report/sensitivity"}),
    ({"training": {"als": {"pairs": "attributes"}}}, set()),  # the default, written out: the same recipe
    ({"variants": {"agnet_asl": {"als": {"pairs": "shuffled"}}}}, {"train/agnet_asl"}),
    ({"training": {"hard_negative_fraction": 0.25}},  # Only-ID: no mining; the uniform arm sets its own 0
     {"train/agnet_ce", "train/agnet_asl", "train/agnet_asl_shuffled", "train/bot_als"}),
    ({"variants": {"agnet_ce": {"lr": 0.01}}}, {"train/agnet_ce"}),
    ({"seeds": [0, 1, 2]}, set()),  # more runs, the same settings per run
    # another twin: its lists (extraction, evaluation) and the stand-ins the tables and claims state; figures not
    ({"datasets": {"vehicleid-synth": {"source": {"vehicles": 240}}}},
     {"extract/vehicleid-synth", "evaluate/vehicleid-synth", "evaluate/vehicleid-synth.ID", "report/tables",
      "report/claims"}),
    ({"training": {"lr": 0.05, "loss_weights": {"verify": 1}}}, set()),  # demo's lr written again; 1 == 1.0
    ({"figures": {"seed": 1}}, set()),  # another illustrated run: an input, not a setting
    *[({"training": {key: value}}, set()) for key, value in
      (("workers", 2), ("log_every", 3), ("decoded_cache", False), ("channels_last", "off"),
       ("deterministic", True), ("compile", True))],
    *[({"evaluation": {key: value}}, set()) for key, value in (("batch_size", 7), ("workers", 1))],
]


@pytest.mark.parametrize("overrides, dependants", DEPENDANTS, ids=lambda v: json.dumps(v) if isinstance(v, dict) else "")
def test_a_setting_changes_exactly_the_documents_of_the_stages_that_read_it(overrides, dependants):
    assert changed_documents(overrides) == dependants


def test_operational_settings_are_split_once_and_reach_the_jobs_as_flags():
    config = demo_config(training={"workers": 3, "deterministic": True}, evaluation={"batch_size": 9})
    result = plan(config)
    for document in result.documents.values():
        assert not set(document["settings"]) & set(OPERATIONAL["training"]) - {"workers"}
    assert not set(result.document("train/agnet_asl")["settings"]) & set(OPERATIONAL["training"])
    assert result.flags("train") == ("--workers 3 --log-every 5 --decoded-cache auto --channels-last on "
                                     "--deterministic --no-compile")
    assert result.flags("extract") == "--batch-size 9 --workers 0"
    # the defaults a job falls back on are config.yaml's own values
    for section, defaults in OPERATIONAL_DEFAULTS.items():
        assert set(defaults) == set(OPERATIONAL[section])
        assert {k: BASE[section].get(k, False) for k in defaults} == defaults
    from agnet.train.checkpoint import OPERATIONAL as RESUMABLE

    assert RESUMABLE == set(OPERATIONAL["training"])  # a resume may change exactly these


def test_a_variant_without_the_attribute_branch_is_evaluated_on_its_own_descriptors():
    config = demo_config()
    result = plan(config)
    assert evaluation_key(config, "veri-synth", "bot") == "veri-synth.ID"
    assert evaluation_key(config, "veri-synth", "bot_attr") == evaluation_key(config, "veri-synth", "agnet_asl") \
        == "veri-synth"
    bot = result.document("evaluate/veri-synth.ID")
    assert bot["dataset"] == "veri-synth" and bot["settings"]["descriptors"] == ["ID"]
    assert "alpha" not in bot["settings"] and "alpha_sweep" not in bot["settings"]  # no All: α reruns nothing of BoT
    same = {k: v for k, v in result.document("evaluate/veri-synth")["settings"].items() if k not in
            ("descriptors", "alpha", "alpha_sweep")}
    assert {k: v for k, v in bot["settings"].items() if k != "descriptors"} == same
    # adding the BoT family leaves the AGNet runs' documents (and so their evaluations) as they were
    agnet_only = plan(demo_config(train_variants=["only_id", "agnet_ce", "agnet_asl"]))
    assert "evaluate/veri-synth.ID" not in agnet_only.documents
    for ds in ("veri-synth", "vehicleid-synth"):
        assert agnet_only.text(f"evaluate/{ds}") == result.text(f"evaluate/{ds}")


def test_a_variant_that_provides_no_configured_descriptor_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"variants\.bot: its model provides none of evaluation\.descriptors"):
        plan(demo_config(evaluation={"descriptors": ["Attr", "All"]}))


def test_documents_hold_what_their_stage_reads():
    result = plan(demo_config())
    veri, vid = result.document("evaluate/veri-synth")["settings"], result.document("evaluate/vehicleid-synth")
    assert veri["protocols"] == ["veri", "veri-str", "veri-st"] and "vehicleid" not in veri and veri["alpha"] == 0.5
    assert veri["str"] == {"lambdas": [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0], "same_camera": "nearest",
                           "folds": 2, "fold_seed": 0}
    assert vid["settings"]["protocols"] == ["vehicleid-25", "vehicleid-50", "vehicleid-75", "vehicleid-100"]
    assert "str" not in vid["settings"] and vid["settings"]["vehicleid"] == {"trials": 10, "trial_seed": 0}
    assert result.document("extract/vehicleid-synth")["settings"]["images"] == vid["settings"]["protocols"]
    assert result.document("extract/veri-synth")["settings"]["images"] == "all"
    assert result.document("train/only_id")["settings"]["als"] is None
    assert result.document("train/only_id")["settings"]["hard_negative_fraction"] == 0.0
    assert result.document("train/agnet_asl")["settings"]["als"] == {"theta": 0.2, "alpha": 0.1, "beta": 1.0,
                                                                   "pairs": "attributes"}
    assert "alpha" not in plan(demo_config(evaluation={"descriptors": ["ID", "Attr"]})).document(
        "evaluate/veri-synth")["settings"]
    report = result.document("report/tables")["settings"]["datasets"]
    assert report["vehicleid"] == {"dataset": "vehicleid-synth", "synthetic": True,
                                   "stand_ins": {"800": 25, "1600": 50, "2400": 75, "3200": 100}}


def test_str_tunes_lambda_without_held_out_vehicles_and_its_folds_reach_the_evaluation():
    """Several λ and no held-out vehicle is the paper protocol now (λ is cross-fitted on the test vehicles); the
    folds are in the evaluate document (a change reruns it) and read by the evaluation; one fixed λ has no folds."""
    from agnet.evaluate import EvalSettings

    config = demo_config(evaluation={"str": {"folds": 3, "fold_seed": 4}})
    assert all(not entry.get("holdout_vehicles") for entry in config["datasets"].values())
    check_config(config)
    veri = plan(config).document("evaluate/veri-synth")["settings"]
    settings = EvalSettings.from_settings(veri)
    assert (settings.str_folds, settings.str_fold_seed, len(settings.str_lambdas)) == (3, 4, 8)
    fixed = plan(demo_config(evaluation={"str": {"lambdas": [0.3]}})).document("evaluate/veri-synth")["settings"]
    assert fixed["str"] == {"lambdas": [0.3], "same_camera": "nearest"}  # nothing tuned: no folds read


def test_a_document_round_trips_to_the_settings_a_job_runs_with(tmp_path):
    result = plan(demo_config())
    path = tmp_path / "train.json"
    path.write_text(result.text("train/agnet_asl"))
    document = read_document(path, "train")
    settings = train_settings(document, result.operational("training"))
    assert settings.variant == "agnet_asl" and settings.epochs == 8 and settings.workers == 0
    with pytest.raises(AgnetError, match="a settings document for stage 'train', not 'evaluate'"):
        read_document(path, "evaluate")
    path.write_text("[1, 2]")
    with pytest.raises(AgnetError, match="not a settings document"):
        read_document(path, "train")
    for key, stage, lacks in (("report/tables", "report", "settings.datasets"),
                              ("evaluate/veri-synth", "evaluate", "settings.distance"),
                              ("train/agnet_ce", "train", "variant")):
        broken = json.loads(result.text(key))
        holder = broken if lacks == "variant" else broken["settings"]
        holder.pop(lacks.removeprefix("settings."))
        path.write_text(json.dumps(broken))
        with pytest.raises(AgnetError, match=f"the {stage} settings document lacks {lacks}"):
            read_document(path, stage)


def test_a_ce_variant_does_not_read_the_als_constants():
    """A variant's document says what it may read, and its training reads no more: the verification loss of a CE
    variant is identical whatever the ALS constants are (so they are rightly absent from its document)."""
    from agnet.losses import LossWeights, total_loss

    torch.manual_seed(0)
    outputs = {"id_logits": torch.randn(6, 5), "color_logits": torch.randn(6, 3), "type_logits": torch.randn(6, 4)}
    batch = {"class_id": torch.arange(6) % 5, "color_id": torch.zeros(6, dtype=torch.long),
             "type_id": torch.ones(6, dtype=torch.long), "same": torch.tensor([1, 0, 0, 1, 0, 0]).bool(),
             "hard": torch.tensor([0, 1, 1, 0, 0, 1]).bool()}
    logits, weights = torch.randn(6, 2), LossWeights(0.5, 0.5, 1.0)
    plain = total_loss(outputs, batch, logits, weights, "ce", None)["verify"]
    for als in ({"theta": 0.9, "alpha": 0.0, "beta": 5.0}, {"theta": 0.0, "alpha": 3.0, "beta": 0.0}):
        assert torch.equal(total_loss(outputs, batch, logits, weights, "ce", als)["verify"], plain)
    assert not torch.equal(total_loss(outputs, batch, logits, weights, "als",
                                      {"theta": 0.9, "alpha": 0.1, "beta": 5.0})["verify"], plain)


# Configurations the workflow refuses; `agnet config check` must refuse each with the same line
# (tests/test_rerun.py runs both on this table).
BAD_CONFIGS = [
    ({"figures": {"seed": 7}}, r"figures\.seed: 7 is not trained \(seeds: 0, 1, 2\)"),
    ({"figures": {"variant": "agnet_x"}}, r"figures\.variant: 'agnet_x' is not trained"),
    ({"evaluation": {"str": {"folds": 1}}}, r"evaluation\.str\.folds: 1 is less than the minimum of 2"),
    ({"evaluation": {"str": {"lambdas": [0.0, float("inf")]}}}, r"evaluation\.str\.lambdas\[1\]: inf is not a finite"),
    ({"training": {"lr": float("nan")}}, r"training\.lr: nan is not a finite number"),
    ({"evaluation": {"alpha_sweep": [0.0, 1.5]}}, r"evaluation\.alpha_sweep\.1: 1\.5 is greater than the maximum of 1"),
    ({"evaluation": {"alpha_sweep": [0.0, float("nan")]}}, r"evaluation\.alpha_sweep\[1\]: nan is not a finite number"),
    ({"variants": {"agnet_ce": {"loss_weights": {"category": 0.0, "attributes": 0.0, "verify": 0.0}}}},
     r"variants\.agnet_ce\.loss_weights: all zero"),
    ({"variants": {"agnet_asl": {"workers": 2}}}, r"variants\.agnet_asl: workers is an operational setting"),
    ({"train_variants": ["agnet_asl", "agnet_als"]}, r"train_variants: 'agnet_als' not defined under 'variants'"),
    ({"run": ["veri-synth", "nope"]}, r"run: 'nope' not defined under 'datasets'"),
    ({"variant_datasets": {"agnet_x": ["veri-synth"]}}, r"variant_datasets\.agnet_x: not defined under 'variants'"),
    ({"figures": {"variant": "agnet_ce_uniform"}},
     r"figures\.variant: 'agnet_ce_uniform' is not trained on veri-synth \(variant_datasets\)"),
    ({"variant_datasets": {"agnet_ce_uniform": ["nope"]}},
     r"variant_datasets\.agnet_ce_uniform: 'nope' not defined under 'datasets'"),
    ({"evaluation": {"max_rank": 3}}, r"evaluation\.max_rank: 3 is below 5"),
    ({"training": {"lr_milestones": [6, 2]}}, r"training\.lr_milestones: \[6, 2\] must be strictly increasing"),
    ({"training": {"pretrained": "/no/such/weights.pt"}},
     r"training\.pretrained: '/no/such/weights\.pt' is neither 'imagenet', 'none' nor an existing"),
    ({"run": ["veri-synth", "vehicleid-real"],
      "datasets": {"vehicleid-real": {"format": "vehicleid", "source": {"kind": "directory", "location": "x"}}},
      "evaluation": {"vehicleid_test_sizes": [800, 1500]}},
     r"evaluation\.vehicleid_test_sizes: 1500 is not a test list of VehicleID \(dataset 'vehicleid-real'"),
]


@pytest.mark.parametrize("overrides, message", BAD_CONFIGS, ids=[m[:40] for _, m in BAD_CONFIGS])
def test_check_config_refuses_with_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        check_config(deep_merge(deep_merge(copy.deepcopy(BASE), DEMO), overrides))
    assert len(str(info.value).splitlines()) == 1


def test_config_check_and_settings_commands(tmp_path, capsys):
    demo = str(REPO / "workflow/configs/demo.yaml")
    assert main(["config", "check", str(REPO / "config.yaml"), demo]) == 0
    first, documents = capsys.readouterr().out.splitlines()
    assert first.endswith(": valid") and "train: only_id, agnet_ce, agnet_asl" in documents
    out = tmp_path / "doc.json"
    assert main(["config", "settings", str(REPO / "config.yaml"), demo, "--key", "evaluate/veri-synth",
                 "-o", str(out)]) == 0
    assert out.read_text() == load_plan(REPO / "config.yaml", demo).text("evaluate/veri-synth")
    bad = tmp_path / "bad.yaml"
    bad.write_text("figures: {seed: 9}\n")
    assert main(["config", "check", str(REPO / "config.yaml"), demo, str(bad)]) == 1
    assert "figures.seed: 9 is not trained" in capsys.readouterr().err


def test_a_job_refuses_a_document_other_than_the_one_planned(tmp_path, capsys):
    """The workflow gives each job its document's sha256: a document edited, or left from another configuration,
    is refused with one line instead of being trained or scored with."""
    result = plan(demo_config())
    doc = tmp_path / "evaluate.json"
    doc.write_text(result.text("evaluate/veri-synth"))
    argv = ["evaluate", "--settings", str(doc), "--features", str(tmp_path / "f.pt"), "--manifest",
            str(tmp_path / "m.parquet"), "-o", str(tmp_path / "out.json")]
    assert main([*argv, "--settings-sha256", "0" * 64]) == 1
    err = capsys.readouterr().err
    assert "does not hold the settings planned for this job" in err and "delete it and rerun" in err
    assert main([*argv, "--settings-sha256", result.digest("evaluate/veri-synth")]) == 1  # accepted; then no manifest
    assert "planned" not in capsys.readouterr().err
