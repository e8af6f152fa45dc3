"""Obtaining a dataset from a directory, a local archive or a URL, down to the dataset.json locator."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agnet.data.datasets import read_dataset
from agnet.data.sources import obtain
from agnet.errors import DatasetMissingError, FetchError
from agnet.fileio import sha256_file


@pytest.fixture
def veri_zip(veri_root, tmp_path):
    """The VeRi fixture zipped as the release circulates: a top-level VeRi/ folder."""
    return shutil.make_archive(str(tmp_path / "VeRi"), "zip", veri_root.parent, veri_root.name)


def test_directory_source_is_used_in_place(veri_root, tmp_path):
    locator = tmp_path / "out" / "dataset.json"
    assert obtain("veri", "directory", str(veri_root), tmp_path / "out", locator) == veri_root
    record = json.loads(locator.read_text())
    assert record["format"] == "veri" and record["root"] == str(veri_root.resolve())
    assert len(read_dataset("veri", locator).images) == 12  # the locator works wherever a root does


def test_missing_directory_says_how_to_obtain(tmp_path):
    with pytest.raises(DatasetMissingError, match=r"veri dataset not found at .*released by its authors on request"):
        obtain("veri", "directory", str(tmp_path / "VeRi"), tmp_path, tmp_path / "d.json")
    assert not (tmp_path / "d.json").exists()


def test_wrong_directory_names_the_marker(vehicleid_root, tmp_path):
    with pytest.raises(DatasetMissingError, match=r"is not a veri dataset root \(no name_train.txt in it\)"):
        obtain("veri", "directory", str(vehicleid_root), tmp_path, tmp_path / "d.json")


def test_archive_source_is_checksummed_and_unpacked(veri_zip, tmp_path):
    out = tmp_path / "out"
    root = obtain("veri", "archive", veri_zip, out, out / "dataset.json", sha256=sha256_file(veri_zip))
    assert root == out / "extracted" / "VeRi"
    assert len(read_dataset("veri", out / "dataset.json").split("gallery")) == 6


def test_archive_checksum_mismatch_extracts_nothing(veri_zip, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FetchError, match=r"checksum mismatch for .*VeRi\.zip: expected 0{64}, got [0-9a-f]{64}"):
        obtain("veri", "archive", veri_zip, out, out / "dataset.json", sha256="0" * 64)
    assert not (out / "extracted").exists() and not (out / "dataset.json").exists()


def test_missing_archive_says_how_to_obtain(tmp_path):
    with pytest.raises(DatasetMissingError, match=r"vehicleid archive not found at .*pku-vehicleid"):
        obtain("vehicleid", "archive", str(tmp_path / "x.zip"), tmp_path, tmp_path / "d.json")


def test_url_source_downloads_resumably_over_loopback(server, veri_zip, tmp_path):
    base, behaviour = server
    data = Path(veri_zip).read_bytes()
    behaviour.files["/VeRi.zip"] = data
    behaviour.truncate_first = len(data) // 3  # the first connection drops: the download resumes
    out = tmp_path / "out"
    root = obtain("veri", "url", f"{base}/VeRi.zip", out, out / "dataset.json", sha256=sha256_file(veri_zip),
                  progress=False)
    assert (out / "downloads" / "VeRi.zip").read_bytes() == data
    assert behaviour.requests[-1]["range"] == f"bytes={len(data) // 3}-"
    assert (root / "name_train.txt").is_file()


def test_archive_without_dataset_inside(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("nothing here")
    archive = shutil.make_archive(str(tmp_path / "junk"), "zip", tmp_path, "junk")
    with pytest.raises(DatasetMissingError, match=r"no veri dataset inside .* \(no name_train.txt found\)"):
        obtain("veri", "archive", archive, tmp_path / "out", tmp_path / "d.json")


def test_truncated_download_kept_by_an_older_version_says_to_delete_it(server, veri_zip, tmp_path):
    base, behaviour = server
    data = Path(veri_zip).read_bytes()
    behaviour.files["/VeRi.zip"] = data
    out = tmp_path / "out"
    kept = out / "downloads" / "VeRi.zip"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(data[: len(data) // 2])  # under its final name, as before issue 12
    (out / "downloads" / "VeRi.zip.url").write_text(f"{base}/VeRi.zip\n")
    with pytest.raises(FetchError, match=r"corrupt or unreadable archive .*; delete .*VeRi\.zip and run the fetch again"):
        obtain("veri", "url", f"{base}/VeRi.zip", out, out / "dataset.json", progress=False)
    assert not (out / "extracted").exists() and not (out / "dataset.json").exists()
