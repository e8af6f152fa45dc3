"""Faults a user can meet in feature extraction and evaluation (issue 12): each is one `agnet: error: ...`
line naming the file, a non-zero exit, and no partial or stale output where a later step would read it."""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path

import pytest
import torch

from agnet.cli import main
from agnet.data.manifest import make_manifest
from agnet.data.synth.veri import synth_veri
from agnet.errors import AgnetError
from agnet.extract import save_features
from tests.test_extract import _cli_config, make_trained


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """Exit status and the first stderr line of ``agnet ARGV`` (progress messages off)."""
    status = main(["--log-level", "warning", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    return status, (err[0] if err else "")


def assert_nothing_written(path: Path) -> None:
    assert not path.exists()
    assert [p.name for p in path.parent.glob(f".{path.name}.*")] == []  # no temporary left behind


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return make_trained(tmp_path_factory)


@pytest.fixture(scope="module")
def features(trained):
    """Features of the trained run (its held-out ``val`` vehicles too: extracted, not evaluated)."""
    out = trained / "faults-features.pt"
    assert main(["extract", *_cli_config(trained), "--model", str(trained / "run" / "model.pt"), "--manifest",
                 str(trained / "m.parquet"), "--out", str(out), "--no-progress"]) == 0
    return out


def copy_dataset(trained, tmp_path) -> tuple[Path, Path]:
    """A writable copy of the trained run's dataset and its manifest (same vehicles, classes, names)."""
    root = Path(shutil.copytree(trained / "VeRi", tmp_path / "VeRi"))
    make_manifest("veri", root, tmp_path / "m.parquet", holdout_vehicles=2)
    return root, tmp_path / "m.parquet"


def extract_cli(trained, model, manifest, out) -> list[str]:
    return ["extract", *_cli_config(trained), "--model", str(model), "--manifest", str(manifest), "--out", str(out),
            "--no-progress"]


def evaluate_cli(trained, features, out, model=None, manifest=None) -> list[str]:
    argv = ["evaluate", *_cli_config(trained), "--features", str(features), "--manifest",
            str(manifest or trained / "m.parquet"), "-o", str(out)]
    return argv + (["--model", str(model)] if model else [])


# ------------------------------------------------------------------------------------------- extract: images


@pytest.mark.parametrize("fault, message", [
    ("truncate", r"cannot decode image .*truncated or corrupt"),
    ("delete", r"image file not found"),
    ("garbage", r"not a readable image"),
])
def test_a_broken_image_during_extract_names_the_file(trained, tmp_path, capsys, fault, message):
    root, manifest = copy_dataset(trained, tmp_path)
    image = sorted((root / "image_test").glob("*.jpg"))[3]
    if fault == "truncate":
        image.write_bytes(image.read_bytes()[: image.stat().st_size // 3])
    elif fault == "delete":
        image.unlink()
    else:
        image.write_bytes(b"not a jpeg at all")
    out = tmp_path / "features.pt"
    status, line = run_cli(capsys, *extract_cli(trained, trained / "run" / "model.pt", manifest, out))
    assert status == 1
    assert line.startswith(f"agnet: error: {image}: ")
    assert re.search(message, line)
    assert_nothing_written(out)


# ------------------------------------------------------------------------------------------- extract: writing


def _full_disk(failure):
    def save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")  # torch wrote part of the file before the disk filled up
        raise failure

    return save


def test_disk_full_while_writing_features(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch, "save", _full_disk(OSError(errno.ENOSPC, "No space left on device")))
    out = tmp_path / "features.pt"
    status, line = run_cli(capsys, *extract_cli(trained, trained / "run" / "model.pt", trained / "m.parquet", out))
    assert status == 1
    assert line == f"agnet: error: {out}: cannot write the features file (no space left on the device); nothing was written"
    assert_nothing_written(out)


@pytest.mark.parametrize("failure, reason", [
    (RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4096 vs 3812"), "no space left on the device"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "Disk quota exceeded"),
    (PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
])
def test_a_failed_features_write_leaves_nothing(tmp_path, monkeypatch, failure, reason):
    monkeypatch.setattr(torch, "save", _full_disk(failure))
    out = tmp_path / "features.pt"
    with pytest.raises(AgnetError, match=rf"^{re.escape(str(out))}: cannot write the features file \(.*{reason}"):
        save_features(out, {"paths": []})
    assert_nothing_written(out)


# ------------------------------------------------------------------------------------------- extract: the model


def _checkpoint_like(trained, path):
    state = torch.load(trained / "run" / "model.pt", weights_only=True)
    torch.save({"model": state["model"], "optimizer": {}, "position": {"epoch": 1, "step": 0}}, path)


def _other_format(trained, path):
    state = torch.load(trained / "run" / "model.pt", weights_only=True)
    state["record"]["dataset_format"] = "vehicleid"  # what a VehicleID-trained model records
    torch.save(state, path)


@pytest.mark.parametrize("make, message", [
    (_checkpoint_like, r"this is a training checkpoint, not a finished model"),
    (lambda run, path: shutil.copy(run / "faults-features.pt", path), r"this is a features file, not a model"),
    (lambda run, path: path.write_bytes(b"\x00" * 100), r"not a model written by `agnet train`"),
    (lambda run, path: None, r"model file not found"),
    (_other_format, r"was trained on another dataset than .*format 'vehicleid' vs 'veri'"),
])
def test_a_wrong_model_file_is_refused(trained, features, tmp_path, capsys, make, message):
    model = tmp_path / "model.pt"
    make(trained, model)
    out = tmp_path / "features.pt"
    status, line = run_cli(capsys, *extract_cli(trained, model, trained / "m.parquet", out))
    assert status == 1 and line.startswith(f"agnet: error: {model}")
    assert re.search(message, line), line
    assert_nothing_written(out)


def test_a_model_of_another_dataset_of_the_same_format_is_refused(trained, tmp_path, capsys):
    root = synth_veri(tmp_path / "Other", vehicles=14, cameras=3, seed=5, workers=1)
    make_manifest("veri", root, tmp_path / "other.parquet")
    out = tmp_path / "features.pt"
    status, line = run_cli(capsys, *extract_cli(trained, trained / "run" / "model.pt", tmp_path / "other.parquet", out))
    assert status == 1
    assert "was trained on another dataset than" in line and "identity classes" in line
    assert_nothing_written(out)


# ------------------------------------------------------------------------------------------- evaluate: stale


def test_features_of_a_retrained_model_are_refused(trained, features, tmp_path, capsys):
    retrained = tmp_path / "model.pt"
    state = torch.load(trained / "run" / "model.pt", weights_only=True)
    state["model"]["id_head.weight"] = state["model"]["id_head.weight"] + 1.0  # same shapes, other weights
    torch.save(state, retrained)
    out = tmp_path / "metrics.json"
    status, line = run_cli(capsys, *evaluate_cli(trained, features, out, model=retrained))
    assert status == 1
    assert line.startswith(f"agnet: error: {features}: stale features: they were extracted from another model")
    assert_nothing_written(out)
    assert main(evaluate_cli(trained, features, out, model=trained / "run" / "model.pt")) == 0  # the right one passes


def test_features_of_another_manifest_are_refused(trained, features, tmp_path, capsys):
    _, manifest = copy_dataset(trained, tmp_path)
    out = tmp_path / "metrics.json"
    status, line = run_cli(capsys, *evaluate_cli(trained, features, out, manifest=manifest))
    assert status == 1 and "stale features: they were extracted from another manifest" in line
    assert_nothing_written(out)


# ------------------------------------------------------------------------------------------- evaluate: malformed


def _mutated(features_path, path, change):
    stored = torch.load(features_path, weights_only=True)
    change(stored)
    torch.save(stored, path)


@pytest.mark.parametrize("make, message", [
    (lambda f, p: p.write_bytes(b"garbage"), r"unreadable features file"),
    (lambda f, p: p.write_bytes(Path(f).read_bytes()[:500]), r"unreadable features file"),
    (lambda f, p: _mutated(f, p, lambda s: s.update(paths=s["paths"][:-3])), r"Attr has \d+ rows for \d+ paths"),
    (lambda f, p: _mutated(f, p, lambda s: s["paths"].__setitem__(1, s["paths"][0])), r"1 duplicate path"),
    (lambda f, p: _mutated(f, p, lambda s: s.pop("ID")), r"descriptor ID missing"),
    (lambda f, p: _mutated(f, p, lambda s: s.update(ID_norm=s["ID_norm"][:2])), r"ID_norm does not match"),
    (lambda f, p: _mutated(f, p, lambda s: s.pop("provenance")), r"not a features file"),
    (lambda f, p: None, r"features file not found"),
])
@pytest.mark.parametrize("protocol", ["veri", "veri-str"])
def test_a_malformed_features_file_is_refused(trained, features, tmp_path, capsys, make, message,
                                              protocol):
    bad = tmp_path / "features.pt"
    make(features, bad)
    out = tmp_path / "metrics.json"
    status, line = run_cli(capsys, *evaluate_cli(trained, bad, out), "--protocol", protocol)
    assert status == 1 and line.startswith(f"agnet: error: {bad}: ")
    assert re.search(message, line), line
    assert_nothing_written(out)


def test_a_model_passed_as_features_is_refused(trained, tmp_path, capsys):
    status, line = run_cli(capsys, *evaluate_cli(trained, trained / "run" / "model.pt", tmp_path / "m.json"))
    assert status == 1 and "not a features file written by `agnet extract` (this looks like a model" in line
