"""Faults a user can meet while training: one clear line, exit status, nothing partial or stale left.

Each case: the command (or call), the exit status, the first line of the message (naming the file or
flag), and that no partial output remains where a later step would read it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from agnet.data.manifest import make_manifest
from agnet.data.synth.veri import synth_veri
from agnet.errors import AgnetError
from agnet.train import checkpoint as checkpoint_module
from agnet.train import loop
from agnet.train.loop import RunLock, TrainingDiverged, TrainingInterrupted, train
from tests.conftest import REPO
from tests.train.test_loop import TINY_TRAINING, settings_for

MAX_STEPS = 4


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> Path:
    root = synth_veri(tmp_path_factory.mktemp("faults") / "VeRi", vehicles=16, cameras=4, seed=5, workers=1)
    make_manifest("veri", root, root.parent / "manifest.parquet")
    return root


@pytest.fixture(scope="module")
def config_files(tmp_path_factory) -> list[str]:
    tiny = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    tiny.write_text(yaml.safe_dump({"training": {**TINY_TRAINING["training"], "max_steps": MAX_STEPS}}))
    return [str(REPO / "config.yaml"), str(tiny)]


@pytest.fixture(scope="module")
def finished(twin, config_files, tmp_path_factory) -> Path:
    """A complete (max_steps-short) run made through the CLI."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert cli(config_files, twin.parent / "manifest.parquet", run).returncode == 0
    return run


def cli(config_files, manifest, out, *extra, cache_dir=None) -> subprocess.CompletedProcess:
    configs = [arg for path in config_files for arg in ("--config", path)]
    command = [sys.executable, "-m", "agnet", "train", *configs, "--manifest", str(manifest), "--variant", "agnet_asl",
               "--seed", "7", "--out", str(out), "--no-progress", "--threads", "1",
               "--cache-dir", str(cache_dir or Path(out).parent / "cache"), *extra]
    return subprocess.run(command, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=600, check=False)


def first_error(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.startswith("agnet: error:")]
    assert lines, done.stderr[-2000:]
    return lines[0]


def no_partial(run: Path) -> None:
    assert not (run / "model.pt").exists() and not (run / "run.json").exists()
    assert not list(run.glob(".*.tmp")) and not list(run.parent.glob("cache/*.tmp"))


# --- finished runs, locks ---------------------------------------------------------------------


@pytest.mark.parametrize("extra, status, first_line", [
    (["--resume"], 0, "{run}/model.pt: this run is already complete"),
    ([], 1, "agnet: error: {run}/model.pt exists: this run is complete"),
])
def test_a_finished_run_is_never_retrained(extra, status, first_line, finished, twin, config_files):
    before = (finished / "model.pt").read_bytes()
    done = cli(config_files, twin.parent / "manifest.parquet", finished, *extra)
    assert done.returncode == status, done.stderr[-2000:]
    message = done.stdout if status == 0 else first_error(done)
    assert message.startswith(first_line.format(run=finished))
    assert (finished / "model.pt").read_bytes() == before


def test_a_finished_run_with_other_settings_is_refused(finished, twin, config_files, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"training": {"lr": 0.2}}))
    before = (finished / "model.pt").read_bytes()
    done = cli([*config_files, str(other)], twin.parent / "manifest.parquet", finished, "--resume")
    assert done.returncode == 1
    assert first_error(done) == (f"agnet: error: {finished}/model.pt: this run is complete but was trained with a "
                                 "different configuration; refusing to touch it:")
    assert "lr: model.pt 0.05, now 0.2" in done.stderr
    assert (finished / "model.pt").read_bytes() == before


