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


def _run_until(command: list[str], ready, sig: int, timeout: float = 300.0) -> tuple[int, str]:
    """Start ``command``, send ``sig`` once ``ready()`` holds, return the exit status and stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"finished before the signal: {process.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "timed out waiting to send the signal"
        time.sleep(0.02)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr.decode()


@pytest.fixture(scope="module")
def reference_run(manifest, config_files, tmp_path_factory) -> Path:
    """One uninterrupted run through the CLI, shared by every interruption case below."""
    reference = tmp_path_factory.mktemp("reference") / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(_train_command(config_files, manifest, reference), check=True, env=env, capture_output=True)
    return reference


@pytest.mark.parametrize("sig, status", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 128 + signal.SIGTERM),
                                         (signal.SIGUSR1, 128 + signal.SIGUSR1), (signal.SIGINT, 128 + signal.SIGINT)])
def test_killed_run_resumes_to_identical_weights(sig, status, manifest, config_files, reference_run, tmp_path):
    """SIGKILL loses the running epoch (the last epoch checkpoint is used); SIGTERM (a job being stopped),
    SIGUSR1 (the cluster's walltime warning) and SIGINT (Ctrl-C) checkpoint mid-epoch and say how to continue.

    Either way the resumed run ends bit-identical to an uninterrupted one (CPU, deterministic), and a
    SIGKILLed process's lock on the run directory does not block the resume.
    """
    reference, interrupted = reference_run, tmp_path / "interrupted"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Signal it once the first epoch's checkpoint and log are on disk (early in epoch 2).
    returncode, stderr = _run_until(_train_command(config_files, manifest, interrupted),
                                    lambda: (interrupted / "train_log.csv").exists(), sig)
    assert returncode == status
    if sig != signal.SIGKILL:
        name = signal.Signals(sig).name
        assert stderr.strip().splitlines()[-1].startswith(f"agnet: {name} received: checkpoint saved at epoch 2")
        assert stderr.strip().endswith("to continue, rerun the same command with --resume")
    state = torch.load(interrupted / "checkpoint.pt", weights_only=True)
    assert state["position"]["epoch"] >= 1 and not (interrupted / "model.pt").exists()
    assert not list(interrupted.glob(".*.tmp"))
    resumed = subprocess.run(_train_command(config_files, manifest, interrupted), check=True, env=env,
                             capture_output=True, text=True)
    assert_same_weights(reference, interrupted)
    position = state["position"]
    assert f"resuming from {interrupted / 'checkpoint.pt'}: epoch {position['epoch'] + 1}, step {position['step']}" \
        in resumed.stderr
    if sig == signal.SIGKILL:
        assert position["step"] == 0  # the running epoch is lost: back to the epoch boundary
    else:  # the handler saved where the signal landed (mid-epoch; at the boundary if it came during the save)
        assert f"checkpoint saved at epoch {position['epoch'] + 1}, step {position['step']}" in stderr
    assert json.loads((interrupted / "run.json").read_text())["resumes"] == [position]
    assert json.loads((reference / "run.json").read_text())["resumes"] == []
    assert [r["loss_total"] for r in read_log(reference)] == [r["loss_total"] for r in read_log(interrupted)]


def test_nan_loss_stops_with_a_followable_message_and_keeps_the_checkpoint(manifest, config_files, tmp_path,
                                                                          monkeypatch):
    """The NaN is caught at the next read of the device sums, before any checkpoint; the advice (lower lr,
    --resume --allow-changed lr) works and is recorded."""
    settings = settings_for(config_files, epochs=3)
    real_total = loop.total_loss

    def poisoned(*args, **kwargs):
        terms = real_total(*args, **kwargs)
        if (tmp_path / "run" / "checkpoint.pt").exists():  # from the first step of epoch 2 on
            terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(loop, "total_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"loss became non-finite at epoch 2, step 1 .*the last good checkpoint "
                                               r"\(checkpoint.pt, epoch 2, step 0\) is kept.*--resume --allow-changed lr"):
        train(settings, manifest, tmp_path / "run", seed=0, progress=False)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["position"] == {"epoch": 1, "step": 0}
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "model.pt").exists()
    monkeypatch.undo()
    lower = settings_for(config_files, epochs=3, lr=0.01)
    with pytest.raises(AgnetError, match="add --allow-changed lr"):
        train(lower, manifest, tmp_path / "run", seed=0, resume=True, progress=False)
    record = train(lower, manifest, tmp_path / "run", seed=0, resume=True, progress=False, allow_changed=("lr",))
    assert record["resumes"] == [{"epoch": 1, "step": 0, "changed": {"lr": [0.05, 0.01]}}]
    assert [row["lr"] for row in read_log(tmp_path / "run")] == pytest.approx([0.05, 0.01, 0.001])


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


def test_decoded_cache_trains_exactly_like_jpeg_decoding(manifest, config_files, tmp_path, monkeypatch, capsys):
    plain = settings_for(config_files, epochs=1, decoded_cache=False)
    cached = settings_for(config_files, epochs=1, decoded_cache=True)
    train(plain, manifest, tmp_path / "plain", seed=2, progress=False)
    train(cached, manifest, tmp_path / "cached", seed=2, cache_dir=tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").glob("decoded-*.npy"))
    assert_same_weights(tmp_path / "plain", tmp_path / "cached")
    assert not (tmp_path / "plain" / "cache").exists()
    monkeypatch.setenv("AGNET_MEMORY_LIMIT_MB", "0.1")  # auto: does not fit, decodes JPEGs and says why
    auto = train(settings_for(config_files, epochs=1, decoded_cache="auto"), manifest, tmp_path / "auto", seed=2,
                 cache_dir=tmp_path / "cache2", progress=False)
    assert not auto["decoded_cache_used"] and "decoded cache not used: it needs" in capsys.readouterr().err
    assert_same_weights(tmp_path / "plain", tmp_path / "auto")
    with pytest.raises(AgnetError, match=r"training.decoded_cache: true, but the cache needs .* memory limit"):
        train(cached, manifest, tmp_path / "forced", seed=2, cache_dir=tmp_path / "cache3", progress=False)


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


def test_max_steps_truncates_and_says_so(manifest, config_files, tmp_path):
    """max_steps stops after that many optimizer steps in total; run.json marks the run truncated."""
    record = train(settings_for(config_files, epochs=3, max_steps=5), manifest, tmp_path / "short", seed=0,
                   progress=False)
    saved = json.loads((tmp_path / "short" / "run.json").read_text())
    assert saved["truncated"] is True and saved["max_steps"] == 5 and saved["steps"] == 5
    assert saved["partial_last_epoch"] is True and record["settings"]["max_steps"] == 5
    rows = read_log(tmp_path / "short")
    assert len(rows) == 1 and rows[0]["images"] == 5 * 16
    assert not (tmp_path / "short" / "checkpoint.pt").exists()


def test_bf16_autocast_and_channels_last_on_cpu_resume_bit_exactly(manifest, config_files, tmp_path, monkeypatch):
    """amp: on / channels_last: on run on a CPU (bf16 autocast, NHWC); a mid-epoch interruption resumes
    to the same weights; the verification head stays float32."""
    settings = settings_for(config_files, epochs=1, amp="on", channels_last="on")
    record = train(settings, manifest, tmp_path / "reference", seed=6, progress=False)
    assert record["precision"] == "torch.bfloat16" and record["channels_last"] is True
    real_total, calls = loop.total_loss, []

    def interrupt_at_step_7(outputs, batch, verify_logits, *args, **kwargs):
        calls.append(1)
        assert outputs["id_logits"].dtype == torch.float32
        if len(calls) == 7:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real_total(outputs, batch, verify_logits, *args, **kwargs)

    interrupt_and_resume(settings, manifest, tmp_path, monkeypatch, interrupt_at_step_7,
                         "SIGUSR1 received: checkpoint saved at epoch 1, step 7")


def interrupt_and_resume(settings, manifest, tmp_path, monkeypatch, hook, match: str) -> None:
    """Train seed 6 into tmp_path/interrupted with ``hook`` standing in for ``loop.total_loss`` (it sends the signal),
    resume, and require the weights and the logged losses of tmp_path/reference (the same run uninterrupted)."""
    monkeypatch.setattr(loop, "total_loss", hook)
    with pytest.raises(loop.TrainingInterrupted, match=match):
        train(settings, manifest, tmp_path / "interrupted", seed=6, progress=False)
    monkeypatch.undo()
    train(settings, manifest, tmp_path / "interrupted", seed=6, resume=True, progress=False)
    assert_same_weights(tmp_path / "reference", tmp_path / "interrupted")
    assert [r["loss_total"] for r in read_log(tmp_path / "reference")] == \
        [r["loss_total"] for r in read_log(tmp_path / "interrupted")]


def test_verification_head_is_float32_under_autocast():
    from agnet.model import AGNet, build_trunk

    model = AGNet(build_trunk("resnet18_narrow"), 4, 3, 2, 16).train()
    e1, e2 = torch.randn(4, 16), torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.verify(e1.bfloat16(), e2.bfloat16()).dtype == torch.float32


@pytest.mark.parametrize("major, expected", [(7, torch.float16), (8, torch.bfloat16), (9, torch.bfloat16)])
def test_gpu_precision_follows_compute_capability(major, expected, config_files, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    from agnet.device import precision

    assert precision("auto", "auto", torch.device("cuda")) == (expected, True)
    assert precision("off", "off", torch.device("cuda")) == (None, False)
    assert precision("auto", "auto", torch.device("cpu")) == (None, False)  # auto: GPU only
    assert precision("on", "on", torch.device("cpu")) == (torch.bfloat16, True)  # on: CPU too
    assert settings_for(config_files).amp == "auto"  # the config's default is what was checked
