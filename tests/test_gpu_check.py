"""benchmarks/gpu_check.sh rehearsed on the CPU (--shrink): installs without dependencies into its own folder,
makes its own twin, trains, extracts, evaluates and records the versions it ran with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_shrunk_on_cpu_runs_end_to_end(tmp_path):
    out = tmp_path / "check"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHON"] = sys.executable
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--shrink", "--out", str(out)],
                          check=False, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    versions = json.loads((out / "versions.json").read_text())
    assert versions["shrink"] is True and versions["torch"] and versions["python"]
    assert versions["agnet_file"].startswith(str(out / "site"))  # the copy installed without dependencies
    result = json.loads((out / "gpu_check.json").read_text())
    assert [r["device"] for r in result["training"]] == ["cpu"] and result["training"][0]["images_per_s"] > 0
    assert result["extraction"]["images"] > 0 and set(result["evaluation_seconds"]) == {"veri", "veri-str"}
    (metrics,) = json.loads((out / "metrics-veri-str.json").read_text())["records"]
    assert metrics["protocol"] == "veri-str" and 0.0 <= metrics["mAP"] <= 1.0


def test_gpu_check_refuses_unknown_options(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--fast"], check=False,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown option --fast" in proc.stderr