def test_a_run_directory_in_use_is_refused_at_once(twin, config_files, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    hold = ("import sys, time; from pathlib import Path; from agnet.train.loop import RunLock; "
            "lock = RunLock(Path(sys.argv[1])).__enter__(); print('locked', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run)],
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        done = cli(config_files, twin.parent / "manifest.parquet", run, "--resume")
        assert done.returncode == 1
        assert first_error(done).startswith(
            f"agnet: error: {run}: another process (pid {holder.pid}) is training into this run directory")
        no_partial(run)
        with pytest.raises(AgnetError, match="another process"), RunLock(tmp_path), RunLock(tmp_path):
            pass  # the same process twice is refused too
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLock(run):  # the SIGKILLed holder's lock went with it: the file left behind does not block
        assert (run / loop.LOCK_NAME).read_text().strip() == str(os.getpid())


# --- bad images -------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", ["auto", "false"])
@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_bad_training_image_is_one_clear_error(damage, cache, twin, config_files, tmp_path):
    root = Path(shutil.copytree(twin, tmp_path / "VeRi"))
    manifest = tmp_path / "manifest.parquet"
    make_manifest("veri", root, manifest)
    damaged = sorted((root / "image_train").glob("*.jpg"))
    for path in damaged:
        if damage == "missing":
            path.unlink()
        else:
            path.write_bytes(path.read_bytes()[:300])
    setting = tmp_path / "cache.yaml"
    setting.write_text(f"training: {{decoded_cache: {cache}}}\n")
    run = tmp_path / "run"
    done = cli([*config_files, str(setting)], manifest, run)
    assert done.returncode == 1
    line = first_error(done)
    assert line.startswith("agnet: error: ") and any(line.startswith(f"agnet: error: {p}: ") for p in damaged)
    assert ("image file not found" if damage == "missing" else "cannot decode image") in line
    assert "Traceback" not in done.stderr
    no_partial(run)


# --- divergence, disk full, moved data ----------------------------------------------------------


def test_divergence_before_any_checkpoint_says_there_is_nothing_to_resume(twin, config_files, tmp_path,
                                                                           monkeypatch):
    real_total = loop.total_loss

    def exploding(*args, **kwargs):
        terms = real_total(*args, **kwargs)
        terms["total"] = terms["total"] * float("inf")
        return terms

    monkeypatch.setattr(loop, "total_loss", exploding)
    with pytest.raises(TrainingDiverged) as caught:
        train(settings_for(config_files), twin.parent / "manifest.parquet", tmp_path / "run", seed=0, progress=False)
    assert str(caught.value).startswith("loss became non-finite at epoch 1, step 1")
    assert "no checkpoint was written yet" in str(caught.value) and "start the run again" in str(caught.value)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    no_partial(tmp_path / "run")


def interrupt_at(step: int, monkeypatch) -> None:
    """Send this process SIGUSR1 during the ``step``-th loss computation (a mid-epoch checkpoint follows)."""
    real_total, calls = loop.total_loss, []

    def total(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real_total(*args, **kwargs)

    monkeypatch.setattr(loop, "total_loss", total)


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(twin, config_files, tmp_path, monkeypatch):
    settings = settings_for(config_files, max_steps=None, decoded_cache=False)
    manifest, run = twin.parent / "manifest.parquet", tmp_path / "run"
    interrupt_at(2, monkeypatch)
    with pytest.raises(TrainingInterrupted):
        train(settings, manifest, run, seed=0, progress=False)
    previous = (run / "checkpoint.pt").read_bytes()

    def full_disk(path, data):
        with open(path, "wb") as f:
            f.write(bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_module, "_write_file", full_disk)
    interrupt_at(1, monkeypatch)
    with pytest.raises(AgnetError) as caught:
        train(settings, manifest, run, seed=0, resume=True, progress=False)
    assert str(caught.value).startswith(f"{run / 'checkpoint.pt'}: no space left on device while writing it")
    assert "the previous checkpoint.pt, if any, is intact" in str(caught.value)
    assert (run / "checkpoint.pt").read_bytes() == previous
    assert torch.load(run / "checkpoint.pt", weights_only=True)["position"] == {"epoch": 0, "step": 2}
    no_partial(run)


def test_moving_the_dataset_keeps_the_run_resumable(twin, config_files, tmp_path, monkeypatch):
    first = Path(shutil.copytree(twin, tmp_path / "a" / "VeRi"))
    make_manifest("veri", first, tmp_path / "a.parquet")
    settings = settings_for(config_files, decoded_cache=False)
    interrupt_at(2, monkeypatch)
    with pytest.raises(TrainingInterrupted):
        train(settings, tmp_path / "a.parquet", tmp_path / "run", seed=0, progress=False)
    monkeypatch.undo()
    moved = Path(shutil.move(first, tmp_path / "elsewhere" / "VeRi"))
    make_manifest("veri", moved, tmp_path / "b.parquet")
    record = train(settings, tmp_path / "b.parquet", tmp_path / "run", seed=0, resume=True, progress=False)
    assert record["resumes"] == [{"epoch": 0, "step": 2}] and record["steps"] == MAX_STEPS
    assert json.loads((tmp_path / "run" / "run.json").read_text())["truncated"] is True
