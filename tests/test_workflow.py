"""The Snakemake workflow: config validated before any job, DAG shape, end-to-end on a tiny twin."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import yaml

from agnet.data.constants import release_twin_test_size
from agnet.data.manifest import read_manifest
from agnet.settings import load_plan
from tests.conftest import REPO

SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
DEMO = str(REPO / "workflow/configs/demo.yaml")
TINY = """run: [tiny-veri, tiny-vehicleid]
seeds: [0]
train_variants: [agnet_asl]
training: {epochs: 10, lr_milestones: [8], batch_size: 8, deterministic: true}
evaluation: {descriptors: [All], str: {enabled: true, lambdas: [0.0, 0.5]}}
datasets:
  tiny-veri:
    format: veri
    source: {kind: synthetic, vehicles: 8, cameras: 3, seed: 1}
  tiny-vehicleid:
    format: vehicleid
    source: {kind: synthetic, vehicles: 16, cameras: 3, seed: 1}
"""


def snakemake(workdir: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [*SNAKEMAKE, "-d", str(workdir), *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)


def _job_counts(stdout: str) -> dict[str, str]:
    """The "Job stats" table of a dry run: rule -> number of jobs (and "total")."""
    return dict(line.split()[:2] for line in stdout.splitlines() if line.split()[1:2] and line.split()[1].isdigit())


def test_demo_profile_plans_every_stage_with_one_thread_trainings(tmp_path):
    """README's quick start (`snakemake --profile workflow/profiles/demo`, from the checkout): the demo config, every
    stage, and the small network's trainings and extractions on one thread each (two at once on 2 cores)."""
    command = [*SNAKEMAKE, "-d", str(tmp_path), "--profile", "workflow/profiles/demo", "--cores", "2", "-n"]
    done = subprocess.run(command, cwd=REPO, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    counts = _job_counts(done.stdout)
    # 3 seeds x (4 variants on the VeRi twin: the paper's 3 and BoT; 8 on the VehicleID twin: the ablation arms and
    # AGNet's additions to BoT too)
    assert counts["total"] == "142" and counts["train"] == counts["extract"] == counts["evaluate"] == "36"
    # one settings document per variant (8), per dataset and stage (2 x 2), per dataset for BoT's ID-only evaluation
    # (2) and per report job (6)
    assert counts["settings"] == "20"
    for rule in ("synthesize", "verify", "manifest", "aggregate", "tables", "claims", "figures_cmc",
                 "figures_illustrations", "figures_training", "sensitivity"):
        assert counts[rule] in ("1", "2"), rule
    shells = [line for line in done.stdout.splitlines() if "python -m agnet train " in line]
    assert len(shells) == 36 and all("--threads 1 " in line for line in shells)
    # the job reads its variant's settings document, never the YAML files; how it runs is in its flags
    assert all("--settings results/settings/train/" in line and ".yaml" not in line for line in shells)
    assert all("--workers 0 --log-every 5 " in line for line in shells)


def test_demo_profile_works_from_any_working_directory(tmp_path):
    """The profile names the demo config by a path Snakemake resolves from the profile's folder: started elsewhere
    (results in that folder), it plans the demo instead of failing to open workflow/configs/demo.yaml."""
    command = [*SNAKEMAKE, "--profile", str(REPO / "workflow/profiles/demo"), "--cores", "1", "-n"]
    done = subprocess.run(command, cwd=tmp_path, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _job_counts(done.stdout)["total"] == "142"


def test_invalid_config_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [tiny-veri]\ndatasets:\n  tiny-veri:\n    format: veri\n    source: {kind: synthetic, vehicles: 8, cameras: 3, colour: 2}\n")
    done = snakemake(tmp_path, "--cores", "1", "--configfile", str(bad))
    assert done.returncode != 0
    assert "datasets.tiny-veri.source: unknown key(s) 'colour'" in done.stderr + done.stdout
    assert not (tmp_path / "results").exists()


def test_missing_real_dataset_fails_with_how_to_obtain(tmp_path):
    cfg = tmp_path / "real.yaml"
    cfg.write_text(f"run: [veri]\ndatasets:\n  veri:\n    format: veri\n    source: {{kind: directory, location: {tmp_path}/none}}\n")
    done = snakemake(tmp_path, "--cores", "1", "--configfile", DEMO, str(cfg))
    assert done.returncode != 0
    log = (tmp_path / "results/logs/veri/fetch.log").read_text()
    assert "veri dataset not found" in log and "released by its authors on request" in log


@pytest.fixture
def tiny_run(tiny_dag) -> tuple[Path, tuple[str, ...]]:
    """The whole DAG run once on tiny twins (``tests/conftest.py``: shared with the SLURM comparison)."""
    return tiny_dag


@pytest.mark.slow
def test_end_to_end_on_tiny_twins(tiny_run, tmp_path_factory):
    tmp_path, args = tiny_run
    report_html = tmp_path_factory.mktemp("report") / "report.html"  # the shared run's folder is only read
    for name, fmt in (("tiny-veri", "veri"), ("tiny-vehicleid", "vehicleid")):
        report = json.loads((tmp_path / f"results/data/{name}/verify.json").read_text())
        assert report["valid"] and report["format"] == fmt
        frame, meta = read_manifest(tmp_path / f"results/data/{name}/manifest.parquet")
        assert meta["format"] == fmt and len(frame) > 0
        assert all((Path(meta["root"]) / p).is_file() for p in frame["path"])
        for step in ("synthesize", "verify", "manifest", "train/agnet_asl-seed0", "extract/agnet_asl-seed0",
                     "evaluate/agnet_asl-seed0"):
            assert (tmp_path / f"results/logs/{name}/{step}.log").stat().st_size > 0
        run = tmp_path / f"results/runs/{name}/agnet_asl/seed0"
        assert (run / "model.pt").is_file() and (run / "train_log.csv").is_file()
        assert json.loads((run / "run.json").read_text())["settings"]["epochs"] == 10  # the merged configs reached it
        metrics = json.loads((run / "metrics.json").read_text())  # one file per run: every descriptor x protocol
        expected = ["veri", "veri-str"] if fmt == "veri" else [f"vehicleid-{n}" for n in (2, 4, 6, 8)]
        control = [("none", "veri-st")] if fmt == "veri" else []  # the spatio-temporal term alone: once per run
        assert [(r["descriptor"], r["protocol"]) for r in metrics["records"]] == [("All", p) for p in expected] + control
        provenance = metrics["provenance"]  # what the numbers were computed from, not guessed from folders
        assert (provenance["dataset"], provenance["variant"], provenance["seed"]) == (name, "agnet_asl", 0)
        assert provenance["model_sha256"] == hashlib.sha256((run / "model.pt").read_bytes()).hexdigest()
        assert provenance["features_sha256"] == hashlib.sha256((run / "features.pt").read_bytes()).hexdigest()
    summary = pd.read_csv(tmp_path / "results/metrics/summary.csv")
    assert len(summary) == 7 and set(summary["descriptor"]) == {"All", "none"} and (summary["seeds"] == 1).all()
    assert summary["mAP_mean"].between(0, 1).all()
    runs = pd.read_parquet(tmp_path / "results/metrics/runs.parquet")
    assert len(runs) == 7 and runs["model_sha256"].str.len().eq(64).all()
    rerank = runs[runs["protocol"] == "veri-str"].iloc[0]  # each fold's λ, and whether one sits at a grid edge
    assert len(str(rerank["str_lambdas"]).split("/")) == 2 and "str_at_edge" in runs
    assert "λ per fold across seeds" in (tmp_path / "results/tables/table1.md").read_text()
    for n in range(1, 5):
        assert "SYNTHETIC TWIN" in (tmp_path / f"results/tables/table{n}.md").read_text()
        assert (tmp_path / f"results/tables/table{n}.tex").read_text().startswith("\\begin{table*}")
    assert "Synthetic twins, not the real datasets" in (tmp_path / "results/claims.md").read_text()
    assert "**0.5 (configured)**" in (tmp_path / "results/tables/sensitivity.md").read_text()  # α swept, marked
    for figure in ("fig5_cmc_veri", "fig6_cmc_vehicleid", "fig7_tsne", "fig8_retrieval_veri", "training_curves",
                   "alpha_sensitivity"):
        assert (tmp_path / f"results/figures/{figure}.png").stat().st_size > 10_000
    report = snakemake(tmp_path, *args, "--report", str(report_html))
    assert report.returncode == 0, report.stderr[-2000:]
    html = report_html.read_text(errors="replace")
    assert "claims.md" in html and "fig5_cmc_veri.png" in html and "summary.csv" in html
    assert "sensitivity.md" in html and "alpha_sensitivity.png" in html
    again = snakemake(tmp_path, "--cores", "2", *args, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr  # a finished run is not redone


def _summary(workdir: Path, args) -> pd.DataFrame:
    done = snakemake(workdir, *args, "--summary")
    assert done.returncode == 0, done.stderr[-2000:]
    return pd.read_csv(io.StringIO(done.stdout), sep="\t")


def test_every_file_the_dag_leaves_is_declared(tiny_run):
    workdir, args = tiny_run
    summary = _summary(workdir, args)
    assert (summary["status"] == "ok").all(), summary[summary["status"] != "ok"].to_string()
    declared = set(summary["output_file"])
    logs = {p.strip() for cell in summary["log-file(s)"].dropna() for p in str(cell).split(",")}
    directories = [d for d in declared if (workdir / d).is_dir()]
    undeclared = []
    for path in sorted((workdir / "results").rglob("*")):
        name = path.relative_to(workdir).as_posix()
        if path.is_dir() or name in declared or name in logs or name.startswith("results/benchmarks/"):
            continue  # benchmark files are declared by the rules' `benchmark:` directive
        if name.startswith("results/cache/decoded-"):
            continue  # the decoded-image cache: content-keyed, shared by runs, rebuilt by training when absent
        if any(name.startswith(d + "/") for d in directories):
            continue
        undeclared.append(name)
    assert undeclared == []
    # Nothing read or run differs from what the DAG recorded (params are checked by the "Nothing to be done" dry
    # run of the end-to-end test: Snakemake 9's `--list-changes params` flags every job whose params are functions).
    for change in ("input", "code"):
        listed = snakemake(workdir, *args, "--list-changes", change)
        assert listed.returncode == 0 and not [ln for ln in listed.stdout.splitlines() if ln.startswith("results/")]


# What each job of the tiny DAG reads, written from the `agnet` commands (not from the Snakefile): deleting a
# file must rerun the job that writes it and every job downstream of that, and nothing else.
_DS = ("tiny-veri", "tiny-vehicleid")
_READERS = {
    **{f"synthesize:{d}": [f"verify:{d}", f"manifest:{d}"] for d in _DS},
    **{f"verify:{d}": [f"manifest:{d}"] for d in _DS},
    **{f"manifest:{d}": [f"train:{d}", f"extract:{d}", f"evaluate:{d}", "figures_illustrations"] for d in _DS},
    "train:tiny-veri": ["extract:tiny-veri", "evaluate:tiny-veri", "figures_training"],  # model.pt, train_log.csv
    "train:tiny-vehicleid": ["extract:tiny-vehicleid", "evaluate:tiny-vehicleid"],
    **{f"extract:{d}": [f"evaluate:{d}", "figures_illustrations"] for d in _DS},  # the illustrated run's features
    **{f"evaluate:{d}": ["aggregate", "sensitivity"] for d in _DS},  # sensitivity: the metrics.json files
    "aggregate": ["tables", "claims", "figures_cmc"],
}
_RUN = "results/runs/tiny-veri/agnet_asl/seed0"
_DELETIONS = {
    "results/data/tiny-veri/root": "synthesize:tiny-veri",
    "results/data/tiny-veri/dataset.json": "synthesize:tiny-veri",
    "results/data/tiny-veri/verify.json": "verify:tiny-veri",
    "results/data/tiny-veri/manifest.parquet": "manifest:tiny-veri",
    "results/data/tiny-vehicleid/manifest.parquet": "manifest:tiny-vehicleid",
    # a settings document: not a kept result but a job's input, rewritten (the same text) when a job needs it;
    # its loss changes no setting, so it reruns nothing (never a 14-hour retraining for a cleaned folder)
    "results/settings/train/agnet_asl.json": None,
    f"{_RUN}/model.pt": "train:tiny-veri",
    f"{_RUN}/train_log.csv": "train:tiny-veri",
    f"{_RUN}/run.json": "train:tiny-veri",
    f"{_RUN}/features.pt": "extract:tiny-veri",
    "results/runs/tiny-vehicleid/agnet_asl/seed0/features.pt": "extract:tiny-vehicleid",
    f"{_RUN}/metrics.json": "evaluate:tiny-veri",
    **{f"results/metrics/{n}": "aggregate" for n in ("summary.csv", "summary.parquet", "runs.csv", "runs.parquet",
                                                      "cmc.parquet")},
}


def _dependants(job: str | None) -> set[str]:
    todo, seen = ([job] if job else []), set()
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += _READERS.get(current, [])
    return seen


def _planned_jobs(text: str) -> set[str]:
    """`rule:dataset` of every job a dry run lists (the dataset read from its first output)."""
    jobs = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        match = re.match(r"(?:local)?rule (\w+):", block)
        if not match or match.group(1) == "all":
            continue
        output = re.search(r"output: (\S+)", block)
        where = re.search(r"results/(?:data|runs)/([^/]+)/", output.group(1)) if output else None
        jobs.add(f"{match.group(1)}:{where.group(1)}" if where else match.group(1))
    return jobs


def _dry_runs_after_deleting(workdir: Path, args, names: list[str], scratch: Path) -> dict[str, tuple]:
    """For each name: move it away, dry-run, put it back; the jobs planned (or the error) per name."""
    planned = {}
    for name in names:
        path = workdir / name
        backup = scratch / "backup"
        shutil.move(path, backup)  # a rename keeps the modification times
        try:
            done = snakemake(workdir, *args, "-n")
        finally:
            shutil.move(backup, path)
        planned[name] = (done.returncode, _planned_jobs(done.stdout), done.stderr[-500:])
    return planned


@pytest.mark.slow
def test_deleting_a_file_reruns_exactly_what_depends_on_it(tiny_run, tmp_path):
    workdir, args = tiny_run
    # Two halves of the cases at once (a dry run is one busy core), each on an exact copy of the finished working
    # directory (modification times and Snakemake's records kept): the shared run is read by other tests meanwhile.
    names = list(_DELETIONS)
    halves = [(tmp_path / f"copy-{h}", names[h::2], tmp_path / f"scratch-{h}") for h in (0, 1)]
    for copy, _, _ in halves:
        shutil.copytree(workdir, copy, symlinks=True)
    for _, _, scratch in halves:
        scratch.mkdir()
    with ThreadPoolExecutor(2) as pool:
        results = [pool.submit(_dry_runs_after_deleting, where, args, part, scratch) for where, part, scratch in halves]
        planned = {name: outcome for result in results for name, outcome in result.result().items()}
    wrong = {name: (sorted(jobs), sorted(_dependants(_DELETIONS[name])), stderr)
             for name, (returncode, jobs, stderr) in planned.items()
             if returncode != 0 or jobs != _dependants(_DELETIONS[name])}
    assert sorted(planned) == sorted(_DELETIONS) and wrong == {}


def test_paper_protocol_plans_every_job_before_the_datasets_exist(tmp_path):
    done = snakemake(tmp_path, "-n", "--quiet", "rules")
    assert done.returncode == 0, done.stderr[-2000:]
    counts = _job_counts(done.stdout)
    # 2 datasets x 6 variants (the paper's 3, the BoT family of Table V) x 3 seeds.
    # One evaluate job per trained run (all its descriptors x protocols): as many as training jobs.
    assert counts["train"] == "36" and counts["extract"] == "36" and counts["evaluate"] == "36"
    assert counts["tables"] == counts["claims"] == "1"
    assert counts["figures_cmc"] == counts["figures_illustrations"] == counts["figures_training"] == "1"
    assert counts["sensitivity"] == "1" and counts["total"] == "141"  # + the α/ALS sensitivity report and its settings


def test_slurm_profile_plans_every_job_with_cluster_resources(tmp_path):
    done = snakemake(tmp_path, "-n", "--profile", str(REPO / "workflow/profiles/slurm"))
    assert done.returncode == 0, done.stderr[-2000:]
    blocks = [b for b in done.stdout.split("\n\n") if "rule " in b and "resources:" in b]
    by_rule: dict[str, list[str]] = {}
    for block in blocks:
        rule = block.split("rule ", 1)[1].split(":", 1)[0]
        by_rule.setdefault(rule, []).append(block.split("resources:", 1)[1].split("\n", 1)[0])
    assert {r: len(v) for r, v in by_rule.items() if r in ("train", "extract", "evaluate")} == {
        "train": 36, "extract": 36, "evaluate": 36}
    for resources in by_rule["train"]:
        assert all(f in resources for f in ("gpu=1", "mem_mb=48000", "runtime=1440", "cpus_per_task=8"))
        assert "slurm_extra=--signal=USR1@300" in resources  # the walltime warning the training loop checkpoints on
    for resources in by_rule["extract"]:
        assert "gpu=1" in resources and "cpus_per_task=8" in resources
    for resources in by_rule["evaluate"]:
        assert "gpu=" not in resources and "mem_mb=16000" in resources and "cpus_per_task=2" in resources
    for rule, listed in by_rule.items():  # every job says what it asks for
        assert all("mem_mb=" in r and "runtime=" in r for r in listed), rule


def test_workstation_profile_plans_the_demo_with_a_gpu_limit(tmp_path):
    done = snakemake(tmp_path, "-n", "--profile", str(REPO / "workflow/profiles/default"), "--configfile", DEMO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Using profile" in done.stderr  # Snakemake accepted every key of it
    profile = yaml.safe_load((REPO / "workflow/profiles/default/config.yaml").read_text())
    assert profile["resources"] == {"gpu": 1}  # the limit counts the rules' gpu=1: one GPU job at a time
    assert all("gpu=1" in b for b in done.stdout.split("\n\n") if "rule train:" in b or "rule extract:" in b)


def test_rehearsal_plans_the_paper_protocol_at_release_size_with_every_job_benchmarked(tmp_path):
    """workflow/configs/rehearsal.yaml (+ offline.yaml, as run here): both release-size twins, strict verification,
    one truncated paper-network run each and every later stage; each job writes a Snakemake benchmark file (wall
    time, peak memory) that benchmarks/bench_rehearsal.py --from-dag collects."""
    configs = [str(REPO / "workflow/configs" / name) for name in ("rehearsal.yaml", "offline.yaml")]
    done = snakemake(tmp_path, "-n", "-p", "--cores", "2", "--configfile", *configs)
    assert done.returncode == 0, done.stderr[-2000:]
    counts = _job_counts(done.stdout)
    for rule in ("synthesize", "verify", "manifest", "train", "extract", "evaluate"):
        assert counts[rule] == "2", rule
    for rule in ("aggregate", "tables", "claims", "figures_cmc", "figures_illustrations", "figures_training"):
        assert counts[rule] == "1", rule
    parts = re.split(r"^(?:local)?rule (\w+):$", done.stdout, flags=re.MULTILINE)[1:]
    jobs = [f"rule {rule}:{body}" for rule, body in zip(parts[::2], parts[1::2], strict=True) if rule != "all"]
    assert len(jobs) == int(counts["total"]) - 1
    benchmarks = [re.search(r"benchmark: (\S+)", b) for b in jobs]
    assert all(benchmarks), [b.split("\n", 2)[:2] for b, m in zip(jobs, benchmarks, strict=True) if not m]
    assert len({m.group(1) for m in benchmarks}) == len(jobs)  # one file per job, none shared
    assert all(m.group(1).startswith("results/benchmarks/") for m in benchmarks)
    def shells(rule: str) -> list[str]:
        return [job for job in jobs if job.startswith(f"rule {rule}:")]

    assert all("--release-scale 1.0 " in job for job in shells("synthesize"))  # the releases' exact counts
    assert all("--strict" in job for job in shells("verify")) and len(shells("verify")) == 2
    assert all("--settings results/settings/train/agnet_asl.json" in job for job in shells("train"))
    plan = load_plan(REPO / "config.yaml", *configs)
    assert plan.document("train/agnet_asl")["settings"]["max_steps"] == 50  # the rehearsal's cut reaches the job
    assert plan.document("train/agnet_asl")["settings"]["pretrained"] == "none"  # and the offline overlay
    # VehicleID's extraction covers its test lists only; VeRi's reads every evaluation image
    assert plan.document("extract/vehicleid-release")["settings"]["images"] == [
        f"vehicleid-{release_twin_test_size(n, 1.0)}" for n in (800, 1600, 2400, 3200)]
    assert plan.document("extract/veri-release")["settings"]["images"] == "all"
    settings = yaml.safe_load((REPO / "workflow/configs/rehearsal.yaml").read_text())
    assert settings["training"]["max_steps"] > 0 and settings["datasets"]["veri-release"]["strict"] is True
