"""The workflow's SLURM profile on a real single-node SLURM (tests/slurm/local-slurm.sh).

One scenario, shared by the tests below: the demo DAG on two tiny twins runs once locally and once
through ``workflow/profiles/slurm`` (site lines filled in, requests capped to this machine by
tests/slurm/site_profile.py). While the VeRi twin's training job runs, it gets SIGUSR1 the way
SLURM's walltime warning delivers it (to every process of the job's steps). The run must then
finish on its own - the job fails, is resubmitted, resumes mid-epoch - and every output must equal
the local run's.

Needs root and Debian's slurm-wlm/munge/mariadb packages (installed by the script). Elsewhere the
tests skip, except where AGNET_REQUIRE_SLURM=1 (CI) makes a missing cluster a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import REPO
from tests.slurm.site_profile import write_local_profile
from tests.test_workflow import SNAKEMAKE

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

LOCAL_SLURM = REPO / "tests" / "slurm" / "local-slurm.sh"
# Not under pytest's 0700 tmp dirs: munged, slurmdbd and MariaDB run as their own users.
STATE = Path(f"/tmp/agnet-test-slurm-{os.getpid()}")
# The end-to-end test's tiny DAG (deterministic, with enough epochs that the signal lands mid-run); its local
# run is the session's `tiny_dag`.
INTERRUPTED = "results/runs/tiny-veri/agnet_asl/seed0"
# Jobs that must go through sbatch (the rest are localrules): per rule, for the tiny DAG.
CLUSTER_JOBS = {"synthesize": 2, "manifest": 2, "train": 2, "extract": 2, "evaluate": 2}  # one evaluate per run
LOCAL_RULES = ("fetch", "verify", "fetch_weights", "aggregate", "tables", "claims", "figures_cmc",
               "figures_illustrations", "figures_training")


def _missing_requirement() -> str | None:
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "a local SLURM needs Linux and root"
    if not (shutil.which("slurmctld") or shutil.which("apt-get")):
        return "neither SLURM nor apt-get (to install it) is available"
    return None


def _slurm(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture(scope="module")
def cluster():
    reason = _missing_requirement()
    if reason:
        if os.environ.get("AGNET_REQUIRE_SLURM") == "1":
            pytest.fail(f"AGNET_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    env = {**os.environ, "LOCAL_SLURM_STATE": str(STATE)}
    try:
        started = subprocess.run([str(LOCAL_SLURM), "start"], check=False, env=env, capture_output=True, text=True, timeout=900)
        assert started.returncode == 0, f"local SLURM did not start:\n{started.stderr[-4000:]}"
        yield
    finally:
        stopped = subprocess.run([str(LOCAL_SLURM), "stop"], check=False, env=env, capture_output=True, text=True, timeout=300)
        shutil.rmtree(STATE, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stderr[-2000:]
        # its configuration is gone too: a slurm.conf without a controller makes every later Snakemake start wait
        # ~9 s (the SLURM plugin asks `scontrol show config` on import)
        assert not Path("/etc/slurm/slurm.conf").exists()


def _running_job(comment_prefix: str) -> str | None:
    """ID of this cluster's running job whose comment starts with ``comment_prefix``."""
    for line in _slurm("squeue", "-h", "-t", "R", "-o", "%A|%k").splitlines():
        job, comment = line.split("|", 1)
        if comment.startswith(comment_prefix):
            return job
    return None


