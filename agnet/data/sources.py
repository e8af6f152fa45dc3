"""Obtaining a dataset from its configured source: an http(s) URL, a local archive, or a directory.

Whatever the source, the result is a ``dataset.json`` locator (see :mod:`agnet.data.datasets`)
pointing at a dataset root. Directories are used in place (nothing is copied); archives are
checksummed, then unpacked under ``dest``; URLs are downloaded (resumable) to ``dest/downloads``
first.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from agnet.data.constants import HOW_TO_OBTAIN
from agnet.data.datasets import find_root, resolve_root, write_locator
from agnet.data.fetch import download, extract_archive
from agnet.errors import DatasetMissingError, FetchError
from agnet.fileio import sha256_file, write_text

SOURCE_KINDS = ("url", "archive", "directory")


def _same_text(path: Path, text: str) -> bool:
    try:
        return path.read_text(encoding="utf-8").strip() == text
    except OSError:
        return False


def _verify_archive(archive: Path, sha256: str | None) -> str | None:
    """Check ``archive`` against ``sha256`` (when given) and return the checksum, lowercased."""
    if sha256 is None:
        return None
    found = sha256_file(archive)
    if found != sha256.lower():
        raise FetchError(f"checksum mismatch for {archive}: expected {sha256.lower()}, got {found}")
    return found


def obtain(fmt: str, kind: str, location: str, dest: str | Path, locator: str | Path, sha256: str | None = None,
           progress: bool = True) -> Path:
    """Make the dataset of format ``fmt`` available and write its locator; returns the dataset root.

    ``kind`` is one of :data:`SOURCE_KINDS`; ``location`` the URL or path; ``dest`` the folder that
    receives downloads and unpacked archives. An existing locator is removed first, so a failed
    fetch never leaves one that names the previous source. An archive is extracted again whenever
    its content differs from what ``dest/extracted`` was extracted from.
    """
    dest, locator = Path(dest), Path(locator)
    if locator.is_dir():
        raise FetchError(f"{locator}: is a directory; expected the path of the dataset.json locator to write")
    locator.unlink(missing_ok=True)
    if kind == "directory":
        root = resolve_root(fmt, location)
    elif kind in ("archive", "url"):
        if kind == "url":
            name = Path(urlparse(location).path).name or f"{fmt}.archive"
            archive = dest / "downloads" / name
            origin = archive.with_name(archive.name + ".url")  # which URL the download came from
            if sha256 is None and archive.is_file() and not _same_text(origin, location):
                archive.unlink()  # another URL's file under the same name, and no checksum to tell: fetch again
            archive = download(location, archive, sha256=sha256, progress=progress)
            write_text(origin, location + "\n")
            known = sha256.lower() if sha256 else None
        else:
            archive = Path(location)
            if not archive.is_file():
                raise DatasetMissingError(f"{fmt} archive not found at {archive}. {HOW_TO_OBTAIN[fmt]}")
            known = _verify_archive(archive, sha256)
        try:
            extracted = extract_archive(archive, dest / "extracted", sha256=known)
        except FetchError as error:
            if kind == "url" and str(error).startswith("corrupt or unreadable archive"):
                raise FetchError(f"{error}; delete {archive} and run the fetch again to download it anew") from None
            raise
        root = find_root(extracted, fmt)
    else:
        raise FetchError(f"unknown source kind {kind!r} (expected one of {', '.join(SOURCE_KINDS)})")
    write_locator(locator, fmt, root, {"kind": kind, "location": str(location), "sha256": sha256})
    return root
