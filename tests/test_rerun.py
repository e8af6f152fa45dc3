"""A result always matches its configuration (issue 22), on the finished tiny DAG: a setting edited in a file or
given with --config reruns exactly the jobs that read it (and what depends on them), reaches those jobs, and
nothing else is redone; operational settings and moving the checkout rerun nothing; `agnet config check` and the
workflow refuse the same configurations."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from agnet.data.manifest import read_manifest
from tests.conftest import REPO
from tests.test_settings import BAD_CONFIGS
from tests.test_workflow import DEMO, snakemake

VERI, VID = "tiny-veri", "tiny-vehicleid"
REPORT = {"aggregate", "tables", "claims", "figures_cmc", "sensitivity"}  # downstream of every evaluation


def planned(done: subprocess.CompletedProcess) -> set[str]:
    """`rule` or `rule:dataset` of every job a dry run plans (settings documents and `all` left out)."""
    assert done.returncode == 0, done.stderr[-2000:]
    jobs = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", done.stdout):
        match = re.match(r"(?:local)?rule (\w+):", block)
        if not match or match.group(1) in ("all", "settings"):
            continue
        output = re.search(r"output: (\S+)", block)
        where = re.search(r"results/(?:data|runs)/([^/]+)/", output.group(1)) if output else None
        jobs.add(f"{match.group(1)}:{where.group(1)}" if where else match.group(1))
    return jobs


def copy_run(tiny_dag, where: Path) -> tuple[Path, tuple[str, ...]]:
    """An exact copy of the finished tiny DAG (modification times and Snakemake's records kept)."""
    workdir, args = tiny_dag
    copy = Path(shutil.copytree(workdir, where, symlinks=True))
    return copy, tuple(str(copy / "tiny.yaml") if a == str(workdir / "tiny.yaml") else a for a in args)


def overlay(folder: Path, name: str, settings: dict) -> str:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return str(path)


# evaluation setting -> the jobs it reruns (beyond the report jobs every evaluation feeds)
EVALUATION_EDITS = [
    ({"alpha": 0.3}, {f"evaluate:{VERI}", f"evaluate:{VID}", "figures_illustrations"}),
    ({"distance": "cosine"}, {f"evaluate:{VERI}", f"evaluate:{VID}", "figures_illustrations"}),
    ({"max_rank": 20}, {f"evaluate:{VERI}", f"evaluate:{VID}"}),
    ({"alpha_sweep": [0.0, 0.5, 1.0]}, {f"evaluate:{VERI}", f"evaluate:{VID}"}),
    ({"trial_seed": 3}, {f"evaluate:{VID}"}),
    ({"vehicleid_trials": 4}, {f"evaluate:{VID}"}),
    ({"str": {"lambdas": [0.0, 0.25, 0.5]}}, {f"evaluate:{VERI}"}),
    ({"str": {"same_camera": "zero"}}, {f"evaluate:{VERI}"}),
    ({"str": {"folds": 3}}, {f"evaluate:{VERI}"}),
    ({"str": {"fold_seed": 4}}, {f"evaluate:{VERI}"}),
]


@pytest.mark.slow
def test_an_edited_evaluation_setting_reruns_its_evaluations_and_no_training(tiny_dag, tmp_path):
    work, args = copy_run(tiny_dag, tmp_path / "work")
    cases = [(overlay(tmp_path, f"edit{i}", {"evaluation": edit}), edit, expected | REPORT)
             for i, (edit, expected) in enumerate(EVALUATION_EDITS)]
    cases += [(overlay(tmp_path, "lists", {"evaluation": {"vehicleid_test_sizes": [800]}}), "twin lists", set()),
              (overlay(tmp_path, "strict", {"datasets": {VERI: {"strict": True}}}), "strict", {f"verify:{VERI}"}),
              (overlay(tmp_path, "ops", {"training": {"workers": 3, "log_every": 2}, "evaluation": {"workers": 2}}),
               "operational", set())]
    with ThreadPoolExecutor(2) as pool:  # dry runs only read the copy
        plans = list(pool.map(lambda case: planned(snakemake(work, *args, case[0], "-n")), cases))
    wrong = {str(edit): (sorted(jobs), sorted(expected))
             for (_, edit, expected), jobs in zip(cases, plans, strict=True) if jobs != expected}
    assert wrong == {}
    # A settings document deleted: nothing reruns (its settings did not change) — and a setting changed while it is
    # gone still reruns its readers (each job has its document's digest as a parameter), writing it first.
    (work / f"results/settings/evaluate/{VERI}.json").unlink()
    assert planned(snakemake(work, *args, "-n")) == set()
    lambdas = overlay(tmp_path, "lambdas", {"evaluation": {"str": {"lambdas": [0.0, 2.0]}}})
    done = snakemake(work, *args, lambdas, "-n")
    assert planned(done) == {f"evaluate:{VERI}"} | REPORT
    assert f"output: results/settings/evaluate/{VERI}.json" in done.stdout


@pytest.mark.slow
def test_edits_and_overrides_reach_the_jobs_and_a_second_dry_run_is_empty(tiny_dag, tmp_path):
    """Every evaluation setting edited in an overlay, plus a training and an evaluation setting given with
    --config (Snakemake records them, and the jobs must see them: they read the settings documents, never the
    YAML files). After one run the metrics and run records show the new values and nothing is left to do."""
    work, args = copy_run(tiny_dag, tmp_path / "work")
    edits = overlay(tmp_path, "edits", {"evaluation": {"alpha": 0.3, "distance": "cosine", "max_rank": 20,
                                                       "vehicleid_trials": 4,
                                                       "str": {"lambdas": [0.0, 0.25], "same_camera": "zero"}}})
    override = ["--config", "training={lr: 0.04}", "evaluation={trial_seed: 3}"]
    dry = planned(snakemake(work, *args, edits, *override, "-n"))
    assert {job for job in dry if job.startswith("train:")} == {f"train:{VERI}", f"train:{VID}"}  # lr only
    done = snakemake(work, "--cores", "2", *args, edits, *override, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in (VERI, VID):
        run = work / f"results/runs/{name}/agnet_asl/seed0"
        assert json.loads((run / "run.json").read_text())["settings"]["lr"] == 0.04
        metrics = json.loads((run / "metrics.json").read_text())
        evaluation = metrics["evaluation"]
        assert (evaluation["alpha"], evaluation["distance"], evaluation["max_rank"]) == (0.3, "cosine", 20)
        assert all(len(record["cmc"]) == 20 for record in metrics["records"])
        assert all(record["distance"] == "cosine" for record in metrics["records"] if record["descriptor"] != "none")
        assert metrics["provenance"]["settings"] == f"results/settings/evaluate/{name}.json"
    vid = json.loads((work / f"results/runs/{VID}/agnet_asl/seed0/metrics.json").read_text())
    assert vid["evaluation"]["vehicleid"] == {"trials": 4, "trial_seed": 3}
    assert all(len(record["trials"]) == 4 for record in vid["records"])
    veri = json.loads((work / f"results/runs/{VERI}/agnet_asl/seed0/metrics.json").read_text())
    assert veri["evaluation"]["str"] == {"lambdas": [0.0, 0.25], "same_camera": "zero", "folds": 2, "fold_seed": 0}
    assert next(r for r in veri["records"] if r["protocol"] == "veri-str")["str"]["same_camera"] == "zero"
    assert "4 random gallery draws" in (work / "results/tables/table2.md").read_text()  # the caption: the data's
    again = snakemake(work, *args, edits, *override, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_moving_the_checkout_and_results_reruns_nothing_but_what_an_overlay_changes(tiny_dag, tmp_path):
    """Nothing a job's rerun depends on holds the checkout's or the results' location: a finished run moved to
    another folder (code and results) plans nothing; an evaluation-only overlay and a changed training.workers
    there plan the evaluations and no training; the manifests find their images in the moved tree."""
    checkout = tmp_path / "elsewhere" / "checkout"
    checkout.mkdir(parents=True)
    for name in ("Snakefile", "config.yaml"):
        shutil.copy2(REPO / name, checkout / name)
    for name in ("workflow", "agnet"):
        shutil.copytree(REPO / name, checkout / name, ignore=shutil.ignore_patterns("__pycache__"))
    work, args = copy_run(tiny_dag, tmp_path / "elsewhere" / "work")
    args = tuple(str(checkout / Path(a).relative_to(REPO)) if a == DEMO else a for a in args)
    moved = [sys.executable, "-m", "snakemake", "-s", str(checkout / "Snakefile"), "-d", str(work), *args]

    def dry(*extra: str) -> set[str]:
        return planned(subprocess.run([*moved, *extra, "-n"], check=False, capture_output=True, text=True, timeout=300))

    assert dry() == set()
    change = overlay(tmp_path, "change", {"evaluation": {"alpha": 0.2}, "training": {"workers": 3}})
    assert dry(change) == {f"evaluate:{VERI}", f"evaluate:{VID}", "figures_illustrations"} | REPORT
    for name in (VERI, VID):
        _, meta = read_manifest(work / f"results/data/{name}/manifest.parquet")
        assert Path(meta["root"]) == work / f"results/data/{name}/root"


@pytest.mark.slow
@pytest.mark.parametrize("checker", ["agnet config check", "snakemake -n"])
def test_config_check_and_the_workflow_refuse_the_same_configurations(checker, tmp_path):
    """The table of tests/test_settings.py (≥ 10 configurations that would otherwise fail late or silently): each
    is refused by `agnet config check` and by the workflow before any job, with the same line naming the key."""
    overlays = [overlay(tmp_path, f"bad{i}", settings) for i, (settings, _) in enumerate(BAD_CONFIGS)]

    def refusal(path: str) -> tuple[int, str]:
        if checker == "agnet config check":
            done = subprocess.run([sys.executable, "-m", "agnet", "config", "check", str(REPO / "config.yaml"), DEMO,
                                   path], check=False, capture_output=True, text=True, timeout=120)
        else:
            work = Path(path).with_suffix("")
            work.mkdir()
            done = snakemake(work, "--configfile", DEMO, path, "-n")
            assert not (work / "results").exists()
        return done.returncode, done.stdout + done.stderr

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(refusal, overlays))
    wrong = {message: text[-400:] for (_, message), (status, text) in zip(BAD_CONFIGS, outcomes, strict=True)
             if status == 0 or not re.search(message, text)}
    assert len(BAD_CONFIGS) >= 10 and wrong == {}
