"""Download and unpack dataset archives safely.

Two jobs, each with its own entry point (checksums: :func:`agnet.fileio.sha256_file`):

* :func:`download` -- fetch an ``http``/``https`` URL into a file, resuming an interrupted
  transfer from its ``.part`` file with an HTTP ``Range`` request, retrying transient failures
  with exponential backoff, and verifying a SHA-256 before the file appears under its final
  name.
* :func:`extract_archive` -- unpack a zip or tar archive after checking every member, through a
  temporary directory so the target is either complete or absent.

Every failure a user can meet (network, HTTP status, checksum, unsafe or corrupt archive) is
raised as :class:`agnet.errors.FetchError` with a message that names the URL or file and what
was expected.
"""

from __future__ import annotations

import http.client
import json
import logging
import lzma
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from agnet import fileio
from agnet.errors import FetchError
from agnet.fileio import sha256_file

__all__ = ["EXTRACTED_MARKER", "SUPPORTED_ARCHIVE_SUFFIXES", "download", "extract_archive"]

log = logging.getLogger(__name__)

#: Name of the file written into an extraction target once it is complete.
EXTRACTED_MARKER = ".agnet-extracted"

#: Archive suffixes understood by :func:`extract_archive` (matched case-insensitively).
SUPPORTED_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")

_CHUNK = 1 << 16
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
_USER_AGENT = "agnet-fetch/1 (+python urllib)"
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)", re.IGNORECASE)


# --------------------------------------------------------------------------------------------
# checksums
# --------------------------------------------------------------------------------------------


def _normalise_sha256(sha256: str | None) -> str | None:
    """Validate an expected checksum (64 hex digits) and return it lowercased."""
    if sha256 is None:
        return None
    if not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256.strip()):
        raise FetchError(f"invalid sha256 {sha256!r}: expected 64 hexadecimal characters")
    return sha256.strip().lower()


# --------------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------------


class _TransientError(Exception):
    """A failure worth retrying (connection trouble, timeout, early close, 5xx)."""


