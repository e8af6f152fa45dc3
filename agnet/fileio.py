"""File I/O shared by every stage: atomic writes and content hashes.

* :func:`atomic_path` / :func:`write_text` / :func:`write_bytes`: write to a temporary sibling, then
  ``os.replace`` it into place, so a killed job leaves either the previous complete file or none, never a
  truncated one.
* :func:`sha256_file`: the SHA-256 a file is identified by in every provenance record (downloads, manifests,
  models, features, metrics).
* :func:`relative_location` / :func:`locate`: a folder recorded inside a file both absolutely and, when it lies
  under the recording file's folder, relative to it — so a results tree moved or copied elsewhere as a whole
  still finds its own data (a synthetic twin, an unpacked archive), while data outside it keeps its absolute path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    The temporary file is removed if the body raises. Parent directories are created.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno is not None and error.filename is None:
            error.filename = str(target)  # a failed write (e.g. disk full) names the file it was writing
        raise


def write_text(target: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Atomically write ``text`` to ``target``."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding=encoding)


def write_bytes(target: str | Path, data: bytes) -> None:
    """Atomically write ``data`` to ``target``."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Return the lowercase hexadecimal SHA-256 of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def relative_location(target: str | Path, recorded_in: str | Path) -> str | None:
    """``target`` relative to the folder of the file ``recorded_in`` (POSIX), or None when it is not under it."""
    base = Path(recorded_in).resolve().parent
    try:
        return Path(target).resolve().relative_to(base).as_posix()
    except ValueError:
        return None


def locate(absolute: str, relative: str | None, recorded_in: str | Path) -> Path:
    """The folder a file records: its relative location (resolved from ``recorded_in``'s folder) where that exists,
    else the absolute one."""
    if relative:
        moved = Path(recorded_in).resolve().parent / posixpath.normpath(relative)
        if moved.is_dir():
            return moved
    return Path(absolute)
