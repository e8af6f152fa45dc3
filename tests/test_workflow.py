"""The Snakemake workflow: config validated before any job, DAG shape, end-to-end on a tiny twin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from agnet.data.manifest import read_manifest
from tests.conftest import REPO

SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
DEMO = str(REPO / "workflow/configs/demo.yaml")
TINY = """run: [tiny-veri, tiny-vehicleid]
seeds: [0]
train_variants: [agnet_asl]
training: {epochs: 1, batch_size: 8}
evaluation: {descriptors: [All], str: {enabled: true, lambdas: [0.0, 0.5]}}
datasets:
  tiny-veri:
    format: veri
    source: {kind: synthetic, vehicles: 8, cameras: 3, seed: 1}
    holdout_vehicles: 2
  tiny-vehicleid:
    format: vehicleid
    source: {kind: synthetic, vehicles: 16, cameras: 3, seed: 1}
"""


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [*SNAKEMAKE, "-d", str(workdir), *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)


def test_demo_dag_covers_every_stage(tmp_path):
    done = snakemake(tmp_path, "-n", "--quiet", "rules", "--configfile", str(REPO / "workflow/configs/demo.yaml"))
    assert done.returncode == 0, done.stderr
    for rule in ("synthesize", "verify", "manifest"):
        assert rule in done.stdout


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


@pytest.mark.slow
def test_end_to_end_on_tiny_twins(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    done = snakemake(tmp_path, "--cores", "2", "--configfile", DEMO, str(cfg))
    assert done.returncode == 0, done.stderr[-3000:]
    for name, fmt in (("tiny-veri", "veri"), ("tiny-vehicleid", "vehicleid")):
        report = json.loads((tmp_path / f"results/data/{name}/verify.json").read_text())
        assert report["valid"] and report["format"] == fmt
        frame, meta = read_manifest(tmp_path / f"results/data/{name}/manifest.parquet")
        assert meta["format"] == fmt and len(frame) > 0
        assert all((Path(meta["root"]) / p).is_file() for p in frame["path"])
        for step in ("synthesize", "verify", "manifest", "train/agnet_asl-seed0"):
            assert (tmp_path / f"results/logs/{name}/{step}.log").stat().st_size > 0
        run = tmp_path / f"results/runs/{name}/agnet_asl/seed0"
        assert (run / "model.pt").is_file() and (run / "train_log.csv").is_file()
        assert json.loads((run / "run.json").read_text())["settings"]["epochs"] == 1  # the merged configs reached it
        metrics = sorted(p.name for p in (run / "metrics" / "All").glob("*.json"))
        expected = ["veri-str.json", "veri.json"] if fmt == "veri" else [f"vehicleid-{n}.json" for n in (2, 4, 6, 8)]
        assert metrics == sorted(expected)
    summary = pd.read_csv(tmp_path / "results/metrics/summary.csv")
    assert len(summary) == 6 and set(summary["descriptor"]) == {"All"} and (summary["seeds"] == 1).all()
    assert summary["mAP_mean"].between(0, 1).all()
    for n in range(1, 5):
        assert "SYNTHETIC TWIN" in (tmp_path / f"results/tables/table{n}.md").read_text()
        assert (tmp_path / f"results/tables/table{n}.tex").read_text().startswith("\\begin{table*}")
    assert "Synthetic twins, not the real datasets" in (tmp_path / "results/claims.md").read_text()
    for figure in ("fig5_cmc_veri", "fig6_cmc_vehicleid", "fig7_tsne", "fig8_retrieval_veri", "training_curves"):
        assert (tmp_path / f"results/figures/{figure}.png").stat().st_size > 10_000
    report = snakemake(tmp_path, "--configfile", DEMO, str(cfg), "--report", str(tmp_path / "report.html"))
    assert report.returncode == 0, report.stderr[-2000:]
    html = (tmp_path / "report.html").read_text(errors="replace")
    assert "claims.md" in html and "fig5_cmc_veri.png" in html
    again = snakemake(tmp_path, "--cores", "2", "--configfile", DEMO, str(cfg), "-n")
    assert "Nothing to be done" in again.stdout + again.stderr  # a finished run is not redone


def test_paper_protocol_plans_every_job_before_the_datasets_exist(tmp_path):
    done = snakemake(tmp_path, "-n", "--quiet", "rules")
    assert done.returncode == 0, done.stderr[-2000:]
    counts = dict(line.split()[:2] for line in done.stdout.splitlines() if line.split()[1:2] and line.split()[1].isdigit())
    # 2 datasets x 3 variants x 3 seeds; VeRi 3 descriptors x 2 protocols + VehicleID 3 x 4 sizes per run.
    assert counts["train"] == "18" and counts["extract"] == "18" and counts["evaluate"] == str(9 * 6 + 9 * 12)
    assert counts["tables"] == counts["claims"] == counts["figures"] == "1"


def test_slurm_profile_plans_every_job_with_cluster_resources(tmp_path):
    done = snakemake(tmp_path, "-n", "--profile", str(REPO / "workflow/profiles/slurm"))
    assert done.returncode == 0, done.stderr[-2000:]
    blocks = [b for b in done.stdout.split("\n\n") if "rule " in b and "resources:" in b]
    by_rule: dict[str, list[str]] = {}
    for block in blocks:
        rule = block.split("rule ", 1)[1].split(":", 1)[0]
        by_rule.setdefault(rule, []).append(block.split("resources:", 1)[1].split("\n", 1)[0])
    assert {r: len(v) for r, v in by_rule.items() if r in ("train", "extract", "evaluate")} == {
        "train": 18, "extract": 18, "evaluate": 162}
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
