"""Training loop: every variant learns, killed runs resume to identical weights, bad states are refused."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from agnet.config import load_config
from agnet.data.manifest import make_manifest
from agnet.data.synth.veri import synth_veri
from agnet.errors import AgnetError
from agnet.train import loop
from agnet.train.loop import TrainingDiverged, train
from agnet.train.settings import resolve_settings
from tests.conftest import REPO

TINY_TRAINING = {
    "training": {
        "backbone": "resnet18_narrow", "pretrained": "none", "input_size": [32, 32], "embedding_dim": 32,
        "epochs": 3, "lr": 0.05, "lr_milestones": [2], "batch_size": 16, "workers": 0, "deterministic": True,
    }
}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    root = synth_veri(tmp_path_factory.mktemp("twin") / "VeRi", vehicles=16, cameras=4, seed=5, workers=1)
    out = root.parent / "manifest.parquet"
    make_manifest("veri", root, out)
    return out


@pytest.fixture(scope="module")
def config_files(tmp_path_factory) -> list[str]:
    tiny = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(TINY_TRAINING))
    return [str(REPO / "config.yaml"), str(tiny)]


def settings_for(config_files, variant="agnet_asl", **overrides):
    config = load_config(*config_files)
    config["training"].update(overrides)
    return resolve_settings(config, variant)


def read_log(run: Path) -> list[dict[str, float]]:
    with open(run / "train_log.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", weights_only=True)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs"


@pytest.mark.parametrize("variant", ["only_id", "agnet_ce", "agnet_asl"])
def test_each_variant_lowers_every_loss_and_learns_identities(variant, manifest, config_files, tmp_path):
    settings = settings_for(config_files, variant, epochs=12, lr=0.1, lr_milestones=[10], deterministic=False)
    record = train(settings, manifest, tmp_path / "run", seed=0, progress=False)
    rows = read_log(tmp_path / "run")
    assert len(rows) == 12
    terms = ["loss_total", "loss_category", "loss_verify"]
    if settings.loss_weights["attributes"] > 0:
        terms += ["loss_color", "loss_type"]
    for term in terms:
        assert rows[-1][term] < rows[0][term], f"{variant}: {term} did not decrease"
    # One epoch of 12 tiny identities is noisy (and thread-count dependent): judge the last three.
    chance = 1 / record["num_classes"]
    late = sum(row["acc_id"] for row in rows[-3:]) / 3
    assert late > 2 * chance, f"{variant}: train ID accuracy {late:.3f} over the last 3 epochs vs chance {chance:.3f}"
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # removed once the run is complete
    assert (tmp_path / "run" / "run.json").is_file()


def test_deterministic_runs_are_bit_identical(manifest, config_files, tmp_path):
    settings = settings_for(config_files, epochs=1)
    train(settings, manifest, tmp_path / "a", seed=3, progress=False)
    train(settings, manifest, tmp_path / "b", seed=3, progress=False)
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    train(settings, manifest, tmp_path / "c", seed=4, progress=False)
    assert not torch.equal(weights(tmp_path / "a")["id_head.weight"], weights(tmp_path / "c")["id_head.weight"])


def _train_command(config_files, manifest, out: Path) -> list[str]:
    configs = [arg for path in config_files for arg in ("--config", path)]
    return [sys.executable, "-m", "agnet", "train", *configs, "--manifest", str(manifest), "--variant", "agnet_asl",
            "--seed", "7", "--out", str(out), "--resume", "--no-progress", "--threads", "1"]


def _run_until(command: list[str], ready, sig: int, timeout: float = 120.0) -> int:
    """Start ``command``, send ``sig`` once ``ready()`` holds, return the exit status."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"finished before the signal: {process.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "timed out waiting to send the signal"
        time.sleep(0.02)
    process.send_signal(sig)
    process.wait(timeout=timeout)
    return process.returncode


@pytest.mark.parametrize("sig, status", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 128 + signal.SIGTERM),
                                         (signal.SIGUSR1, 128 + signal.SIGUSR1)])