@dataclass
class _Reply:
    """What one HTTP request told us, reduced to what resuming needs."""

    response: http.client.HTTPResponse | None  # None when there is no body to read (416)
    append: bool  # True: append to the .part; False: truncate it and start from zero
    total: int | None  # size of the whole file, if the server declared it


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    retries: int = 5,
    timeout: float = 60.0,
    backoff: float = 1.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` (http/https only) to ``dest`` and return ``dest``.

    Bytes are streamed into ``dest`` + ``".part"``. An existing ``.part`` is resumed with a
    ``Range: bytes=N-`` request; a server answering 200 instead of 206 makes the transfer restart
    from zero, and 416 with a complete ``.part`` counts as complete. Connection errors,
    timeouts, early closes and 5xx answers are retried up to ``retries`` times, sleeping
    ``backoff * 2**attempt`` seconds before retry ``attempt + 1``; each retry resumes. Other 4xx
    answers fail at once. When ``sha256`` is given the finished ``.part`` is verified; on a
    mismatch it is deleted (so the next run starts clean) and :class:`FetchError` is raised.
    Only a verified file is renamed onto ``dest`` (``os.replace``).

    A server that sends no ``Content-Length`` gives no way to tell a finished transfer from one
    cut short, so the end is confirmed with one more ``Range`` request from the last byte held
    (416: complete; 206: more follows and is appended). A server that answers that with the
    whole file again cannot confirm anything: without ``sha256`` the file is accepted only if it
    is a zip/tar archive that reads to its end, else the ``.part`` is deleted and
    :class:`FetchError` asks for the checksum. A truncated file is never given its final name.

    If ``dest`` already exists and matches ``sha256`` (or no checksum is given) nothing is
    requested: re-running is cheap.
    """
    _check_url(url)
    expected = _normalise_sha256(sha256)
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    dest = Path(dest)
    if dest.is_file():
        if expected is None or sha256_file(dest) == expected:
            return dest
        log.warning("%s exists but its sha256 differs from %s; downloading it again", dest, expected)

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    confirmed = _transfer_with_retries(url, part, retries=retries, timeout=timeout, backoff=backoff, progress=progress)
    if not confirmed and expected is None:
        _check_unconfirmed(url, part, dest)
    _verify_part(part, dest, expected)
    os.replace(part, dest)
    return dest


def _check_url(url: str) -> None:
    """Refuse anything but an absolute http(s) URL."""
    parsed = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parsed is None or parsed.scheme.lower() not in ("http", "https") or not parsed.netloc:
        raise FetchError(f"unsupported URL {url!r}: expected an http:// or https:// URL")


def _transfer_with_retries(
    url: str, part: Path, *, retries: int, timeout: float, backoff: float, progress: bool
) -> bool:
    """Run :func:`_transfer_once` until the ``.part`` is complete or the retries are spent.

    Returns True when the server confirmed the size, False when it cannot tell (no length, no ranges).
    """
    for attempt in range(retries + 1):
        try:
            if _transfer_once(url, part, timeout=timeout, progress=progress):
                return True
            return _probe_end(url, part, timeout)
        except _TransientError as exc:
            if attempt == retries:
                raise FetchError(
                    f"download of {url} failed after {retries + 1} attempt(s): {exc}"
                ) from exc
            delay = backoff * 2**attempt
            log.warning("download of %s: %s; retrying in %.2fs", url, exc, delay)
            time.sleep(delay)
        except OSError as exc:  # local trouble writing the .part (disk full, permissions)
            raise FetchError(f"cannot write {part} while downloading {url}: {exc}") from exc


def _transfer_once(url: str, part: Path, *, timeout: float, progress: bool) -> bool:
    """Make one request and append to (or rewrite) the ``.part``.

    Returns True when the ``.part`` holds the whole file as the server declared it, False when the
    body ended without the server having declared a size; raises :class:`_TransientError` when the
    transfer was cut short or the server's answer calls for another attempt.
    """
    reply = _request(url, part, timeout)
    if reply.response is None:  # 416 on a complete .part
        return True
    start = part.stat().st_size if reply.append and part.exists() else 0
    with reply.response as response, open(part, "ab" if reply.append else "wb") as fh, tqdm(
        total=reply.total,
        initial=start,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=part.name[: -len(".part")],
        file=sys.stderr,
        disable=not progress,
        leave=False,
    ) as bar:
        received = _copy_body(response, fh, bar, url)
    if reply.total is not None and start + received != reply.total:
        raise _TransientError(
            f"connection closed early: have {start + received} of {reply.total} bytes"
        )
    return reply.total is not None


def _probe_end(url: str, part: Path, timeout: float) -> bool:
    """After a body of undeclared length: ask for the bytes after the ``.part`` to learn whether it is whole.

    True: the server answered 416 (nothing follows). False: it ignored the range (cannot tell).
    Raises :class:`_TransientError` when more bytes follow, so the retry loop resumes the transfer.
    """
    held = part.stat().st_size if part.exists() else 0
    if held == 0:
        return False
    reply = _request(url, part, timeout)
    if reply.response is None:
        return True
    reply.response.close()
    if reply.append:
        raise _TransientError(f"the transfer stopped after {held} bytes but the server has more")
    return False


def _check_unconfirmed(url: str, part: Path, dest: Path) -> None:
    """Accept a download of unknown size only if it is an archive that reads to its end; else delete it."""
    held = part.stat().st_size
    why = (f"download of {url} ended after {held} bytes, but the server sent no Content-Length and ignores "
           "Range requests, so the file cannot be known to be complete")
    advice = ("it was deleted; run the fetch again with the archive's sha256 (--sha256, or "
              "datasets.<name>.source.sha256 in the config) so that a complete download can be recognised")
    try:
        kind = _archive_kind(dest)
    except FetchError:
        part.unlink(missing_ok=True)
        raise FetchError(f"{why}; {advice}") from None
    problem = _archive_problem(part, kind)
    if problem is not None:
        part.unlink(missing_ok=True)
        raise FetchError(f"{why}, and as an archive it is cut short or corrupt ({problem}); {advice}")
    log.warning("%s: the server declared no size; accepted because the archive reads to its end", url)


def _archive_problem(path: Path, kind: str) -> str | None:
    """None if the archive at ``path`` reads completely (every member's data), else why not."""
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
            return None if bad is None else f"member {bad!r} fails its CRC"
        with tarfile.open(path, kind) as tf:
            for member in tf:
                if member.isfile():
                    with tf.extractfile(member) as fh:
                        while fh.read(_CHUNK):
                            pass
        if kind == "r:":  # plain tar: a cut at a member boundary only shows as missing end-of-archive blocks
            with open(path, "rb") as fh:
                fh.seek(max(0, path.stat().st_size - 1024))
                if fh.read(1024) != bytes(1024):
                    return "no end-of-archive blocks"
    except (*_CORRUPT_ERRORS, RuntimeError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _request(url: str, part: Path, timeout: float) -> _Reply:
    """Send a GET, with ``Range`` when a ``.part`` exists, and classify the answer."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        with exc:
            return _handle_http_error(url, exc, part, offset)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise _TransientError(f"cannot fetch {url}: {_reason(exc)}") from exc

    length = _int_header(response.headers.get("Content-Length"))
    if response.status == 206:
        first, total = _parse_content_range(response.headers.get("Content-Range"))
        if first != offset:
            response.close()
            part.unlink(missing_ok=True)  # cannot trust the server's ranges: start from zero
            raise _TransientError(
                f"asked {url} for bytes from {offset} but got a range starting at {first}"
            )
        if total is None and length is not None:
            total = offset + length
        return _Reply(response, append=True, total=total)
    # 200 (or another 2xx): the whole file from byte 0, whatever was asked for
    if offset > 0:
        log.info("%s ignored the Range request; restarting from zero", url)
    return _Reply(response, append=False, total=length)


def _handle_http_error(url: str, exc: urllib.error.HTTPError, part: Path, offset: int) -> _Reply:
    """Turn an HTTP error status into a finished reply, a retry, or a :class:`FetchError`."""
    if exc.code == 416 and offset > 0:
        _, total = _parse_content_range(exc.headers.get("Content-Range"))
        if total is None or total == offset:
            # nothing left to send: the .part is complete (the checksum, if any, still decides)
            return _Reply(None, append=True, total=offset)
        part.unlink(missing_ok=True)
        raise _TransientError(
            f"{url} has {total} bytes but {part} holds {offset}; restarting from zero"
        )
    if 500 <= exc.code < 600:
        raise _TransientError(f"HTTP {exc.code} {exc.reason} from {url}")
    raise FetchError(f"download of {url} failed: HTTP {exc.code} {exc.reason}")


def _copy_body(response: http.client.HTTPResponse, fh, bar: tqdm, url: str) -> int:
    """Copy the response body into ``fh`` and return the byte count; network errors are transient."""
    received = 0
    while True:
        try:
            chunk = response.read(_CHUNK)
        except (http.client.HTTPException, OSError) as exc:  # IncompleteRead, reset, timeout
            raise _TransientError(f"transfer from {url} interrupted: {_reason(exc)}") from exc
        if not chunk:
            return received
        fh.write(chunk)
        received += len(chunk)
        bar.update(len(chunk))


def _verify_part(part: Path, dest: Path, expected: str | None) -> None:
    """Check the finished ``.part`` against ``expected``; delete it and raise on a mismatch."""
    if expected is None:
        return
    got = sha256_file(part)
    if got != expected:
        part.unlink(missing_ok=True)
        raise FetchError(f"checksum mismatch for {dest}: expected {expected}, got {got}")


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """Return ``(first_byte, total)`` from a ``Content-Range`` header; either may be None."""
    match = _CONTENT_RANGE_RE.fullmatch(value.strip()) if value else None
    if match is None:
        return None, None
    first = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return first, total


def _int_header(value: str | None) -> int | None:
    """Parse a non-negative integer header value, or return None."""
    try:
        number = int(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and number >= 0 else None


def _reason(exc: BaseException) -> str:
    """A short description of a network exception (URLError wraps the underlying one)."""
    reason = getattr(exc, "reason", None)
    text = str(reason if reason is not None else exc)
    return text or type(exc).__name__


# --------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------


def extract_archive(archive: Path, target: Path, sha256: str | None = None) -> Path:
    """Extract a zip or tar archive into the directory ``target`` and return ``target``.

    Supported suffixes: see :data:`SUPPORTED_ARCHIVE_SUFFIXES`. Every member is checked before
    anything is written: absolute paths, drive letters, ``..`` components, tar links, devices
    and fifos, and zip symlink entries are refused with a :class:`FetchError` naming the
    archive and the member. Extraction goes into a temporary directory beside ``target`` that
    is renamed into place once complete (with the marker file :data:`EXTRACTED_MARKER` inside),
    so ``target`` is either complete or absent.

    The marker records what was extracted: the archive's path, size, modification time and
    SHA-256. A ``target`` whose marker names the same archive content (``sha256`` when the caller
    knows it, else the recorded size and time, else a fresh checksum) is returned at once; one
    extracted from anything else is replaced by a fresh extraction (the old tree is removed only
    once the new one is complete). A non-empty ``target`` without a marker is an error.
    """
    archive, target = Path(archive), Path(target)
    expected = _normalise_sha256(sha256)
    marker = target / EXTRACTED_MARKER
    previous = _read_marker(marker) if marker.is_file() else None
    if marker.is_file():
        if _same_archive(previous, archive, expected):
            return target
        log.info("%s was extracted from %s; extracting %s in its place", target,
                 (previous or {}).get("archive", "an unrecorded archive"), archive)
    else:
        _check_target_free(target, archive)
    kind = _archive_kind(archive)
    if not archive.is_file():
        raise FetchError(f"cannot extract {archive}: no such file")

    target.parent.mkdir(parents=True, exist_ok=True)
    identity = _archive_identity(archive, expected)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".extracting", dir=target.parent))
    try:
        if kind == "zip":
            _extract_zip(archive, staging)
        else:
            _extract_tar(archive, staging)
        fileio.write_text(staging / EXTRACTED_MARKER, json.dumps(identity, indent=2) + "\n")
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _read_marker(marker: Path) -> dict | None:
    """The provenance recorded in an extraction marker (None for an unreadable or pre-provenance one)."""
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("sha256"), str) else None


def _archive_identity(archive: Path, sha256: str | None) -> dict:
    """What the marker records about ``archive``: where it was, its size, time and content hash."""
    info = archive.stat()
    return {
        "archive": str(archive.resolve()),
        "size": info.st_size,
        "mtime_ns": info.st_mtime_ns,
        "sha256": sha256 or sha256_file(archive),
    }


def _same_archive(previous: dict | None, archive: Path, sha256: str | None) -> bool:
    """True when the marker ``previous`` describes the content of ``archive`` (or the caller's ``sha256``)."""
    if previous is None:
        return False  # an old marker that does not say what it came from: extract again
    if sha256 is not None:
        return previous["sha256"] == sha256
    if not archive.is_file():
        log.info("%s is gone; keeping what was extracted from it", archive)
        return previous.get("archive") == str(archive.resolve())
    info = archive.stat()
    if (previous.get("archive"), previous.get("size"), previous.get("mtime_ns")) == (
        str(archive.resolve()), info.st_size, info.st_mtime_ns
    ):
        return True
    return previous["sha256"] == sha256_file(archive)


def _swap_into_place(staging: Path, target: Path) -> None:
    """Rename the finished ``staging`` onto ``target``; an old extraction there is removed afterwards."""
    if not target.exists():
        os.rename(staging, target)
        return
    if not (target / EXTRACTED_MARKER).is_file():
        target.rmdir()  # empty (checked by the caller); rename cannot replace a directory everywhere
        os.rename(staging, target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".replaced", dir=target.parent))
    os.rename(target, retired / "old")  # from here until the next rename, target is absent: never half old
    os.rename(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def _check_target_free(target: Path, archive: Path) -> None:
    """Refuse to extract over a file or a non-empty directory not produced by us."""
    if not target.exists():
        return
    if not target.is_dir():
        raise FetchError(f"cannot extract {archive} to {target}: it exists and is not a directory")
    if any(target.iterdir()):
        raise FetchError(
            f"cannot extract {archive} to {target}: the directory is not empty and has no "
            f"{EXTRACTED_MARKER} marker from a complete extraction; remove it and try again"
        )


def _archive_kind(archive: Path) -> str:
    """Return ``"zip"`` or the tarfile open mode for ``archive``, judged by its suffix."""
    name = archive.name.lower()
    modes = {
        ".zip": "zip",
        ".tar": "r:",
        ".tar.gz": "r:gz",
        ".tgz": "r:gz",
        ".tar.bz2": "r:bz2",
        ".tar.xz": "r:xz",
    }
    for suffix, mode in modes.items():
        if name.endswith(suffix):
            return mode
    raise FetchError(
        f"cannot extract {archive}: unknown archive type; supported suffixes are "
        + ", ".join(SUPPORTED_ARCHIVE_SUFFIXES)
    )


_CORRUPT_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)


def _extract_zip(archive: Path, staging: Path) -> None:
    """Check every zip member, then extract them all into ``staging``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                _check_member_name(archive, info.filename)
                mode = info.external_attr >> 16
                if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                    kind = "symlink" if stat.S_ISLNK(mode) else "special file"
                    raise FetchError(f"unsafe member {info.filename!r} in {archive}: {kind} entries are refused")
            zf.extractall(staging, members)
    except FetchError:
        raise
    except (*_CORRUPT_ERRORS, RuntimeError, ValueError) as exc:  # RuntimeError: encrypted member
        raise FetchError(f"corrupt or unreadable archive {archive}: {exc}") from exc


def _extract_tar(archive: Path, staging: Path) -> None:
    """Check every tar member, then extract them all into ``staging``."""
    mode = _archive_kind(archive)
    try:
        with tarfile.open(archive, mode) as tf:
            members = tf.getmembers()
            for member in members:
                _check_member_name(archive, member.name)
                if not (member.isfile() or member.isdir()):
                    raise FetchError(
                        f"unsafe member {member.name!r} in {archive}: {_tar_type(member)} entries are refused"
                    )
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: belt and braces
                tf.extractall(staging, members, filter="data")
            else:  # pragma: no cover - older interpreters; members were checked above
                tf.extractall(staging, members)
    except FetchError:
        raise
    except _CORRUPT_ERRORS as exc:
        raise FetchError(f"corrupt or unreadable archive {archive}: {exc}") from exc


def _check_member_name(archive: Path, name: str) -> None:
    """Refuse member names that could land outside the extraction directory."""
    problem = None
    unified = name.replace("\\", "/")
    if not unified.strip("/"):
        problem = "empty name"
    elif unified.startswith("/"):
        problem = "absolute path"
    elif re.match(r"[A-Za-z]:", unified):
        problem = "drive letter"
    elif ".." in PurePosixPath(unified).parts:
        problem = "'..' component"
    elif "\x00" in unified:
        problem = "NUL byte in name"
    if problem:
        raise FetchError(f"unsafe member {name!r} in {archive}: {problem}")


def _tar_type(member: tarfile.TarInfo) -> str:
    """Name the kind of a non-regular tar member for error messages."""
    if member.issym():
        return f"symlink (-> {member.linkname!r})"
    if member.islnk():
        return f"hardlink (-> {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "fifo"
    return f"type {member.type!r}"
