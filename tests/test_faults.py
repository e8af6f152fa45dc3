"""Bad input and faults (issue 12): each gives one clear line, a non-zero status, and leaves nothing stale.

Each case of the matrix builds its inputs, runs the ``agnet`` command in-process, and checks the exit
status, the first line of the error (naming the file or flag), the number of lines, and that no
partial or stale output remains where a later step would read it. Workflow-level faults (a changed
archive, a ``'`` in a path) run Snakemake on the fetch and verify rules only.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agnet import cli
from agnet.cli import main
from agnet.fileio import sha256_file
from tests.conftest import REPO

DEMO = REPO / "workflow/configs/demo.yaml"
CONFIGS = ["--config", str(REPO / "config.yaml"), "--config", str(DEMO)]


@dataclass
class Case:
    """One row of the matrix. ``setup(tmp_path, env)`` returns the argv; ``absent`` are paths (relative to
    tmp_path) that must not exist afterwards; ``check`` runs any further assertion."""

    setup: Callable[[Path, dict], list[str]]
    status: int
    first_line: str  # regex matched against the start of the first stderr line ({tmp} = tmp_path)
    absent: list[str] = field(default_factory=list)
    check: Callable[[Path, dict], None] | None = None
    max_lines: int = 1


def _zip_tree(root: Path, out: Path) -> Path:
    return Path(shutil.make_archive(str(out.with_suffix("")), "zip", root.parent, root.name))


def _veri_copy(tmp: Path, name: str = "VeRi") -> Path:
    return Path(shutil.copytree(REPO / "tests/fixtures/veri", tmp / name))


def _drop_first_train_image(root: Path) -> None:
    lines = (root / "name_train.txt").read_bytes().splitlines(keepends=True)
    (root / "name_train.txt").write_bytes(b"".join(lines[1:]))


# ---- setups -------------------------------------------------------------------------------------


def _refetch_other_archive_bad_sha(tmp: Path, env: dict) -> list[str]:
    a = _zip_tree(_veri_copy(tmp / "a"), tmp / "a.zip")
    assert main(["data", "fetch", "veri", "--archive", str(a), "--sha256", sha256_file(a), "--dest", str(tmp / "d"),
                 "-o", str(tmp / "d/dataset.json"), "--quiet"]) == 0
    b = _zip_tree(_veri_copy(tmp / "b"), tmp / "b.zip")
    return ["data", "fetch", "veri", "--archive", str(b), "--sha256", "0" * 64, "--dest", str(tmp / "d"),
            "-o", str(tmp / "d/dataset.json"), "--quiet"]


def _url_cut_short_no_length(tmp: Path, env: dict) -> list[str]:
    base, behaviour = env["server"]
    data = _zip_tree(_veri_copy(tmp / "src"), tmp / "VeRi.zip").read_bytes()
    behaviour.files["/VeRi.zip"] = data
    behaviour.no_length, behaviour.ignore_range, behaviour.truncate_first = True, True, len(data) // 2
    return ["data", "fetch", "veri", "--url", f"{base}/VeRi.zip", "--dest", str(tmp / "d"),
            "-o", str(tmp / "d/dataset.json"), "--quiet"]


def _latin1_list_color(tmp: Path, env: dict) -> list[str]:
    root = _veri_copy(tmp)
    text = (root / "list_color.txt").read_text().replace("gray", "grün")
    (root / "list_color.txt").write_bytes(text.encode("latin-1"))
    return ["data", "manifest", "veri", str(root), "-o", str(tmp / "m.parquet")]


def _missing_image_no_pixels(tmp: Path, env: dict) -> list[str]:
    root = _veri_copy(tmp)
    (root / "image_test/0004_c001_00001900_0.jpg").unlink()
    return ["data", "verify", "veri", str(root), "--no-pixels", "-o", str(tmp / "verify.json")]


def _report_is_invalid(tmp: Path, env: dict) -> None:
    assert json.loads((tmp / "verify.json").read_text())["valid"] is False  # kept for inspection, says invalid


def _negative_seed(tmp: Path, env: dict) -> list[str]:
    return ["train", *CONFIGS, "--manifest", str(tmp / "m.parquet"), "--variant", "agnet_asl", "--seed", "-1",
            "--out", str(tmp / "run")]


def _no_cuda(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _train_on_cuda_without_cuda(tmp: Path, env: dict) -> list[str]:
    _no_cuda(env["monkeypatch"])
    return ["train", *CONFIGS, "--manifest", str(tmp / "m.parquet"), "--variant", "agnet_asl", "--seed", "0",
            "--out", str(tmp / "run"), "--device", "cuda"]


def _extract_on_cuda_without_cuda(tmp: Path, env: dict) -> list[str]:
    _no_cuda(env["monkeypatch"])
    return ["extract", *CONFIGS, "--model", str(tmp / "model.pt"), "--manifest", str(tmp / "m.parquet"),
            "--out", str(tmp / "features.pt"), "--device", "cuda:0"]


def _unknown_device(tmp: Path, env: dict) -> list[str]:
    return ["extract", *CONFIGS, "--model", str(tmp / "model.pt"), "--manifest", str(tmp / "m.parquet"),
            "--out", str(tmp / "features.pt"), "--device", "gpu"]


def _manifest_into_directory(tmp: Path, env: dict) -> list[str]:
    (tmp / "out").mkdir()
    return ["data", "manifest", "veri", str(REPO / "tests/fixtures/veri"), "-o", str(tmp / "out")]


def _mismatched_weights(tmp: Path, env: dict) -> list[str]:
    """A model.pt whose record says resnet18 but whose weights are a narrow ResNet-18's: >100 mismatches."""
    import torch

    from agnet.config import load_config
    from agnet.data.manifest import make_manifest
    from agnet.model import AGNet, build_trunk
    from agnet.train.settings import resolve_settings

    settings = resolve_settings(load_config(REPO / "config.yaml", DEMO), "agnet_asl").to_dict()
    settings["backbone"] = "resnet18"
    narrow = AGNet(build_trunk("resnet18_narrow"), 2, 10, 9, settings["embedding_dim"])
    record = {"settings": settings, "num_classes": 2, "color_names": ["c"] * 10, "type_names": ["t"] * 9}
    torch.save({"model": narrow.state_dict(), "record": record}, tmp / "model.pt")
    make_manifest("veri", REPO / "tests/fixtures/veri", tmp / "m.parquet")
    return ["extract", *CONFIGS, "--model", str(tmp / "model.pt"), "--manifest", str(tmp / "m.parquet"),
            "--out", str(tmp / "features.pt"), "--no-progress"]