def test_killed_run_resumes_to_identical_weights(sig, status, manifest, config_files, tmp_path):
    """SIGKILL loses the running epoch (the last epoch checkpoint is used); SIGTERM (a job being stopped) and
    SIGUSR1 (the cluster's walltime warning) checkpoint mid-epoch.

    Either way the resumed run ends bit-identical to an uninterrupted one (CPU, deterministic).
    """
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(_train_command(config_files, manifest, reference), check=True, env=env, capture_output=True)
    # Signal it once the first epoch's checkpoint is on disk (early in epoch 2).
    assert _run_until(_train_command(config_files, manifest, interrupted),
                      lambda: (interrupted / "checkpoint.pt").exists(), sig) == status
    state = torch.load(interrupted / "checkpoint.pt", weights_only=True)
    assert state["position"]["epoch"] >= 1 and not (interrupted / "model.pt").exists()
    resumed = subprocess.run(_train_command(config_files, manifest, interrupted), check=True, env=env,
                             capture_output=True, text=True)
    assert_same_weights(reference, interrupted)
    position = state["position"]
    assert f"resuming from {interrupted / 'checkpoint.pt'}: epoch {position['epoch'] + 1}, step {position['step']}" \
        in resumed.stderr
    assert (position["step"] == 0) == (sig == signal.SIGKILL)  # only SIGKILL falls back to the epoch boundary
    assert json.loads((interrupted / "run.json").read_text())["resumes"] == [position]
    assert json.loads((reference / "run.json").read_text())["resumes"] == []
    assert [r["loss_total"] for r in read_log(reference)] == [r["loss_total"] for r in read_log(interrupted)]


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(manifest, config_files, tmp_path, monkeypatch):
    settings = settings_for(config_files, epochs=3)
    real_total = loop.total_loss

    def poisoned(*args, **kwargs):
        terms = real_total(*args, **kwargs)
        if (tmp_path / "run" / "checkpoint.pt").exists():  # from the first step of epoch 2 on
            terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(loop, "total_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2, step 1 .*the last good checkpoint \(checkpoint.pt\) is kept"):
        train(settings, manifest, tmp_path / "run", seed=0, progress=False)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["position"] == {"epoch": 1, "step": 0}
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_existing_checkpoint_needs_resume_and_matching_settings(manifest, config_files, tmp_path, monkeypatch):
    settings = settings_for(config_files, epochs=2)
    run = tmp_path / "run"
    monkeypatch.setattr(loop.Path, "unlink", lambda self, missing_ok=False: None)  # keep the last checkpoint
    train(settings, manifest, run, seed=0, progress=False)
    monkeypatch.undo()
    with pytest.raises(AgnetError, match="checkpoint.pt exists: pass --resume"):
        train(settings, manifest, run, seed=0, progress=False)
    changed = settings_for(config_files, epochs=2, lr=0.01)
    with pytest.raises(AgnetError, match=r"refusing to resume:\n  lr: checkpoint 0.05, now 0.01"):
        train(changed, manifest, run, seed=0, resume=True, progress=False)
    with pytest.raises(AgnetError, match="seed: checkpoint 0, now 1"):
        train(settings, manifest, run, seed=1, resume=True, progress=False)


def test_decoded_cache_trains_exactly_like_jpeg_decoding(manifest, config_files, tmp_path):
    plain = settings_for(config_files, epochs=1)
    cached = settings_for(config_files, epochs=1, decoded_cache=True)
    train(plain, manifest, tmp_path / "plain", seed=2, progress=False)
    train(cached, manifest, tmp_path / "cached", seed=2, cache_dir=tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").glob("decoded-*.npy"))
    assert_same_weights(tmp_path / "plain", tmp_path / "cached")


def _relabelled(manifest: Path, out: Path, mode: str) -> Path:
    """A copy of ``manifest`` whose training colour/type labels are permuted across images, or all missing."""
    from agnet.data.manifest import read_manifest, write_manifest

    frame, meta = read_manifest(manifest)
    train_rows = frame.index[frame["split"] == "train"]
    rng = np.random.default_rng(11)
    for column in ("color_id", "type_id"):
        values = frame.loc[train_rows, column].to_numpy()
        frame.loc[train_rows, column] = pd.NA if mode == "null" else values[rng.permutation(len(values))]
    write_manifest(frame, meta, out)
    return out


@pytest.mark.parametrize("variant, attribute_blind", [("only_id", True), ("agnet_asl", False)])
def test_only_id_reads_no_attribute_label(variant, attribute_blind, manifest, config_files, tmp_path):
    """Only-ID's weights do not depend on the colour/type columns at all (losses, pair sampling, flags):
    permuting them, or deleting them, trains bit-identical weights. AGNet-ASL, which uses them, changes."""
    settings = settings_for(config_files, variant, epochs=1)
    original = train(settings, manifest, tmp_path / "original", seed=1, progress=False)
    assert original["attributes_used"] is not attribute_blind
    assert original["hard_negative_fraction_used"] == (0.0 if attribute_blind else settings.hard_negative_fraction)
    for mode in ("permuted", "null"):
        relabelled = _relabelled(manifest, tmp_path / f"{mode}.parquet", mode)
        train(settings, relabelled, tmp_path / mode, seed=1, progress=False)
        if attribute_blind:
            assert_same_weights(tmp_path / "original", tmp_path / mode)
        else:
            base = weights(tmp_path / "original")
            differs = {k for k, v in weights(tmp_path / mode).items() if not torch.equal(v, base[k])}
            assert "stem.0.weight" in differs, f"{variant}: the shared trunk ignored the {mode} attribute labels"
