"""Tests for agnet.data.fetch: resumable, verified downloads and safe archive extraction.

Downloads are served by a local ThreadingHTTPServer on 127.0.0.1 (random port) that honours
``Range`` and can be told to misbehave: cut the body short, ignore ``Range``, answer with an
error status a number of times.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from agnet.data import fetch
from agnet.data.fetch import download, extract_archive
from agnet.errors import FetchError
from agnet.fileio import sha256_file

PAYLOAD = bytes(range(256)) * 400  # 102400 bytes, position-dependent content
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
FAST = {"backoff": 0.01, "timeout": 5.0, "progress": False}


@pytest.fixture
def server(server):
    """The shared loopback server (tests/conftest.py), serving PAYLOAD at /data.bin."""
    server[1].files["/data.bin"] = PAYLOAD
    return server


# --------------------------------------------------------------------------------------------
# sha256_file
# --------------------------------------------------------------------------------------------


def test_sha256_file_matches_hashlib_across_chunks(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(PAYLOAD)
    assert sha256_file(path, chunk_size=1000) == PAYLOAD_SHA
    assert sha256_file(path) == PAYLOAD_SHA


# --------------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------------


def test_interrupted_download_resumes_with_range(server, tmp_path):
    base, b = server
    b.truncate_first = 30000
    dest = tmp_path / "out" / "data.bin"
    assert download(f"{base}/data.bin", dest, sha256=PAYLOAD_SHA, **FAST) == dest
    assert dest.read_bytes() == PAYLOAD
    assert sha256_file(dest) == PAYLOAD_SHA
    assert len(b.requests) == 2
    assert b.requests[0]["range"] is None
    assert b.requests[1]["range"] == "bytes=30000-"
    assert not dest.with_name("data.bin.part").exists()


def test_resumes_from_part_left_by_killed_run(server, tmp_path):
    base, b = server
    dest = tmp_path / "data.bin"
    dest.with_name("data.bin.part").write_bytes(PAYLOAD[:12345])
    download(f"{base}/data.bin", dest, sha256=PAYLOAD_SHA, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert [r["range"] for r in b.requests] == ["bytes=12345-"]


def test_complete_part_answered_416_counts_as_complete(server, tmp_path):
    base, b = server
    dest = tmp_path / "data.bin"
    dest.with_name("data.bin.part").write_bytes(PAYLOAD)
    download(f"{base}/data.bin", dest, sha256=PAYLOAD_SHA, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert [r["range"] for r in b.requests] == [f"bytes={len(PAYLOAD)}-"]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    base, b = server
    b.ignore_range = True
    dest = tmp_path / "data.bin"
    part = dest.with_name("data.bin.part")
    part.write_bytes(PAYLOAD[:5000])
    download(f"{base}/data.bin", dest, sha256=PAYLOAD_SHA, **FAST)
    assert dest.read_bytes() == PAYLOAD  # not PAYLOAD[:5000] + PAYLOAD
    assert b.requests[0]["range"] == "bytes=5000-"
    assert not part.exists()


def test_interrupted_and_range_ignored_still_correct(server, tmp_path):
    base, b = server
    b.ignore_range = True
    b.truncate_first = 777
    dest = tmp_path / "data.bin"
    download(f"{base}/data.bin", dest, sha256=PAYLOAD_SHA, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert [r["range"] for r in b.requests] == [None, "bytes=777-"]


def test_checksum_mismatch_keeps_nothing(server, tmp_path):
    base, _ = server
    wrong = "0" * 64
    dest = tmp_path / "data.bin"
    with pytest.raises(FetchError) as info:
        download(f"{base}/data.bin", dest, sha256=wrong, **FAST)
    message = str(info.value)
    assert "checksum mismatch" in message
    assert str(dest) in message
    assert wrong in message and PAYLOAD_SHA in message
    assert not dest.exists()
    assert not dest.with_name("data.bin.part").exists()
    assert list(tmp_path.iterdir()) == []


def test_404_fails_at_once_naming_url_and_status(server, tmp_path):
    base, b = server
    url = f"{base}/missing.bin"
    with pytest.raises(FetchError, match="404") as info:
        download(url, tmp_path / "missing.bin", retries=3, **FAST)
    assert url in str(info.value)
    assert len(b.requests) == 1
    assert not (tmp_path / "missing.bin").exists()


def test_5xx_is_retried_then_succeeds(server, tmp_path):
    base, b = server
    b.fail_status, b.fail_times = 503, 2
    dest = tmp_path / "data.bin"
    download(f"{base}/data.bin", dest, sha256=PAYLOAD_SHA, retries=2, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert len(b.requests) == 3


def test_5xx_gives_up_after_retries(server, tmp_path):
    base, b = server
    b.fail_status, b.fail_times = 500, 100
    url = f"{base}/data.bin"
    with pytest.raises(FetchError, match=r"after 3 attempt\(s\).*HTTP 500") as info:
        download(url, tmp_path / "data.bin", retries=2, **FAST)
    assert url in str(info.value)
    assert len(b.requests) == 3


def test_connection_refused_gives_up_naming_url(tmp_path):
    with socket.socket() as sock:  # find a free port on 127.0.0.1, then release it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data.bin"
    with pytest.raises(FetchError, match=r"after 2 attempt\(s\)") as info:
        download(url, tmp_path / "data.bin", retries=1, **FAST)
    assert url in str(info.value)


@pytest.mark.parametrize("url", ["ftp://example.org/x.zip", "file:///etc/passwd", "x.zip", "http://"])
def test_non_http_url_is_refused(url, tmp_path):
    with pytest.raises(FetchError, match="http:// or https://") as info:
        download(url, tmp_path / "x", **FAST)
    assert repr(url) in str(info.value)


@pytest.mark.parametrize("bad", ["abc", "g" * 64, PAYLOAD_SHA[:-1], ""])
def test_malformed_sha256_is_refused(bad, server, tmp_path):
    base, b = server
    with pytest.raises(FetchError, match="64 hexadecimal") as info:
        download(f"{base}/data.bin", tmp_path / "x", sha256=bad, **FAST)
    assert repr(bad) in str(info.value)
    assert b.requests == []


def test_uppercase_sha256_is_accepted(server, tmp_path):
    base, _ = server
    dest = download(f"{base}/data.bin", tmp_path / "x", sha256=PAYLOAD_SHA.upper(), **FAST)
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize("sha", [PAYLOAD_SHA, None])
def test_download_twice_makes_no_second_request(sha, server, tmp_path):
    base, b = server
    dest = tmp_path / "data.bin"
    download(f"{base}/data.bin", dest, sha256=sha, **FAST)
    assert len(b.requests) == 1
    download(f"{base}/data.bin", dest, sha256=sha, **FAST)
    assert len(b.requests) == 1


def test_existing_dest_with_wrong_content_is_replaced(server, tmp_path):
    base, b = server
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"stale")
    download(f"{base}/data.bin", dest, sha256=PAYLOAD_SHA, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert len(b.requests) == 1


def test_progress_bar_goes_to_stderr(server, tmp_path, capsys):
    base, _ = server
    download(f"{base}/data.bin", tmp_path / "data.bin", backoff=0.01, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "data.bin" in captured.err


# --------------------------------------------------------------------------------------------
# extract_archive
# --------------------------------------------------------------------------------------------

GOOD = {"top.txt": b"top\n", "sub/dir/inner.bin": bytes(range(50)), "sub/other.txt": b"other"}


def _make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _make_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz", extra=()) -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info)
    return path


def _snapshot(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.mark.parametrize(
    ("suffix", "mode"),
    [(".zip", None), (".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar", "w"), (".tar.bz2", "w:bz2"), (".tar.xz", "w:xz")],
)
def test_good_archive_extracts(suffix, mode, tmp_path):
    archive = tmp_path / f"good{suffix}"
    _make_zip(archive, GOOD) if mode is None else _make_tar(archive, GOOD, mode)
    target = tmp_path / "work" / "dataset"
    assert extract_archive(archive, target) == target
    for name, data in GOOD.items():
        assert (target / name).read_bytes() == data
    assert (target / fetch.EXTRACTED_MARKER).is_file()
    extracted = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()}
    assert extracted == set(GOOD) | {fetch.EXTRACTED_MARKER}
    assert [p.name for p in target.parent.iterdir()] == ["dataset"]  # no staging dir left


def _tar_link(name: str, kind: bytes, linkname: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def _zip_symlink(path: Path) -> tuple[Path, str]:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok.txt", b"fine")
        info = zipfile.ZipInfo("link")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "../../outside")
    return path, "link"


BAD_NAMES = ["../evil.txt", "a/../../evil", "..\\evil.txt", "C:/evil.txt"]


def _bad_archives(tmp_path: Path):
    """Yield (archive, offending member) pairs; every archive also holds a harmless file first."""
    root = tmp_path / "archives"
    root.mkdir()
    names = BAD_NAMES + [str(tmp_path / "abs.txt")]  # absolute path pointing inside tmp_path
    for i, name in enumerate(names):
        yield _make_zip(root / f"bad{i}.zip", {"ok.txt": b"fine", name: b"evil"}), name
        yield _make_tar(root / f"bad{i}.tar.gz", {"ok.txt": b"fine", name: b"evil"}), name
    extras = {
        "symlink": _tar_link("link", tarfile.SYMTYPE, "../../outside"),
        "hardlink": _tar_link("hard", tarfile.LNKTYPE, "ok.txt"),
        "fifo": _tar_link("pipe", tarfile.FIFOTYPE, ""),
        "device": _tar_link("dev", tarfile.CHRTYPE, ""),
    }
    for label, info in extras.items():
        yield _make_tar(root / f"{label}.tar.gz", {"ok.txt": b"fine"}, extra=[info]), info.name
    yield _zip_symlink(root / "symlink.zip")


def test_unsafe_members_are_refused_before_anything_is_written(tmp_path):
    cases = list(_bad_archives(tmp_path))
    assert len(cases) == 15
    (tmp_path / "work").mkdir()
    for archive, member in cases:
        target = tmp_path / "work" / "target"
        before = _snapshot(tmp_path)
        with pytest.raises(FetchError) as info:
            extract_archive(archive, target)
        message = str(info.value)
        assert repr(member) in message, (archive.name, message)
        assert str(archive) in message
        assert _snapshot(tmp_path) == before, archive.name  # nothing outside, no staging left
        assert not target.exists()
    assert not (tmp_path / "abs.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_unknown_archive_type_lists_supported_suffixes(tmp_path):
    archive = tmp_path / "data.rar"
    archive.write_bytes(b"Rar!")
    with pytest.raises(FetchError) as info:
        extract_archive(archive, tmp_path / "t")
    message = str(info.value)
    assert str(archive) in message
    for suffix in fetch.SUPPORTED_ARCHIVE_SUFFIXES:
        assert suffix in message
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz", ".tar.xz"])
def test_corrupt_archive_leaves_no_target(suffix, tmp_path):
    archive = tmp_path / f"broken{suffix}"
    good = tmp_path / f"good{suffix}"
    big = {f"f{i}.bin": os.urandom(4000) for i in range(5)}
    _make_zip(good, big) if suffix == ".zip" else _make_tar(good, big, "w:" + suffix.rsplit(".", 1)[1])
    archive.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # truncated download
    target = tmp_path / "work" / "target"
    target.parent.mkdir()
    before = _snapshot(tmp_path)
    with pytest.raises(FetchError, match="corrupt") as info:
        extract_archive(archive, target)
    assert str(archive) in str(info.value)
    assert not target.exists()
    assert _snapshot(tmp_path) == before


def test_missing_archive_is_fetch_error(tmp_path):
    with pytest.raises(FetchError, match="no such file"):
        extract_archive(tmp_path / "absent.zip", tmp_path / "t")


def test_non_empty_target_without_marker_is_refused(tmp_path):
    archive = _make_zip(tmp_path / "good.zip", GOOD)
    target = tmp_path / "target"
    target.mkdir()
    (target / "leftover.txt").write_text("x")
    with pytest.raises(FetchError, match=r"not empty.*\.agnet-extracted") as info:
        extract_archive(archive, target)
    assert str(target) in str(info.value)
    assert sorted(p.name for p in target.iterdir()) == ["leftover.txt"]


def test_empty_existing_target_is_filled(tmp_path):
    archive = _make_zip(tmp_path / "good.zip", GOOD)
    target = tmp_path / "target"
    target.mkdir()
    extract_archive(archive, target)
    assert (target / "top.txt").read_bytes() == GOOD["top.txt"]


def test_extract_twice_returns_without_reextracting(tmp_path):
    archive = _make_tar(tmp_path / "good.tar.gz", GOOD)
    target = tmp_path / "target"
    extract_archive(archive, target)
    (target / "top.txt").write_bytes(b"edited")  # a re-extraction would restore this
    archive.unlink()  # ... and would fail without the archive
    assert extract_archive(archive, target) == target
    assert (target / "top.txt").read_bytes() == b"edited"


# --------------------------------------------------------------------------------------------
# downloads of undeclared length (no Content-Length): never kept as complete unless confirmed
# --------------------------------------------------------------------------------------------


def test_no_length_cut_short_is_resumed_after_a_range_probe(server, tmp_path):
    base, b = server
    b.no_length, b.truncate_first = True, 30000  # the body just ends early: nothing tells it was cut
    dest = tmp_path / "data.bin"
    download(f"{base}/data.bin", dest, **FAST)  # no sha256 either
    assert dest.read_bytes() == PAYLOAD
    # the probe finds more; the resumed 206 declares the total in Content-Range: complete
    assert [r["range"] for r in b.requests] == [None, "bytes=30000-", "bytes=30000-"]


def test_no_length_complete_is_confirmed_by_416(server, tmp_path):
    base, b = server
    b.no_length = True
    dest = tmp_path / "data.bin"
    download(f"{base}/data.bin", dest, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert [r["range"] for r in b.requests] == [None, f"bytes={len(PAYLOAD)}-"]


@pytest.mark.parametrize("name", ["data.tar.gz", "data.zip", "data.bin"])
def test_no_length_cut_short_and_no_ranges_keeps_nothing(name, server, tmp_path):
    base, b = server
    whole = _make_zip(tmp_path / "a.zip", GOOD) if name.endswith("zip") else _make_tar(tmp_path / "a.tgz", GOOD)
    data = whole.read_bytes()
    b.files[f"/{name}"] = data
    b.no_length, b.ignore_range, b.truncate_first = True, True, len(data) // 2
    dest = tmp_path / "out" / name
    with pytest.raises(FetchError, match=r"ended after \d+ bytes, but the server sent no Content-Length .*sha256"):
        download(f"{base}/{name}", dest, **FAST)
    assert sorted(p.name for p in dest.parent.iterdir()) == []  # neither the file nor its .part


@pytest.mark.parametrize("name", ["data.tar.gz", "data.zip", "data.tar"])
def test_no_length_no_ranges_whole_archive_is_accepted(name, server, tmp_path):
    base, b = server
    if name.endswith("zip"):
        data = _make_zip(tmp_path / name, GOOD).read_bytes()
    else:
        data = _make_tar(tmp_path / name, GOOD, "w:gz" if name.endswith("gz") else "w").read_bytes()
    b.files[f"/{name}"] = data
    b.no_length, b.ignore_range = True, True
    dest = download(f"{base}/{name}", tmp_path / "out" / name, **FAST)
    assert dest.read_bytes() == data


def test_plain_tar_cut_at_a_member_boundary_is_refused(server, tmp_path):
    base, b = server
    data = _make_tar(tmp_path / "a.tar", GOOD, "w").read_bytes()
    b.files["/a.tar"] = data
    b.no_length, b.ignore_range, b.truncate_first = True, True, 512 * 2  # header + data block of top.txt
    with pytest.raises(FetchError, match="no end-of-archive blocks"):
        download(f"{base}/a.tar", tmp_path / "out" / "a.tar", **FAST)


# --------------------------------------------------------------------------------------------
# re-extraction when the archive changes
# --------------------------------------------------------------------------------------------


def test_other_archive_at_same_path_is_extracted_anew(tmp_path):
    archive = _make_tar(tmp_path / "data.tar.gz", GOOD)
    target = tmp_path / "target"
    extract_archive(archive, target)
    _make_tar(archive, {"top.txt": b"second release\n"})
    os.utime(archive, ns=(0, 0))  # even with a different time the content decides; here both differ
    extract_archive(archive, target)
    assert (target / "top.txt").read_bytes() == b"second release\n"
    assert not (target / "sub").exists()  # nothing of the first extraction survives
    assert [p.name for p in target.parent.iterdir()] == sorted(["data.tar.gz", "target"])


def test_other_archive_by_checksum_is_extracted_anew(tmp_path):
    first = _make_zip(tmp_path / "a.zip", GOOD)
    second = _make_zip(tmp_path / "b.zip", {"top.txt": b"b\n"})
    target = tmp_path / "target"
    extract_archive(first, target, sha256=sha256_file(first))
    extract_archive(second, target, sha256=sha256_file(second))
    assert (target / "top.txt").read_bytes() == b"b\n"
    marker = (target / fetch.EXTRACTED_MARKER).read_text()
    assert sha256_file(second) in marker and "b.zip" in marker


def test_same_content_elsewhere_is_not_extracted_again(tmp_path):
    first = _make_zip(tmp_path / "a.zip", GOOD)
    target = tmp_path / "target"
    extract_archive(first, target)
    (target / "top.txt").write_bytes(b"edited")  # a re-extraction would restore this
    copy = tmp_path / "copy.zip"
    copy.write_bytes(first.read_bytes())
    extract_archive(copy, target)
    assert (target / "top.txt").read_bytes() == b"edited"


def test_marker_without_provenance_is_extracted_anew(tmp_path):
    archive = _make_zip(tmp_path / "a.zip", GOOD)
    target = tmp_path / "target"
    target.mkdir()
    (target / "top.txt").write_bytes(b"from an older agnet")
    (target / fetch.EXTRACTED_MARKER).write_text("extracted from a.zip\n")  # the pre-provenance marker
    extract_archive(archive, target)
    assert (target / "top.txt").read_bytes() == GOOD["top.txt"]