def _disk_full(tmp: Path, env: dict) -> list[str]:
    """Every atomic write (a hidden .tmp sibling) fails as a full disk does: ENOSPC, no file name."""
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.startswith(".") and self.name.endswith(".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)

    env["monkeypatch"].setattr(Path, "write_text", full)
    return ["data", "verify", "veri", str(REPO / "tests/fixtures/veri"), "--no-pixels", "-o", str(tmp / "r/verify.json")]


def _no_tmp_left(tmp: Path, env: dict) -> None:
    assert list((tmp / "r").iterdir()) == []


def _missing_input_file(tmp: Path, env: dict) -> list[str]:
    return ["report", "tables", *CONFIGS, "--summary", str(tmp / "summary.csv"), "--out", str(tmp / "tables")]


def _missing_dataset(tmp: Path, env: dict) -> list[str]:
    return ["data", "fetch", "vehicleid", "--directory", str(tmp / "VehicleID"), "--dest", str(tmp / "d"),
            "-o", str(tmp / "d/dataset.json")]


def _hint_names_real_keys(tmp: Path, env: dict) -> None:
    err = env["err"]
    assert "source: {kind: directory, location: <that folder>}" in err and "{kind: archive, location: <file>" in err
    assert "source.directory" not in err and "source.archive" not in err


def _config_check(*overlay_lines: str):
    def setup(tmp: Path, env: dict) -> list[str]:
        overlay = tmp / "overlay.yaml"
        overlay.write_text("\n".join(overlay_lines) + "\n")
        return ["config", "check", str(REPO / "config.yaml"), str(overlay)]

    return setup


def _demo_alone(tmp: Path, env: dict) -> list[str]:
    return ["config", "check", str(DEMO)]


LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO) ")  # progress notes of the logging the CLI configures