def _warn_training_once_checkpointed(process: subprocess.Popen, run_dir: Path, timeout: float = 600) -> str:
    """Send the VeRi twin's training job SIGUSR1 once its first epoch checkpoint exists; return its job ID."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the SLURM run ended before its training could be signalled"
        job = _running_job("rule_train_wildcards_tiny-veri")
        if job and (run_dir / "checkpoint.pt").exists():
            # `scancel --signal` without --batch reaches every process of the job's steps, as `--signal` does.
            _slurm("scancel", "--signal=USR1", job)
            return job
        time.sleep(0.1)
    raise AssertionError("the VeRi twin's training never ran with a checkpoint on disk")


@pytest.fixture(scope="module")
def runs(cluster, tiny_dag, tmp_path_factory):
    """The tiny DAG run locally (the session's `tiny_dag`) and through the SLURM profile (with one walltime
    warning)."""
    base = tmp_path_factory.mktemp("slurm-vs-local")
    local, args = tiny_dag
    remote = base / "slurm"

    profile = write_local_profile(base / "profile")
    since = _slurm("date", "+%Y-%m-%dT%H:%M:%S").strip()
    log = (base / "slurm-run.log").open("w")
    process = subprocess.Popen([*SNAKEMAKE, "-d", str(remote), "--profile", str(profile), *args], stdout=log,
                               stderr=subprocess.STDOUT, text=True)
    try:
        warned = _warn_training_once_checkpointed(process, remote / INTERRUPTED)
        process.wait(timeout=900)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    output = (base / "slurm-run.log").read_text()
    assert process.returncode == 0, output[-4000:]
    accounting = _slurm("sacct", "-X", "-n", "-P", "-S", since, "-o", "JobID,State,Comment,AllocTRES")
    jobs = [dict(zip(("id", "state", "comment", "tres"), line.split("|"))) for line in accounting.splitlines()]
    return {"local": local, "slurm": remote, "log": output, "jobs": jobs, "warned": warned}


def _rule(job: dict) -> str:
    return job["comment"].removeprefix("rule_").split("_wildcards_")[0]


def test_cluster_jobs_went_through_sbatch_and_local_rules_did_not(runs):
    completed = Counter(_rule(j) for j in runs["jobs"] if j["state"] == "COMPLETED")
    assert completed == CLUSTER_JOBS, runs["jobs"]
    assert not any(_rule(j) in LOCAL_RULES for j in runs["jobs"])
    for job in runs["jobs"]:
        asks_gpu = "gres/gpu=1" in job["tres"]
        assert asks_gpu == (_rule(job) in ("train", "extract")), job  # --gpus=1 for the GPU rules only
    logs = list((runs["slurm"] / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert logs, "the executor plugin kept no SLURM job logs"


def test_walltime_warning_checkpoints_and_the_resubmitted_job_resumes_mid_epoch(runs):
    states = {j["id"]: j["state"] for j in runs["jobs"]}
    assert states[runs["warned"]] == "FAILED"  # the warned job stopped itself after checkpointing ...
    # ... with an exit status, not killed by the signal: Snakemake and the shell in the step ignored it
    # (workflow/rules/common.smk), so the step lived until the checkpoint was written.
    step = _slurm("sacct", "-n", "-P", "-j", f"{runs['warned']}.0", "-o", "State,ExitCode").split()
    assert step and step[0].startswith("FAILED|") and step[0].endswith(":0"), step
    trains = [j for j in runs["jobs"] if j["comment"].startswith("rule_train_wildcards_tiny-veri")]
    assert [j["state"] for j in trains] == ["FAILED", "COMPLETED"]  # ... and its resubmission finished
    resumes = json.loads((runs["slurm"] / INTERRUPTED / "run.json").read_text())["resumes"]
    assert len(resumes) == 1 and resumes[0]["epoch"] >= 1 and resumes[0]["step"] > 0, resumes  # mid-epoch
    assert not (runs["slurm"] / INTERRUPTED / "checkpoint.pt").exists()


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def _provenance_free(path: Path) -> dict:
    record = json.loads(path.read_text())
    return {k: v for k, v in record.items() if k not in ("provenance", "environment", "seconds")}


def test_outputs_equal_the_local_run(runs):
    local, remote = runs["local"], runs["slurm"]
    made = sorted(p.relative_to(local) for p in (local / "results").rglob("*") if p.is_file()
                  and not p.relative_to(local / "results").parts[0] in ("logs", "benchmarks", "cache"))
    # (the decoded-image cache is an optimisation each job uses only where it fits the job's memory limit)
    assert made and all((remote / p).is_file() for p in made), "the SLURM run is missing outputs"
    for path in (p for p in made if p.name == "model.pt"):
        a, b = _weights(local / path), _weights(remote / path)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{path}: weights differ"
    for path in (p for p in made if p.name == "features.pt"):
        a, b = torch.load(local / path, weights_only=True), torch.load(remote / path, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k])), f"{path}: features differ"
    for path in (p for p in made if p.name == "metrics.json"):
        assert _provenance_free(local / path) == _provenance_free(remote / path), path
    for name in ("summary.csv", "runs.csv"):  # the file hashes differ: model.pt records where it ran
        a, b = (pd.read_csv(root / "results" / "metrics" / name) for root in (local, remote))
        pd.testing.assert_frame_equal(a.filter(regex="^(?!.*_sha256$)"), b.filter(regex="^(?!.*_sha256$)"))
    for n in range(1, 5):
        a, b = ((root / f"results/tables/table{n}.md").read_text() for root in (local, remote))
        # equal but for the provenance line: the summary's sha256 differs as its hash columns do
        assert [line for line in a.splitlines() if not line.startswith("Computed from")] == \
            [line for line in b.splitlines() if not line.startswith("Computed from")]
