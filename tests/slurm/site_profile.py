"""Adapt the workflow's SLURM profile to one site, the way a user edits its SITE lines.

    python tests/slurm/site_profile.py --out DIR --partition debug --account agnet [--cpus 2 --mem-mb 6000]

writes DIR/config.yaml: ``workflow/profiles/slurm/config.yaml`` with the partition and account filled
in, every per-rule request capped to what one node of the site has (a laptop's local cluster cannot
grant 8 CPUs and 48 GB), and, with ``--fast-status``, the plugin's first status check after 1 s
instead of 40 s (a test's jobs take seconds). Every rule keeps its requests otherwise: GPUs, the
walltime signal, runtimes. tests/test_slurm.py runs the demo DAG through the result.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

import yaml

PROFILE = Path(__file__).resolve().parents[2] / "workflow" / "profiles" / "slurm" / "config.yaml"


def site_profile(partition: str, account: str | None, cpus: int, mem_mb: int, fast_status: bool) -> dict:
    """The SLURM profile as a dict, adapted to a site whose nodes have ``cpus`` CPUs and ``mem_mb`` MB."""
    profile = yaml.safe_load(PROFILE.read_text())
    defaults = profile["default-resources"]
    defaults["slurm_partition"] = partition
    if account:
        defaults["slurm_account"] = account
    defaults["mem_mb"] = min(defaults["mem_mb"], mem_mb)
    defaults["cpus_per_task"] = min(defaults["cpus_per_task"], cpus)
    profile["set-threads"] = {rule: min(n, cpus) for rule, n in profile["set-threads"].items()}
    for resources in profile["set-resources"].values():
        if "cpus_per_task" in resources:
            resources["cpus_per_task"] = min(resources["cpus_per_task"], cpus)
        if "mem_mb" in resources:
            resources["mem_mb"] = min(resources["mem_mb"], mem_mb)
    if fast_status:
        profile["slurm-init-seconds-before-status-checks"] = 1
        profile["latency-wait"] = 5  # one machine: outputs are visible at once
    return profile


def write_local_profile(out: Path) -> Path:
    """The profile for the running local cluster of tests/slurm/local-slurm.sh, sized from its node (sinfo)."""
    cpus, mem = subprocess.run(["sinfo", "-h", "-o", "%c %m"], check=True, capture_output=True, text=True,
                               timeout=60).stdout.split()
    out.mkdir(parents=True, exist_ok=True)
    profile = site_profile("debug", "agnet", cpus=int(cpus), mem_mb=min(6000, int(mem) // 3), fast_status=True)
    (out / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="profile folder to write (DIR/config.yaml)")
    parser.add_argument("--partition", required=True)
    parser.add_argument("--account", help="omit where the site needs none")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of one node (default: this machine's)")
    parser.add_argument("--mem-mb", type=int, default=6000, help="memory one job may ask for, in MB")
    parser.add_argument("--fast-status", action="store_true", help="first job status check after 1 s (tests)")
    args = parser.parse_args(argv)
    profile = site_profile(args.partition, args.account, args.cpus, args.mem_mb, args.fast_status)
    args.out.mkdir(parents=True, exist_ok=True)
    text = f"# {PROFILE.relative_to(PROFILE.parents[3])} adapted by tests/slurm/site_profile.py\n"
    (args.out / "config.yaml").write_text(text + yaml.safe_dump(profile, sort_keys=False))
    print(args.out / "config.yaml")


if __name__ == "__main__":
    main()
