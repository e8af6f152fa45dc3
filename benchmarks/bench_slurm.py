"""What SLURM costs: the tiny demo DAG locally and through the SLURM profile on a local cluster.

Starts tests/slurm/local-slurm.sh (root; installs SLURM when missing), runs the integration test's
tiny DAG once with ``--cores`` and once with the site-adapted SLURM profile (no walltime signal),
and reports the cluster's start-up time, both wall times, the sbatch jobs and the overhead per job.
Prints a JSON record and, with --write, replaces the matching section of docs/benchmarks.md.

    sudo .venv/bin/python benchmarks/bench_slurm.py --write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import snakemake
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._machine import cpu_name
from tests.slurm.site_profile import write_local_profile
from tests.test_slurm import CONFIG, LOCAL_SLURM
from tests.test_workflow import DEMO, SNAKEMAKE

DOCS = REPO / "docs" / "benchmarks.md"
START, END = "<!-- bench:slurm:start -->", "<!-- bench:slurm:end -->"


def timed(command: list[str], **kwargs) -> float:
    began = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="agnet-bench-slurm-", dir="/tmp"))
    state.chmod(0o755)  # the daemons run as their own users
    env = {**os.environ, "LOCAL_SLURM_STATE": str(state)}
    work = Path(tempfile.mkdtemp(prefix="agnet-bench-dag-"))
    config = work / "tiny.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    try:
        setup = timed([str(LOCAL_SLURM), "start"], env=env, timeout=900)
        local = timed([*SNAKEMAKE, "-d", str(work / "local"), "--cores", "2", "--configfile", DEMO, str(config)])
        profile = write_local_profile(work / "profile")
        since = datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
        cluster = timed([*SNAKEMAKE, "-d", str(work / "slurm"), "--profile", str(profile), "--configfile", DEMO,
                         str(config)])
        jobs = subprocess.run(["sacct", "-X", "-n", "-P", "-S", since, "-o", "JobID,State"], check=True,
                              capture_output=True, text=True).stdout.split()
    finally:
        subprocess.run([str(LOCAL_SLURM), "stop"], check=False, env=env, capture_output=True, timeout=300)
    slurm_version = subprocess.run(["sinfo", "--version"], check=False, capture_output=True, text=True).stdout.strip()
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"), "cpu": cpu_name(), "cores": os.cpu_count(),
        "python": platform.python_version(), "snakemake": snakemake.__version__, "slurm": slurm_version,
        "cluster_start_s": round(setup, 1), "local_s": round(local, 1), "slurm_s": round(cluster, 1),
        "sbatch_jobs": len(jobs), "completed": sum(j.endswith("|COMPLETED") for j in jobs),
    }
    result["overhead_per_job_s"] = round((cluster - local) / max(1, result["sbatch_jobs"]), 1)
    print(json.dumps(result, indent=2))
    if args.write:
        r = result
        block = (
            f"{START}\nMeasured {r['date']} on {r['cpu']} ({r['cores']} cores, one node), Python {r['python']}, "
            f"Snakemake {r['snakemake']}, {r['slurm']} (Debian), executor plugin as pinned.\n\n"
            "| cluster start | tiny DAG, `--cores 2` | tiny DAG, SLURM profile | sbatch jobs (completed) | "
            "overhead per sbatch job |\n|---|---|---|---|---|\n"
            f"| {r['cluster_start_s']} s | {r['local_s']} s | {r['slurm_s']} s | {r['sbatch_jobs']} "
            f"({r['completed']}) | {r['overhead_per_job_s']} s |\n{END}"
        )
        text = DOCS.read_text()
        if START in text:
            text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.DOTALL)
        else:
            text += (
                "\n## The SLURM profile on one machine\n\n"
                "The integration test's tiny DAG (two twins, one variant, one seed; 14 cluster jobs, the rest\n"
                "`localrules`) locally and through `workflow/profiles/slurm` on the single-node SLURM of\n"
                "`tests/slurm/local-slurm.sh` (`sudo .venv/bin/python benchmarks/bench_slurm.py --write`). The\n"
                "overhead is queueing, a second Snakemake inside each job and the plugin's status polling; it is\n"
                "paid per job, so it is noise beside a multi-hour training and visible only on tiny jobs.\n\n"
                f"{block}\n"
            )
        DOCS.write_text(text)
    return 0 if result["completed"] == result["sbatch_jobs"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