CASES = {
    "refetch-bad-sha-leaves-no-locator": Case(
        _refetch_other_archive_bad_sha, 1, r"agnet: error: checksum mismatch for {tmp}/b\.zip: expected 0{64}",
        absent=["d/dataset.json"]),
    "url-cut-short-no-length": Case(
        _url_cut_short_no_length, 1,
        r"agnet: error: download of http://127\.0\.0\.1:\d+/VeRi\.zip ended after \d+ bytes, but the server sent no "
        r"Content-Length .*it was deleted; run the fetch again with the archive's sha256",
        absent=["d/downloads/VeRi.zip", "d/downloads/VeRi.zip.part", "d/extracted", "d/dataset.json"]),
    "latin1-list-color": Case(
        _latin1_list_color, 1, r"agnet: error: {tmp}/VeRi/list_color\.txt:4: is not UTF-8 text \(byte 0xFC",
        absent=["m.parquet"]),
    "verify-no-pixels-missing-image": Case(
        _missing_image_no_pixels, 1, r"error: 1 listed image\(s\) missing under {tmp}/VeRi: image_test/0004",
        check=_report_is_invalid),
    "seed-negative": Case(
        _negative_seed, 2, r"agnet train: error: argument --seed: expected an integer >= 0, got -1", absent=["run"]),
    "train-device-cuda-without-cuda": Case(
        _train_on_cuda_without_cuda, 1, r"agnet: error: --device cuda: CUDA is not available", absent=["run"]),
    "extract-device-cuda-without-cuda": Case(
        _extract_on_cuda_without_cuda, 1, r"agnet: error: --device cuda:0: CUDA is not available",
        absent=["features.pt"]),
    "extract-unknown-device": Case(
        _unknown_device, 1, r"agnet: error: --device 'gpu': expected cpu, cuda or cuda:N", absent=["features.pt"]),
    "manifest-output-is-a-directory": Case(
        _manifest_into_directory, 2,
        r"agnet data manifest: error: argument -o/--output: {tmp}/out is a directory; expected the path of a file"),
    "mismatched-weights-is-a-few-lines": Case(
        _mismatched_weights, 1, r"agnet: error: {tmp}/model\.pt: ", absent=["features.pt"],
        max_lines=cli.MAX_ERROR_LINES),
    "disk-full": Case(
        _disk_full, 1, r"agnet: error: no space left on device while writing {tmp}/r/verify\.json; free some space",
        absent=["r/verify.json"], check=_no_tmp_left),
    "missing-input-file": Case(
        _missing_input_file, 1, r"agnet: error: {tmp}/summary\.csv: no such file or directory", absent=["tables"]),
    "missing-dataset-hint-names-real-keys": Case(
        _missing_dataset, 1, r"agnet: error: vehicleid dataset not found at {tmp}/VehicleID\. PKU VehicleID",
        absent=["d/dataset.json"], check=_hint_names_real_keys),
    "config-unknown-train-variant": Case(
        _config_check("train_variants: [agnet_asl, agnet_als]"), 1,
        r"agnet: error: .*config\.yaml \+ {tmp}/overlay\.yaml: train_variants: 'agnet_als' not defined under 'variants'"),
    "config-lr-not-a-number": Case(
        _config_check("training: {lr: fast}"), 1,
        r"agnet: error: .*overlay\.yaml: training\.lr: expected a number, got the string 'fast'$"),
    "config-overlay-alone": Case(
        _demo_alone, 1, r"agnet: error: .*demo\.yaml: lacks the top-level section\(s\) 'datasets', so it is not a complete config.*"
        r"agnet config check config\.yaml workflow/configs/demo\.yaml"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fault_matrix(name, tmp_path, capsys, monkeypatch, request):
    case = CASES[name]
    env = {"monkeypatch": monkeypatch}
    if name.startswith("url-"):
        env["server"] = request.getfixturevalue("server")
    argv = case.setup(tmp_path, env)
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse usage errors
        status = exit_.code
    err = capsys.readouterr().err
    env["err"] = err
    lines = [line for line in err.rstrip("\n").splitlines() if not LOG_LINE.match(line)]
    assert status == case.status, err
    assert "Traceback" not in err
    assert re.match(case.first_line.replace("{tmp}", re.escape(str(tmp_path))), lines[0]), lines[0]
    assert len(lines) <= case.max_lines, err
    for path in case.absent:
        assert not (tmp_path / path).exists(), path
    if case.check:
        case.check(tmp_path, env)


def test_lr_1e_3_in_yaml_is_accepted(tmp_path, capsys):
    overlay = tmp_path / "o.yaml"
    overlay.write_text("training: {lr: 1e-3}\n")
    assert main(["config", "check", str(REPO / "config.yaml"), str(overlay)]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(": valid")


def test_real_bugs_still_show_a_traceback(monkeypatch, tmp_path):
    """Only errors with an errno are turned into one line: a library's own OSError is not hidden."""
    monkeypatch.setattr("agnet.data.manifest.make_manifest", _raise(OSError("image file is truncated")))
    with pytest.raises(OSError, match="image file is truncated"):
        main(["data", "manifest", "veri", str(REPO / "tests/fixtures/veri"), "-o", str(tmp_path / "m.parquet")])
    monkeypatch.setattr("agnet.data.manifest.make_manifest", _raise(FileNotFoundError(2, "No such file", "x")))
    monkeypatch.setenv("AGNET_DEBUG", "1")  # ... and AGNET_DEBUG shows the traceback of converted ones too
    with pytest.raises(FileNotFoundError):
        main(["data", "manifest", "veri", str(REPO / "tests/fixtures/veri"), "-o", str(tmp_path / "m.parquet")])


def _raise(error):
    def fail(*args, **kwargs):
        raise error

    return fail


# ---- re-fetching a different archive -----------------------------------------------------------


def _train_images(locator: Path) -> int:
    from agnet.data.datasets import read_dataset

    return len(read_dataset("veri", locator).split("train"))


def test_refetch_with_another_archive_extracts_it(tmp_path):
    """`data fetch --archive a`, then `--archive b` (its own sha256): the locator's root holds b's data."""
    a = _zip_tree(_veri_copy(tmp_path / "a"), tmp_path / "a.zip")
    b_root = _veri_copy(tmp_path / "b")
    _drop_first_train_image(b_root)
    b = _zip_tree(b_root, tmp_path / "b.zip")
    locator = tmp_path / "d/dataset.json"
    for archive, images in ((a, 4), (b, 3), (a, 4)):
        assert main(["data", "fetch", "veri", "--archive", str(archive), "--sha256", sha256_file(archive),
                     "--dest", str(tmp_path / "d"), "-o", str(locator), "--quiet"]) == 0
        assert _train_images(locator) == images
        assert json.loads(locator.read_text())["source"]["location"] == str(archive)


def _two_url_versions(server, tmp_path: Path) -> tuple[str, Path]:
    """The same file name under two URLs (/v1 with 4 training images, /v2 with 3); returns (base URL, locator)."""
    base, behaviour = server
    a_root, b_root = _veri_copy(tmp_path / "a"), _veri_copy(tmp_path / "b")
    _drop_first_train_image(b_root)
    behaviour.files["/v1/VeRi.zip"] = _zip_tree(a_root, tmp_path / "a/VeRi.zip").read_bytes()
    behaviour.files["/v2/VeRi.zip"] = _zip_tree(b_root, tmp_path / "b/VeRi.zip").read_bytes()
    return base, tmp_path / "d/dataset.json"


def test_refetch_from_another_url_extracts_it(server, tmp_path):
    # the download is replaced (checksum differs), then re-extracted
    base, locator = _two_url_versions(server, tmp_path)
    for version, images in (("v1", 4), ("v2", 3)):
        sha = sha256_file(tmp_path / ("a" if version == "v1" else "b") / "VeRi.zip")
        assert main(["data", "fetch", "veri", "--url", f"{base}/{version}/VeRi.zip", "--sha256", sha,
                     "--dest", str(tmp_path / "d"), "-o", str(locator), "--quiet"]) == 0
        assert _train_images(locator) == images


# ---- the workflow: a changed archive is re-extracted; a ' in a path is quoted ----------------------


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "1",
               *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)


def test_workflow_refetches_a_changed_archive_from_a_quoted_path(tmp_path):
    data = tmp_path / "it's data"  # a ' in the path: every shell word must be quoted
    a_root, b_root = _veri_copy(data / "a"), _veri_copy(data / "b")
    _drop_first_train_image(b_root)
    a, b = _zip_tree(a_root, data / "a.zip"), _zip_tree(b_root, data / "b.zip")
    work = tmp_path / "work"
    work.mkdir()
    report = work / "results/data/myveri/verify.json"
    for archive, images in ((a, 4), (b, 3)):
        config = work / "myveri.yaml"
        config.write_text(json.dumps({
            "run": ["myveri"],
            "datasets": {"myveri": {"format": "veri", "holdout_vehicles": 1, "source": {
                "kind": "archive", "location": str(archive), "sha256": sha256_file(archive)}}},
        }))
        done = _snakemake(work, "--configfile", str(DEMO), str(config), "--", "results/data/myveri/verify.json")
        assert done.returncode == 0, done.stderr[-3000:]
        verified = json.loads(report.read_text())
        assert verified["valid"] and verified["splits"]["train"]["images"] == images


def test_refetch_from_another_url_without_checksums(server, tmp_path):
    """Without sha256 the file name alone cannot tell two downloads apart: the URL is recorded and compared."""
    base, locator = _two_url_versions(server, tmp_path)
    for version, images in (("v1", 4), ("v2", 3), ("v2", 3)):
        assert main(["data", "fetch", "veri", "--url", f"{base}/{version}/VeRi.zip",
                     "--dest", str(tmp_path / "d"), "-o", str(locator), "--quiet"]) == 0
        assert _train_images(locator) == images
    assert [r["path"] for r in server[1].requests if r["range"] is None] == ["/v1/VeRi.zip", "/v2/VeRi.zip"]


def test_cuda_index_beyond_the_visible_devices(monkeypatch, tmp_path, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    argv = ["train", *CONFIGS, "--manifest", str(tmp_path / "m.parquet"), "--variant", "agnet_asl", "--seed", "0",
            "--out", str(tmp_path / "run"), "--device", "cuda:3"]
    assert main(argv) == 1
    assert capsys.readouterr().err == "agnet: error: --device cuda:3: there are only 1 CUDA device(s) (cuda:0 to cuda:0)\n"
    assert not (tmp_path / "run").exists()
