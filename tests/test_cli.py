"""The `agnet` program: the command-line contract later stages and the workflow rely on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agnet.cli import main
from agnet.data.manifest import read_manifest
from tests.conftest import REPO


def test_verify_valid_writes_report_and_exits_0(veri_root, tmp_path, capsys):
    report = tmp_path / "r" / "verify.json"
    assert main(["data", "verify", "veri", str(veri_root), "-o", str(report)]) == 0
    assert json.loads(report.read_text())["valid"] is True
    assert "valid (train: 4 images / 2 ids" in capsys.readouterr().out


def test_verify_invalid_exits_1_and_prints_errors(veri_root, tmp_path, capsys):
    (veri_root / "image_query" / "0002_c001_00001000_0.jpg").write_bytes(b"\xff\xd8 broken")
    report = tmp_path / "verify.json"
    assert main(["data", "verify", "veri", str(veri_root), "-o", str(report)]) == 1
    assert "truncated or corrupt" in capsys.readouterr().err
    assert json.loads(report.read_text())["valid"] is False  # the report is kept for inspection


def test_strict_deviations_exit_1(vehicleid_root, capsys):
    assert main(["data", "verify", "vehicleid", str(vehicleid_root), "--strict"]) == 1
    assert "strict: train images: expected 113,346, found 5" in capsys.readouterr().err


def test_fetch_directory_then_manifest_through_locator(vehicleid_root, tmp_path):
    locator = tmp_path / "dataset.json"
    assert main(["data", "fetch", "vehicleid", "--directory", str(vehicleid_root), "--dest", str(tmp_path),
                 "-o", str(locator)]) == 0
    out = tmp_path / "manifest.parquet"
    assert main(["data", "manifest", "vehicleid", str(locator), "-o", str(out), "--train-vehicles", "all"]) == 0
    frame, meta = read_manifest(out)
    assert meta["train_vehicles"] == "all" and (frame["split"] == "train").sum() == 5


def test_user_errors_are_one_line_with_status_1(tmp_path, capsys):
    assert main(["data", "manifest", "veri", str(tmp_path / "missing"), "-o", str(tmp_path / "m.parquet")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("agnet: error: veri dataset not found at") and "Traceback" not in err
    assert not (tmp_path / "m.parquet").exists()


def test_figures_without_any_input_is_one_clear_error(tmp_path, capsys):
    """Each figure family is made from its own inputs (one workflow job each); none given is a user error."""
    assert main(["report", "figures", "--config", str(REPO / "config.yaml"), "--out", str(tmp_path / "figs")]) == 1
    assert capsys.readouterr().err.strip() == (
        "agnet: error: no figure inputs given (a CMC table, runs to illustrate or training logs)")
    assert not (tmp_path / "figs").exists()


def test_synth_rejects_too_few_vehicles(tmp_path, capsys):
    assert main(["data", "synth", "veri", str(tmp_path / "t"), "--vehicles", "1"]) == 1
    assert "--vehicles must be at least 4, got 1" in capsys.readouterr().err


def test_config_check(tmp_path, capsys):
    assert main(["config", "check", str(REPO / "config.yaml")]) == 0
    bad = tmp_path / "c.yaml"
    bad.write_text("run: [veri]\ndatasets: {veri: {format: veri, source: {kind: ftp, location: x}}}\n")
    assert main(["config", "check", str(bad)]) == 1
    assert "datasets.veri.source.kind: 'ftp' is not one of" in capsys.readouterr().err


def test_usage_error_exits_2():
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "verify", "market1501", "x"])
    assert exit_info.value.code == 2


def test_console_entry_point_runs_as_module():
    done = subprocess.run([sys.executable, "-m", "agnet", "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("agnet ")


def test_train_command_writes_model_and_log(tmp_path, capsys):
    from agnet.data.manifest import make_manifest
    from agnet.data.synth.veri import synth_veri

    root = synth_veri(tmp_path / "VeRi", vehicles=8, cameras=3, seed=0, workers=1)
    make_manifest("veri", root, tmp_path / "m.parquet")
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("training: {backbone: resnet18_narrow, pretrained: none, input_size: [32, 32], "
                    "embedding_dim: 16, epochs: 1, batch_size: 8, workers: 0}\n")
    args = ["train", "--config", str(REPO / "config.yaml"), "--config", str(tiny), "--manifest",
            str(tmp_path / "m.parquet"), "--variant", "only_id", "--seed", "0", "--out", str(tmp_path / "run"),
            "--threads", "1", "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    assert "trained only_id seed 0: 1 epochs" in capsys.readouterr().out
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "run" / "train_log.csv").is_file()
    bad = [a if a != "only_id" else "nope" for a in args]
    assert main(bad) == 1
    assert "unknown variant 'nope'" in capsys.readouterr().err


def test_weights_fetch_refuses_a_backbone_without_imagenet_weights(tmp_path, capsys):
    assert main(["weights", "fetch", "resnet18_narrow", "--cache", str(tmp_path)]) == 1
    assert "pretrained: none" in capsys.readouterr().err
